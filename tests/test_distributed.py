"""DeepSpeed ZeRO on CPU (gloo): two processes give what one gives; ZeRO checkpoints resume exactly."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import cli

pytestmark = pytest.mark.distributed
TINY = ["+experiment=smoke", "eval.num_samples=2", "pretrain.steps=600", "task.num_train=60",
        "guide_train.batch_size=16", "guide_train.steps=20", "hardware.num_threads=1"]
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    work = tmp_path_factory.mktemp("single")
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # as torchrun sets it: the same float reductions in both runs
    try:
        cli(*TINY, f"cache_dir={work / 'cache'}", f"hydra.run.dir={work / 'run'}", cwd=work)
    finally:
        os.environ.pop("OMP_NUM_THREADS") if env_threads is None else os.environ.update(OMP_NUM_THREADS=env_threads)
    return json.loads((work / "run" / "metrics.json").read_text())


@pytest.mark.skipif(shutil.which(str(TORCHRUN)) is None, reason="torchrun is not installed")
@pytest.mark.parametrize("hardware", ["zero2", "zero3"])
def test_two_ranks_under_zero_give_the_metrics_of_one_process(single_process, hardware, tmp_path):
    result = subprocess.run(
        [str(TORCHRUN), "--nproc_per_node=2", "-m", "qsharp_exp", *TINY, f"hardware={hardware}",
         "hardware.device=cpu", "hardware.bf16=false", f"cache_dir={tmp_path / 'cache'}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key, value in single_process.items():
        if key.startswith(("dir_", "time_", "build_time_")):
            continue
        if isinstance(value, float):
            assert metrics[key] == pytest.approx(value, abs=1e-6), key
        else:
            assert metrics[key] == value, key
    # Both ranks sampled, one wrote: every stage directory exists once, no partial directory is left.
    assert not list((tmp_path / "cache").glob("*/*.partial-*"))
