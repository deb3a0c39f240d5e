"""Batched sampling over many prompts: the one entry point that collection, evaluation and the policy
baselines share (`Sampler.sample`).

Each batch draws from its own generator (seeded by the run's seed and the batch's index) and, with a
`checkpoint` directory, is written there as soon as it is done: an interrupted run continues from the
last finished batch and ends with exactly what an uninterrupted run with the same seed produces.
Under several processes, rank r samples the batches whose index is r modulo the number of ranks and
every rank gets all batches back in order: the samples do not depend on the number of ranks.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from transformers import PreTrainedModel

from qsharp_exp import sealing
from qsharp_exp.distributed import Dist
from qsharp_exp.files import write_json
from qsharp_exp.hardware import Hardware
from qsharp_exp.padding import left_pad
from qsharp_exp.progress import LiveLog, ignore_point, progress
from qsharp_exp.prompts import PromptCodec
from qsharp_exp.sampling.decoding import (
    UNSTEERED,
    DecodeOptions,
    PromptBatch,
    SamplingSpec,
    Steering,
    Stops,
    generate,
)

log = logging.getLogger(__name__)


@dataclass
class PaddingStats:
    """What sampling computed against what it needed: padded prompt slots and decoding row-steps."""

    prompt_slots: int = 0  # batch x longest prompt, summed over batches
    prompt_tokens: int = 0
    decode_slots: int = 0  # rows in the batch summed over the steps run
    decode_tokens: int = 0  # tokens actually generated

    def waste(self) -> float:
        return _waste(self.prompt_tokens + self.decode_tokens, self.prompt_slots + self.decode_slots)

    def prompt_waste(self) -> float:
        return _waste(self.prompt_tokens, self.prompt_slots)

    def decode_waste(self) -> float:
        return _waste(self.decode_tokens, self.decode_slots)


def _waste(used: int, slots: int) -> float:
    return 1.0 - used / slots if slots else 0.0


@dataclass
class Sampled:
    response: list[int]  # up to and including the stop token (if produced)
    kl: float


def batch_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % (2**63)


def _load_batch(path: Path, size: int) -> list[Sampled] | None:
    """A finished batch of `size` samples kept by an earlier, interrupted call; None if there is none. One that
    is damaged (cut short, of another size) or whose seal does not verify (planted or edited: sealing.py) is
    deleted, so that the batch is sampled again."""
    if not path.exists():
        return None
    why = "it is damaged"
    try:
        kept = json.loads(path.read_text())
        rows = kept["samples"]
        if not sealing.verifies(path, _canonical(rows), kept["seal"]):
            why = "its seal does not verify (not written by this user's jobs, or changed since)"
        else:
            batch = [Sampled(**row) for row in rows]
            if len(batch) == size and all(isinstance(s.response, list) and isinstance(s.kl, float) for s in batch):
                return batch
    except (ValueError, TypeError, KeyError):  # not JSON (ValueError covers UnicodeDecodeError), or of another shape
        pass
    log.warning("discarding the resume batch %s: %s; it is sampled again", path, why)
    path.unlink(missing_ok=True)
    return None


def _canonical(rows: list[dict]) -> bytes:
    return json.dumps(rows, sort_keys=True).encode()


def _save_batch(path: Path, batch: list[Sampled]) -> None:
    rows = [asdict(s) for s in batch]
    write_json(path, {"seal": sealing.seal(path, _canonical(rows)), "samples": rows})


@dataclass(frozen=True)
class Draw:
    """What one sampling call draws with: the seed of its batches' generators, what steers it (a guide, a policy,
    exploration; default: pi_ref as it is), and where its finished batches are kept so that a killed call
    resumes (default: nowhere)."""

    seed: int
    steering: Steering = UNSTEERED
    checkpoint: Path | None = None


@dataclass(frozen=True)
class Sampler:
    """What every sampling call shares: pi_ref, the codec (stop and pad tokens), how to sample, the hardware and
    the batch size, what its progress bar says and where its progress goes live. Calls pass what varies: the
    prompts and the draw."""

    pi_ref: PreTrainedModel
    codec: PromptCodec
    spec: SamplingSpec
    hw: Hardware
    batch_size: int
    show_progress: bool = True
    desc: str = "sample"
    live: LiveLog = ignore_point

    def sample(self, prompts: list[list[int]], draw: Draw, *, budgets: list[int] | None = None,
               stats: PaddingStats | None = None) -> list[Sampled]:
        """One sample per prompt, in the prompts' order, from pi_ref or what the draw's steering asks for (its
        `explore`: a list over the prompts); `budgets`: new tokens allowed per prompt (default
        spec.max_new_tokens); `stats`: adds up the padding this call computed."""
        hw, batch_size, checkpoint, steering = self.hw, self.batch_size, draw.checkpoint, draw.steering
        if checkpoint is not None:
            checkpoint.mkdir(parents=True, exist_ok=True)
        dist = hw.dist
        count = -(-len(prompts) // batch_size)
        # Batches take the prompts in order of length, so that little of a batch is padding; the samples
        # come back in the caller's order. The order depends on the lengths alone: a resume sees the same batches.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        # A sharded pi_ref needs every rank in every forward: all ranks take part in every slot of batches,
        # a rank without a batch of its own (or with it already on disk) generating a throwaway one.
        lockstep = dist if dist.active and hw.cfg.shard_pi_ref else None
        slots = range(-(-count // dist.world))
        shown = self.show_progress and dist.is_main and len(slots) > 1
        bar = progress(slots, total=len(slots), desc=self.desc, enabled=shown)
        done: dict[int, list[Sampled]] = {}
        for slot in bar:
            index = slot * dist.world + dist.rank
            saved = checkpoint / f"batch{index:06d}.json" if checkpoint is not None and index < count else None
            size = min(batch_size, len(prompts) - index * batch_size)
            finished = _load_batch(saved, size) if saved is not None else None
            if finished is not None:
                done[index] = finished
            mine = index < count and finished is None
            if not (lockstep.any(mine) if lockstep is not None else mine):
                continue
            members = order[index * batch_size : (index + 1) * batch_size] if mine else order[:1]
            generator = torch.Generator(device=hw.device).manual_seed(batch_seed(draw.seed, index))
            batch = self._batch([prompts[i] for i in members], _rows(steering, members, hw.device),
                                _rows(budgets, members, hw.device), generator, lockstep, stats if mine else None)
            if not mine:
                continue  # kept this rank in step with the others; nothing to keep
            if saved is not None:
                _save_batch(saved, batch)
            done[index] = batch
            self.live({"step": slot + 1, "sampled_batches": slot + 1, "of_batches": len(slots)})
        for part in dist.gather(done) if dist.active else []:
            done.update(part)
        by_prompt: list[Sampled] = [None] * len(prompts)  # type: ignore[list-item]  (all filled below)
        for index, batch in done.items():
            for i, sample in zip(order[index * batch_size : (index + 1) * batch_size], batch, strict=True):
                by_prompt[i] = sample
        return by_prompt

    def _batch(self, chunk: list[list[int]], steering: Steering, budget: torch.Tensor | None,
               generator: torch.Generator, lockstep: Dist | None, stats: PaddingStats | None) -> list[Sampled]:
        """One batch of prompts, left-padded, sampled in one generate call."""
        hw = self.hw
        ids, mask = left_pad(chunk, self.codec.pad_id)
        stops = Stops(torch.tensor(self.codec.stop_ids, dtype=torch.long), self.codec.pad_id, budget)
        with hw.autocast():
            gen = generate(self.pi_ref, PromptBatch(ids.to(hw.device), mask.to(hw.device), stops), self.spec,
                           generator, steering, DecodeOptions(hw.cfg.cuda_graphs, hw.cfg.compile_decoding, lockstep))
        tokens, lengths, kl = gen.tokens.cpu(), gen.lengths.cpu(), gen.kl.cpu()
        if stats is not None:
            stats.prompt_slots += ids.numel()
            stats.prompt_tokens += int(mask.sum())
            stats.decode_slots += gen.row_steps
            stats.decode_tokens += int(lengths.sum())
        return [Sampled(tokens[i, : lengths[i]].tolist(), float(kl[i])) for i in range(len(chunk))]


def _rows(per_prompt, members: list[int], device: torch.device):
    """A batch's rows of a per-prompt setting: a steering's `explore` list, or budgets, as a tensor."""
    if isinstance(per_prompt, Steering):
        explore = _rows(per_prompt.explore, members, device)
        return per_prompt if explore is None else replace(per_prompt, explore=explore)
    return None if per_prompt is None else torch.tensor([per_prompt[i] for i in members], device=device)
