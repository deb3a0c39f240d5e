"""What unattended sweeps on a shared cache need: concurrent jobs build each stage once, a killed run resumes
to the same result, precision is part of the stage keys, and bad inputs stop before any work with one
message naming the key or file (docs/reliability.md)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cli import cli

SMOKE = ["+experiment=smoke", "progress=false"]
STAGES = ("pi_ref", "pi_ref_accuracy", "rollouts_round1", "return_model_round1", "rollouts_round2",
          "return_model_round2", "evaluation")


def start(*args: str, cwd: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "qsharp_exp", *args], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT)


def wait_for(predicate, timeout: float = 300.0, what: str = "") -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def results(path: Path) -> dict:
    """A run's metrics without its times and stage directories."""
    metrics = json.loads(path.read_text())
    return {k: v for k, v in metrics.items() if not k.startswith(("time_", "build_time_", "dir_"))}


def builds(*logs: Path) -> dict[str, int]:
    text = "".join(log.read_text() for log in logs)
    return {stage: text.count(f"{stage}: building") for stage in STAGES}


def test_three_jobs_started_together_on_one_cache_build_each_stage_once(tmp_path):
    args = [*SMOKE, "eval.num_samples=2", f"cache_dir={tmp_path / 'shared'}"]
    logs, jobs = [], []
    for algo in ("pi_ref", "cd", "qsharp"):
        logs.append(tmp_path / f"{algo}.log")
        jobs.append(start(*args, f"algo={algo}", f"hydra.run.dir={tmp_path / algo}", cwd=tmp_path, log=logs[-1]))
    assert [job.wait(600) for job in jobs] == [0, 0, 0], [log.read_text()[-2000:] for log in logs]
    assert builds(*logs) == {"pi_ref": 1, "pi_ref_accuracy": 1, "rollouts_round1": 1, "return_model_round1": 1,
                             "rollouts_round2": 1, "return_model_round2": 1, "evaluation": 3}
    # The same results as one job after another on a cache of their own.
    cli("-m", *SMOKE, "eval.num_samples=2", "algo=pi_ref,cd,qsharp", f"cache_dir={tmp_path / 'alone'}",
        f"hydra.sweep.dir={tmp_path / 'sequential'}", cwd=tmp_path)
    for i, algo in enumerate(("pi_ref", "cd", "qsharp")):
        assert results(tmp_path / algo / "metrics.json") == results(
            tmp_path / "sequential" / f"{i}_{algo}_eta0.1" / "metrics.json"), algo


def test_a_new_evaluation_batch_size_rebuilds_only_what_it_measures(tmp_path):
    """pi_ref's accuracy and the evaluation sample in batches of eval.batch_size; pi_ref, the roll-outs and the
    return models do not depend on it, so they are reused."""
    args = [*SMOKE, "eval.num_samples=2", f"cache_dir={tmp_path / 'cache'}"]
    logs = [tmp_path / "64.log", tmp_path / "7.log"]
    for log, batch in zip(logs, (64, 7), strict=True):
        job = start(*args, f"eval.batch_size={batch}", f"hydra.run.dir={tmp_path / str(batch)}", cwd=tmp_path, log=log)
        assert job.wait(600) == 0, log.read_text()[-2000:]
    assert builds(logs[1]) == {"pi_ref": 0, "pi_ref_accuracy": 1, "rollouts_round1": 0, "return_model_round1": 0,
                               "rollouts_round2": 0, "return_model_round2": 0, "evaluation": 1}


def test_a_paused_job_keeps_its_stage_and_a_second_job_waits_for_it(tmp_path):
    """The reproduction of the shared-cache crash: job A paused while it collects, job B (another algo)
    started on the same cache; B waits for A's stage instead of racing it, and both finish."""
    args = [*SMOKE, "task.num_train=1500", f"cache_dir={tmp_path / 'cache'}"]
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = start(*args, f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path, log=log_a)
    wait_for(lambda: "rollouts_round1: building" in log_a.read_text(), what="job A's collection")
    os.kill(a.pid, signal.SIGSTOP)
    b = start(*args, "algo=cd", f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path, log=log_b)
    try:
        wait_for(lambda: "rollouts_round1: waiting for" in log_b.read_text(), what="job B to wait")
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert (a.wait(600), b.wait(600)) == (0, 0), log_b.read_text()[-2000:]
    assert builds(log_a, log_b)["rollouts_round1"] == 1 and builds(log_a, log_b)["return_model_round1"] == 1
    assert "Traceback" not in log_a.read_text() + log_b.read_text()


def test_bf16_and_fp32_runs_get_different_stage_keys(tmp_path):
    cache = f"cache_dir={tmp_path / 'cache'}"
    cli(*SMOKE, "algo=pi_ref", cache, f"hydra.run.dir={tmp_path / 'fp32'}", cwd=tmp_path)
    bf16 = cli(*SMOKE, "algo=pi_ref", "hardware.bf16=true", cache, f"hydra.run.dir={tmp_path / 'bf16'}",
               cwd=tmp_path)
    assert "pi_ref: building" in bf16.stdout + bf16.stderr  # the fp32 pi_ref is not taken for a bf16 one
    dirs = {run: json.loads((tmp_path / run / "metrics.json").read_text())["dir_pi_ref"] for run in ("fp32", "bf16")}
    assert dirs["fp32"] != dirs["bf16"]
    inputs = json.loads((Path(dirs["bf16"]) / "inputs.json").read_text())
    assert inputs["numerics"]["bf16"] is True and inputs["numerics"]["cpu_threads"] >= 1


def stage_started(cache: Path, stage: str) -> bool:
    """Some of the stage's work is on disk: a finished batch, or a training checkpoint."""
    resume = list((cache / stage).glob("*.resume")) if (cache / stage).exists() else []
    return any(any(p.name.startswith("batch") or p.name == "latest" for p in r.rglob("*")) for r in resume)


def stage_done(cache: Path, stage: str) -> bool:
    return (cache / stage).exists() and any((cache / stage).glob("*/stage.json"))


def test_a_run_killed_in_each_resumable_stage_resumes_to_the_uninterrupted_result(tmp_path):
    args = [*SMOKE, "task.num_train=150", "task.num_test=160", "collect.batch_size=32", "eval.batch_size=32",
            "guide_train.steps=60", "guide_train.checkpoint_every=10"]
    cli(*args, f"cache_dir={tmp_path / 'whole'}", f"hydra.run.dir={tmp_path / 'whole_run'}", cwd=tmp_path)
    cache = tmp_path / "killed"
    for stage in STAGES[1:]:  # pi_ref is not resumable: it is rebuilt whole
        log = tmp_path / f"{stage}.log"
        job = start(*args, f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'killed_run'}", cwd=tmp_path, log=log)
        wait_for(lambda stage=stage, job=job: stage_started(cache, stage) or job.poll() is not None, what=stage)
        job.kill()  # SIGKILL: no clean-up at all
        job.wait()
        assert not stage_done(cache, stage), f"{stage} finished before the kill"
    cli(*args, f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'killed_run'}", cwd=tmp_path)
    assert results(tmp_path / "killed_run" / "metrics.json") == results(tmp_path / "whole_run" / "metrics.json")
    samples = [(tmp_path / run / "samples.jsonl").read_text() for run in ("killed_run", "whole_run")]
    assert samples[0] == samples[1]


def fails_cleanly(*args: str, cwd: Path) -> str:
    result = cli(*args, cwd=cwd, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr


@pytest.mark.parametrize("key", ["algo.top_k", "collect.top_k"])
def test_top_k_beyond_the_vocabulary_stops_before_pretraining(tmp_path, key):
    err = fails_cleanly(*SMOKE, f"{key}=1000", f"cache_dir={tmp_path / 'cache'}",
                        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert f"{key}=1000" in err and "vocabulary of 19 tokens" in err
    assert not (tmp_path / "cache" / "pi_ref").exists()


def test_one_sample_per_problem_stops_before_pretraining(tmp_path):
    """One sample per problem never has two rewards to tell apart: no return model could learn from it."""
    err = fails_cleanly(*SMOKE, "collect.samples_per_problem=1", f"cache_dir={tmp_path / 'cache'}",
                        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "set collect.samples_per_problem>=2" in err
    assert not (tmp_path / "cache" / "pi_ref").exists()


def test_calibrating_a_return_model_without_logits_stops_before_pretraining(tmp_path):
    err = fails_cleanly(*SMOKE, "guide_train.calibrate=true", "model.guide.distribution=mse",
                        f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "set guide_train.calibrate=false, or use bernoulli or histogram" in err
    assert not (tmp_path / "cache" / "pi_ref").exists()


def test_a_test_prompt_longer_than_the_context_stops_before_pretraining(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    row = {"problem": "What is 1 + 1?", "solution": "1 + 1 = 2.", "answer": "2"}
    (data / "gsm8k_train.jsonl").write_text("".join(json.dumps(row) + "\n" for _ in range(8)))
    long = {**row, "problem": "What is " + "1 + " * 5_000 + "1?"}  # 20,000 characters
    (data / "gsm8k_test.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(long) + "\n")
    err = fails_cleanly("task=gsm8k", "model=math_tiny", "hardware=cpu", f"task.data_dir={data}",
                        "task.num_pretrain=4", "task.num_train=4", f"cache_dir={tmp_path / 'cache'}",
                        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "exceeds the models' context" in err and "eval.max_new_tokens" in err
    assert not (tmp_path / "cache" / "pi_ref").exists()


def test_too_few_node_labels_for_the_split_sizes_is_one_message(tmp_path):
    err = fails_cleanly("task.num_nodes=5", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}",
                        cwd=tmp_path)
    assert "could not draw" in err and "task.num_nodes" in err


def test_a_cache_dir_that_is_a_file_is_one_message(tmp_path):
    (tmp_path / "file").write_text("")
    err = fails_cleanly(*SMOKE, f"cache_dir={tmp_path / 'file'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "is a file, not a directory" in err


def test_a_broken_data_file_names_its_line_without_a_traceback(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    row = {"problem": "1+1?", "solution": "2", "answer": "2"}
    (data / "gsm8k_train.jsonl").write_text(json.dumps(row) + "\n{not json\n")
    (data / "gsm8k_test.jsonl").write_text(json.dumps(row) + "\n")
    err = fails_cleanly("task=gsm8k", "model=math_tiny", "hardware=cpu", f"task.data_dir={data}",
                        f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert f"{data / 'gsm8k_train.jsonl'}, line 2: not valid JSON" in err


@pytest.mark.parametrize("content,message", [
    (b'{"problem": "1+1?", "solution": "2"}\n', "line 1: no 'answer'"),
    (b"", "holds no rows"),
    (b'{"problem": "caf\xe9", "solution": "2", "answer": "2"}\n', "line 1: not UTF-8"),
    (b'["problem"]\n', "line 1: a JSON object"),
    (b'{"problem": "1+1?", "solution": "2", "answer": "2"}\n{"problem": "6+1?", "solution": "7", "answer": "seven"}\n',
     "line 2: the answer 'seven' is not a number"),
])
def test_bad_rows_of_a_local_data_file_name_the_file_and_line(tmp_path, content, message):
    from qsharp_exp.config import UserError
    from qsharp_exp.tasks import build_task
    from qsharp_exp.tasks.math import MathDatasetConfig

    (tmp_path / "gsm8k_train.jsonl").write_bytes(content)
    (tmp_path / "gsm8k_test.jsonl").write_text('{"problem": "1+1?", "solution": "2", "answer": "2"}\n')
    with pytest.raises(UserError, match=message) as err:
        build_task(MathDatasetConfig(name="gsm8k", data_dir=str(tmp_path), num_pretrain=None, num_train=None))
    assert "gsm8k_train.jsonl" in str(err.value)


def test_a_sweep_lists_every_invalid_job_before_starting_any(tmp_path):
    err = fails_cleanly("-m", *SMOKE, "algo.eta=0,0.1,-1", "algo=cd,qsharp", f"cache_dir={tmp_path / 'cache'}",
                        f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert "4 job(s) of this sweep have config errors; none was started" in err
    listed = [line.strip().split(":")[0] for line in err.splitlines() if line.startswith("  job ")]
    assert listed == ["job 0 (algo.eta=0 algo=cd)", "job 1 (algo.eta=0 algo=qsharp)",
                      "job 4 (algo.eta=-1 algo=cd)", "job 5 (algo.eta=-1 algo=qsharp)"]
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("program", ["qsharp_exp", "qsharp_exp.cli.generate"])
def test_ctrl_c_while_a_program_imports_ends_it_with_one_line_and_no_traceback(tmp_path, program):
    job = subprocess.Popen([sys.executable, "-m", program, "--help" if program != "qsharp_exp" else "progress=false"],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.4)  # within the imports (torch and transformers take seconds)
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted."


def test_a_presets_own_sweep_is_checked_before_its_first_job(tmp_path):
    """The 70B preset sweeps algo itself (hydra.sweeper.params): each of its jobs is composed and checked."""
    err = fails_cleanly("-m", "+experiment=table_70b_llama3_70b_guide1b_math", "algo.guide_round=3",
                        f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert "3 job(s) of this sweep have config errors; none was started" in err
    listed = [line.strip().split(":")[0] for line in err.splitlines() if line.startswith("  job ")]
    assert listed == ["job 0 (algo=pi_ref)", "job 1 (algo=cd)", "job 2 (algo=qsharp)"]
    assert not (tmp_path / "sweep").exists()
