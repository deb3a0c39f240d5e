"""Supervised distributional learning of the return model on Algorithm 1's aggregated rollouts.

Every position t >= switch of a response is an example (x_t, y_t) -> R. Loss: per-sequence
masked mean over those positions, then batch mean. Problems whose samples all got the same reward
carry no signal about which action is better and are dropped (docs/method.md, section 2, step 4).
"""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from qsharp_exp.calibration import calibration_summary, fit_temperature
from qsharp_exp.config import GuideTrainConfig, UserError
from qsharp_exp.hardware import Hardware
from qsharp_exp.models.return_model import Examples, ReturnModel
from qsharp_exp.progress import progress
from qsharp_exp.training.collect import Rollout
from qsharp_exp.training.engine import OptimizerPlan, Trainer, TrainingEnv, latest_step, make_trainer
from qsharp_exp.training.stopping import PlateauRule, StopReason

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
    examples = Examples.of(model.kind, [(r.prompt, r.response, r.switch) for r in rollouts], pad_id)
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
    return {"val_loss": round(loss, 5), "val_acc": round(acc, 4), "val_acc_by_pos": acc_by_pos,
            "val_count_by_pos": {s: len(v) for s, v in sorted(by_step.items())}}


@dataclass
class BatchPlan:
    """What training reads, fixed before the first step: the validation problems, the training problems in
    groups (a problem's rollouts together), how many problems a batch holds and for how many steps.

    Batches hold whole problems: the samples of one problem share their prefixes and differ in the actions
    taken, so their contrasting labels arrive together (docs/math.md compares batches of single rollouts).
    Within a batch, rollouts run in length-sorted chunks (batch_loss), so padding stays small although a
    problem's rollouts differ much in length. Under several processes each rank takes its share of every
    batch's problems; the batches are drawn the same on every rank, so the run matches a single process."""

    groups: list[list[Rollout]]  # training problems, each its rollouts
    val: list[Rollout]
    problems_per_batch: int  # a multiple of the number of ranks
    per_problem: int  # rollouts per training problem, on average
    steps: int
    seed: int
    kept: int  # rollouts of problems with variation, training and validation
    dropped: int  # rollouts of problems whose samples all got the same reward
    _epochs: dict[int, list[list[int]]] = field(default_factory=dict, repr=False)

    @classmethod
    def make(cls, rollouts: list[Rollout], cfg: GuideTrainConfig, world: int, seed: int) -> BatchPlan:
        kept = drop_constant_problems(rollouts)
        if not kept:
            raise NoSignalError(
                f"all {len(rollouts)} rollouts were dropped: on every training problem all samples got the same "
                "reward, so no return model can be learned. Use more samples per problem "
                "(collect.samples_per_problem), more or easier training problems, or a stronger pi_ref."
            )
        problem_ids = sorted({r.problem_id for r in kept})
        random.Random(seed).shuffle(problem_ids)
        held_out = max(1, int(cfg.val_fraction * len(problem_ids))) if cfg.val_fraction > 0 else 0
        val_ids = set(problem_ids[:held_out])  # val_fraction=0: none (the curve then has training loss only)
        val = [r for r in kept if r.problem_id in val_ids]
        train = [r for r in kept if r.problem_id not in val_ids] or val
        by_problem: dict[str, list[Rollout]] = defaultdict(list)
        for r in train:
            by_problem[r.problem_id].append(r)
        groups = list(by_problem.values())
        per_problem = max(1, len(train) // len(groups))
        per_batch = max(1, min(len(groups), cfg.batch_size // per_problem))
        per_batch = max(world, per_batch // world * world)  # equal shares per rank
        if per_batch > len(groups):
            raise NoSignalError(f"only {len(groups)} training problems have variation, fewer than the {world} "
                                "ranks: use fewer processes or more training problems.")
        steps = cfg.steps if cfg.epochs is None else max(1, math.ceil(cfg.epochs * len(groups) / per_batch))
        return cls(groups, val, per_batch, per_problem, steps, seed, len(kept), len(rollouts) - len(kept))

    def batch(self, step: int, rank: int, world: int) -> list[Rollout]:
        """This rank's rollouts of step `step`'s batch."""
        epoch, position = divmod(step, len(self._epoch(0)))
        problems = [self.groups[i] for i in self._epoch(epoch)[position]]
        return [r for group in problems[rank::world] for r in group]

    @cached_property
    def _lengths(self) -> list[int]:
        return [max(len(r.prompt) + len(r.response) for r in group) for group in self.groups]

    def _epoch(self, epoch: int) -> list[list[int]]:
        """One epoch's batches of problem indices, made once (the first epoch's and the current one are kept)."""
        if epoch not in self._epochs:
            batches = length_grouped_batches(self._lengths, self.problems_per_batch, self.seed, epoch)
            self._epochs = {k: v for k, v in self._epochs.items() if k == 0} | {epoch: batches}
        return self._epochs[epoch]


@torch.no_grad()
def held_out_outputs(model: ReturnModel, rollouts: list[Rollout], pad_id: int, hw: Hardware, batch: int = 512
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's outputs at every example of `rollouts` and the returns they predict (float32, on the CPU)."""
    model.eval()
    outs, returns = [], []
    for start in range(0, len(rollouts), batch):
        _, out, ret = labelled(model, rollouts[start : start + batch], pad_id, hw)
        outs.append(out.float().cpu())
        returns.append(ret.float().cpu())
    return torch.cat(outs), torch.cat(returns)


def calibrate(model: ReturnModel, val: list[Rollout], pad_id: int, hw: Hardware, fit: bool) -> dict:
    """Calibration of the model's values on the validation rollouts (ECE, Brier, reliability bins), and with
    `fit` temperature scaling: the fitted T is folded into the model (`model.temperature`) and the figures after
    it are added. Values and returns are read on [0, 1] (from [v_min, v_max])."""
    dist = model.distribution
    out, returns = held_out_outputs(model, val, pad_id, hw)
    scale = dist.v_max - dist.v_min

    def summary(outputs: torch.Tensor) -> dict:
        predicted = ((dist.mean(outputs) - dist.v_min) / scale).clamp(0, 1).tolist()
        return calibration_summary(predicted, ((returns - dist.v_min) / scale).tolist())

    result = {"before": summary(out)}
    if fit:
        t = fit_temperature(lambda inverse: dist.loss(out * inverse, returns).mean())
        model.temperature.mul_(t)
        result.update(fitted_temperature=round(t, 5), after=summary(out / t))
    result["temperature"] = round(model.temperature.item(), 5)
    model.train()
    return result


@dataclass
class TrainedReturnModel:
    model: ReturnModel
    curve: list[dict]  # the learning curve: kept/dropped counts first, then a point every eval_every steps
    trainer: Trainer
    calibration: dict = field(default_factory=dict)  # on the validation split (calibrate); empty without one

    def full_parameters(self) -> AbstractContextManager:
        """A context in which the model's parameters are whole (gathered by every rank under ZeRO-3)."""
        return self.trainer.full_parameters()

    def save(self, directory: Path) -> None:
        with self.full_parameters():
            self.model.save_pretrained(directory)


def train_return_model(model: ReturnModel, rollouts: list[Rollout], cfg: GuideTrainConfig, pad_id: int,
                       env: TrainingEnv, checkpoints: Path | None = None) -> TrainedReturnModel:
    """Trains `model` on the rollouts' problems with variation (BatchPlan). With `checkpoints`, a resumable
    checkpoint is kept there every `cfg.checkpoint_every` steps and training resumes from the latest one."""
    hw = env.hw
    plan = BatchPlan.make(rollouts, cfg, hw.dist.world, env.seed)
    torch.manual_seed(env.seed)
    model.to(hw.device).train()
    warmup = max(cfg.warmup_steps, int(cfg.warmup_fraction * plan.steps))
    trainer = make_trainer(model, hw, OptimizerPlan(cfg.lr, cfg.weight_decay, warmup, plan.steps),
                           data_parallel_batch=plan.problems_per_batch // hw.dist.world * plan.per_problem,
                           keep=cfg.keep_checkpoints)
    curve = _training_loop(trainer, plan, cfg, pad_id, env, checkpoints)
    calibration = calibrate(trainer.module, plan.val, pad_id, hw, cfg.calibrate) if plan.val else {}
    if calibration:
        log.info("return model calibration on %d validation examples: %s", calibration["before"]["examples"],
                 ", ".join(f"{when} ECE {calibration[when]['ece']:.4f} Brier {calibration[when]['brier']:.4f}"
                           for when in ("before", "after") if when in calibration)
                 + (f" (temperature {calibration['fitted_temperature']:.3f})" if cfg.calibrate else ""))
    trainer.module.eval()
    return TrainedReturnModel(trainer.module, curve, trainer, calibration)


def _training_loop(trainer: Trainer, plan: BatchPlan, cfg: GuideTrainConfig, pad_id: int, env: TrainingEnv,
                   checkpoints: Path | None) -> list[dict]:
    """The training loop, from the latest checkpoint if there is one, until the budget ends or the validation
    accuracy has stopped improving (PlateauRule); returns the learning curve, closed by why it stopped."""
    model, hw, dist = trainer.module, env.hw, env.hw.dist
    rule = PlateauRule(cfg.patience, cfg.min_delta)
    curve: list[dict] = [{"kept_rollouts": plan.kept, "dropped_rollouts": plan.dropped, "steps": plan.steps}]
    first, running = 0, 0.0
    resume_step = latest_step(checkpoints) if checkpoints is not None else None
    if resume_step is not None:
        state = trainer.load(checkpoints, resume_step)
        first, running, curve = state["step"], state["running"], state["curve"]
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        log.info("return model: resuming from step %d (%s)", first, checkpoints)
    bar = progress(range(first, plan.steps), total=plan.steps, initial=first, desc="train return model",
                   enabled=env.show_progress and dist.is_main)
    trained = first
    for step in bar:
        if rule.converged(curve):  # after the last evaluation, or on resuming from the checkpoint written there
            break
        loss = batch_loss(model, plan.batch(step, dist.rank, dist.world), pad_id, hw)
        trainer.update(loss)
        value = _mean_over_ranks(loss.item(), dist)
        running = 0.98 * running + 0.02 * value if step else value
        if (step + 1) % cfg.eval_every == 0 or step == plan.steps - 1:
            point = {"step": step + 1, "train_loss": round(running, 5),
                     **(evaluate_guide(model, plan.val, pad_id, hw) if plan.val else {})}
            curve.append(point)
            env.live(point)
            if dist.is_main:
                log.info("return model step %d: %s", step + 1, point)
            bar.set_postfix(loss=f"{running:.4f}", **({"val_acc": point["val_acc"]} if plan.val else {}))
        if checkpoints is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            state = {"step": step + 1, "running": running, "curve": curve, "torch_rng": torch.get_rng_state().tolist()}
            trainer.save(checkpoints, step + 1, state)
        trained = step + 1
    bar.close()
    reason = rule.reason(curve)
    curve.append({"stopped": reason.value, "trained_steps": trained, "budget_steps": plan.steps})
    if dist.is_main:
        log.log(logging.WARNING if reason == StopReason.budget else logging.INFO, "return model: %s", {
            StopReason.converged: f"converged after {trained} of {plan.steps} steps (no position's validation "
                                  f"accuracy rose by {cfg.min_delta} in {cfg.patience} evaluations)",
            StopReason.budget: f"still improving when its budget of {plan.steps} steps ended: more epochs "
                               "(guide_train.epochs, or warm_start_epochs for warm-started rounds) would help",
            StopReason.fixed: f"trained its budget of {plan.steps} steps (guide_train.patience=0)"}[reason])
    return curve


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
