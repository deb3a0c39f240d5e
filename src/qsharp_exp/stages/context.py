"""What every stage of one run shares: the config, the hardware, the task, the cache, the sampling spec."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, is_dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qsharp_exp import config as config_module
from qsharp_exp.algos import AlgoKind, algo_kind
from qsharp_exp.config import Init, RunConfig
from qsharp_exp.config_view import ConfigView, declared_values
from qsharp_exp.failures import BUILDING
from qsharp_exp.hardware import Hardware
from qsharp_exp.models.return_model import ReturnModel
from qsharp_exp.prompts import PromptCodec
from qsharp_exp.sampling import Sampler, SamplingSpec
from qsharp_exp.stages.cache import StageResult, run_stage
from qsharp_exp.tasks import Task, build_task
from qsharp_exp.tracking import Tracker
from qsharp_exp.training.engine import TrainingEnv

# Part of every stage's inputs. Bumped when code changes what a stage produces for the same config
# (a file layout, the random streams of sampling, the order of training batches), so that a cache
# filled by older code is never taken for this code's results. 5: checksums; roll-outs within the budget.
# 6: the base model stage (its lookup corpus), GPT-2 with a conv stem, pair-mode data. 7: base-model corpora
# (lookup, arithmetic) and their settings in the base model's inputs; standard errors in evaluation metrics.
# 8: a return model's folder holds its model_type and pi_ref's tokenizer.
PIPELINE_VERSION = 8


def numerics(cfg: RunConfig) -> dict[str, Any]:
    """What changes a stage's floats besides its config (docs/reliability.md): the device kind, bf16, compiled
    decoding steps, CUDA graphs (with them decoding keeps finished rows in the batch, so its matmuls have other
    shapes; tests/test_stage_keys.py found it), the CPU thread count (the order of a CPU matmul's sums follows
    it), and the torch and transformers versions. Not included, because tests show the same results with and
    without them: the number of ranks and the ZeRO stage (tests/test_distributed.py), checkpoint frequency
    (tests/test_return_model.py)."""
    import transformers

    cpu = cfg.hardware.device == "cpu"
    return {"device": str(cfg.hardware.device), "bf16": cfg.hardware.bf16,
            "compile_decoding": cfg.hardware.compile_decoding, "cuda_graphs": cfg.hardware.cuda_graphs,
            "cpu_threads": torch.get_num_threads() if cpu else None,
            "torch": torch.__version__, "transformers": transformers.__version__}


# The eval settings that sampled text depends on (eval.num_samples only matters to the evaluation stage).
SAMPLING_READS = ("eval.temperature", "eval.top_p", "eval.max_new_tokens", "eval.paper_compat")
SAMPLED = ("temperature", "top_p", "max_new_tokens")  # what collection may set for itself


@dataclass
class RunContext:
    cfg: RunConfig  # the whole config outside a build; the stage's ConfigView while one runs
    hw: Hardware
    task: Task
    root: Path  # the cache
    stages: dict[str, StageResult] = field(default_factory=dict)  # what this run built or reused, in order
    tracker: Tracker | None = None  # the job's wandb run (rank 0, logger=wandb)

    @classmethod
    def create(cls, cfg: RunConfig) -> RunContext:
        return cls(cfg, Hardware(cfg.hardware), build_task(cfg.task), Path(cfg.cache_dir).absolute())

    def live(self, point: dict) -> None:
        """A point of the stage being built (a training step, a sampled batch), sent to the tracker now."""
        if self.tracker is not None and BUILDING:  # (stages/cache.py keeps the stack of stages being built)
            self.tracker.live(BUILDING[-1], point)

    def training_env(self, seed: int) -> TrainingEnv:
        """Where a stage's training loop runs: this run's hardware, `seed`, its progress bars and live log."""
        return TrainingEnv(self.hw, seed, self.cfg.progress, self.live)

    def stage(self, name: str, reads: Iterable[str], build: Callable[..., None], *, after: dict[str, Any] | None = None,
              resumable: bool = False, directory: str | None = None) -> StageResult:
        """The stage `name` (stages/cache.py), built unless it is in the cache already; kept under `directory`
        (default: the name). Its key is the values of the config paths in `reads` and the inputs in `after`
        (the keys of the stages it reads, what it draws from code rather than the config). `build(cfg, out)`,
        or `build(cfg, out, resume)` when resumable, gets a view of the config that holds `reads` only
        (config_view.py), and so does this context's `cfg` while it runs."""
        _check_no_captured_config(name, build)
        full = self.cfg
        reads = set(reads)
        versioned = {"version": PIPELINE_VERSION, "numerics": numerics(full),
                     "config": declared_values(full, reads), **(after or {})}
        view = ConfigView(full, name, frozenset(reads))

        def scoped(out: Path, resume: Path | None = None) -> None:
            self.cfg = view
            try:
                build(view, out, resume) if resumable else build(view, out)
            finally:
                self.cfg = full

        result = run_stage(self.root, directory or name, versioned, scoped, resumable=resumable, dist=self.hw.dist)
        self.stages[name] = result
        return result

    def task_reads(self, *splits: str) -> list[str]:
        """The task's settings that a stage reading the problems of `splits` depends on (TaskConfig.settings_for)."""
        return [f"task.{name}" for name in self.cfg.task.settings_for(*splits)]

    @property
    def spec(self) -> SamplingSpec:
        """Eval's sampling (read through the stage's view inside a build)."""
        ev = self.cfg.eval
        return SamplingSpec(ev.temperature, ev.top_p, ev.max_new_tokens, ev.paper_compat)

    @property
    def collect_spec(self) -> SamplingSpec:
        """The sampling of roll-ins and roll-outs: collect's settings, eval's where collect leaves one null."""
        collect = self.cfg.collect
        own = {name: getattr(collect, name) for name in SAMPLED if getattr(collect, name) is not None}
        ev = self.cfg.eval
        rest = {name: getattr(ev, name) for name in SAMPLED if name not in own}
        return SamplingSpec(**own, **rest, paper_compat=ev.paper_compat)

    @property
    def collect_sampling_reads(self) -> list[str]:
        """The config paths `collect_spec` reads."""
        collect = self.cfg.collect
        return [*(f"collect.{name}" for name in SAMPLED), "eval.paper_compat",
                *(f"eval.{name}" for name in SAMPLED if getattr(collect, name) is None)]

    @cached_property
    def task_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer of models built here, made once per run (for math tasks it is trained on the text)."""
        return self.task.build_tokenizer()

    @property
    def dtype(self) -> torch.dtype | None:
        """Pretrained models are loaded in bf16 when the hardware computes in bf16."""
        return torch.bfloat16 if self.cfg.hardware.bf16 else None

    def load_return_model(self, stage: StageResult) -> ReturnModel:
        return ReturnModel.from_pretrained(stage.path / "model", dtype=self.dtype).to(self.hw.device).eval()

    def sampler(self, pi_ref: PreTrainedModel, codec: PromptCodec, batch_size: int,
                spec: SamplingSpec | None = None) -> Sampler:
        """A sampler of pi_ref with `spec` (default: eval's)."""
        return Sampler(pi_ref, codec, spec or self.spec, self.hw, batch_size, self.cfg.progress, live=self.live)

    # -- which stages this run needs ------------------------------------------------------------

    @property
    def guided(self) -> bool:
        return algo_kind(self.cfg.algo.name) == AlgoKind.guidance

    @property
    def fine_tunes_policy(self) -> bool:
        return algo_kind(self.cfg.algo.name) == AlgoKind.policy

    @property
    def ranks_with_return_model(self) -> bool:
        """Q# as a reward model ranks several samples per problem; with one there is nothing to rank."""
        return self.cfg.eval.reward_model and self.cfg.eval.num_samples > 1

    @property
    def uses_return_model(self) -> bool:
        return self.guided or self.ranks_with_return_model

    @property
    def guide_round(self) -> int:
        """The round whose return model guides decoding: algo.guide_round, or the last round."""
        return self.cfg.algo.guide_round or self.cfg.collect.rounds

    @property
    def uses_base_model(self) -> bool:
        """pi_ref is fine-tuned here from it, or a return model this run needs starts from it."""
        model = self.cfg.model
        fine_tunes = model.pi_ref_init == Init.base and model.pi_ref.pretrained is None
        return fine_tunes or (model.guide.init == Init.base and self.rounds_needed > 0)

    @property
    def rounds_needed(self) -> int:
        if self.ranks_with_return_model:
            return self.cfg.collect.rounds
        return self.guide_round if self.guided else 0


# The config's sections: what a build may not close over.
CONFIG_TYPES = tuple(v for v in vars(config_module).values() if isinstance(v, type) and is_dataclass(v)
                     and v.__module__ == config_module.__name__)


def _check_no_captured_config(stage: str, build: Callable[..., None]) -> None:
    """A build that closes over a config object would read it past its view: it must take `cfg` instead."""
    for cell in build.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, CONFIG_TYPES):
            raise TypeError(f"stage {stage}: its build closes over a {type(value).__name__}; read the config "
                            "through the build's `cfg` argument, which holds the stage's declared inputs only")
