"""Stage `pi_ref`: a pretrained reference model (hub id or path), or one trained here by next-token training
on the task's reference responses, from random init or from the base model (model.pi_ref_init)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from qsharp_exp.config import Init, RunConfig
from qsharp_exp.config_view import section
from qsharp_exp.files import write_json, write_jsonl
from qsharp_exp.metrics import evaluate
from qsharp_exp.models.identity import model_identity
from qsharp_exp.models.lm import build_causal_lm, load_config, load_pretrained_lm, load_tokenizer
from qsharp_exp.prompts import COVERAGE_SAMPLE, PromptCodec, check_top_k, checked_prompts, context_length
from qsharp_exp.sampling import Draw
from qsharp_exp.stages.base_model import BaseModel
from qsharp_exp.stages.cache import stage_key
from qsharp_exp.stages.context import SAMPLING_READS, RunContext
from qsharp_exp.training.engine import shard_for_inference
from qsharp_exp.training.pretrain import pretrain, supervised_examples

log = logging.getLogger(__name__)


@dataclass
class PiRef:
    model: PreTrainedModel
    codec: PromptCodec
    key: str  # what later stages name it by in their inputs
    source: str  # hub id or directory of its weights
    metrics: dict[str, float]  # accuracy after pretraining here (empty for a pretrained pi_ref)


def load(ctx: RunContext, base: BaseModel | None) -> PiRef:
    """pi_ref on this rank's device, built first if it is to be pretrained here and is not in the cache;
    `base`: the base model (needed when model.pi_ref_init=base)."""
    source = ctx.cfg.model.pi_ref.pretrained
    if source is not None:
        model = load_pretrained_lm(source, "model.pi_ref.pretrained", ctx.dtype)
        tokenizer = load_tokenizer(source, "model.pi_ref.pretrained")
        key = stage_key({"pretrained": model_identity(source, "model.pi_ref.pretrained")})
        return PiRef(_place(ctx, model), _codec(ctx, tokenizer, model), key, source, {})
    cfg = ctx.cfg
    start = base if cfg.model.pi_ref_init == Init.base else None
    if cfg.model.pi_ref_init == Init.base and base is None:
        raise ValueError("model.pi_ref_init=base: pass the base model (stages/base_model.load)")
    reads = ["seed", *section(cfg, "pretrain", without=("eval_problems",)), *ctx.task_reads("pretrain"),
             *([] if start else ["model.pi_ref"])]
    stage = ctx.stage("pi_ref", reads, lambda cfg, out: _pretrain(ctx, cfg, start, out),
                      after={"init": start.key if start else None})
    path = stage.path / "model"
    model = _place(ctx, AutoModelForCausalLM.from_pretrained(path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    # Its accuracy is a stage of its own, so that how it is measured (batch size, sampling) keys the measurement
    # only, never pi_ref and what is built on it.
    measured = ctx.stage("pi_ref_accuracy", ["seed", "pretrain.eval_problems", "eval.batch_size", *SAMPLING_READS,
                                             *ctx.task_reads("pretrain", "test")],
                         lambda cfg, out, resume: _measure(ctx, cfg, model, tokenizer, out, resume),
                         after={"pi_ref": stage.key}, resumable=True)
    metrics = json.loads((measured.path / "metrics.json").read_text())
    return PiRef(model, _codec(ctx, tokenizer, model), stage.key, str(path), metrics)


def check_before_work(ctx: RunContext) -> None:
    """What pi_ref's tokenizer and context decide, checked before anything is built: the tokenizer represents
    the task's text, every prompt a stage samples after leaves room for the tokens it samples, and the guide's
    top-k fits the vocabulary."""
    tokenizer = _planned_tokenizer(ctx)  # loaded once (a hub tokenizer may be fetched)
    if ctx.uses_return_model:
        for key, top_k in (("algo.top_k", ctx.cfg.algo.top_k), ("collect.top_k", ctx.cfg.collect.top_k)):
            check_top_k(top_k, len(tokenizer), key)
    codec = PromptCodec.planned(tokenizer, ctx.cfg.task.chat_template, _planned_context(ctx))
    targets = [ctx.task.target(p) for split in ("train", "test") for p in ctx.task.problems(split)[:COVERAGE_SAMPLE]]
    codec.check_covers(targets, _tokenizer_key(ctx))  # what training and pretraining feed it
    sampled = [("test", "eval.max_new_tokens", ctx.spec.max_new_tokens)]
    if ctx.cfg.model.pi_ref.pretrained is None:  # its accuracy on its pretraining problems
        sampled.append(("pretrain", "eval.max_new_tokens", ctx.spec.max_new_tokens))
    if ctx.rounds_needed:  # roll-outs
        key = "collect.max_new_tokens" if ctx.cfg.collect.max_new_tokens is not None else "eval.max_new_tokens"
        sampled.append(("train", key, ctx.collect_spec.max_new_tokens))
    if ctx.fine_tunes_policy:  # the policy samples its training problems as evaluation does
        sampled.append(("train", "eval.max_new_tokens", ctx.spec.max_new_tokens))
    for split, key, tokens in sampled:
        checked_prompts(codec, ctx.task.problems(split), tokens, key, _tokenizer_key(ctx))


def _pretrain(ctx: RunContext, cfg: RunConfig, start: BaseModel | None, out: Path) -> None:
    """Next-token training on the pretraining problems, from random init or from `start`."""
    task = ctx.task
    if start is None:
        tokenizer = ctx.task_tokenizer
        model = build_causal_lm(cfg.model.pi_ref, tokenizer, cfg.seed)
        key = "model.pi_ref.max_positions"
    else:
        tokenizer = load_tokenizer(start.source, "model.base.pretrained")
        model = load_pretrained_lm(start.source, "model.base.pretrained", None)
        key = "model.base.max_positions"
    codec = PromptCodec.for_model(tokenizer, model, cfg.task.chat_template)
    problems = task.problems("pretrain")
    examples = supervised_examples(codec, problems, [task.target(x) for x in problems], key)
    curve = pretrain(model, examples, cfg.pretrain, ctx.training_env(cfg.seed))
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    write_jsonl(out / "curve.jsonl", curve)


def _measure(ctx: RunContext, cfg: RunConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
             out: Path, resume: Path) -> None:
    """pi_ref's accuracy on (at most pretrain.eval_problems of) its pretraining problems and the test problems;
    finished batches are kept under `resume`."""
    codec = PromptCodec.for_model(tokenizer, model, cfg.task.chat_template)
    sampler = ctx.sampler(model, codec, cfg.eval.batch_size)
    metrics = {}
    for split in ("pretrain", "test"):
        problems = ctx.task.problems(split)[: cfg.pretrain.eval_problems]
        result, _ = evaluate(ctx.task, problems, replace(sampler, desc=f"pi_ref on {split}"), 1,
                             Draw(cfg.seed, checkpoint=resume / split))
        metrics[f"{split}_accuracy"] = result["accuracy"]
    log.info("pi_ref accuracy: on its pretraining problems %.3f, on test problems %.3f",
             metrics["pretrain_accuracy"], metrics["test_accuracy"])
    write_json(out / "metrics.json", metrics)


def _place(ctx: RunContext, model: PreTrainedModel) -> PreTrainedModel:
    """On this rank's device: whole (replicated), or a ZeRO-3 shard of it (hardware.shard_pi_ref)."""
    hw = ctx.hw
    if hw.cfg.shard_pi_ref and hw.dist.active:
        model = shard_for_inference(model.eval(), hw)
        log.info("pi_ref: sharded with ZeRO-3 across %d ranks (%d of %d parameters held here)", hw.dist.world,
                 sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters()),
                 sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()))
        return model
    return model.to(hw.device).eval()


def _tokenizer_source(ctx: RunContext) -> tuple[str, str] | None:
    """(source, setting) of the pretrained model whose tokenizer pi_ref has; None: the task's own tokenizer."""
    model = ctx.cfg.model
    if model.pi_ref.pretrained:
        return model.pi_ref.pretrained, "model.pi_ref.pretrained"
    if model.pi_ref_init == Init.base and model.base.pretrained:
        return model.base.pretrained, "model.base.pretrained"
    return None


def _planned_tokenizer(ctx: RunContext) -> PreTrainedTokenizerBase:
    source = _tokenizer_source(ctx)
    return load_tokenizer(*source) if source else ctx.task_tokenizer


def _tokenizer_key(ctx: RunContext) -> str:
    """The setting that named pi_ref's tokenizer, for messages."""
    source = _tokenizer_source(ctx)
    return f"{source[1]}={source[0]}" if source else f"task={ctx.cfg.task.name} (the tokenizer built for it)"


def _planned_context(ctx: RunContext) -> int | None:
    """The positions prompts and samples have: pi_ref's context, and the return model's when one is built here."""
    model = ctx.cfg.model
    source = _tokenizer_source(ctx)
    if source:
        context = context_length(load_config(*source))
    else:
        context = (model.base if model.pi_ref_init == Init.base else model.pi_ref).max_positions
    return _within_guide(ctx, context)


def _within_guide(ctx: RunContext, context: int | None) -> int | None:
    guide = ctx.cfg.model.guide
    built_here = guide.arch.pretrained is None and guide.init == Init.scratch
    if ctx.uses_return_model and built_here and context:
        return min(context, guide.arch.max_positions)
    return context


def _codec(ctx: RunContext, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> PromptCodec:
    """Prompts must also fit the context of a return model built here, in runs that use one."""
    codec = PromptCodec.for_model(tokenizer, model, ctx.cfg.task.chat_template)
    codec.max_positions = _within_guide(ctx, codec.max_positions)
    return codec
