"""End-to-end runs of the real CLI on the math tasks, with tiny models and local data (no hub)."""

import json
from pathlib import Path

import pytest

from test_cli import cli
from test_math_tasks import SHARED_DATA, needs_shared_data

TINY_GSM8K = [
    "task=gsm8k", "model=math_tiny", "hardware=cpu", "task.num_pretrain=32", "task.num_train=32",
    "task.num_test=16", "pretrain.steps=150", "pretrain.batch_size=32", "pretrain.lr=3e-3", "pretrain.warmup_steps=10",
    "pretrain.eval_problems=16", "collect.samples_per_problem=4", "guide_train.epochs=1", "guide_train.lr=1e-3",
    "guide_train.warmup_steps=2", "eval.max_new_tokens=200", "progress=false",
]


@pytest.fixture(scope="module")
def gsm8k_data(tmp_path_factory):
    """gsm8k_test.jsonl from ../shared/data; as no training file is shared, 64 test problems stand in for it
    (this checks the pipeline, not the method)."""
    if not (SHARED_DATA / "gsm8k_test.jsonl").exists():
        pytest.skip("../shared/data is not present")
    data = tmp_path_factory.mktemp("gsm8k_data")
    (data / "gsm8k_test.jsonl").symlink_to(SHARED_DATA / "gsm8k_test.jsonl")
    lines = (SHARED_DATA / "gsm8k_test.jsonl").read_text().splitlines()[-64:]
    (data / "gsm8k_train.jsonl").write_text("\n".join(lines) + "\n")
    return data


@needs_shared_data
def test_gsm8k_with_a_tiny_model_runs_two_rounds_and_writes_metrics_and_samples(gsm8k_data, tmp_path):
    run_dir = tmp_path / "run"
    cli(*TINY_GSM8K, f"task.data_dir={gsm8k_data}", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}",
        cwd=tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task"] == "gsm8k" and metrics["num_problems"] == 16 and metrics["num_samples"] == 8
    for key in ("pass@1", "maj1@8", "pass@8", "kl_mean", "rm_best_of_8", "rm_maj1@8", "time_return_model_round2_s"):
        assert key in metrics, key
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 16 * 8
    assert set(samples[0]) == {"problem_id", "sample", "response", "answer", "correct", "kl", "rm_score"}
    rollouts = Path(metrics["dir_rollouts_round2"]) / "rollouts.jsonl"
    assert len(rollouts.read_text().splitlines()) == 32 * 4


def test_a_round_without_any_variation_stops_with_a_clear_message(tmp_path):
    # One pretraining step: pi_ref answers nothing right, so every problem's samples agree.
    result = cli("task=arithmetic", "model.pi_ref_init=scratch", "task.num_pretrain=50", "task.num_train=4",
                 "task.num_test=4", "pretrain.steps=1",
                 "pretrain.eval_problems=4", "collect.samples_per_problem=2", "eval.max_new_tokens=8", "progress=false",
                 f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "round 1: all 8 rollouts were dropped" in result.stderr
    assert "Traceback" not in result.stderr
