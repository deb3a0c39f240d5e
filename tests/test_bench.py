"""The decoding benchmark runs on a tiny pair and reports what docs/performance.md quotes."""

import json

from qsharp_exp.cli import bench


def test_bench_writes_one_record_per_configuration_with_one_guide_pass_per_step(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--vocab", "300", "--hidden", "32", "--layers", "2", "--heads", "2", "--mlp", "64",
                       "--guide-layers", "1", "--prompt-tokens", "8", "--new-tokens", "6", "--batches", "1", "3",
                       "--repeats", "1", "--threads", "1", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    records = written["records"]
    collection, training = written["stages"]
    assert collection["stage"] == "collection" and collection["samples"] == 4 * 32
    assert 0 <= collection["padding_waste"] < 1 and collection["samples_per_s"] > 0
    assert 0 <= collection["prompt_waste"] < 1 and 0 <= collection["decode_waste"] < 1
    assert training["stage"] == "guide_training" and 0 <= training["padding_waste"] < 1
    assert len(records) == 2 * 5  # pi_ref, CD and Q# with a V- and a Q-type guide, at two batch sizes
    for r in records:
        for key in ("algo", "guide_type", "batch", "tokens_per_s", "guide_forwards_per_step", "measured_ratio"):
            assert key in r, key
        if r["algo"] == "pi_ref":
            assert r["guide_forwards_per_step"] == 0 and r["measured_ratio"] == 1.0
        else:  # per sampled token after the prefill: Q-type needs no pass after the last token
            expected = 1.0 if r["guide_type"] == "v" else round(5 / 6, 4)
            assert r["guide_forwards_per_step"] == expected and r["floor_ratio"] > 1.0
            assert r["ms_per_step"] > 0 and r["end_to_end_ratio"] > 0
