"""Typed schemas for the composed Hydra config, and the checks that run before any work.

Hydra composes plain YAML; `load_run_config` merges each section into its dataclass (so an
unknown key or a wrong type fails at once) and then checks values a type cannot express.
Every failure is a `ConfigError` whose message names the key and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class UserError(Exception):
    """An error the user can act on: the CLI prints its message alone, without a traceback."""


class ConfigError(UserError, ValueError):
    """A config value the run cannot use; the message says which key and how to fix it."""


@dataclass
class TaskConfig:
    name: str = "star_graph"
    # Problems per split. Generated tasks draw this many; dataset tasks keep the first ones (null = all).
    num_pretrain: int | None = 50_000
    num_train: int | None = 25_000
    num_test: int | None = 1_000
    seed: int = 0
    # The prompt goes inside pi_ref's chat template (math tasks); false feeds the bare prompt.
    chat_template: bool = False
    # star-graph G(degree, path_length) over num_nodes labels; path_length counts the nodes of the
    # answer path, source and goal included (Bachmann & Nagarajan's convention).
    degree: int = 2
    path_length: int = 3
    num_nodes: int = 20
    # gsm8k / math: a local directory of JSONL files (layout of ../shared/data) instead of the hub.
    data_dir: str | None = None
    # Seconds allowed per answer-equivalence check (math-verify).
    verify_timeout_s: int = 5
    # arithmetic: operations per word problem (inclusive range) and the largest starting number.
    min_ops: int = 1
    max_ops: int = 2
    max_number: int = 20
    # Vocabulary of the BPE tokenizer trained here for math-like tasks with random-init models.
    tokenizer_vocab_size: int = 600


@dataclass
class ArchConfig:
    """A Hugging Face causal LM built from a config with random weights."""

    # A hub id or local path of a pretrained causal LM; when set, the fields below are not used.
    pretrained: str | None = None
    arch: str = "gpt2"  # gpt2 | llama
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


@dataclass
class GuideConfig:
    """The return model: a causal LM trunk plus a value head (QSHARP.md section 2)."""

    arch: ArchConfig = field(default_factory=ArchConfig)
    head: str = "q"  # q: vocab-sized head from the prefix | v: scalar per (prefix, candidate)
    # bernoulli (BCE) | histogram (C51-style maximum likelihood) | mse (squared loss on the mean; ablation)
    distribution: str = "bernoulli"
    num_atoms: int = 11
    v_min: float = 0.0
    v_max: float = 1.0
    # Causal convolution over the token embeddings before the blocks (0 = off). It lets a position see
    # its neighbours directly, which makes the star-graph lookup learnable at small scale.
    conv_width: int = 0
    # Start the trunk from pi_ref's own weights (then `arch` is pi_ref's): the CPU-sized analogue of the
    # paper's pretrained guide of the same family, for tiny models trained here.
    init_from_pi_ref: bool = False


@dataclass
class ModelConfig:
    name: str = "star_graph_tiny"
    pi_ref: ArchConfig = field(default_factory=ArchConfig)
    guide: GuideConfig = field(default_factory=GuideConfig)


@dataclass
class PolicyConfig:
    """Policy-based post-training (algo=reinforce|dpo|rpo): a copy of pi_ref fine-tuned on the training
    problems, then sampled like pi_ref (QSHARP.md section 5)."""

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


@dataclass
class AlgoConfig:
    name: str = "qsharp"  # qsharp | cd | pi_ref | reinforce | dpo | rpo
    eta: float = 0.1  # KL weight (paper convention): larger = closer to pi_ref
    top_k: int = 10  # pi_ref's top-k tokens are scored by the guide
    # What tokens outside the top-k get: keep (multiplier 1, so eta -> inf gives pi_ref exactly) | mask.
    non_candidates: str = "keep"
    # Which round's return model guides decoding; None = the last round. CD's default is 1 (trained on
    # pi_ref's own rollouts only), as the paper describes CD.
    guide_round: int | None = None
    policy: PolicyConfig = field(default_factory=PolicyConfig)


@dataclass
class PretrainConfig:
    """Next-token pretraining of a random-init pi_ref on the task's reference responses."""

    steps: int = 1_500
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    # pi_ref's accuracy is measured on at most this many pretraining and test problems after pretraining.
    eval_problems: int = 1_000


@dataclass
class CollectConfig:
    """Algorithm 1's data collection."""

    rounds: int = 2
    samples_per_problem: int = 4
    eta: float = 0.1  # eta of the guided roll-in policy pi_k (rounds >= 2); independent of algo.eta
    # Probability that the switch token is drawn uniformly from pi_ref's top-k candidates instead of
    # from pi_ref (the exploratory roll-out of the paper's Algorithm 2). Labels stay pi_ref returns.
    explore_prob: float = 0.5
    batch_size: int = 512


@dataclass
class GuideTrainConfig:
    # Length of training: `epochs` over the kept rollouts when set (the paper: 5), else `steps`.
    steps: int = 3_000
    epochs: float | None = None
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    eval_every: int = 250
    val_fraction: float = 0.05
    # Save a resumable checkpoint (model, optimizer, schedule, step, RNG) every N steps; 0 = never.
    checkpoint_every: int = 0


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


@dataclass
class HardwareConfig:
    name: str = "cpu"
    device: str = "cpu"  # cpu | cuda
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


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "qsharp_exp"
    entity: str | None = None
    mode: str = "online"  # online | offline | disabled
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    guide_train: GuideTrainConfig = field(default_factory=GuideTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    cache_dir: str = ".qsharp_cache"
    progress: bool = True


TASKS = ("star_graph", "gsm8k", "math", "arithmetic")
GUIDED_ALGOS = ("qsharp", "cd")
POLICY_ALGOS = ("reinforce", "dpo", "rpo")
ALGOS = ("pi_ref", *GUIDED_ALGOS, *POLICY_ALGOS)


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not supported: use one of {', '.join(allowed)}.")


def _at_least(key: str, value: float, low: float, why: str = "") -> None:
    if value < low:
        raise ConfigError(f"{key}={value} must be >= {low}{why}: set e.g. {key}={low}.")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}={value} must be > 0: set a positive value, e.g. {key}=0.1.")


def validate(cfg: RunConfig) -> None:
    """Checks that types alone cannot express; raises ConfigError naming the key and the fix."""
    _choice("task.name", cfg.task.name, TASKS)
    _choice("algo.name", cfg.algo.name, ALGOS)
    if cfg.task.name == "star_graph":
        _at_least("task.degree", cfg.task.degree, 2, " (a star needs at least two arms)")
        _at_least("task.path_length", cfg.task.path_length, 2)
        needed = 1 + cfg.task.degree * (cfg.task.path_length - 1)
        if cfg.task.num_nodes < needed:
            raise ConfigError(
                f"task.num_nodes={cfg.task.num_nodes} is too small for G({cfg.task.degree},"
                f"{cfg.task.path_length}), which has {needed} nodes: set task.num_nodes>={needed}."
            )
    if cfg.task.name == "arithmetic":
        _at_least("task.min_ops", cfg.task.min_ops, 1)
        _at_least("task.max_ops", cfg.task.max_ops, cfg.task.min_ops, " (task.min_ops)")
        _at_least("task.max_number", cfg.task.max_number, 2)
    for key in ("num_pretrain", "num_train", "num_test"):
        value = getattr(cfg.task, key)
        if value is None and cfg.task.name in ("star_graph", "arithmetic"):
            raise ConfigError(f"task.{key}=null: task={cfg.task.name} generates its problems, so it needs a size, "
                              f"e.g. task.{key}=1000.")
        if value is not None:
            _at_least(f"task.{key}", value, 1)
    _positive("algo.eta", cfg.algo.eta)
    _positive("collect.eta", cfg.collect.eta)
    _at_least("algo.top_k", cfg.algo.top_k, 1)
    _choice("algo.non_candidates", cfg.algo.non_candidates, ("keep", "mask"))
    _at_least("collect.rounds", cfg.collect.rounds, 1)
    _at_least("collect.samples_per_problem", cfg.collect.samples_per_problem, 1)
    if not 0.0 <= cfg.collect.explore_prob <= 1.0:
        raise ConfigError(f"collect.explore_prob={cfg.collect.explore_prob} must lie in [0, 1].")
    if cfg.algo.guide_round is not None and not 1 <= cfg.algo.guide_round <= cfg.collect.rounds:
        raise ConfigError(
            f"algo.guide_round={cfg.algo.guide_round} must lie in 1..collect.rounds={cfg.collect.rounds} "
            "(or be null for the last round)."
        )
    guide = cfg.model.guide
    _choice("model.guide.head", guide.head, ("q", "v"))
    _choice("model.guide.distribution", guide.distribution, ("bernoulli", "histogram", "mse"))
    if guide.distribution == "histogram":
        _at_least("model.guide.num_atoms", guide.num_atoms, 2)
    if guide.distribution != "bernoulli" and not guide.v_max > guide.v_min:
        raise ConfigError(f"model.guide.v_max={guide.v_max} must exceed model.guide.v_min={guide.v_min}.")
    _at_least("model.guide.conv_width", guide.conv_width, 0)
    for key, arch in (("model.pi_ref", cfg.model.pi_ref), ("model.guide.arch", guide.arch)):
        if arch.pretrained is not None:
            continue
        _choice(f"{key}.arch", arch.arch, ("gpt2", "llama"))
        if arch.n_embd % arch.n_head:
            raise ConfigError(f"{key}.n_embd={arch.n_embd} must be divisible by {key}.n_head={arch.n_head}.")
        if arch.n_kv_head is not None and (arch.arch != "llama" or arch.n_head % arch.n_kv_head):
            raise ConfigError(f"{key}.n_kv_head={arch.n_kv_head} needs arch=llama and must divide "
                              f"{key}.n_head={arch.n_head}.")
    _positive("eval.temperature", cfg.eval.temperature)
    if not 0.0 < cfg.eval.top_p <= 1.0:
        raise ConfigError(f"eval.top_p={cfg.eval.top_p} must lie in (0, 1]: 1 disables top-p.")
    for section, keys in (
        ("pretrain", ("steps", "batch_size")),
        ("guide_train", ("steps", "batch_size", "eval_every")),
        ("pretrain", ("eval_problems",)),
        ("eval", ("num_samples", "max_new_tokens", "batch_size")),
        ("collect", ("batch_size",)),
    ):
        for key in keys:
            _at_least(f"{section}.{key}", getattr(getattr(cfg, section), key), 1)
    policy = cfg.algo.policy
    _positive("algo.policy.lr", policy.lr)
    _positive("algo.policy.beta", policy.beta)
    _positive("algo.policy.sample_temperature", policy.sample_temperature)
    for key in ("steps", "batch_size", "rejected_tries"):
        _at_least(f"algo.policy.{key}", getattr(policy, key), 1)
    if cfg.guide_train.epochs is not None:
        _positive("guide_train.epochs", cfg.guide_train.epochs)
    _choice("hardware.device", cfg.hardware.device, ("cpu", "cuda"))
    if cfg.hardware.zero_stage not in (0, 2, 3):
        raise ConfigError(f"hardware.zero_stage={cfg.hardware.zero_stage} is not supported: use 0 (no DeepSpeed), "
                          "2 or 3 (e.g. hardware=zero2, hardware=zero3).")
    if cfg.hardware.offload and cfg.hardware.zero_stage != 3:
        raise ConfigError("hardware.offload=true needs hardware.zero_stage=3 (use hardware=zero3_offload).")
    _choice("logger.name", cfg.logger.name, ("none", "wandb"))
    _choice("logger.mode", cfg.logger.mode, ("online", "offline", "disabled"))


def load_run_config(cfg: DictConfig) -> RunConfig:
    """Merge the composed config into the typed schema and validate it."""
    schema = OmegaConf.structured(RunConfig)
    try:
        merged = OmegaConf.merge(schema, cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(getattr(err, "msg", err)).splitlines()[0]
        raise ConfigError(
            f"config key '{key}': {reason}. "
            "Check the spelling against conf/ (python -m qsharp_exp --cfg job shows every key)."
        ) from None
    run_cfg: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(run_cfg)
    return run_cfg


def as_dict(obj: Any) -> Any:
    """Dataclass -> plain dict (for hashing stage inputs and writing them next to artefacts)."""
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: as_dict(getattr(obj, f.name)) for f in fields(obj)}
    return obj
