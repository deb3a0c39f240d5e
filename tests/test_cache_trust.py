"""A shared cache cannot run code or fake results: checkpoints load without pickle code and only with a valid
seal, resume batches are sealed, and no cache entry is followed through a symbolic link."""

import json
import logging
import os
import pickle
import stat

import pytest
import torch

from helpers import sampler
from qsharp_exp import sealing
from qsharp_exp.config import HardwareConfig, UserError
from qsharp_exp.files import write_text
from qsharp_exp.hardware import Hardware
from qsharp_exp.sampling import Draw
from qsharp_exp.stages.cache import run_stage, stage_key
from qsharp_exp.training.engine import OptimizerPlan, latest_step, make_trainer


class Marker:
    """A pickle payload that, when unpickled, leaves a file behind (what a planted exploit would run)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def trainer(keep=2):
    model = torch.nn.Linear(3, 2)
    return make_trainer(model, Hardware(HardwareConfig()), OptimizerPlan(lr=1e-2, weight_decay=0.0, warmup_steps=1,
                                                                         total_steps=10), keep=keep)


def test_a_planted_pickle_in_a_checkpoint_never_runs(tmp_path):
    resume = tmp_path / "abc.resume"
    trainer().save(resume, 4, {"step": 4})
    marker = tmp_path / "payload_ran"
    state = resume / "global_step_4" / "state.pt"
    state.write_bytes(pickle.dumps({"model": Marker(marker)}))
    assert latest_step(resume) is None  # the seal no longer verifies: not offered for a resume
    # Even resealed (as by a job holding the secret), the loader unpickles tensors and containers only.
    seal = sealing.seal(state.parent, sealing.tree_contents(state.parent))
    (resume / "global_step_4.seal").write_text(seal)
    assert latest_step(resume) == 4
    with pytest.raises(pickle.UnpicklingError):
        trainer().load(resume, 4)
    assert not marker.exists()


def test_a_sealed_checkpoint_resumes_and_only_the_newest_are_kept(tmp_path):
    resume = tmp_path / "abc.resume"
    first = trainer(keep=2)
    first.update(first.module(torch.ones(4, 3)).square().sum())  # optimizer state to save
    for step in (2, 4, 6):
        first.save(resume, step, {"step": step})
    assert sorted(p.name for p in resume.glob("global_step_*") if p.is_dir()) == ["global_step_4", "global_step_6"]
    assert latest_step(resume) == 6
    second = trainer()
    assert second.load(resume, 6) == {"step": 6}
    assert second.optimizer.state_dict()["state"][0]["step"] == 1
    assert all(torch.equal(a, b) for a, b in zip(first.module.state_dict().values(),
                                                  second.module.state_dict().values(), strict=True))


def test_a_checkpoint_from_another_secret_is_not_resumed(tmp_path, monkeypatch, caplog):
    resume = tmp_path / "abc.resume"
    trainer().save(resume, 2, {"step": 2})
    monkeypatch.setenv(sealing.SECRET_ENV, "someone else")
    with caplog.at_level(logging.WARNING):
        assert latest_step(resume) is None
    assert "seal does not verify" in caplog.text


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    root = tmp_path / "cache"
    key = stage_key({"stage": "demo", "a": 1})
    (root / "demo").mkdir(parents=True)
    (root / "demo" / f"{key}.lock").symlink_to(precious)
    with pytest.raises(UserError, match="symbolic link"):
        run_stage(root, "demo", {"a": 1}, lambda out: (out / "x").write_text("1"))
    assert precious.read_text() == "keep me"


@pytest.mark.parametrize("where", ["resume itself", "a file inside resume"])
def test_a_symlinked_resume_entry_is_refused_and_its_target_untouched(tmp_path, where):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "batch000000.json").write_text("not a batch")
    root = tmp_path / "cache"
    key = stage_key({"stage": "demo", "a": 1})
    resume = root / "demo" / f"{key}.resume"
    resume.parent.mkdir(parents=True)
    if where == "resume itself":
        resume.symlink_to(outside, target_is_directory=True)
    else:
        resume.mkdir()
        (resume / "batch000000.json").symlink_to(outside / "batch000000.json")
    built = []
    with pytest.raises(UserError, match="symbolic link"):
        run_stage(root, "demo", {"a": 1}, lambda out, res: built.append(res), resumable=True)
    assert not built
    assert (outside / "batch000000.json").read_text() == "not a batch"


def test_an_abandoned_partial_that_is_a_symlink_is_unlinked_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data").write_text("keep me")
    root = tmp_path / "cache"
    key = stage_key({"stage": "demo", "a": 1})
    (root / "demo").mkdir(parents=True)
    dead = root / "demo" / f"{key}.partial-999999999"  # no such process
    dead.symlink_to(outside, target_is_directory=True)
    run_stage(root, "demo", {"a": 1}, lambda out: (out / "x").write_text("1"))
    assert not dead.is_symlink() and (outside / "data").read_text() == "keep me"


def test_writing_over_a_symlink_replaces_the_link_and_never_writes_its_target(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    path = tmp_path / "latest"
    path.symlink_to(precious)
    (tmp_path / f".latest.partial-{os.getpid()}").symlink_to(precious)  # a planted name for the partial file
    write_text(path, "global_step_3")
    assert precious.read_text() == "keep me"
    assert not path.is_symlink() and path.read_text() == "global_step_3"


def test_a_planted_resume_batch_is_discarded_and_sampled_again(pi_ref, tokenizer, tiny_task, tmp_path, caplog):
    prompts = [tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in tiny_task.problems("test")[:6]]
    fresh = sampler(pi_ref, tokenizer, batch_size=4).sample(prompts, Draw(3))
    kept = tmp_path / "0123.resume"
    sampler(pi_ref, tokenizer, batch_size=4).sample(prompts, Draw(3, checkpoint=kept))
    batch = kept / "batch000000.json"
    saved = json.loads(batch.read_text())
    # A perfect-looking batch (every response the stop token, KL 0) with the old seal or none at all.
    forged = [{"response": [tokenizer.eos_token_id], "kl": 0.0} for _ in saved["samples"]]
    for claimed in (saved["seal"], None):
        batch.write_text(json.dumps({"seal": claimed, "samples": forged}))
        with caplog.at_level(logging.WARNING):
            again = sampler(pi_ref, tokenizer, batch_size=4).sample(prompts, Draw(3, checkpoint=kept))
        assert again == fresh
        assert "seal does not verify" in caplog.text
        caplog.clear()


def test_a_valid_resume_batch_moved_to_another_position_does_not_verify(pi_ref, tokenizer, tiny_task, tmp_path):
    prompts = [tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in tiny_task.problems("test")[:8]]
    kept = tmp_path / "0123.resume"
    fresh = sampler(pi_ref, tokenizer, batch_size=4).sample(prompts, Draw(3, checkpoint=kept))
    (kept / "batch000001.json").write_bytes((kept / "batch000000.json").read_bytes())
    assert sampler(pi_ref, tokenizer, batch_size=4).sample(prompts, Draw(3, checkpoint=kept)) == fresh


def test_the_cache_secret_is_created_once_and_readable_by_its_owner_only(tmp_path, monkeypatch):
    monkeypatch.delenv(sealing.SECRET_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    first = sealing.seal(tmp_path / "x.resume" / "a", b"data")
    path = sealing.secret_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sealing._secret_from_file.cache_clear()
    assert sealing.seal(tmp_path / "x.resume" / "a", b"data") == first  # read back, not made anew
    monkeypatch.setenv(sealing.SECRET_ENV, "shared by the sweep")
    assert sealing.seal(tmp_path / "x.resume" / "a", b"data") != first
