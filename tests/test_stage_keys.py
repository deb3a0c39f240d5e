"""Stage keys are sound: a stage whose files change when one setting changes has changed its key.

For every leaf of the composed config (generated from the schema, not listed by hand), the tiny pipeline is
rebuilt with that leaf set to another valid value, and each stage that both runs are made of is compared
with the baseline. A key may change without the files changing (that costs a rebuild); the files changing
under the same key is the bug (a cache would hand out a result made under other settings).

Every stage is rebuilt from an empty cache except the two pretraining stages (most of the time), which are
reused when the leaf cannot reach them: it is not among their declared reads (a build's view of the config
answers nothing else, config_view.py) and it is not a task or hardware setting (which reach a build through
the task and the hardware objects, not through its view).
"""

from __future__ import annotations

import hashlib
import json
import logging
import types
import typing
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import torch

from qsharp_exp import pipeline
from qsharp_exp.algos import algo_names
from qsharp_exp.compose import load_run_config, validate
from qsharp_exp.config import RunConfig, UserError
from qsharp_exp.config_view import UndeclaredInput, leaf_paths, value_at
from qsharp_exp.stages.cache import CHECKSUMS, DONE
from test_config import compose_cfg

# A pipeline of seconds through every stage of Q# (base model, pi_ref, two rounds of roll-outs and return
# models, evaluation ranked by the return model). G(2,2) gives pi_ref's samples mixed rewards after a few
# steps, so the return models have something to learn. Guidance on the top token only, at an eta that keeps
# its offset small, leaves real mass outside the top-k, so what non-candidates get shows in the samples.
MICRO = ["+experiment=smoke", "task.path_length=2", "task.num_nodes=10", "task.num_train=16", "task.num_test=4",
         "base_pretrain.steps=10", "base_pretrain.corpus_lines=300", "base_pretrain.eval_lines=20",
         "pretrain.steps=50", "pretrain.batch_size=32", "pretrain.lr=5e-3", "pretrain.eval_problems=4",
         "guide_train.steps=3", "guide_train.eval_every=2",
         "eval.num_samples=2", "collect.samples_per_problem=8", "collect.top_k=1", "algo.top_k=1",
         "collect.eta=3", "algo.eta=3"]

# Leaves with no other value that this pipeline can run with the rest unchanged, and what keys them instead.
WHOLE_TASK = "task settings but the split sizes are keyed whole (TaskConfig.settings_for, tests/test_splits.py)"
HUB = "a hub id or directory, keyed by what it resolves to (tests/test_pretrained_models.py)"
LLAMA = "needs arch=llama; the architecture is keyed as a whole section"
UNVARIED = {
    "task.name": "another task has other settings; " + WHOLE_TASK,
    "task.chat_template": "needs a tokenizer with a chat template (the math tasks'); " + WHOLE_TASK,
    "task.path_length": "a longer path leaves the tiny pi_ref without one right sample to learn from; " + WHOLE_TASK,
    "model.pi_ref.pretrained": HUB, "model.guide.arch.pretrained": HUB, "model.base.pretrained": HUB,
    "model.pi_ref.n_kv_head": LLAMA, "model.guide.arch.n_kv_head": LLAMA, "model.base.n_kv_head": LLAMA,
    "model.base.arch": "llama needs model.base.conv_width=0 too; " + LLAMA,
    "base_pretrain.chain_end_steps": "needs base_pretrain.chain_end_fraction > 0 too; keyed with the corpus settings",
    "collect.mode": "pairs needs collect.rounds=1; its stage reads are declared like the others'",
    "hardware.device": "cuda: no GPU here; the device kind is part of every key (numerics)",
    "hardware.offload": "needs hardware.zero_stage=3 and DeepSpeed ranks (tests/test_distributed.py)",
    "hardware.zero_stage": "needs the ranks torchrun starts (tests/test_distributed.py: results equal one process)",
    "logger.entity": "a wandb entity: no stage reads the logger (NON_SEMANTIC)",
    "logger.group": "a wandb group: no stage reads the logger (NON_SEMANTIC)",
}
OUTPUT_ONLY = ("inputs.json", DONE, CHECKSUMS)  # a stage's record of its own key and build time


def stage_files(directory: Path, cache: Path) -> str:
    """A digest of what a stage wrote (not its record of the key that named it), with the cache's location
    (which a return model's config names its start by) taken out."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in OUTPUT_ONLY):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(path.read_bytes().replace(str(cache).encode(), b"<cache>"))
    return digest.hexdigest()


def run_stages(cfg: RunConfig, root: Path, reuse: dict[str, Path] | None = None) -> dict[str, tuple[str, str]]:
    """{stage: (key, digest of its files)} of one run from an empty cache, but for the stage directories in
    `reuse` (stage name -> a finished directory of another cache), which it starts with."""
    cache = root / "cache"
    for name, directory in (reuse or {}).items():
        (cache / name).mkdir(parents=True)
        (cache / name / directory.name).symlink_to(directory)
    threads = torch.get_num_threads()
    try:
        metrics = pipeline.run(replace(cfg, cache_dir=str(cache)), root / "run")
    finally:
        torch.set_num_threads(threads)  # hardware.num_threads sets it for the process: not for the next run
    stages = {}
    for name, value in metrics.items():
        if name.startswith("dir_"):
            directory = Path(value)
            stages[name[4:]] = (directory.name, stage_files(directory, cache))
    return stages


PRETRAINING = ("base_model", "pi_ref")
OUTSIDE_VIEWS = ("task.", "hardware.")  # read through the task and hardware objects


def declared(baseline_root: Path, stage: str) -> list[str]:
    """The config paths a baseline stage declares (the `config` part of its key)."""
    (inputs,) = (baseline_root / "cache" / stage).glob("*/inputs.json")
    return list(json.loads(inputs.read_text())["config"])


def numerics(run_root: Path) -> dict:
    """The numerics part of the key of the run's evaluation (built by the run itself, never reused)."""
    (inputs,) = (run_root / "cache" / "evaluation").glob("*/inputs.json")
    return json.loads(inputs.read_text())["numerics"]


def covers(paths: list[str], path: str) -> bool:
    return any(path == p or path.startswith(f"{p}.") or p.startswith(f"{path}.") for p in paths)


def unreachable(path: str, baseline_root: Path) -> dict[str, Path]:
    """The baseline's pretraining stages that the leaf `path` cannot reach (see the module's docstring)."""
    if path.startswith(OUTSIDE_VIEWS):
        return {}
    reuse = {}
    for name in PRETRAINING:
        if covers(declared(baseline_root, name), path):
            break  # reached: so are the stages after it
        (directory,) = (baseline_root / "cache" / name).glob("*/stage.json")
        reuse[name] = directory.parent
    return reuse


def with_leaf(cfg: Any, path: str, value: Any) -> Any:
    """`cfg` with the leaf at `path` set to `value`, every section on the way rebuilt (so checked) again."""
    head, _, rest = path.partition(".")
    if not rest:
        return replace(cfg, **{head: value})
    return replace(cfg, **{head: with_leaf(getattr(cfg, head), rest, value)})


def _annotation(cfg: Any, path: str) -> Any:
    *parents, name = path.split(".")
    owner = value_at(cfg, ".".join(parents)) if parents else cfg
    hints = typing.get_type_hints(type(owner))
    return hints[name]


def alternatives(cfg: RunConfig, path: str) -> list[Any]:
    """Other values for a leaf, most likely valid first: from its current value and its declared type."""
    value = value_at(cfg, path)
    return [other for other in _candidates(cfg, path, value) if other != value]


def _candidates(cfg: RunConfig, path: str, value: Any) -> list[Any]:
    if path == "algo.name":
        return [name for name in algo_names() if name != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, Enum):
        return [member for member in type(value) if member != value]
    if isinstance(value, int):
        return [value + 1, value * 2, value - 1]
    if isinstance(value, float):
        return [value * 2 if value else 0.5, value / 2, value + 0.1]
    if isinstance(value, str):
        return [f"{value}_other"]
    if isinstance(value, list):
        return [[*value, "other"]]
    if value is None:
        declared = _annotation(cfg, path)
        kinds = set(typing.get_args(declared)) if isinstance(declared, types.UnionType) else {declared}
        if int in kinds:
            return [16, 2, 1]
        if float in kinds:
            return [0.5, 1.0, 2.0]
    return []


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> tuple[RunConfig, dict[str, tuple[str, str]]]:
    logging.disable(logging.INFO)
    cfg = load_run_config(compose_cfg(*MICRO, "progress=false"))
    root = tmp_path_factory.mktemp("baseline")
    stages = run_stages(cfg, root)
    assert len(stages) == 8, stages  # base model, pi_ref, its accuracy, 2 x (roll-outs, return model), evaluation
    yield cfg, stages, root
    logging.disable(logging.NOTSET)


def test_the_tiny_pipeline_writes_the_same_files_from_an_empty_cache(baseline, tmp_path):
    """Without it, a changed digest below could mean noise instead of an unsound key."""
    cfg, stages, _ = baseline
    assert run_stages(cfg, tmp_path) == stages


@pytest.mark.slow  # minutes: `make test-slow`
def test_every_stage_whose_files_change_with_a_setting_changes_its_key(baseline, tmp_path):
    cfg, stages, root = baseline
    unsound, unvaried, varied = [], [], 0
    for path in leaf_paths(cfg):  # the non-semantic ones too: they must change no stage's files at all
        for value in alternatives(cfg, path):
            try:
                changed = with_leaf(cfg, path, value)
                validate(changed)
                other = run_stages(changed, tmp_path / f"{path}={value}", unreachable(path, root))
            except UndeclaredInput:
                raise
            except (UserError, ValueError):  # not a valid value here (a bad config, no signal to learn)
                continue
            varied += 1
            for name in stages.keys() & other.keys():
                (key, files), (other_key, other_files) = stages[name], other[name]
                if key == other_key and files != other_files:
                    unsound.append(f"{name}: its files change with {path}={value!r}, its key does not")
            # Only the hardware changes the numerics: otherwise a run left the process changed (a thread count),
            # every later key would differ from the baseline's, and the comparisons above would prove nothing.
            if not path.startswith("hardware.") and numerics(tmp_path / f"{path}={value}") != numerics(root):
                unsound.append(f"the numerics of the run with {path}={value!r} differ from the baseline's")
            break
        else:
            unvaried.append(path)
    assert not unsound, "\n".join(unsound)
    assert sorted(unvaried) == sorted(UNVARIED), f"leaves without a valid other value: {sorted(unvaried)}"
    assert varied > 100
