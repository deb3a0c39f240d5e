"""Next-token training on prompt + reference response (teacher forcing, loss on the response): pi_ref on the
task's problems, the base model on the lookup corpus."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from qsharp_exp.config import BasePretrainConfig, PretrainConfig, UserError
from qsharp_exp.hardware import Hardware
from qsharp_exp.padding import right_pad
from qsharp_exp.progress import progress
from qsharp_exp.prompts import PromptCodec
from qsharp_exp.tasks import Problem
from qsharp_exp.training.engine import OptimizerPlan, TrainingEnv, make_trainer

HELD_OUT_EVERY = 250  # steps between held-out measurements of a pretraining run that has them


@dataclass(frozen=True)
class Supervised:
    """Teacher-forced examples: (prompt ids, response ids ending in EOS) pairs, padded with `pad_id`."""

    pairs: list[tuple[list[int], list[int]]]
    pad_id: int


def pretrain(model: PreTrainedModel, examples: Supervised, cfg: PretrainConfig | BasePretrainConfig,
             env: TrainingEnv, desc: str = "pretrain pi_ref",
             held_out: Callable[[], dict[str, float]] | None = None) -> list[dict]:
    """Returns the loss curve, with `held_out()`'s figures every HELD_OUT_EVERY steps and at the end when it is
    given (how far from converged a model is)."""
    hw, pad_id = env.hw, examples.pad_id
    rng = random.Random(env.seed)
    torch.manual_seed(env.seed)
    model.to(hw.device).train()
    trainer = make_trainer(model, hw, OptimizerPlan(cfg.lr, cfg.weight_decay, cfg.warmup_steps, cfg.steps))
    curve = []
    bar = progress(range(cfg.steps), desc=desc, enabled=env.show_progress)
    for step in bar:
        batch = rng.sample(examples.pairs, min(cfg.batch_size, len(examples.pairs)))
        ids, mask, labels = _teacher_forced(batch, pad_id, hw)
        with hw.autocast():
            logits = model(input_ids=ids, attention_mask=mask).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        trainer.update(loss)
        if step % 50 == 0 or step == cfg.steps - 1:
            curve.append({"step": step, "loss": round(loss.item(), 5)})
            if held_out is not None and (step % HELD_OUT_EVERY == 0 or step == cfg.steps - 1):
                curve[-1].update(held_out())
                model.train()
            env.live(curve[-1])
            bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    return curve


def _teacher_forced(batch: list[tuple[list[int], list[int]]], pad_id: int, hw: Hardware):
    """Right-padded ids, mask, and labels that are -100 except on the responses."""
    ids, mask = right_pad([p + r for p, r in batch], pad_id)
    labels = ids.clone()
    for i, (p, _) in enumerate(batch):
        labels[i, : len(p)] = -100
    labels[mask == 0] = -100
    return ids.to(hw.device), mask.to(hw.device), labels.to(hw.device)


def supervised_examples(codec: PromptCodec, problems: list[Problem], targets: list[str], key: str) -> Supervised:
    """(prompt ids, response ids) pairs; a pair longer than the model's context is a UserError naming `key`."""
    prompts = codec.encode(problems, 0)
    examples = [(p, codec.response_ids(t)) for p, t in zip(prompts, targets, strict=True)]
    longest = max(len(p) + len(r) for p, r in examples)
    if codec.max_positions and longest > codec.max_positions:
        raise UserError(f"a pretraining example has {longest} tokens, more than {key}={codec.max_positions}: "
                        "raise it or use shorter problems.")
    return Supervised(examples, codec.pad_id)


@torch.no_grad()
def exact_matches(model: PreTrainedModel, examples: list[tuple[list[int], list[int]]], pad_id: int, hw: Hardware,
                  batch_size: int = 500, scored: list[list[int] | None] | None = None) -> list[bool]:
    """For each example: is every response token (or, where `scored[i]` is given, every one of those response
    positions) the model's top prediction, given the true prefix?"""
    model.eval()
    hits: list[bool] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        ids, mask, labels = _teacher_forced(batch, pad_id, hw)
        for i, (prompt, _) in enumerate(batch):
            positions = scored[start + i] if scored is not None else None
            if positions is not None:
                keep = torch.zeros_like(labels[i], dtype=torch.bool)
                keep[[len(prompt) + t for t in positions]] = True
                labels[i, ~keep] = -100
        with hw.autocast():
            predicted = model(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1)
        target = labels[:, 1:]
        wrong = (predicted != target) & (target != -100)
        hits += (~wrong.any(-1)).tolist()
    return hits
