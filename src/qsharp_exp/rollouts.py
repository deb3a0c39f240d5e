"""Batched sampling over many prompts: the one entry point collection and evaluation share."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from qsharp_exp.decoding import Guidance, SamplingSpec, generate
from qsharp_exp.hardware import Hardware
from qsharp_exp.training.common import left_pad, progress


@dataclass
class Sampled:
    response: list[int]  # up to and including EOS (if produced)
    kl: float


def sample_many(
    pi_ref: PreTrainedModel,
    prompts: list[list[int]],
    spec: SamplingSpec,
    eos_id: int,
    pad_id: int,
    hw: Hardware,
    generator: torch.Generator,
    batch_size: int,
    guide: Guidance | None = None,
    explore: list[bool] | None = None,
    explore_top_k: int = 0,
    desc: str = "sample",
    show_progress: bool = True,
) -> list[Sampled]:
    out: list[Sampled] = []
    starts = range(0, len(prompts), batch_size)
    for start in progress(starts, total=len(starts), desc=desc, enabled=show_progress and len(starts) > 1):
        chunk = prompts[start : start + batch_size]
        ids, mask = left_pad(chunk, pad_id)
        rows_explore = None
        if explore is not None:
            rows_explore = torch.tensor(explore[start : start + batch_size], device=hw.device)
        with hw.autocast():
            gen = generate(
                pi_ref, ids.to(hw.device), mask.to(hw.device), spec, eos_id, pad_id, generator,
                guide=guide, explore=rows_explore, explore_top_k=explore_top_k,
            )
        tokens, lengths, kl = gen.tokens.cpu(), gen.lengths.cpu(), gen.kl.cpu()
        for i in range(len(chunk)):
            out.append(Sampled(tokens[i, : lengths[i]].tolist(), float(kl[i])))
    return out
