"""Stage `base_model`: the model that pi_ref and the return model start from (model.pi_ref_init,
model.guide.init): a hub LM (`model.base.pretrained`, e.g. gpt2 as in the published star-graph code), or
a small causal LM pretrained here on the generic lookup corpus (training/base_corpus.py), the CPU
analogue of language pretraining. It depends on the task's vocabulary, not on its problems: every
star-graph shape over the same labels reuses it."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from qsharp_exp.config import UserError, as_dict
from qsharp_exp.files import write_json, write_jsonl
from qsharp_exp.models.lm import build_causal_lm
from qsharp_exp.stages.cache import stage_key
from qsharp_exp.stages.context import RunContext
from qsharp_exp.training.base_corpus import lookup_corpus, tokens
from qsharp_exp.training.pretrain import exact_match, pretrain

log = logging.getLogger(__name__)


@dataclass
class BaseModel:
    source: str  # hub id, or the directory of its weights with its tokenizer beside them
    key: str  # what later stages name it by in their inputs
    metrics: dict[str, float]  # lookup accuracy on held-out corpus lines (empty for a hub LM)


def load(ctx: RunContext) -> BaseModel:
    """The base model, pretrained first if it is built here and not in the cache."""
    cfg = ctx.cfg
    if cfg.model.base.pretrained is not None:
        return BaseModel(cfg.model.base.pretrained, stage_key({"pretrained": cfg.model.base.pretrained}), {})
    labels = _labels(ctx)
    inputs = {"arch": as_dict(cfg.model.base), "base_pretrain": as_dict(cfg.base_pretrain), "labels": labels,
              "vocabulary": sorted(ctx.task_tokenizer.get_vocab().items()), "seed": cfg.seed}
    stage = ctx.stage("base_model", inputs, lambda out: _pretrain(ctx, labels, out))
    metrics = json.loads((stage.path / "metrics.json").read_text())
    return BaseModel(str(stage.path / "model"), stage.key, metrics)


def _labels(ctx: RunContext) -> list[str]:
    labels = getattr(ctx.task, "lookup_labels", None)
    if labels is None:
        raise UserError(f"task={ctx.cfg.task.name} has no label vocabulary for the base model's lookup corpus: set "
                        "model.base.pretrained to a pretrained LM, or model.pi_ref_init=scratch and "
                        "model.guide.init=scratch (or pi_ref).")
    return list(labels())


def _pretrain(ctx: RunContext, labels: list[str], out: Path) -> None:
    cfg, train = ctx.cfg, ctx.cfg.base_pretrain
    tokenizer = ctx.task_tokenizer
    model = build_causal_lm(cfg.model.base, tokenizer, cfg.seed)
    lines = lookup_corpus(labels, train.corpus_lines + train.eval_lines, train.max_pairs, cfg.seed)
    vocab = tokenizer.get_vocab()
    examples = [(_ids(vocab, x.prompt), _ids(vocab, x.answer) + [tokenizer.eos_token_id]) for x in lines]
    longest = max(len(p) + len(r) for p, r in examples)
    if longest > cfg.model.base.max_positions:
        raise UserError(f"a lookup line has {longest} tokens, more than model.base.max_positions="
                        f"{cfg.model.base.max_positions}: raise it or lower base_pretrain.max_pairs.")
    held_out, examples = examples[: train.eval_lines], examples[train.eval_lines :]
    log.info("base model: %d parameters, pretrained on %d lookup lines", sum(p.numel() for p in model.parameters()),
             len(examples))
    pad = tokenizer.pad_token_id
    curve = pretrain(model, examples, train, pad, ctx.hw, cfg.seed, cfg.progress, desc="pretrain base model")
    metrics = {"lookup_accuracy": exact_match(model, held_out, pad, ctx.hw)}
    log.info("base model: lookup accuracy %.3f on %d held-out lines", metrics["lookup_accuracy"], len(held_out))
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    write_json(out / "metrics.json", metrics)
    write_jsonl(out / "curve.jsonl", curve)


def _ids(vocab: dict[str, int], text: str) -> list[int]:
    """The corpus's tokens as ids: each label and separator is one token of the task's tokenizer."""
    missing = sorted({t for t in tokens(text) if t not in vocab})
    if missing:
        raise UserError(f"the task's tokenizer has no token for {', '.join(missing)}: the lookup corpus needs every "
                        "label and separator as one token; use model.base.pretrained for other tokenizers.")
    return [vocab[t] for t in tokens(text)]
