"""What every stage of one run shares: the config, the hardware, the task, the cache, the sampling spec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qsharp_exp.algos import AlgoKind, algo_kind
from qsharp_exp.config import Init, RunConfig, as_dict
from qsharp_exp.hardware import Hardware
from qsharp_exp.models.return_model import ReturnModel
from qsharp_exp.prompts import PromptCodec
from qsharp_exp.sampling import Sampler, SamplingSpec
from qsharp_exp.stages.cache import StageResult, run_stage
from qsharp_exp.tasks import Task, build_task

# Part of every stage's inputs. Bumped when code changes what a stage produces for the same config
# (a file layout, the random streams of sampling, the order of training batches), so that a cache
# filled by older code is never taken for this code's results. 5: checksums; roll-outs within the budget.
# 6: the base model stage (its lookup corpus), GPT-2 with a conv stem, pair-mode data. 7: base-model corpora
# (lookup, arithmetic) and their settings in the base model's inputs; standard errors in evaluation metrics.
PIPELINE_VERSION = 7


def numerics(cfg: RunConfig) -> dict[str, Any]:
    """What changes a stage's floats besides its config (docs/reliability.md): the device kind, bf16, compiled
    decoding steps, the CPU thread count (the order of a CPU matmul's sums follows it), and the torch and
    transformers versions. Not included, because tests show the same results with and without them: the
    number of ranks and the ZeRO stage (tests/test_distributed.py), CUDA graphs (replays of the same kernels,
    tests/test_decoding.py), checkpoint frequency (tests/test_return_model.py)."""
    import transformers

    cpu = cfg.hardware.device == "cpu"
    return {"device": str(cfg.hardware.device), "bf16": cfg.hardware.bf16,
            "compile_decoding": cfg.hardware.compile_decoding, "cpu_threads": torch.get_num_threads() if cpu else None,
            "torch": torch.__version__, "transformers": transformers.__version__}


@dataclass
class RunContext:
    cfg: RunConfig
    hw: Hardware
    task: Task
    root: Path  # the cache
    spec: SamplingSpec
    stages: dict[str, StageResult] = field(default_factory=dict)  # what this run built or reused, in order

    @classmethod
    def create(cls, cfg: RunConfig) -> RunContext:
        spec = SamplingSpec(cfg.eval.temperature, cfg.eval.top_p, cfg.eval.max_new_tokens, cfg.eval.paper_compat)
        return cls(cfg, Hardware(cfg.hardware), build_task(cfg.task), Path(cfg.cache_dir), spec)

    def stage(self, name: str, inputs: dict[str, Any], build: Callable[..., None], resumable: bool = False,
              directory: str | None = None) -> StageResult:
        """The stage `name` for these inputs (stages/cache.py), built unless it is in the cache already;
        kept under `directory` (default: the name)."""
        versioned = {"version": PIPELINE_VERSION, "numerics": numerics(self.cfg), **inputs}
        result = run_stage(self.root, directory or name, versioned, build, resumable=resumable, dist=self.hw.dist)
        self.stages[name] = result
        return result

    def task_inputs(self, *splits: str) -> dict:
        """The task's settings that a stage reading the problems of `splits` depends on (TaskConfig.settings_for)."""
        return self.cfg.task.settings_for(*splits)

    @property
    def sampling_inputs(self) -> dict:
        """What sampled text depends on (eval.num_samples only matters to the evaluation stage)."""
        return as_dict(self.spec)

    @cached_property
    def collect_spec(self) -> SamplingSpec:
        """The sampling of roll-ins and roll-outs: collect's settings, eval's where collect leaves one null."""
        collect = self.cfg.collect
        return replace(self.spec, **{name: getattr(collect, name) for name in ("temperature", "top_p", "max_new_tokens")
                                     if getattr(collect, name) is not None})

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
        return Sampler(pi_ref, codec, spec or self.spec, self.hw, batch_size, self.cfg.progress)

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
