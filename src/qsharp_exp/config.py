"""Typed schemas for the composed Hydra config, and the checks that run before any work.

Hydra composes plain YAML; `compose.load_run_config` merges it into these dataclasses, so an unknown
key, a wrong type or a choice outside its Enum fails at once. Each section checks its own values in
`__post_init__` (raising `FieldError` with the field's name); the loader re-raises that as a
`ConfigError` with the full key (`algo.eta`, `model.guide.arch.n_head`). Checks that span sections or
consult the registries live in compose.py, so this module imports no other module of the package.
Each task owns its section's schema: a subclass of `TaskConfig` registered with the task (tasks/base.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any, ClassVar


class UserError(Exception):
    """An error the user can act on: the CLI prints its message alone, without a traceback."""


class ConfigError(UserError, ValueError):
    """A config value the run cannot use; the message says which key and how to fix it."""


class FieldError(ConfigError):
    """A section's check failed on one field. The message template says `{key}` where the field's full
    key goes; alone (a dataclass built in code) it reads with the bare field name."""

    def __init__(self, name: str, template: str) -> None:
        super().__init__(template.format(key=name))
        self.name, self.template = name, template

    def under(self, section: str) -> ConfigError:
        return ConfigError(self.template.format(key=f"{section}.{self.name}" if section else self.name))


class Choice(str, Enum):
    """A string setting with a fixed set of values: compares, hashes and prints as its value."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


# -- checks a section runs on its own fields ------------------------------------------------------


def _default(obj: Any, name: str, fallback: float) -> Any:
    """The field's default, as the value to suggest (the fallback where there is none)."""
    default = obj.__dataclass_fields__[name].default
    return default if isinstance(default, int | float) else fallback


def at_least(obj: Any, name: str, low: float, why: str = "") -> None:
    value = getattr(obj, name)
    if value is not None and not value >= low:
        suggestion = max(low, _default(obj, name, low))
        raise FieldError(name, f"{{key}}={value} must be >= {low}{why}: set e.g. {{key}}={suggestion}.")


def positive(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if value is not None and not (value > 0 and math.isfinite(value)):
        suggestion = _default(obj, name, 1)
        raise FieldError(name, f"{{key}}={value} must be a finite number > 0: set e.g. {{key}}={suggestion}.")


def within(obj: Any, name: str, low: float, high: float, why: str) -> None:
    """`low <= value <= high`: the range in which the numerics stay finite (`why` says what breaks beyond)."""
    value = getattr(obj, name)
    if value is not None and not low <= value <= high:
        suggestion = _default(obj, name, low)
        raise FieldError(name, f"{{key}}={value} must lie in [{low:g}, {high:g}] ({why}): set e.g. "
                               f"{{key}}={suggestion}.")


# Guidance weighs a return of z by exp(z/eta), and sampling divides logits by the temperature: these bounds
# keep z/eta and logit/temperature finite in float32 and bf16 (up to about 3e38) for returns and atoms up
# to ATOM_LIMIT, and eta at its bounds already gives the argmax (low) or pi_ref (high) to float precision.
ETA_RANGE = (1e-6, 1e6)
TEMPERATURE_RANGE = (1e-3, 1e3)
ATOM_LIMIT = 1e6
# An AdamW step moves each weight by up to lr, and multiplies it by 1 - lr * weight_decay: above 1, weights
# grow without bound (or flip sign each step) until they overflow float32.
MAX_LR = 1.0
# Rewards, DPO's beta and RPO's NLL weight scale a float32 loss; beyond this it overflows.
LOSS_SCALE_LIMIT = 1e6


MAX_SEED = 2**31 - 1  # seeds derived from it (seed + round, seed + 1000 * round, ...) stay valid for every RNG


def seed_range(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if value is not None and not 0 <= value <= MAX_SEED:
        raise FieldError(name, f"{{key}}={value} must lie in 0..{MAX_SEED}: set e.g. {{key}}=0.")


def in_unit_interval(obj: Any, name: str, closed_above: bool = True) -> None:
    value = getattr(obj, name)
    if not (0.0 <= value <= 1.0 if closed_above else 0.0 <= value < 1.0):
        raise FieldError(name, f"{{key}}={value} must lie in [0, 1{']' if closed_above else ')'}.")


def optimiser_checks(obj: Any) -> None:
    """0 < lr <= MAX_LR, weight_decay >= 0 with lr * weight_decay <= 1, warmup_steps >= 0 (every section
    that trains has these)."""
    positive(obj, "lr")
    within(obj, "lr", 0, MAX_LR, "an AdamW step moves each weight by up to lr")
    at_least(obj, "weight_decay", 0)
    if obj.weight_decay * obj.lr > 1:
        raise FieldError("weight_decay", f"{{key}}={obj.weight_decay} times lr={obj.lr} must be <= 1 (AdamW "
                                         f"multiplies each weight by 1 - lr * weight_decay every step): set e.g. "
                                         f"{{key}}={_default(obj, 'weight_decay', 0.0)}.")
    at_least(obj, "warmup_steps", 0)


# -- sections -------------------------------------------------------------------------------------


@dataclass
class TaskConfig:
    """What every task's section has; each task adds its own fields in a subclass (tasks/)."""

    name: str = "star_graph"
    # Problems per split. Generated tasks draw this many; dataset tasks keep the first ones (null = all).
    num_pretrain: int | None = 50_000
    num_train: int | None = 25_000
    num_test: int | None = 1_000
    seed: int = 0
    # The prompt goes inside pi_ref's chat template (math tasks); false feeds the bare prompt.
    chat_template: bool = False
    # A task that generates its problems needs a size for every split (a dataset task can keep all).
    generates_problems: ClassVar[bool] = False
    # Generated splits are drawn one after another, each skipping what was drawn before it (tasks/splits.py),
    # so a split depends on the sizes of the splits drawn before it; empty: each on its own size only.
    draw_order: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name in SPLIT_SIZES.values():
            if getattr(self, name) is None and self.generates_problems:
                raise FieldError(name, f"{{key}}=null: task={self.name} generates its problems, so it needs a "
                                       "size, e.g. {key}=1000.")
            at_least(self, name, 1)
        seed_range(self, "seed")

    def settings_for(self, *splits: str) -> dict[str, Any]:
        """The settings that the problems of `splits` depend on, for the keys of stages that read only those:
        every setting but the sizes of the splits that neither are read nor drawn before one that is."""
        shaping = set(splits)
        if self.draw_order:
            shaping.update(self.draw_order[: max(self.draw_order.index(s) for s in splits) + 1])
        unused = {size for split, size in SPLIT_SIZES.items() if split not in shaping}
        return {k: v for k, v in as_dict(self).items() if k not in unused}


SPLIT_SIZES = {"pretrain": "num_pretrain", "train": "num_train", "test": "num_test"}


class Arch(Choice):
    gpt2 = "gpt2"
    llama = "llama"


@dataclass
class ArchConfig:
    """A Hugging Face causal LM built from a config with random weights."""

    # A hub id or local path of a pretrained causal LM; when set, the fields below are not used.
    pretrained: str | None = None
    arch: Arch = Arch.gpt2
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_kv_head: int | None = None  # llama: key/value heads (grouped-query attention); None = n_head
    n_inner: int | None = None  # MLP width; None = 4 * n_embd
    max_positions: int = 256
    dropout: float = 0.0
    # Std of the normal weight init. GPT-2's 0.02 suits 768-wide models; narrow models escape the
    # initial plateau much sooner with about 1/sqrt(n_embd).
    initializer_range: float = 0.02
    # Causal convolution of this width over the token embeddings before the blocks (0 = none; for a causal
    # LM, gpt2 only).
    # It lets a position see its neighbours directly, which makes in-context lookup learnable at small
    # scale (models/stem.py, docs/star_graph.md).
    conv_width: int = 0

    def __post_init__(self) -> None:
        if self.pretrained is not None:
            return
        at_least(self, "conv_width", 0)
        for name in ("n_layer", "n_embd", "n_head", "n_kv_head", "n_inner", "max_positions"):
            at_least(self, name, 1)
        in_unit_interval(self, "dropout", closed_above=False)
        within(self, "initializer_range", 1e-6, 1.0, "the std of the initial weights")
        if self.n_embd % self.n_head:
            raise FieldError("n_embd", f"{{key}}={self.n_embd} must be divisible by n_head={self.n_head}.")
        if self.n_kv_head is not None and (self.arch != Arch.llama or self.n_head % self.n_kv_head):
            raise FieldError("n_kv_head", f"{{key}}={self.n_kv_head} needs arch=llama and must divide "
                                          f"n_head={self.n_head}.")


class Init(Choice):
    """Where a model built here starts (docs/star_graph.md, the ablation)."""

    scratch = "scratch"  # its own `arch`: random init, or the weights `arch.pretrained` names
    base = "base"  # the base model (model.base): pretrained on a generic lookup corpus, or a hub LM
    pi_ref = "pi_ref"  # pi_ref's weights (return model only)


class Distribution(Choice):
    bernoulli = "bernoulli"  # binary cross-entropy
    histogram = "histogram"  # C51-style maximum likelihood over num_atoms atoms of [v_min, v_max]
    mse = "mse"  # squared loss on the mean (ablation)


@dataclass
class GuideConfig:
    """The return model: a causal LM trunk plus a value head (docs/method.md, section 2)."""

    arch: ArchConfig = field(default_factory=ArchConfig)
    # A head kind of models/heads.HEADS: q (one pass over the prefix gives every candidate's value) or v (one
    # value per (prefix, candidate)).
    head: str = "q"
    distribution: Distribution = Distribution.bernoulli
    num_atoms: int = 11
    v_min: float = 0.0
    v_max: float = 1.0
    # Where the trunk starts: `scratch` (from `arch`), `base` or `pi_ref` (that model's trunk and stem with a
    # fresh head, as the published star-graph classifier is GPT-2's trunk; `arch` is then not used).
    init: Init = Init.scratch

    def __post_init__(self) -> None:
        if self.distribution == Distribution.histogram:
            at_least(self, "num_atoms", 2)
        for name in ("v_min", "v_max"):
            within(self, name, -ATOM_LIMIT, ATOM_LIMIT, "a return's value; exp(value/eta) must stay finite")
        if self.distribution != Distribution.bernoulli and not self.v_max > self.v_min:
            raise FieldError("v_max", f"{{key}}={self.v_max} must exceed v_min={self.v_min}.")


@dataclass
class ModelConfig:
    name: str = "star_graph_tiny"
    pi_ref: ArchConfig = field(default_factory=ArchConfig)
    guide: GuideConfig = field(default_factory=GuideConfig)
    # The base model: the CPU analogue of a language-pretrained LM, pretrained here on a generic lookup
    # corpus (base_pretrain), or a hub LM (`base.pretrained: gpt2`, as the published star-graph code).
    base: ArchConfig = field(default_factory=ArchConfig)
    # Where a pi_ref pretrained here starts: `scratch` (model.pi_ref) or `base` (fine-tuned from the base
    # model, as the paper's pi_ref is GPT-2 fine-tuned; model.pi_ref's architecture is then not used).
    pi_ref_init: Init = Init.scratch

    def __post_init__(self) -> None:
        for name in ("pi_ref", "base"):  # causal LMs: the stem exists for GPT-2 (models/stem.py)
            arch = getattr(self, name)
            if arch.pretrained is None and arch.conv_width > 1 and arch.arch != Arch.gpt2:
                raise FieldError(f"{name}.conv_width", f"{{key}}={arch.conv_width} needs {name}.arch=gpt2: set "
                                                       "{key}=0 or the arch to gpt2.")
        if self.pi_ref_init == Init.pi_ref:
            raise FieldError("pi_ref_init", "{key}=pi_ref is circular: use scratch or base.")
        if self.pi_ref_init == Init.base and self.pi_ref.pretrained is not None:
            raise FieldError("pi_ref_init", f"{{key}}=base fine-tunes pi_ref here, but model.pi_ref.pretrained="
                                            f"{self.pi_ref.pretrained} loads a finished one: set one of them.")


@dataclass
class PolicyConfig:
    """Policy-based post-training (algo=reinforce|dpo|rpo): a copy of pi_ref fine-tuned on the training
    problems, then sampled like pi_ref (docs/method.md, section 4)."""

    lr: float = 1e-5
    steps: int = 500
    batch_size: int = 64
    weight_decay: float = 0.1
    warmup_steps: int = 10
    # REINFORCE: reward of a correct / wrong sampled path, with the batch-mean baseline subtracted.
    reward_correct: float = 1.0
    reward_wrong: float = -0.1
    sample_temperature: float = 1.0  # REINFORCE samples at this temperature (1: it explores)
    # DPO / RPO: chosen = the correct path, rejected = a wrong path sampled from pi_ref (up to
    # `rejected_tries` samples per problem; problems where pi_ref was always right give no pair).
    beta: float = 0.1
    rejected_tries: int = 4
    nll_weight: float = 1.0  # RPO: + nll_weight * per-token NLL of the chosen path

    def __post_init__(self) -> None:
        optimiser_checks(self)
        positive(self, "beta")
        within(self, "beta", 0, LOSS_SCALE_LIMIT, "DPO's logits are beta times a log-ratio")
        for name in ("reward_correct", "reward_wrong"):
            within(self, name, -LOSS_SCALE_LIMIT, LOSS_SCALE_LIMIT, "it scales REINFORCE's loss")
        within(self, "nll_weight", 0, LOSS_SCALE_LIMIT, "it scales RPO's NLL term")
        within(self, "sample_temperature", *TEMPERATURE_RANGE, "logits are divided by it")
        for name in ("steps", "batch_size", "rejected_tries"):
            at_least(self, name, 1)


class NonCandidates(Choice):
    keep = "keep"  # multiplier 1, so eta -> inf gives pi_ref exactly
    mask = "mask"


@dataclass
class AlgoConfig:
    # pi_ref, a guidance rule (guidance.RULES: qsharp, cd) or a policy trainer (training/policy.TRAINERS).
    name: str = "qsharp"
    eta: float = 0.1  # KL weight (paper convention): larger = closer to pi_ref
    top_k: int = 10  # pi_ref's top-k tokens are scored by the return model
    non_candidates: NonCandidates = NonCandidates.keep  # what tokens outside the top-k get
    # Which round's return model guides decoding; None = the last round. conf/algo/cd.yaml sets 1
    # (trained on pi_ref's own rollouts only), as the paper describes CD.
    guide_round: int | None = None
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        within(self, "eta", *ETA_RANGE, "guidance weighs a return z by exp(z/eta)")
        at_least(self, "top_k", 1)


class BaseCorpusKind(Choice):
    lookup = "lookup"  # in-context lookup over the task's labels (star-graph)
    arithmetic = "arithmetic"  # chains of calculations written as text (math)


@dataclass
class BasePretrainConfig:
    """Next-token pretraining of the base model on a generic corpus (training/base_corpus.py): the CPU
    analogue of language pretraining. Not used when model.base.pretrained names a hub LM."""

    corpus: BaseCorpusKind = BaseCorpusKind.lookup
    steps: int = 1_000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    corpus_lines: int = 100_000  # distinct lines drawn (batches are sampled from them)
    max_pairs: int = 12  # lookup: a line lists 1..max_pairs pairs
    chain_end_fraction: float = 0.0  # lookup: share of lines that ask for a chain's end in one prediction
    # lookup: 0 mixes chain-end lines in from the first step; N > 0 is a curriculum: `steps` steps on lines that
    # only follow chains, then N more (own warmup and decay) on lines with the chain_end_fraction share.
    chain_end_steps: int = 0
    max_operand: int = 99  # arithmetic: operands of sums and differences go up to this
    max_steps: int = 3  # arithmetic: a line chains 1..max_steps equations
    eval_lines: int = 1_000  # held-out lines on which the base model's accuracy is measured
    # The base model's own seed (its init and corpus); null: the run's `seed`. Set, one base model serves every
    # run seed, as one pretrained LM serves every experiment of the paper.
    seed: int | None = None

    def __post_init__(self) -> None:
        optimiser_checks(self)
        seed_range(self, "seed")
        for name in ("steps", "batch_size", "corpus_lines", "max_pairs", "max_steps", "eval_lines"):
            at_least(self, name, 1)
        at_least(self, "max_operand", 2)
        at_least(self, "chain_end_steps", 0)
        in_unit_interval(self, "chain_end_fraction")
        if self.chain_end_fraction and self.max_pairs < 2:
            raise FieldError("max_pairs", "{key}=" + str(self.max_pairs) + " leaves no room for a chain-end "
                             "question (a pair before the hops): set {key}>=2 or chain_end_fraction=0.")
        if self.chain_end_steps and not self.chain_end_fraction:
            raise FieldError("chain_end_steps", "{key} trains on chain-end questions, but chain_end_fraction "
                             "is 0: set chain_end_fraction above 0, or {key}=0.")


@dataclass
class PretrainConfig:
    """Next-token training of pi_ref here on the task's reference responses (from scratch or from the base
    model, model.pi_ref_init)."""

    steps: int = 1_500
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    # pi_ref's accuracy is measured on at most this many pretraining and test problems after pretraining.
    eval_problems: int = 1_000

    def __post_init__(self) -> None:
        optimiser_checks(self)
        for name in ("steps", "batch_size", "eval_problems"):
            at_least(self, name, 1)


class CollectMode(Choice):
    algorithm1 = "algorithm1"  # roll in with pi_k, switch, roll out with pi_ref (docs/method.md, section 2)
    pairs = "pairs"  # the published star-graph code: the reference answer (1) and pi_ref's first wrong sample (0)


@dataclass
class CollectConfig:
    """The return model's training data: Algorithm 1, or the published star-graph code's pairs."""

    mode: CollectMode = CollectMode.algorithm1
    # pairs: pi_ref samples up to this many times per problem for a wrong answer (the published code: 1,024).
    pair_tries: int = 1024
    rounds: int = 2
    samples_per_problem: int = 4
    eta: float = 0.1  # eta of the guided roll-in policy pi_k (rounds >= 2); independent of algo.eta
    # Probability that the switch token is drawn uniformly from pi_ref's top-k candidates instead of
    # from pi_ref (the exploratory roll-out of the paper's Algorithm 2). Labels stay pi_ref returns.
    explore_prob: float = 0.5
    batch_size: int = 512
    # The roll-in guide (rounds >= 2) and the exploratory switch: collection's own settings, so that
    # evaluating at another algo.top_k or algo.non_candidates reuses the collected data.
    top_k: int = 10
    non_candidates: NonCandidates = NonCandidates.keep
    # Sampling of roll-ins and roll-outs; null: eval's value.
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("rounds", "samples_per_problem", "batch_size", "pair_tries", "top_k", "max_new_tokens"):
            at_least(self, name, 1)
        within(self, "temperature", *TEMPERATURE_RANGE, "logits are divided by it")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise FieldError("top_p", f"{{key}}={self.top_p} must lie in (0, 1]: 1 disables top-p, null takes eval's.")
        if self.mode == CollectMode.pairs and self.rounds != 1:
            raise FieldError("mode", f"{{key}}=pairs is one round of data (no roll-in to improve): set "
                                     f"collect.rounds=1 (it is {self.rounds}).")
        within(self, "eta", *ETA_RANGE, "guidance weighs a return z by exp(z/eta)")
        in_unit_interval(self, "explore_prob")


@dataclass
class GuideTrainConfig:
    # Length of training: `epochs` over the kept rollouts when set (the paper: 5), else `steps`. With `patience`
    # this is the budget, and training stops earlier once it has learned (training/stopping.py).
    steps: int = 3_000
    epochs: float | None = None
    # When set, round k >= 2 starts from round k-1's trained return model and trains this many epochs over
    # the aggregated rollouts; null: every round starts afresh from model.guide.init (the paper).
    warm_start_epochs: float | None = None
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    # Warm-up of at least this share of the steps (the published star-graph code: 10%, at least 100 steps).
    warmup_fraction: float = 0.0
    eval_every: int = 250
    val_fraction: float = 0.05
    # Save a resumable checkpoint (model, optimizer, schedule, step, RNG) every N steps; 0 = never.
    checkpoint_every: int = 0
    # How many of those checkpoints stay on disk (the newest); a 1B guide's is about 16 GB.
    keep_checkpoints: int = 2
    # Temperature scaling after training: the head's outputs are divided by the T that fits the validation
    # split best (calibration.py), so that values mean the success rates they claim (Q# relies on it).
    calibrate: bool = False
    # Stop once no response position's validation accuracy rose by `min_delta` (and beyond the noise of its
    # number of examples) for `patience` evaluations (training/stopping.py); 0 = the whole budget.
    patience: int = 0
    min_delta: float = 0.005

    def __post_init__(self) -> None:
        optimiser_checks(self)
        for name in ("steps", "batch_size", "eval_every"):
            at_least(self, name, 1)
        at_least(self, "patience", 0)
        in_unit_interval(self, "min_delta", closed_above=False)
        if self.patience and not self.val_fraction:
            raise FieldError("patience", f"{{key}}={self.patience} stops on the validation split, but "
                             "guide_train.val_fraction=0 holds none out: set val_fraction (e.g. 0.05) or patience=0.")
        positive(self, "epochs")
        positive(self, "warm_start_epochs")
        in_unit_interval(self, "val_fraction", closed_above=False)
        in_unit_interval(self, "warmup_fraction", closed_above=False)
        at_least(self, "checkpoint_every", 0)
        at_least(self, "keep_checkpoints", 1)


@dataclass
class EvalConfig:
    num_samples: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    batch_size: int = 500
    # Reproduce the published code's decoding: guidance offset added to the raw logits (before the
    # temperature), top-p applied after guidance, KL measured against pi_ref without top-p. Off = our
    # semantics (guidance multiplies the sampler's distribution; KL exactly 0 without guidance).
    paper_compat: bool = False
    # Also score every finished response with the last round's return model (Q# as a reward model:
    # rm_best_of_k, rm_maj1@k). Needs the return models even for algo=pi_ref.
    reward_model: bool = True

    def __post_init__(self) -> None:
        within(self, "temperature", *TEMPERATURE_RANGE, "logits are divided by it")
        if not 0.0 < self.top_p <= 1.0:
            raise FieldError("top_p", f"{{key}}={self.top_p} must lie in (0, 1]: 1 disables top-p.")
        for name in ("num_samples", "max_new_tokens", "batch_size"):
            at_least(self, name, 1)


class Device(Choice):
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class HardwareConfig:
    name: str = "cpu"
    device: Device = Device.cpu
    bf16: bool = False  # bf16 autocast (GPU)
    # Replay each kind of decoding step as a captured CUDA graph (CUDA; not with a sharded pi_ref):
    # one launch per step instead of one per kernel, so small guides cost what their size says.
    cuda_graphs: bool = False
    # torch.compile the decoding steps' forwards (fused kernels; each step shape compiles once, which
    # takes a minute or more for an 8B model): with cuda_graphs, the step costs what its weights do.
    compile_decoding: bool = False
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    # Return-model training under DeepSpeed ZeRO (data-parallel over the torchrun ranks): 0 = plain
    # PyTorch, 2 = optimizer state and gradients sharded, 3 = parameters sharded too.
    zero_stage: int = 0
    # ZeRO-3 only: keep parameters and optimizer state in CPU memory between uses.
    offload: bool = False
    # Shard the frozen pi_ref across ranks with ZeRO-3 for sampling (when it does not fit one device);
    # false = a full copy per rank (ZeRO stage 0), faster when it fits.
    shard_pi_ref: bool = False

    def __post_init__(self) -> None:
        at_least(self, "num_threads", 0, " (0 = torch's default)")
        if self.zero_stage not in (0, 2, 3):
            raise FieldError("zero_stage", f"{{key}}={self.zero_stage} is not supported: use 0 (no DeepSpeed), "
                                           "2 or 3 (e.g. hardware=zero2, hardware=zero3).")
        if self.offload and self.zero_stage != 3:
            raise FieldError("offload", "{key}=true needs hardware.zero_stage=3 (use hardware=zero3_offload).")


class Tracker(Choice):
    none = "none"
    wandb = "wandb"


class TrackerMode(Choice):
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class LoggerConfig:
    name: Tracker = Tracker.none
    project: str = "qsharp_exp"
    entity: str | None = None
    mode: TrackerMode = TrackerMode.online
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    base_pretrain: BasePretrainConfig = field(default_factory=BasePretrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    guide_train: GuideTrainConfig = field(default_factory=GuideTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    cache_dir: str = ".qsharp_cache"
    progress: bool = True
    # Stages registered with stages/extra.register_stage, run in this order after the evaluation; their metrics
    # join metrics.json as <stage>_<metric>.
    extra_stages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        seed_range(self, "seed")
        if not self.cache_dir.strip():
            raise FieldError("cache_dir", "{key} is empty: set it to a directory for the stage outputs, e.g. "
                                          "{key}=.qsharp_cache (or unset it for the default).")


def as_dict(obj: Any) -> Any:
    """Dataclass -> plain dict (for hashing stage inputs and writing them next to artefacts)."""
    if is_dataclass(obj):
        return {f.name: as_dict(getattr(obj, f.name)) for f in fields(obj)}
    return obj
