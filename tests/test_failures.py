"""A run stopped by the machine (Ctrl-C, a full disk, a path that cannot be written) says so in one line
that names the path or the stage and the fix, and leaves nothing half-written behind."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from qsharp_exp.failures import BUILDING, blocked_output_dir, disk_error, interrupted
from qsharp_exp.files import write_json
from qsharp_exp.stages.cache import run_stage, stage_key

SMOKE = ["+experiment=smoke", "progress=false"]


def test_ctrl_c_during_a_stage_prints_one_line_naming_it_and_exits_130(tmp_path):
    log, err = tmp_path / "out.log", tmp_path / "err.log"
    # pi_ref trains for minutes here, so the signal lands inside it even on a loaded machine.
    with log.open("w") as out, err.open("w") as errors:
        job = subprocess.Popen([sys.executable, "-m", "qsharp_exp", *SMOKE, "pretrain.steps=100000",
                                f"cache_dir={tmp_path / 'c'}",
                                f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path, stdout=out, stderr=errors)
    deadline = time.time() + 300
    while "pi_ref: building" not in log.read_text():
        assert job.poll() is None and time.time() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    job.send_signal(signal.SIGINT)
    assert job.wait(timeout=120) == 130
    stderr = err.read_text()
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("interrupted while building pi_ref. Finished stages")
    assert not list((tmp_path / "c" / "pi_ref").glob("*.partial-*"))  # the half-built stage is gone


def test_a_run_directory_below_a_file_is_one_message_before_hydra_starts(tmp_path):
    (tmp_path / "a_file").write_text("")
    run_dir = tmp_path / "a_file" / "run"
    result = subprocess.run([sys.executable, "-m", "qsharp_exp", *SMOKE, f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'a_file'} is a file, not a directory" in result.stderr
    assert blocked_output_dir([f"hydra.sweep.dir={tmp_path / 'ok'}"]) is None


def test_a_lock_path_that_is_a_directory_names_the_path_and_the_fix(tmp_path):
    lock = tmp_path / "demo" / f"{stage_key({'stage': 'demo', 'a': 1})}.lock"
    lock.mkdir(parents=True)
    with pytest.raises(OSError) as raised:
        run_stage(tmp_path, "demo", {"a": 1}, lambda out: None)
    message = disk_error(raised.value)
    assert str(lock) in message and "is a directory where a file belongs: remove it" in message


@pytest.mark.parametrize("err", [OSError(errno.ENOSPC, "No space left on device", "/cache/x"),
                                 RuntimeError("Error while serializing: IoError(Os { code: 28, kind: "
                                              "StorageFull, message: \"No space left on device\" })")])
def test_a_full_disk_is_one_line_saying_so_and_that_a_rerun_resumes(err):
    BUILDING[:] = ["rollouts_round1"]
    try:
        message = disk_error(err)
    finally:
        BUILDING.clear()
    assert "while building rollouts_round1: the disk is full" in message and "rerun the same command" in message
    assert disk_error(ValueError("something else")) is None
    assert interrupted() == "interrupted. " + message.split(". ", 1)[1]


def test_a_json_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json(path, {"a": 1})

    real_fdopen = os.fdopen

    class FullDisk:
        """The file write_text opens, on a disk with no room left."""

        def __init__(self, fd, *args, **kwargs):
            self.file = real_fdopen(fd, *args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", FullDisk)
    with pytest.raises(OSError):
        write_json(path, {"a": 2})
    monkeypatch.undo()
    assert path.read_text() == '{\n  "a": 1\n}' and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_zero_without_torchrun_stops_before_any_work_naming_the_launch(tmp_path):
    alone = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "SLURM_NTASKS")}  # not under torchrun
    result = subprocess.run([sys.executable, "-m", "qsharp_exp", *SMOKE, "hardware=zero3", "hardware.device=cpu",
                             f"cache_dir={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, env=alone)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "hardware.zero_stage=3 shards work across the processes that torchrun starts" in result.stderr
    assert not (tmp_path / "c" / "pi_ref").exists()  # nothing was built first
