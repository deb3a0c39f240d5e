"""Supervised distributional learning of the return model on Algorithm 1's aggregated rollouts.

Every position t >= switch of a response is an example (x_t, y_t) -> R. Loss: per-sequence
masked mean over those positions, then batch mean. Problems whose samples all got the same reward
carry no signal about which action is better and are dropped (docs/method.md, section 2, step 4).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections import defaultdict
from pathlib import Path

import torch

from qsharp_exp.config import GuideTrainConfig, UserError
from qsharp_exp.hardware import Hardware
from qsharp_exp.models.return_model import Examples, ReturnModel
from qsharp_exp.progress import progress
from qsharp_exp.training.collect import Rollout
from qsharp_exp.training.engine import latest_step, make_trainer

log = logging.getLogger(__name__)


class NoSignalError(UserError, RuntimeError):
    """Every problem's samples got the same reward: there is nothing to learn from."""


def drop_constant_problems(rollouts: list[Rollout]) -> list[Rollout]:
    by_problem: dict[str, set[float]] = defaultdict(set)
    for r in rollouts:
        by_problem[r.problem_id].add(r.reward)
    return [r for r in rollouts if len(by_problem[r.problem_id]) > 1]


def labelled(model: ReturnModel, rollouts: list[Rollout], pad_id: int, hw: Hardware
             ) -> tuple[Examples, torch.Tensor, torch.Tensor]:
    """The rollouts' examples, the model's outputs at them, and their returns (the rollout's reward)."""
    examples = Examples.of(model.cfg.head, [(r.prompt, r.response, r.switch) for r in rollouts], pad_id)
    with hw.autocast():
        out = examples.outputs(model, hw.device)
    returns = torch.tensor([rollouts[i].reward for i in examples.rows.tolist()], device=hw.device)
    return examples, out, returns


def sequence_mean_loss(per_example: torch.Tensor, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    total = torch.zeros(batch_size, device=per_example.device).index_add(0, rows, per_example)
    count = torch.zeros(batch_size, device=per_example.device).index_add(0, rows, torch.ones_like(per_example))
    has = count > 0
    return (total[has] / count[has]).mean()


MAX_CHUNK_PADDING = 0.1  # a batch's rollouts run in chunks with at most this share of padding each


def length_chunks(lengths: list[int], max_padding: float = MAX_CHUNK_PADDING) -> list[list[int]]:
    """Indices of `lengths` sorted by length and cut into chunks, each as long as its padding (to its
    longest member) stays within `max_padding` of its slots."""
    chunks: list[list[int]] = []
    tokens = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        n = lengths[i]
        if chunks and tokens + n >= (1 - max_padding) * (len(chunks[-1]) + 1) * n:
            chunks[-1].append(i)
            tokens += n
        else:
            chunks.append([i])
            tokens = n
    return chunks


def batch_loss(model: ReturnModel, batch: list[Rollout], pad_id: int, hw: Hardware,
               max_padding: float = MAX_CHUNK_PADDING) -> torch.Tensor:
    """The batch's loss (per-sequence mean, then mean over sequences), computed chunk by chunk
    (length_chunks): the same value as one padded tensor of the whole batch, with little padding."""
    dev = hw.device
    chunks = length_chunks([len(r.prompt) + len(r.response) for r in batch], max_padding)
    if hw.dist.active and hw.cfg.zero_stage == 3:
        # Every forward gathers ZeRO-3-sharded parameters collectively: all ranks run as many chunks.
        target = max(hw.dist.gather(len(chunks)))
        while len(chunks) < target and max(map(len, chunks)) > 1:
            largest = max(range(len(chunks)), key=lambda c: len(chunks[c]))
            half = len(chunks[largest]) // 2
            chunks[largest:largest + 1] = [chunks[largest][:half], chunks[largest][half:]]
        chunks += [chunks[0]] * (target - len(chunks))  # runs again, counted once (below)
    losses, sequences, counted = [], [], set()
    for chunk in chunks:
        examples, out, returns = labelled(model, [batch[i] for i in chunk], pad_id, hw)
        loss = model.distribution.loss(out, returns)
        if id(chunk) in counted:  # a repeat that only keeps the ranks in step
            losses[0] = losses[0] + 0.0 * loss.sum()
            continue
        counted.add(id(chunk))
        losses.append(loss)
        sequences.append(torch.tensor(chunk, dtype=torch.long)[examples.rows].to(dev))
    return sequence_mean_loss(torch.cat(losses), torch.cat(sequences), len(batch))


@torch.no_grad()
def evaluate_guide(model: ReturnModel, rollouts: list[Rollout], pad_id: int, hw: Hardware, batch: int = 512):
    """Validation loss, accuracy of predicted success, and accuracy by response position.

    The accuracy by position counts pi_ref's own rollouts only (not explored ones), so that it reads
    as "does the model know the value of the action pi_ref took here", with no easy explored negatives.
    """
    model.eval()
    losses, correct, by_step = [], [], defaultdict(list)
    explored = torch.tensor([r.explored for r in rollouts])
    for start in range(0, len(rollouts), batch):
        examples, out, returns = labelled(model, rollouts[start : start + batch], pad_id, hw)
        losses.append(model.distribution.loss(out, returns).cpu())
        hit = (model.distribution.predicts_success(out).cpu() == (returns.cpu() > 0.5)).float()
        correct.append(hit)
        own = ~explored[start : start + batch][examples.rows]
        for s, h in zip(examples.steps[own].tolist(), hit[own].tolist(), strict=True):
            by_step[s].append(h)
    model.train()
    loss, acc = torch.cat(losses).mean().item(), torch.cat(correct).mean().item()
    acc_by_pos = {s: round(sum(v) / len(v), 4) for s, v in sorted(by_step.items())}
    return {"val_loss": round(loss, 5), "val_acc": round(acc, 4), "val_acc_by_pos": acc_by_pos}


def train_return_model(
    model: ReturnModel,
    rollouts: list[Rollout],
    cfg: GuideTrainConfig,
    pad_id: int,
    hw: Hardware,
    seed: int,
    show_progress: bool = True,
    checkpoints: Path | None = None,
) -> tuple[ReturnModel, list[dict], contextlib.AbstractContextManager]:
    """Trains `model`; returns (the trained module, the learning curve, a context in which the module's
    parameters are whole, for saving). With `checkpoints`, a resumable checkpoint is kept there every
    `cfg.checkpoint_every` steps and training resumes from the latest one found.

    Under several processes each rank takes its share of every batch's problems (data parallel); the
    batches themselves are drawn the same on every rank, so the run matches a single process."""
    kept = drop_constant_problems(rollouts)
    if not kept:
        raise NoSignalError(
            f"all {len(rollouts)} rollouts were dropped: on every training problem all samples got the same "
            "reward, so no return model can be learned. Use more samples per problem "
            "(collect.samples_per_problem), more or easier training problems, or a stronger pi_ref."
        )
    rng = random.Random(seed)
    problem_ids = sorted({r.problem_id for r in kept})
    rng.shuffle(problem_ids)
    val_ids = set(problem_ids[: max(1, int(cfg.val_fraction * len(problem_ids)))])
    val = [r for r in kept if r.problem_id in val_ids]
    train = [r for r in kept if r.problem_id not in val_ids] or val
    torch.manual_seed(seed)
    model.to(hw.device).train()
    # Batches hold whole problems: the samples of one problem share their prefixes and differ in the
    # actions taken, so their contrasting labels arrive together (docs/math.md compares batches of single
    # rollouts). Within a batch, rollouts run in length-sorted chunks (batch_loss), so padding stays
    # small although a problem's rollouts differ much in length.
    by_problem: dict[str, list[Rollout]] = defaultdict(list)
    for r in train:
        by_problem[r.problem_id].append(r)
    groups = list(by_problem.values())
    per_problem = max(1, len(train) // len(groups))
    dist = hw.dist
    problems_per_batch = max(1, min(len(groups), cfg.batch_size // per_problem))
    problems_per_batch = max(dist.world, problems_per_batch // dist.world * dist.world)  # equal shares per rank
    if problems_per_batch > len(groups):
        raise NoSignalError(f"only {len(groups)} training problems have variation, fewer than the {dist.world} "
                            "ranks: use fewer processes or more training problems.")
    steps = cfg.steps if cfg.epochs is None else max(1, math.ceil(cfg.epochs * len(groups) / problems_per_batch))
    warmup = max(cfg.warmup_steps, int(cfg.warmup_fraction * steps))
    trainer = make_trainer(model, hw, cfg.lr, cfg.weight_decay, warmup, steps,
                           data_parallel_batch=problems_per_batch // dist.world * per_problem)
    model = trainer.module
    curve: list[dict] = [{"kept_rollouts": len(kept), "dropped_rollouts": len(rollouts) - len(kept), "steps": steps}]
    first, running = 0, 0.0
    resume_step = latest_step(checkpoints) if checkpoints is not None else None
    if resume_step is not None:
        state = trainer.load(checkpoints, resume_step)
        first, running, curve = state["step"], state["running"], state["curve"]
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        log.info("return model: resuming from step %d (%s)", first, checkpoints)
    bar = progress(range(first, steps), total=steps, initial=first, desc="train return model",
                   enabled=show_progress and dist.is_main)
    lengths = [max(len(r.prompt) + len(r.response) for r in group) for group in groups]
    plans = {0: length_grouped_batches(lengths, problems_per_batch, seed, 0)}  # one plan per epoch, made once
    for step in bar:
        epoch, position = divmod(step, len(plans[0]))
        if epoch not in plans:
            plans = {epoch: length_grouped_batches(lengths, problems_per_batch, seed, epoch), 0: plans[0]}
        problems = [groups[i] for i in plans[epoch][position]]
        batch = [r for group in problems[dist.rank :: dist.world] for r in group]
        loss = batch_loss(model, batch, pad_id, hw)
        trainer.update(loss)
        value = _mean_over_ranks(loss.item(), dist)
        running = 0.98 * running + 0.02 * value if step else value
        if (step + 1) % cfg.eval_every == 0 or step == steps - 1:
            point = {"step": step + 1, "train_loss": round(running, 5), **evaluate_guide(model, val, pad_id, hw)}
            curve.append(point)
            if dist.is_main:
                log.info("return model step %d: %s", step + 1, point)
            bar.set_postfix(loss=f"{running:.4f}", val_acc=point["val_acc"])
        if checkpoints is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            state = {"step": step + 1, "running": running, "curve": curve,
                     "torch_rng": torch.get_rng_state().tolist()}
            trainer.save(checkpoints, step + 1, state)
    model.eval()
    return model, curve, trainer.full_parameters()


MEGABATCH = 16  # batches whose items are sorted by length together


def length_grouped_batches(lengths: list[int], per_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch of batches of `per_batch` items (problems; indices into `lengths`), drawn as a
    length-grouped sampler does: shuffle, cut into megabatches of MEGABATCH batches, sort each megabatch
    by length, cut it into batches, shuffle their order. Items of similar length share a batch, while
    each epoch still visits every item once in a random order. Deterministic in (seed, epoch), so a
    resumed or multi-rank run draws the same batches."""
    rng = random.Random(f"{seed}-epoch{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    for start in range(0, len(order), MEGABATCH * per_batch):
        mega = sorted(order[start : start + MEGABATCH * per_batch], key=lengths.__getitem__)
        chunk = [mega[i : i + per_batch] for i in range(0, len(mega), per_batch)]
        rng.shuffle(chunk)
        batches += [b for b in chunk if len(b) == per_batch]  # a short tail would break equal rank shares
    return batches or [order[:per_batch]]


def _mean_over_ranks(value: float, dist) -> float:
    return sum(dist.gather(value)) / dist.world if dist.active else value
