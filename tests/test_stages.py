"""Stage directories: named by inputs, reused on rerun, never half-written."""

import pytest

from qsharp_exp.stages import run_stage


def test_same_inputs_reuse_the_stage_and_different_inputs_build_a_new_one(tmp_path):
    calls = []

    def build(out):
        calls.append(out)
        (out / "artefact.txt").write_text("x")

    first = run_stage(tmp_path, "demo", {"a": 1}, build)
    again = run_stage(tmp_path, "demo", {"a": 1}, build)
    other = run_stage(tmp_path, "demo", {"a": 2}, build)
    assert len(calls) == 2
    assert again.reused and again.path == first.path and not first.reused
    assert other.path != first.path
    assert (first.path / "artefact.txt").read_text() == "x"
    assert (first.path / "inputs.json").exists()


def test_interrupted_stage_leaves_nothing_that_a_rerun_takes_as_done(tmp_path):
    def crash(out):
        (out / "half.txt").write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path, "demo", {"a": 1}, crash)
    assert not any((tmp_path / "demo").iterdir())
    done = run_stage(tmp_path, "demo", {"a": 1}, lambda out: (out / "full.txt").write_text("ok"))
    assert not done.reused and (done.path / "full.txt").exists() and not (done.path / "half.txt").exists()
