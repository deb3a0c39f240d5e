"""End-to-end runs of the real CLI on tiny settings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cli(*args, cwd: Path, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "qsharp_exp", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    if check and result.returncode:
        raise AssertionError(f"CLI failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


def test_default_pipeline_runs_end_to_end_and_writes_flat_metrics(workdir):
    run_dir = workdir / "run_qsharp"
    cli("+experiment=smoke", f"cache_dir={workdir / 'cache'}", f"hydra.run.dir={run_dir}", cwd=workdir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("task", "algo", "eta", "accuracy", "kl_mean", "num_problems", "num_samples",
                "time_pi_ref_s", "time_return_model_round2_s", "time_evaluation_s"):
        assert key in metrics, key
    assert metrics["task"] == "star_graph" and metrics["algo"] == "qsharp" and metrics["eta"] == 0.1
    assert metrics["num_problems"] == 20 and 0.0 <= metrics["accuracy"] <= 1.0
    assert all(not isinstance(v, dict | list) for v in metrics.values())
    # The base model's held-out accuracy, overall and by hops, is part of the run's metrics.
    assert 0.0 <= metrics["base_lookup_accuracy"] <= 1.0 and "base_lookup_accuracy_follow_hops_1" in metrics
    samples = (run_dir / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 20
    curve = [json.loads(line) for line in (Path(metrics["dir_return_model_round2"]) / "curve.jsonl").open()]
    assert "val_acc_by_pos" in curve[-2]
    # The curve ends with why training stopped, which the run's metrics repeat.
    assert curve[-1] == {"stopped": metrics["guide_stopped"], "trained_steps": metrics["guide_trained_steps"],
                         "budget_steps": metrics["guide_budget_steps"]}


def test_multirun_over_algos_reuses_pi_ref_and_return_models(workdir):
    sweep = workdir / "sweep"
    result = cli("-m", "+experiment=smoke", "algo=pi_ref,cd,qsharp", f"cache_dir={workdir / 'cache'}",
                 f"hydra.sweep.dir={sweep}", cwd=workdir)
    files = sorted(sweep.glob("*/metrics.json"))
    assert len(files) == 3
    by_algo = {m["algo"]: m for m in (json.loads(f.read_text()) for f in files)}
    assert set(by_algo) == {"pi_ref", "cd", "qsharp"}
    # pi_ref's KL is 0 by construction; what can fail is its sampling: it must be the limit of guided sampling
    # as eta grows, whose KL the guided mode computes by the formula.
    limit = workdir / "cd_eta_1e6"
    cli("+experiment=smoke", "algo=cd", "algo.eta=1e6", f"cache_dir={workdir / 'cache'}", f"hydra.run.dir={limit}",
        cwd=workdir)
    pi_ref_dir = next(f.parent for f in files if json.loads(f.read_text())["algo"] == "pi_ref")
    unguided = [json.loads(line) for line in (pi_ref_dir / "samples.jsonl").read_text().splitlines()]
    guided = [json.loads(line) for line in (limit / "samples.jsonl").read_text().splitlines()]
    assert [s["response"] for s in guided] == [s["response"] for s in unguided]
    assert json.loads((limit / "metrics.json").read_text())["kl_mean"] <= 1e-4 and by_algo["cd"]["kl_mean"] > 0.01
    assert by_algo["cd"]["guide_round"] == 1 and by_algo["qsharp"]["guide_round"] == 2
    # The first test built pi_ref and both rounds: nothing but the evaluations is rebuilt.
    assert "pi_ref: building" not in result.stderr + result.stdout
    assert "return_model_round1: building" not in result.stderr + result.stdout
    assert "evaluation: reusing" in result.stderr + result.stdout  # qsharp's evaluation, from the first test
    # The same command again does no work at all.
    again = cli("-m", "+experiment=smoke", "algo=pi_ref,cd,qsharp", f"cache_dir={workdir / 'cache'}",
                f"hydra.sweep.dir={workdir / 'sweep2'}", cwd=workdir)
    assert "building" not in again.stderr + again.stdout


def test_bad_config_value_stops_before_any_work_with_the_key_named(workdir):
    result = cli("+experiment=smoke", "algo.eta=-1", f"cache_dir={workdir / 'cache_bad'}",
                 f"hydra.run.dir={workdir / 'bad'}", cwd=workdir, check=False)
    assert result.returncode != 0
    assert "algo.eta" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "cache_bad").exists()


def test_gpu_hardware_without_cuda_is_one_clear_error(workdir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = cli("+experiment=smoke", "hardware=gpu", f"cache_dir={workdir / 'cache_gpu'}",
                 f"hydra.run.dir={workdir / 'gpu'}", cwd=workdir, check=False)
    assert result.returncode != 0
    assert "hardware=cpu" in result.stderr and "Traceback" not in result.stderr


def test_more_evaluation_samples_rebuild_only_the_evaluation(workdir):
    result = cli("+experiment=smoke", "eval.num_samples=2", f"cache_dir={workdir / 'cache'}",
                 f"hydra.run.dir={workdir / 'two_samples'}", cwd=workdir)
    log = result.stderr + result.stdout
    assert "evaluation: building" in log
    assert "pi_ref: building" not in log and "rollouts_round1: building" not in log
    metrics = json.loads((workdir / "two_samples" / "metrics.json").read_text())
    assert metrics["num_samples"] == 2 and "pass@2" in metrics


def test_the_stopping_rules_settings_key_the_return_models_and_nothing_before_them(workdir):
    result = cli("+experiment=smoke", "guide_train.patience=1", "guide_train.min_delta=0.2",
                 f"cache_dir={workdir / 'cache'}", f"hydra.run.dir={workdir / 'patience'}", cwd=workdir)
    log = result.stderr + result.stdout
    assert "return_model_round1: building" in log and "return_model_round2: building" in log
    assert "pi_ref: building" not in log and "rollouts_round1: building" not in log
    metrics = json.loads((workdir / "patience" / "metrics.json").read_text())
    assert metrics["guide_stopped"] in ("converged", "budget") and "guide training" in result.stdout


def test_collection_is_keyed_by_its_own_guide_settings_not_the_evaluated_ones(workdir):
    """Evaluating at another top-k or with masked non-candidates reuses the rollouts; a roll-in guide that
    masks its non-candidates collects round 2 anew (round 1 has no roll-in guide and is reused)."""
    evaluated = cli("+experiment=smoke", "algo.top_k=5", "algo.non_candidates=mask", f"cache_dir={workdir / 'cache'}",
                    f"hydra.run.dir={workdir / 'eval_mask'}", cwd=workdir)
    log = evaluated.stderr + evaluated.stdout
    assert "evaluation: building" in log
    assert "rollouts_round1: building" not in log and "rollouts_round2: building" not in log
    collected = cli("+experiment=smoke", "collect.non_candidates=mask", f"cache_dir={workdir / 'cache'}",
                    f"hydra.run.dir={workdir / 'collect_mask'}", cwd=workdir)
    log = collected.stderr + collected.stdout
    assert "rollouts_round1: building" not in log and "rollouts_round2: building" in log
    assert "return_model_round2: building" in log
