"""Next-token pretraining of pi_ref on prompt + reference response (teacher forcing, loss on the response)."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from qsharp_exp.config import PretrainConfig
from qsharp_exp.hardware import Hardware
from qsharp_exp.progress import progress
from qsharp_exp.sampling.padding import right_pad
from qsharp_exp.training.engine import make_trainer


def pretrain(
    model: PreTrainedModel,
    examples: list[tuple[list[int], list[int]]],
    cfg: PretrainConfig,
    pad_id: int,
    hw: Hardware,
    seed: int,
    show_progress: bool = True,
) -> list[dict]:
    """examples: (prompt ids, response ids ending in EOS). Returns the loss curve."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model.to(hw.device).train()
    trainer = make_trainer(model, hw, cfg.lr, cfg.weight_decay, cfg.warmup_steps, cfg.steps)
    curve = []
    bar = progress(range(cfg.steps), desc="pretrain pi_ref", enabled=show_progress)
    for step in bar:
        batch = rng.sample(examples, min(cfg.batch_size, len(examples)))
        ids, mask = right_pad([p + r for p, r in batch], pad_id)
        labels = ids.clone()
        for i, (p, _) in enumerate(batch):
            labels[i, : len(p)] = -100
        labels[mask == 0] = -100
        ids, mask, labels = ids.to(hw.device), mask.to(hw.device), labels.to(hw.device)
        with hw.autocast():
            logits = model(input_ids=ids, attention_mask=mask).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        trainer.update(loss)
        if step % 50 == 0 or step == cfg.steps - 1:
            curve.append({"step": step, "loss": round(loss.item(), 5)})
            bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    return curve
