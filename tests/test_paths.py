"""Paths that work from anywhere: a relative cache_dir is the launch directory's, whatever hydra.job.chdir says,
and a run's metrics.json names its stages by absolute paths that the loaders and export_guide use."""

import json
import shutil
import subprocess
import sys

from test_cli import cli

LOAD = """
import json, sys, qsharp_exp
metrics = json.load(open(sys.argv[1]))
pi_ref, tokenizer = qsharp_exp.load_pi_ref(metrics)
guide = qsharp_exp.load_guide(metrics)
print(type(pi_ref).__name__, len(tokenizer), guide.vocab_size)
"""


def test_runs_that_change_directory_share_the_cache_and_their_paths_work_from_elsewhere(tmp_path):
    launch, elsewhere = tmp_path / "launch", tmp_path / "elsewhere"
    launch.mkdir()
    elsewhere.mkdir()
    runs = []
    for name in ("first", "second"):
        result = cli("+experiment=smoke", "progress=false", "eval.num_samples=2", "hydra.job.chdir=true",
                     f"hydra.run.dir=runs/{name}", cwd=launch)
        runs.append(result.stdout + result.stderr)
    assert (launch / ".qsharp_cache" / "pi_ref").is_dir()
    assert not (launch / "runs" / "first" / ".qsharp_cache").exists()
    assert " building " not in runs[1] and "evaluation: reusing" in runs[1]
    metrics_file = launch / "runs" / "first" / "metrics.json"
    dirs = {k: v for k, v in json.loads(metrics_file.read_text()).items() if k.startswith("dir_")}
    assert dirs and all(v.startswith(str(launch / ".qsharp_cache")) for v in dirs.values()), dirs

    loaded = subprocess.run([sys.executable, "-c", LOAD, str(metrics_file)], cwd=elsewhere, capture_output=True,
                            text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    name, vocab, guide_vocab = loaded.stdout.split()[-3:]
    assert vocab == guide_vocab
    export = [sys.executable, "-m", "qsharp_exp.cli.export_guide", str(launch / "runs" / "first")]
    exported = subprocess.run([*export, "--out", "guide"], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (elsewhere / "guide" / "config.json").is_file()

    shutil.rmtree(launch / ".qsharp_cache")
    gone = subprocess.run([*export, "--out", "again"], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert gone.returncode == 1 and "Traceback" not in gone.stderr
    assert gone.stderr.strip().splitlines() == [
        f"error: the run's return_model_round2 folder {dirs['dir_return_model_round2']} is not there; if its cache "
        "was deleted, rerun the run's command to rebuild it (python -m qsharp_exp with the overrides in its "
        ".hydra/overrides.yaml)."]
