"""Stage directories: named by inputs, reused on rerun, never half-written."""

import pytest

from qsharp_exp.stages.cache import run_stage, stage_key


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


def test_partial_directories_of_dead_processes_are_cleared_on_the_next_build(tmp_path):
    key = stage_key({"stage": "demo", "a": 2})
    abandoned = tmp_path / "demo" / f"{key}.partial-999999999"  # no such process
    abandoned.mkdir(parents=True)
    own_other = tmp_path / "demo" / "0123456789abcdef.partial-999999999"
    own_other.mkdir()
    done = run_stage(tmp_path, "demo", {"a": 2}, lambda out: None)
    assert done.key == key and not abandoned.exists()
    assert own_other.exists()  # another key's: left for that key's next build


def test_resumable_stage_keeps_its_resume_directory_across_an_interruption(tmp_path):
    seen = []

    def build(out, resume):
        resume.mkdir(exist_ok=True)
        seen.append(sorted(p.name for p in resume.iterdir()))
        (resume / f"batch{len(seen)}").write_text("done")
        if len(seen) == 1:
            raise KeyboardInterrupt
        (out / "result.txt").write_text("ok")

    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path, "collect", {"a": 1}, build, resumable=True)
    result = run_stage(tmp_path, "collect", {"a": 1}, build, resumable=True)
    assert seen == [[], ["batch1"]]  # the second run found the first run's finished batch
    assert (result.path / "result.txt").read_text() == "ok"
    assert not result.path.with_name(f"{result.key}.resume").exists()  # cleared once complete
