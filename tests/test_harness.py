"""The guided model in lm-evaluation-harness: `qsharp-lm-eval --model qsharp` runs a harness task from a local
JSONL file, offline, with the smoke run's guide; its responses and KL are the framework's guided ones, and with
eta 1e6 it answers as the harness's plain `hf` model of pi_ref does."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qsharp_exp import (
    GuidanceLogitsProcessor,
    GuidanceSettings,
    SamplingSpec,
    compose_config,
    load_guide,
    load_pi_ref,
)
from qsharp_exp.tasks import build_task
from test_cli import cli

pytest.importorskip("lm_eval")
TASK = """task: star_graph_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["<eos>"]
  do_sample: false
  max_gen_toks: 12
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    work = tmp_path_factory.mktemp("harness")
    cli("+experiment=smoke", "progress=false", "eval.num_samples=2", f"cache_dir={work / 'cache'}",
        f"hydra.run.dir={work / 'run'}", cwd=work)
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    task = build_task(compose_config("+experiment=smoke").task)
    rows = [{"prompt": p.prompt, "answer": task.target(p)} for p in task.problems("test")]
    (work / "tasks").mkdir()
    (work / "tasks" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "tasks" / "star_graph_local.yaml").write_text(TASK.format(data=work / "tasks" / "test.jsonl"))
    return work, f"{metrics['dir_pi_ref']}/model", f"{metrics['dir_return_model_round2']}/model", rows


def harness(work: Path, model: str, args: str, name: str) -> list[dict]:
    """The harness's samples of the task (in the task's order), through the qsharp-lm-eval command."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = Path(sys.executable).parent / "qsharp-lm-eval"
    result = subprocess.run([str(command), "--model", model, "--model_args", args, "--device", "cpu", "--tasks",
                             "star_graph_local", "--include_path", str(work / "tasks"), "--output_path",
                             str(work / name), "--log_samples"], cwd=work, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (samples,) = (work / name).rglob("samples_star_graph_local_*.jsonl")
    return sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda s: s["doc_id"])


def test_the_harness_runs_the_guided_model_as_the_framework_guides_and_eta_huge_as_pi_ref(smoke):
    work, pi_ref_dir, guide_dir, rows = smoke
    kl_file = work / "kl.jsonl"
    guided = harness(work, "qsharp", f"pretrained={pi_ref_dir},guide={guide_dir},eta=0.01,top_k=10,kl_path={kl_file}",
                     "guided")
    plain = harness(work, "hf", f"pretrained={pi_ref_dir}", "plain")
    huge = harness(work, "qsharp", f"pretrained={pi_ref_dir},guide={guide_dir},eta=1e6,top_k=10", "huge")
    assert len(guided) == len(rows) == 20
    assert [s["filtered_resps"] for s in huge] == [s["filtered_resps"] for s in plain]

    # The framework's greedy guided responses, one prompt at a time, with the processor and plain `generate`.
    pi_ref, tokenizer = load_pi_ref(pi_ref_dir)
    guide = load_guide(guide_dir)
    expected, kls = [], []
    for row in rows:
        processor = GuidanceLogitsProcessor(guide, GuidanceSettings(eta=0.01, top_k=10), tokenizer=tokenizer,
                                            spec=SamplingSpec(max_new_tokens=12))
        ids = torch.tensor([tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]])
        out = pi_ref.generate(input_ids=ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, logits_processor=[processor])
        expected.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
        kls.append(processor.kl.item())
    assert [s["filtered_resps"][0].strip() for s in guided] == expected
    recorded = sorted(json.loads(line)["kl"] for line in kl_file.read_text().splitlines())
    assert recorded == pytest.approx(sorted(kls), abs=1e-5) and max(recorded) > 0
