"""The report command and wandb logging, on a tiny two-job sweep through the real CLI."""

import csv
import json

import pytest

from qsharp_exp.cli import report
from qsharp_exp.reporting import tables
from test_cli import cli

TINY = ["+experiment=smoke", "eval.num_samples=2", "progress=false"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    work = tmp_path_factory.mktemp("sweep")
    cli("-m", *TINY, "algo=cd,qsharp", "algo.eta=0.1,1", f"cache_dir={work / 'cache'}",
        f"hydra.sweep.dir={work / 'sweep'}", cwd=work)
    cli(*TINY, "algo=pi_ref", f"cache_dir={work / 'cache'}", f"hydra.run.dir={work / 'sweep' / 'pi_ref'}", cwd=work)
    return work / "sweep"


def test_report_writes_the_papers_table_and_both_plots_next_to_the_runs(sweep):
    assert report.main([str(sweep)]) == 0
    table = (sweep / "report.md").read_text()
    assert "| method | eta | accuracy | kl_mean | objective | rm_best_of_2 | rm_maj1@2 |" in table
    results, paired = table.split("Paired differences")
    methods = [line.split("|")[1].strip() for line in results.splitlines()
               if line.startswith("| ") and "---" not in line]
    assert methods == ["method", "pi_ref", "CD", "CD", "Q#", "Q#"]
    # Every cell of a reward or KL column is `value ± standard error`; the CSV keeps the errors apart.
    pi_ref_row = next(line for line in table.splitlines() if line.startswith("| pi_ref"))
    assert all("±" in cell for cell in pi_ref_row.split("|")[3:-1])
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert all(r["accuracy_se"] not in ("", None) and float(r["accuracy_se"]) >= 0 for r in rows)
    assert {(r["method"], r["eta"]) for r in rows} == {("pi_ref", ""), ("CD", "0.1"), ("CD", "1.0"), ("Q#", "0.1"),
                                                      ("Q#", "1.0")}
    # Each method against pi_ref, and Q# against CD at each eta, on the same problems.
    assert [line.split("|")[1:3] for line in paired.splitlines() if line.startswith("| ") and " - " in line] == [
        [" CD - pi_ref ", " 0.1 "], [" CD - pi_ref ", " 1 "], [" Q# - pi_ref ", " 0.1 "], [" Q# - pi_ref ", " 1 "],
        [" Q# - CD ", " 0.1 "], [" Q# - CD ", " 1 "]]
    for name in ("reward_vs_kl.png", "reward_vs_inverse_eta.png", "objective_vs_inverse_eta.png"):
        assert (sweep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_on_a_directory_without_runs_says_so(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 1
    assert "no metrics.json" in capsys.readouterr().err


def test_wandb_offline_run_leaves_its_files_and_a_disabled_run_none(sweep, tmp_path, monkeypatch):
    work = sweep.parent
    for mode in ("offline", "disabled"):
        run_dir = tmp_path / mode
        cli(*TINY, "algo=qsharp", "logger=wandb", f"logger.mode={mode}", f"cache_dir={work / 'cache'}",
            f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert json.loads((run_dir / "metrics.json").read_text())["algo"] == "qsharp"
    offline = list((tmp_path / "offline" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and any(offline[0].rglob("*.wandb"))
    assert not (tmp_path / "disabled" / "wandb").exists()


def test_wandb_online_without_a_key_falls_back_to_offline(sweep, tmp_path):
    work = sweep.parent
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env["HOME"] = str(tmp_path)  # no ~/.netrc, so no stored key
    result = subprocess.run([sys.executable, "-m", "qsharp_exp", *TINY, "algo=qsharp", "logger=wandb",
                             f"cache_dir={work / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "logging offline" in result.stdout + result.stderr
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_report_skips_broken_or_incomplete_runs_and_names_them(sweep, tmp_path, capsys):
    import shutil

    shutil.copytree(sweep, tmp_path / "runs", ignore=shutil.ignore_patterns("*.png", "report.*"))
    files = sorted((tmp_path / "runs").rglob("metrics.json"))
    files[0].write_text('{"task": "star_graph", "algo": "cd"')  # cut short
    lacking = json.loads(files[1].read_text())
    del lacking["kl_mean"]
    files[1].write_text(json.dumps(lacking))
    assert report.main([str(tmp_path / "runs")]) == 0
    err = capsys.readouterr().err
    assert f"skipping {files[0]}: not readable JSON" in err and f"skipping {files[1]}: it lacks kl_mean" in err
    rows = list(csv.DictReader((tmp_path / "runs" / "report.csv").open()))
    assert len(rows) == len(files) - 2


def test_a_run_with_non_finite_metrics_is_flagged_and_left_out_of_the_plots(sweep, tmp_path, capsys, monkeypatch):
    import shutil

    shutil.copytree(sweep, tmp_path / "runs", ignore=shutil.ignore_patterns("*.png", "report.*"))
    broken = sorted((tmp_path / "runs").rglob("metrics.json"))[0]
    metrics = json.loads(broken.read_text())
    broken.write_text(json.dumps({**metrics, "kl_mean": float("nan")}))  # json writes NaN, as a diverged run would
    plotted = []
    real = report.write_plots
    monkeypatch.setattr(report, "write_plots", lambda runs, out: plotted.extend(runs) or real(runs, out))
    assert report.main([str(tmp_path / "runs")]) == 0
    err = capsys.readouterr().err
    assert f"report: warning: {broken.parent} holds non-finite metrics (kl_mean)" in err
    assert plotted and all(r["_path"] != str(broken.parent) for r in plotted)


@pytest.mark.parametrize("out", ["a_file", "a_file/below"])
def test_report_out_that_cannot_be_written_is_one_line_naming_it(sweep, tmp_path, capsys, out):
    (tmp_path / "a_file").write_text("")
    assert report.main([str(sweep), "--out", str(tmp_path / out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --out {tmp_path / out} "), err
    assert "is a file" in err[0] if out == "a_file" else "cannot be written" in err[0]


def test_runs_that_differ_in_an_unshown_setting_get_their_own_rows_and_curves(sweep, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(sweep, runs, ignore=shutil.ignore_patterns("*.png", "report.*"))
    qsharp = next(p.parent for p in runs.rglob("config.json") if "qsharp_eta0.1" in str(p))
    assert json.loads((qsharp / "config.json").read_text())["seed"] == 0  # every run writes its settings
    other = runs / "lr"  # the same Q# point, as if its return model had trained at another learning rate
    shutil.copytree(qsharp, other)
    config, metrics = json.loads((other / "config.json").read_text()), json.loads((other / "metrics.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "guide_train.lr": 0.5}))
    (other / "metrics.json").write_text(json.dumps({**metrics, "dir_evaluation": "elsewhere", "accuracy": 0.0}))

    assert report.main([str(runs)]) == 0
    table = (runs / "report.md").read_text()
    assert "| method | settings | eta |" in table
    lr = json.loads((qsharp / "config.json").read_text())["guide_train.lr"]
    assert [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| Q# |")] == [
        [" Q# ", f" guide_train.lr={lr} "], [" Q# ", f" guide_train.lr={lr} "], [" Q# ", " guide_train.lr=0.5 "]]
    assert "guide_round" not in table  # CD's own default, not a difference between runs of one method
    rows = next(iter(tables.groups(tables.find_metrics([runs])).values()))
    assert {key for key in tables.series(rows) if key[0] == "qsharp"} == {
        ("qsharp", f"guide_train.lr={lr}"), ("qsharp", "guide_train.lr=0.5")}


class RecordedRun:
    """What a wandb run was sent, in order."""

    def __init__(self):
        self.logged, self.summary, self.exit_code = [], {}, None

    def log(self, row):
        assert self.exit_code is None, "logged after the run finished"
        self.logged.append(row)

    def define_metric(self, *args, **kwargs):
        pass

    def finish(self, exit_code=0):
        self.exit_code = exit_code


def test_training_curves_and_sampling_progress_are_logged_while_stages_are_built(tmp_path, monkeypatch):
    from qsharp_exp import compose_config, pipeline, tracking
    from qsharp_exp.failures import BUILDING

    recorded = RecordedRun()
    stages_when_logged = []
    original_log = recorded.log
    recorded.log = lambda row: (stages_when_logged.append(list(BUILDING)), original_log(row))
    monkeypatch.setattr(tracking, "_init", lambda *args: recorded)
    cfg = compose_config(*TINY, "logger=wandb", "logger.mode=offline", f"cache_dir={tmp_path / 'cache'}")
    BUILDING.append("a_stage_an_earlier_run_in_this_process_ended_in")  # the run starts afresh all the same
    pipeline.run(cfg, tmp_path / "run")
    keys = [set(row) for row in recorded.logged]
    during = [stage for stage, row in zip(stages_when_logged, keys, strict=True) if stage]
    assert any("return_model_round1/train_loss" in k and "return_model_round1/step" in k for k in keys)
    assert any(any(key.startswith("return_model_round1/val_acc_by_pos/") for key in k) for k in keys)
    assert any("rollouts_round1/sampled_batches" in k for k in keys) and any("pi_ref/loss" in k for k in keys)
    assert ["return_model_round1"] in during  # sent while that stage was being built, not at the end
    assert recorded.exit_code == 0 and "eval/accuracy" in set().union(*keys)
    # A rerun of the same job resumes the same wandb run, which has everything already: nothing is sent twice.
    again = RecordedRun()
    monkeypatch.setattr(tracking, "_init", lambda *args: again)
    pipeline.run(cfg, tmp_path / "rerun")
    assert again.logged == [] and again.exit_code == 0
    # Another job (its own wandb run) that reuses the stages gets their curves from the cache, once, at the end.
    other = RecordedRun()
    monkeypatch.setattr(tracking, "_init", lambda *args: other)
    pipeline.run(compose_config(*TINY, "logger=wandb", "logger.mode=offline", "algo.eta=1",
                                f"cache_dir={tmp_path / 'cache'}"), tmp_path / "other")
    curves = [row for row in other.logged if "return_model_round1/train_loss" in row]
    assert curves and len(curves) == len({row["return_model_round1/step"] for row in curves})
    assert sum("eval/accuracy" in row for row in other.logged) == 1 and other.exit_code == 0


def test_a_rerun_of_the_same_job_resumes_its_wandb_run(tmp_path):
    def offline_ids(run: str, *extra: str) -> list[str]:
        cli(*TINY, "logger=wandb", "logger.mode=offline", *extra, f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / run}", cwd=tmp_path)
        return [p.name.rsplit("-", 1)[1] for p in (tmp_path / run / "wandb").glob("offline-run-*")]

    first, rerun, other = offline_ids("first"), offline_ids("rerun"), offline_ids("other", "algo.eta=1")
    assert len(first) == 1 and first == rerun and other != first
