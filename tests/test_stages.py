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
    key = stage_key({"stage": "demo", "a": 1})
    assert [p.name for p in (tmp_path / "demo").iterdir()] == [f"{key}.lock"]  # the lock alone, no partial
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


def _build_slowly_in_a_process(root, log, hold_s):
    """Run the stage `demo` in another process; its build appends to `log` and takes `hold_s` seconds."""
    import time

    def build(out):
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(hold_s)
        (out / "artefact.txt").write_text("x")

    run_stage(root, "demo", {"a": 1}, build)


def test_concurrent_jobs_build_a_stage_once_and_the_others_reuse_it(tmp_path):
    import multiprocessing

    log = tmp_path / "builds.log"
    context = multiprocessing.get_context("fork")
    jobs = [context.Process(target=_build_slowly_in_a_process, args=(tmp_path / "cache", log, 1.0)) for _ in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(60)
    assert [job.exitcode for job in jobs] == [0, 0, 0]
    assert log.read_text().splitlines() == ["built"]
    assert not list((tmp_path / "cache" / "demo").glob("*.partial-*"))


def test_the_lock_of_a_killed_job_is_taken_over_at_once(tmp_path):
    import multiprocessing
    import os
    import signal
    import time

    root = tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    holder = context.Process(target=_build_slowly_in_a_process, args=(root, tmp_path / "builds.log", 60.0))
    holder.start()
    while not (tmp_path / "builds.log").exists():  # it holds the lock while it builds
        time.sleep(0.05)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    started = time.perf_counter()
    done = run_stage(root, "demo", {"a": 1}, lambda out: (out / "artefact.txt").write_text("y"))
    assert time.perf_counter() - started < 5 and not done.reused
    assert (done.path / "artefact.txt").read_text() == "y"


@pytest.mark.parametrize("damage", ["zeroed", "truncated", "deleted"])
def test_a_damaged_stage_is_not_trusted_and_the_message_says_how_to_rebuild_it(tmp_path, damage):
    from qsharp_exp.stages.cache import DamagedStageError

    def build(out):
        (out / "weights.bin").write_bytes(bytes(range(256)) * 64)
        (out / "rows.jsonl").write_text('{"a": 1}\n{"a": 2}\n')

    done = run_stage(tmp_path, "demo", {"a": 1}, build)
    if damage == "zeroed":  # in place, at the same size
        (done.path / "weights.bin").write_bytes(bytes(256 * 64))
    elif damage == "truncated":  # cut at a line boundary: still valid JSON lines
        (done.path / "rows.jsonl").write_text('{"a": 1}\n')
    else:
        (done.path / "weights.bin").unlink()
    with pytest.raises(DamagedStageError, match="is damaged") as err:
        run_stage(tmp_path, "demo", {"a": 1}, build)
    assert f"rm -rf {done.path}" in str(err.value)
    import shutil

    shutil.rmtree(done.path)  # what the message says: the rerun rebuilds it
    assert not run_stage(tmp_path, "demo", {"a": 1}, build).reused


# -- a build sees only its declared inputs (config_view.py) ------------------------------------------


def _context(tmp_path):
    from qsharp_exp.config import RunConfig
    from qsharp_exp.stages.context import RunContext
    from qsharp_exp.tasks.star_graph import StarGraphConfig

    return RunContext.create(RunConfig(task=StarGraphConfig(), cache_dir=str(tmp_path)))


def test_a_build_reads_its_declared_paths_and_fails_naming_any_other(tmp_path):
    from qsharp_exp.config import CollectConfig
    from qsharp_exp.config_view import UndeclaredInput

    ctx = _context(tmp_path)
    seen = {}

    def build(cfg, out):
        seen["eta"], seen["collect"] = cfg.collect.eta, cfg.eval
        seen["progress"] = cfg.progress  # not semantic: readable without a key
        seen["context"] = ctx.cfg is cfg  # helpers reading ctx.cfg get the same view
        seen["eta_of_algo"] = cfg.algo.eta

    with pytest.raises(UndeclaredInput, match="stage demo reads algo.eta, which is not among its declared inputs"):
        ctx.stage("demo", ["collect.eta", "eval"], build)
    assert seen["eta"] == 0.1 and seen["context"] and seen["progress"] is True
    assert type(seen["collect"]).__name__ == "EvalConfig"  # a section declared whole is the config itself
    assert isinstance(ctx.cfg.collect, CollectConfig)  # the whole config again after the build


def test_a_stage_key_holds_the_values_of_its_declared_paths_only(tmp_path):
    from dataclasses import replace

    ctx = _context(tmp_path)
    first = ctx.stage("demo", ["collect.eta"], lambda cfg, out: None)
    ctx.cfg = replace(ctx.cfg, algo=replace(ctx.cfg.algo, eta=0.5))  # not read: the same stage
    assert ctx.stage("demo", ["collect.eta"], lambda cfg, out: None).key == first.key
    ctx.cfg = replace(ctx.cfg, collect=replace(ctx.cfg.collect, eta=0.5))
    assert ctx.stage("demo", ["collect.eta"], lambda cfg, out: None).key != first.key


def test_a_build_that_closes_over_a_config_section_is_refused(tmp_path):
    ctx = _context(tmp_path)
    collect = ctx.cfg.collect

    with pytest.raises(TypeError, match="closes over a CollectConfig"):
        ctx.stage("demo", ["seed"], lambda cfg, out: collect.eta)


def test_a_partly_declared_section_can_be_replaced_field_by_field_within_its_view(tmp_path):
    from qsharp_exp.config_view import UndeclaredInput, replaced

    ctx = _context(tmp_path)
    seen = {}

    def build(cfg, out):
        train = replaced(cfg.guide_train, epochs=2.0)
        seen["epochs"], seen["lr"] = train.epochs, train.lr
        seen["steps"] = train.steps

    with pytest.raises(UndeclaredInput, match="guide_train.steps"):
        ctx.stage("demo", ["guide_train.lr", "guide_train.epochs"], build)
    assert seen == {"epochs": 2.0, "lr": ctx.cfg.guide_train.lr}


def test_a_stage_rebuilt_under_other_numerics_says_which_differ(tmp_path, caplog):
    import logging

    def build(out):
        (out / "x").write_text("1")

    settings = {"version": 3, "config": {"eval.batch_size": 8}}
    run_stage(tmp_path, "demo", {**settings, "numerics": {"cpu_threads": 1, "torch": "2.13.0"}}, build)
    with caplog.at_level(logging.WARNING):
        run_stage(tmp_path, "demo", {**settings, "numerics": {"cpu_threads": 2, "torch": "2.13.0"}}, build)
        run_stage(tmp_path, "demo", {"version": 3, "config": {"eval.batch_size": 9},
                                     "numerics": {"cpu_threads": 4, "torch": "2.13.0"}}, build)
    warned = [r.getMessage() for r in caplog.records if "built again" in r.getMessage()]
    assert len(warned) == 1, warned  # the other settings' stage is no rebuild
    assert "under other numerics (cpu_threads 2 here, 1 there: hardware.num_threads=1 reuses it)" in warned[0]
