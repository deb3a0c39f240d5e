"""Stage `base_model`: the model that pi_ref and the return model start from (model.pi_ref_init,
model.guide.init): a hub LM (`model.base.pretrained`, e.g. gpt2 as in the published star-graph code), or
a small causal LM pretrained here on a generic corpus (training/base_corpus.py: in-context lookup for
star-graph, calculations for math), the CPU analogue of language pretraining. It depends on the task's
vocabulary (and, for lookup, its labels), not on its problems: every star-graph shape over the same labels
reuses it, and so does every arithmetic setting with the same tokenizer."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from transformers import PreTrainedModel

from qsharp_exp.config import BasePretrainConfig, RunConfig, UserError
from qsharp_exp.config_view import replaced
from qsharp_exp.files import write_json, write_jsonl
from qsharp_exp.hardware import Hardware
from qsharp_exp.models.identity import model_identity
from qsharp_exp.models.lm import build_causal_lm
from qsharp_exp.stages.cache import stage_key
from qsharp_exp.stages.context import RunContext
from qsharp_exp.training.base_corpus import CORPORA, BaseCorpus, CorpusLine, settings_of
from qsharp_exp.training.pretrain import Supervised, exact_matches, pretrain

log = logging.getLogger(__name__)


@dataclass
class BaseModel:
    source: str  # hub id, or the directory of its weights with its tokenizer beside them
    key: str  # what later stages name it by in their inputs
    metrics: dict[str, float]  # held-out accuracy on its corpus, overall and by group (empty for a hub LM)


def load(ctx: RunContext) -> BaseModel:
    """The base model, pretrained first if it is built here and not in the cache."""
    cfg = ctx.cfg
    if cfg.model.base.pretrained is not None:
        source = cfg.model.base.pretrained
        return BaseModel(source, stage_key({"pretrained": model_identity(source, "model.base.pretrained")}), {})
    corpus = CORPORA[cfg.base_pretrain.corpus.value]
    own_seed = cfg.base_pretrain.seed is not None
    reads = [*([] if own_seed else ["seed"]), "model.base",
             *(f"base_pretrain.{name}" for name in settings_of(cfg.base_pretrain))]
    after = {"corpus_revision": corpus.revision, **corpus.task_inputs(ctx.task),
             "vocabulary": sorted(ctx.task_tokenizer.get_vocab().items())}
    stage = ctx.stage("base_model", reads, lambda cfg, out: _pretrain(ctx, cfg, corpus, out), after=after)
    metrics = json.loads((stage.path / "metrics.json").read_text())
    return BaseModel(str(stage.path / "model"), stage.key, metrics)


def _pretrain(ctx: RunContext, cfg: RunConfig, corpus: BaseCorpus, out: Path) -> None:
    tokenizer, pad = ctx.task_tokenizer, ctx.task_tokenizer.pad_token_id
    seed = cfg.seed if cfg.base_pretrain.seed is None else cfg.base_pretrain.seed  # reads `seed` only when used
    model = build_causal_lm(cfg.model.base, tokenizer, seed)
    log.info("base model: %d parameters", sum(p.numel() for p in model.parameters()))
    curve: list[dict] = []
    done = 0  # steps of the phases before
    for number, phase in enumerate(_phases(cfg.base_pretrain, corpus), 1):
        lines = corpus.lines(ctx.task, tokenizer, phase, seed)
        longest = max(len(x.prompt) + len(x.response) for x in lines)
        if longest > cfg.model.base.max_positions:
            raise UserError(f"a line of the {phase.corpus} corpus has {longest} tokens, more than "
                            f"model.base.max_positions={cfg.model.base.max_positions}: raise it or make the lines "
                            "shorter (base_pretrain.max_pairs, max_steps, max_operand).")
        held_out, lines = lines[: phase.eval_lines], lines[phase.eval_lines :]
        log.info("base model phase %d: %d steps on %d %s lines", number, phase.steps, len(lines), phase.corpus)
        measure = partial(_held_out_metrics, model, corpus, held_out, pad, ctx.hw)
        phase_curve = pretrain(model, Supervised([(x.prompt, x.response) for x in lines], pad), phase,
                               ctx.training_env(seed + number - 1), desc=f"pretrain base model ({number})",
                               held_out=measure)
        curve += [{**point, "step": done + point["step"]} for point in phase_curve]
        done += phase.steps
    # Scored on the last phase's held-out lines: the corpus the model ends on, with every kind of question.
    metrics = measure()
    log.info("base model on %d held-out lines: %s", len(held_out),
             ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    write_json(out / "metrics.json", metrics)
    write_jsonl(out / "curve.jsonl", curve)


def _held_out_metrics(model: PreTrainedModel, corpus: BaseCorpus, held_out: list[CorpusLine], pad: int,
                      hw: Hardware) -> dict[str, float]:
    hits = exact_matches(model, [(x.prompt, x.response) for x in held_out], pad, hw,
                         scored=[x.scored for x in held_out])
    return held_out_accuracy(corpus.metric, hits, [x.group for x in held_out])


def _phases(train: BasePretrainConfig, corpus: BaseCorpus) -> list[BasePretrainConfig]:
    """One phase, or the lookup curriculum: `steps` on lines that only follow chains (one hop per position),
    then `chain_end_steps` on lines where a share asks for a chain's end (several hops in one position). Mixed
    in from the first step, the chain-end lines stall a small model near chance (docs/star_graph.md). Other
    corpora have no curriculum (and do not read its settings)."""
    if "chain_end_steps" not in corpus.settings or not train.chain_end_steps:
        return [train]
    return [replaced(train, chain_end_fraction=0.0, chain_end_steps=0), replaced(train, steps=train.chain_end_steps)]


def held_out_accuracy(metric: str, hits: list[bool], groups: list[str]) -> dict[str, float]:
    """`metric`: the share of hits; `metric_<group>`: the share within each named group (lookup: by kind of
    question and number of hops, e.g. `lookup_accuracy_chain_end_hops_3`)."""
    by_group: dict[str, list[bool]] = {}
    for hit, group in zip(hits, groups, strict=True):
        if group:
            by_group.setdefault(group, []).append(hit)
    return {metric: sum(hits) / len(hits),
            **{f"{metric}_{g}": sum(h) / len(h) for g, h in sorted(by_group.items())}}
