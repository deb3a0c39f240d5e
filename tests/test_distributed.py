"""DeepSpeed ZeRO on CPU (gloo): two processes give what one gives; ZeRO checkpoints resume exactly."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    assert ("pi_ref: sharded with ZeRO-3 across 2 ranks" in result.stdout + result.stderr) == (hardware == "zero3")
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


@pytest.fixture(scope="module")
def deepspeed_group():
    """A one-process gloo group, as torchrun would describe it, for DeepSpeed in this process (one per
    module: DeepSpeed keeps a reference to the group it first saw)."""
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533",
           "DS_ACCELERATOR": "cpu"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import deepspeed.comm.torch  # noqa: F401
    import torch.distributed as torch_dist

    from qsharp_exp.distributed import _skip_shm_build
    _skip_shm_build()
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.update({key: value})


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_training_killed_after_a_checkpoint_resumes_to_the_same_weights(deepspeed_group, tokenizer, tmp_path,
                                                                            monkeypatch, stage):
    import torch

    import qsharp_exp.training.return_learning as training
    from helpers import make_guide, quiet
    from qsharp_exp.config import GuideTrainConfig, HardwareConfig
    from qsharp_exp.hardware import Hardware
    from test_return_model import rollout

    hw = Hardware(HardwareConfig(zero_stage=stage))
    rollouts = [rollout(f"p{i // 2}", float(a == 5), i % 2, (a, 6, 2)) for i, a in enumerate([5, 9, 9, 5] * 16)]
    cfg = GuideTrainConfig(steps=12, batch_size=8, lr=3e-3, eval_every=6, val_fraction=0.25, checkpoint_every=4)
    reference = training.train_return_model(make_guide(tokenizer, head="v"), rollouts, cfg, 0, quiet(hw))
    real_loss, calls = training.sequence_mean_loss, {"n": 0}

    def killed_at_step_7(*args):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real_loss(*args)

    monkeypatch.setattr(training, "sequence_mean_loss", killed_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        training.train_return_model(make_guide(tokenizer, head="v"), rollouts, cfg, 0, quiet(hw), tmp_path)
    assert (tmp_path / "latest").read_text() == "global_step_4"
    resumed = training.train_return_model(make_guide(tokenizer, head="v"), rollouts, cfg, 0, quiet(hw), tmp_path)
    with reference.full_parameters(), resumed.full_parameters():  # under ZeRO-3 gathered to compare them
        for (name, a), b in zip(reference.model.named_parameters(), resumed.model.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_memory_estimate_by_hand_for_llama3_8b_with_a_1b_guide(capsys):
    from qsharp_exp.cli.memory import GIB, PAIRS, SIZES, estimate, main

    ref, guide = SIZES["meta-llama/Meta-Llama-3-8B-Instruct"], SIZES["meta-llama/Llama-3.2-1B-Instruct"]
    one = estimate(ref, guide, "gpu", 1, batch=64, tokens=1536)
    assert one["pi_ref_weights"] == pytest.approx(2 * 8.03e9 / GIB)
    kv = 64 * 1536 * (2 * 32 * 8 * 128 * 2 + 2 * 16 * 8 * 64 * 2)  # keys and values of both models, bf16
    assert one["sampling"] == pytest.approx((kv + 2 * 1.24e9) / GIB)
    assert one["guide_training"] == pytest.approx(16 * 1.24e9 / GIB)
    zero3 = estimate(ref, guide, "zero3", 4, batch=64, tokens=1536)
    assert zero3["pi_ref_weights"] == pytest.approx(one["pi_ref_weights"] / 4)
    assert zero3["guide_training"] == pytest.approx(one["guide_training"] / 4)
    zero2 = estimate(ref, guide, "zero2", 4, batch=64, tokens=1536)
    assert zero2["guide_training"] == pytest.approx((2 + 14 / 4) * 1.24e9 / GIB)
    with pytest.raises(ValueError):
        estimate(ref, guide, "gpu", 2, 64, 1536)
    big = estimate(SIZES["meta-llama/Llama-3.1-70B-Instruct"], guide, "gpu", 1, 64, 1536)
    assert big["peak"] > 80  # a 70B pi_ref does not fit one 80 GB GPU
    main(["--gpus", "2"])
    lines = capsys.readouterr().out.splitlines()
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")][1:]
    assert len(body) == len(PAIRS) * 4  # gpu on 1 GPU, zero2 / zero3 / zero3_offload on 2
    assert {r[2] for r in body if r[1] != "gpu"} == {"2"}
    one_gpu_8b = next(r for r in body if r[:2] == ["llama3_8b_instruct", "gpu"])
    assert float(one_gpu_8b[6]) == pytest.approx(one["peak"], abs=0.05)


def test_slurm_tasks_become_ranks_of_one_process_group(monkeypatch):
    from qsharp_exp.distributed import export_slurm_ranks

    slurm = {"SLURM_JOB_ID": "123", "SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
             "SLURM_JOB_NODELIST": "node[07-08]", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
             "SUBMITIT_EXECUTOR": "slurm"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(key, raising=False)
    export_slurm_ranks()
    assert {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")} == {
        "RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "MASTER_ADDR": "node07"}
    assert 20000 <= int(os.environ["MASTER_PORT"]) <= 60000 and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_a_one_task_slurm_job_runs_as_one_process_without_submitit(monkeypatch):
    from qsharp_exp import distributed

    for module in ("submitit", "submitit.helpers"):  # not installed: importing them raises ImportError
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_distributed("cpu") is distributed.SINGLE
    monkeypatch.setenv("SLURM_NTASKS", "2")  # several tasks do need it to find their hosts
    with pytest.raises(ImportError):
        distributed.init_distributed("cpu")


def test_slurm_launcher_config_composes_for_a_sweep():
    from hydra import compose, initialize_config_dir

    from qsharp_exp.__main__ import CONF_DIR

    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm", "hardware=zero3"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == 8
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")


class _RightDevice(Exception):
    """Raised by the stand-in NCCL once it has seen a tensor on the group's device (it holds no data to reduce)."""


def test_collectives_hand_nccl_tensors_on_the_ranks_gpu(monkeypatch):
    """NCCL rejects CPU tensors. No GPU here, so the group's device is 'meta' (a device without data) and a stand-in
    all_reduce applies NCCL's rule: a tensor on another device is refused as NCCL refuses it."""
    from qsharp_exp.distributed import Dist

    def nccl_all_reduce(tensor, op=None):
        if tensor.device != torch.device("meta"):
            raise RuntimeError(f"NCCL: tensors must be on the process group's GPU, got {tensor.device}")
        raise _RightDevice

    monkeypatch.setattr(torch.distributed, "all_reduce", nccl_all_reduce)
    with pytest.raises(_RightDevice):
        Dist(rank=0, world=2, device="meta").any(True)


def test_a_cuda_process_group_collects_on_the_ranks_own_gpu(monkeypatch):
    from qsharp_exp import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed.torch_dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.torch_dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.torch_dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.torch.cuda, "set_device", lambda index: None)
    assert distributed.init_distributed("cuda") == distributed.Dist(1, 2, "cuda:1")
