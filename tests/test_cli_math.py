"""End-to-end runs of the real CLI on the math tasks, with tiny models and local data (no hub)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import real_data
from test_cli import cli

TINY_GSM8K = [
    "task=gsm8k", "model=math_tiny", "hardware=cpu", "task.num_pretrain=32", "task.num_train=32",
    "task.num_test=16", "pretrain.steps=150", "pretrain.batch_size=32", "pretrain.lr=3e-3", "pretrain.warmup_steps=10",
    "pretrain.eval_problems=16", "collect.samples_per_problem=4", "guide_train.epochs=1", "guide_train.lr=1e-3",
    "guide_train.warmup_steps=2", "eval.max_new_tokens=200", "progress=false",
]


@pytest.fixture(scope="module")
def gsm8k_data(tmp_path_factory):
    """The real gsm8k_test.jsonl (QSHARP_TEST_DATA); 64 of its problems stand in for the training file, which
    is not among the real files (this checks the pipeline, not the method)."""
    real = real_data("gsm8k_test.jsonl")
    data = tmp_path_factory.mktemp("gsm8k_data")
    (data / "gsm8k_test.jsonl").symlink_to(real / "gsm8k_test.jsonl")
    lines = (real / "gsm8k_test.jsonl").read_text().splitlines()[-64:]
    (data / "gsm8k_train.jsonl").write_text("\n".join(lines) + "\n")
    return data


@pytest.mark.slow  # minutes: `make test-slow`
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


def test_aime24_composes_offline_for_a_hub_model(tmp_path):
    result = subprocess.run([sys.executable, "-m", "qsharp_exp", "task=aime24", "model=qwen25_7b_instruct", "--cfg",
                             "job"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert "name: aime24" in result.stdout and "train_from: math" in result.stdout
    assert "pretrained: Qwen/Qwen2.5-7B-Instruct" in result.stdout


@pytest.mark.slow  # minutes: `make test-slow`
def test_aime24_with_a_tiny_model_runs_on_the_real_aime_file_with_maths_training_problems(tmp_path):
    real = real_data("aime24_test.jsonl", "math500_test.jsonl")
    data = tmp_path / "data"
    data.mkdir()
    (data / "aime24_test.jsonl").symlink_to(real / "aime24_test.jsonl")
    lines = (real / "math500_test.jsonl").read_text().splitlines()[:64]  # no real MATH train file: these stand in
    (data / "math_train.jsonl").write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "run"
    # 64-token samples: this checks that AIME's problems run through every stage, not what is learned.
    tiny = [arg for arg in TINY_GSM8K if not arg.startswith(("task=", "task.num_test=", "eval.max_"))]
    result = cli("task=aime24", *tiny, "task.num_test=null", "eval.max_new_tokens=64", "eval.num_samples=2",
                 f"task.data_dir={data}", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "training problems come from task.train_from=math" in result.stdout + result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task"] == "aime24" and metrics["num_problems"] == 30 and metrics["num_samples"] == 2
    assert {"pass@1", "maj1@2", "pass@2", "kl_mean"} <= set(metrics)
    rollouts = Path(metrics["dir_rollouts_round2"]) / "rollouts.jsonl"
    assert len(rollouts.read_text().splitlines()) == 32 * 4  # MATH's training problems, 4 samples each


def test_a_round_without_any_variation_stops_with_a_clear_message(tmp_path):
    # One pretraining step: pi_ref answers nothing right, so every problem's samples agree.
    result = cli("task=arithmetic", "model.pi_ref_init=scratch", "task.num_pretrain=50", "task.num_train=4",
                 "task.num_test=4", "pretrain.steps=1",
                 "pretrain.eval_problems=4", "collect.samples_per_problem=2", "eval.max_new_tokens=8", "progress=false",
                 f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "round 1: all 8 rollouts were dropped" in result.stderr
    assert "Traceback" not in result.stderr
