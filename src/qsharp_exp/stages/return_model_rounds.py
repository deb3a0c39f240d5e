"""Stage `return_model_round<k>`: the return model trained from scratch on the rollouts of rounds 1..k
(training/return_learning.py), saved with its learning curve."""

from __future__ import annotations

import logging
from pathlib import Path

from qsharp_exp.calibration import plot_reliability
from qsharp_exp.config import Init, RunConfig, UserError
from qsharp_exp.config_view import replaced, section
from qsharp_exp.files import read_jsonl, write_json, write_jsonl
from qsharp_exp.models.identity import model_identity
from qsharp_exp.models.lm import load_pretrained_lm, load_tokenizer
from qsharp_exp.models.return_model import ReturnModel, build_return_model, return_model_from_lm
from qsharp_exp.prompts import PromptCodec
from qsharp_exp.reporting.summary import plot_guide_curve
from qsharp_exp.stages.base_model import BaseModel
from qsharp_exp.stages.cache import StageResult
from qsharp_exp.stages.context import RunContext
from qsharp_exp.stages.pi_ref import PiRef
from qsharp_exp.stages.rollouts import collect_round
from qsharp_exp.training.collect import Rollout
from qsharp_exp.training.return_learning import NoSignalError, train_return_model

log = logging.getLogger(__name__)


def train_rounds(ctx: RunContext, pi_ref: PiRef, rounds: int, base: BaseModel | None) -> list[StageResult]:
    """Algorithm 1: per round, collect with the previous round's model, then retrain on all data so far;
    `base`: the base model (needed when model.guide.init=base)."""
    if rounds:
        check_tokenizer(ctx.cfg, pi_ref.codec)
    models: list[StageResult] = []
    data: list[StageResult] = []
    for r in range(1, rounds + 1):
        previous = models[-1] if models else None
        data.append(collect_round(ctx, pi_ref, r, previous))
        models.append(_train(ctx, pi_ref, r, data, base, previous))
    return models


def _train(ctx: RunContext, pi_ref: PiRef, round_: int, data: list[StageResult], base: BaseModel | None,
           previous: StageResult | None) -> StageResult:
    """Round `round_`'s return model on the rollouts of rounds 1..round_: afresh from model.guide.init, or
    (guide_train.warm_start_epochs) from `previous`, the last round's model."""
    guide = ctx.cfg.model.guide
    warm = previous is not None and ctx.cfg.guide_train.warm_start_epochs is not None
    start = _start(ctx, pi_ref, base)
    # A warm start trains for warm_start_epochs from `previous`; a fresh round from model.guide.init. `steps`
    # is not read when epochs count.
    epochs = "guide_train.warm_start_epochs" if warm else "guide_train.epochs"
    counted = ctx.cfg.guide_train.warm_start_epochs if warm else ctx.cfg.guide_train.epochs
    unread = ("epochs", "warm_start_epochs", "checkpoint_every", "keep_checkpoints",
              *(["steps"] if counted is not None else []))
    reads = ["seed", "model.guide", epochs, *section(ctx.cfg, "guide_train", without=unread)]
    after = {"rollouts": [s.key for s in data], "init": previous.key if warm else start[1] if start else None}
    if not warm and start is None and guide.arch.pretrained is not None:  # a hub or local trunk, by what it is
        after["pretrained_trunk"] = model_identity(guide.arch.pretrained, "model.guide.arch.pretrained")

    def build(cfg: RunConfig, out: Path, resume: Path) -> None:
        guide, train = cfg.model.guide, cfg.guide_train
        if warm:
            train = replaced(train, epochs=train.warm_start_epochs)
        rollouts = [Rollout(**row) for s in data for row in read_jsonl(s.path / "rollouts.jsonl")]
        # Trained in float32 under bf16 autocast: AdamW's small updates would round away in bf16 weights.
        if warm:
            model = ReturnModel.from_pretrained(previous.path / "model")
        elif start is None:
            model = build_return_model(guide, pi_ref.codec.tokenizer, cfg.seed + round_)
        else:
            source = start[0]
            lm = load_pretrained_lm(source, f"model.guide.init={guide.init.value}", None)
            model = return_model_from_lm(guide, lm, source, cfg.seed + round_)
        log.info("round %d: training the return model on %d rollouts (%d parameters%s)", round_, len(rollouts),
                 sum(p.numel() for p in model.parameters()), f", from round {round_ - 1}'s" if warm else "")
        resume.mkdir(parents=True, exist_ok=True)
        try:
            env = ctx.training_env(cfg.seed + round_)
            trained = train_return_model(model, rollouts, train, pi_ref.codec.pad_id, env, resume)
        except NoSignalError as err:
            raise NoSignalError(f"round {round_}: {err}") from None
        trained.save(out / "model")
        pi_ref.codec.tokenizer.save_pretrained(out / "model")  # a standard model folder: the tokenizer beside it
        write_jsonl(out / "curve.jsonl", trained.curve)
        plot_guide_curve(trained.curve, out / "curve.png")
        if trained.calibration:
            write_json(out / "calibration.json", trained.calibration)
            plot_reliability({when: trained.calibration[when] for when in ("before", "after")
                              if when in trained.calibration}, out / "reliability.png",
                             f"Return model round {round_}: validation examples")

    return ctx.stage(f"return_model_round{round_}", reads, build, after=after, resumable=True)


def _start(ctx: RunContext, pi_ref: PiRef, base: BaseModel | None) -> tuple[str, str] | None:
    """(source, key) of the causal LM whose trunk the return model starts from; None: from model.guide.arch."""
    init = ctx.cfg.model.guide.init
    if init == Init.pi_ref:
        return pi_ref.source, pi_ref.key
    if init == Init.base:
        if base is None:
            raise ValueError("model.guide.init=base: pass the base model (stages/base_model.load)")
        return base.source, base.key
    return None


def check_tokenizer(cfg: RunConfig, codec: PromptCodec) -> None:
    """A pretrained return model must read pi_ref's tokens as pi_ref does."""
    guide = cfg.model.guide
    pretrained = {Init.scratch: ("model.guide.arch.pretrained", guide.arch.pretrained),
                  Init.base: ("model.base.pretrained", cfg.model.base.pretrained)}
    key, source = pretrained.get(guide.init, (None, None))
    if source is None:
        return  # built here on pi_ref's own tokenizer, or from pi_ref or a base model of this tokenizer
    theirs = load_tokenizer(source, key).get_vocab()
    ours = codec.tokenizer.get_vocab()
    if theirs != ours:
        differ = len(set(theirs.items()) ^ set(ours.items()))
        raise UserError(
            f"{key}={source} does not share pi_ref's tokenizer ({differ} vocabulary "
            f"entries differ, sizes {len(theirs)} vs {len(ours)}): pick a guide of the same family as "
            f"model.pi_ref.pretrained={cfg.model.pi_ref.pretrained}."
        )
