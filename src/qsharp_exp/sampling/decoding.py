"""One batched sampling loop with KV caches for pi_ref and the guide (pi_ref, CD and Q# alike).

Semantics: pi_ref is the sampler's distribution (temperature, then top-p). Guidance multiplies it
on pi_ref's top-k candidates by exp(offset) (the guidance rule's, guidance.py) and renormalises. The
per-token KL(pi || pi_ref) is computed exactly over the vocabulary against that same sampler
distribution, so it is 0 without guidance. `paper_compat` switches to the published code's ordering
instead (guidance.paper_compat_logprobs).
Prompts are left-padded; each row stops at its own stop token.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel, StaticCache

from qsharp_exp import guidance as G
from qsharp_exp.distributed import Dist
from qsharp_exp.guidance import Guidance
from qsharp_exp.models.lm import compiled
from qsharp_exp.models.stem import context_width
from qsharp_exp.registry import Registry

if TYPE_CHECKING:
    from qsharp_exp.models.return_model import ReturnModel


@dataclass(frozen=True)
class SamplingSpec:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    paper_compat: bool = False


@dataclass
class Generation:
    tokens: torch.Tensor  # [B, T] response tokens, pad after EOS
    lengths: torch.Tensor  # [B] tokens up to and including EOS
    kl: torch.Tensor  # [B] sum over the response of KL(pi || pi_ref), nats
    guide_passes: int  # guide forwards, prefill included
    row_steps: int = 0  # rows in the batch summed over decoding steps (what the steps computed)


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def _prefix_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, n, n] which of n new tokens each one sees: its real predecessors and itself (so that no
    query row is empty: pads attend to themselves, and nobody attends to pads)."""
    n = mask.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
    return (causal & mask.bool().unsqueeze(1)) | torch.eye(n, dtype=torch.bool, device=mask.device)


_WINDOWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(batch, capacity, device): KVWindow}


class KVWindow:
    """A model's KV cache as a fixed window of `capacity` columns (a StaticCache): the left-padded prompt
    fills the first columns, then each pass appends columns for every row at once (a masked pad for
    finished rows); `valid` marks the columns that hold real tokens. Shapes stay fixed from step to step,
    so with `graphs` (CUDA) each kind of step is captured once as a CUDA graph and then replayed: one
    launch instead of one per kernel (docs/performance.md)."""

    def __init__(self, config, batch: int, capacity: int, device: torch.device, graphs: bool = False) -> None:
        self.cache = StaticCache(config=config, max_cache_len=capacity)
        self.capacity = capacity
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.length = 0  # columns in use
        self.graphs: dict | None = {} if graphs and device.type == "cuda" else None
        self.pooled = False

    @classmethod
    def for_model(cls, model: torch.nn.Module, config, batch: int, capacity: int, device: torch.device,
                  graphs: bool) -> KVWindow:
        """An empty window. With `graphs`, windows and the graphs captured on them are kept per model and
        shape (capacity rounded up to a multiple of 128) and reused by later calls: a graph is captured
        once per shape, not once per batch."""
        if not graphs:
            return cls(config, batch, capacity, device)
        capacity = -(-capacity // 128) * 128
        windows = _WINDOWS.setdefault(model, {})
        key = (batch, capacity, device)
        window = windows.pop(key, None) or cls(config, batch, capacity, device, graphs=True)
        windows[key] = window  # the most recently used last
        while len(windows) > 4:
            del windows[next(iter(windows))]
        window.pooled = True
        window.rewind(window.length)
        return window

    def run(self, key: str | None, forward, inputs: torch.Tensor, position_ids: torch.Tensor, new_mask: torch.Tensor,
            kept_valid: torch.Tensor):
        """One pass of q new tokens (`new_mask` [B, q, q]: which new tokens each sees, beside the valid
        columns so far); only the first kept_valid.shape[1] new columns stay in the cache. `key` names the
        step for CUDA-graph reuse (None: run eagerly)."""
        b, q = position_ids.shape
        start, keep = self.length, kept_valid.shape[1]
        if start + q > self.capacity:
            raise RuntimeError(f"KV window of {self.capacity} columns overflows ({start} + {q})")
        attn = torch.zeros(b, 1, q, self.capacity, dtype=torch.bool, device=self.valid.device)
        attn[:, 0, :, :start] = self.valid[:, None, :start]
        attn[:, 0, :, start : start + q] = new_mask
        layers = self.cache.layers

        def step(inputs, attn, position_ids):
            out = forward(inputs, attn, position_ids, self.cache)
            if q > keep:  # forget the columns not kept: the next pass writes over them
                for layer in layers:
                    layer.cumulative_length.sub_(q - keep)
            return out

        out = self._call(key, step, (inputs, attn, position_ids))
        self.valid[:, start : start + keep] = kept_valid
        self.length += keep
        return out

    def _call(self, key, step, args):
        if key is None or self.graphs is None:
            return step(*args)
        entry = self.graphs.get(key)
        if entry is not None:
            graph, static_args, static_out = entry
            for buffer, value in zip(static_args, args, strict=True):
                buffer.copy_(value)
            graph.replay()
            return static_out
        out = step(*args)  # the first time eagerly (which also warms up), then captured for the next ones
        static_args = tuple(a.clone() for a in args)
        graph = torch.cuda.CUDAGraph()
        # Autocast must not cache weight casts across a capture.
        autocast = (torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
                    if torch.is_autocast_enabled("cuda") else contextlib.nullcontext())
        with autocast, torch.cuda.graph(graph):
            static_out = step(*static_args)
        self.graphs[key] = (graph, static_args, static_out)
        return out

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows `keep` (not in a pooled window, whose shape its graphs depend on)."""
        if self.pooled:
            raise RuntimeError("rows cannot leave a pooled KV window (CUDA graphs): keep the batch whole")
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False):
                layer.keys, layer.values = layer.keys[keep], layer.values[keep]
                layer.batch_size = layer.keys.shape[0]
        self.valid = self.valid[keep]

    def rewind(self, columns: int) -> None:
        """Forget the last `columns` columns (to start afresh, or to repeat a step in the benchmark)."""
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False):
                layer.cumulative_length.sub_(columns)
        self.length -= columns  # `valid` past `length` is never read: each pass writes its columns' flags


class RecentTokens:
    """The last `width` tokens of each row (and whether each is real): the context a conv stem needs to
    embed the next token of cached decoding (models/stem.py)."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, width: int) -> None:
        self.ids, self.mask = ids[:, ids.shape[1] - width :], mask[:, mask.shape[1] - width :]

    def embed(self, embed, ids: torch.Tensor) -> torch.Tensor:
        """`embed(ids, mask, context_ids, context_mask)` of one new token per row [B, n] (n side by side,
        each after the same context)."""
        b, n = ids.shape
        flat = ids.reshape(b * n, 1)
        context, context_mask = self.ids.repeat_interleave(n, 0), self.mask.repeat_interleave(n, 0)
        return embed(flat, torch.ones_like(flat), context, context_mask).view(b, n, -1)

    def push(self, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        self.ids = torch.cat([self.ids[:, 1:], tokens.unsqueeze(1)], dim=1)
        self.mask = torch.cat([self.mask[:, 1:], alive.to(self.mask.dtype).unsqueeze(1)], 1)

    def select(self, keep: torch.Tensor) -> None:
        self.ids, self.mask = self.ids[keep], self.mask[keep]


class LMState:
    """A causal LM (pi_ref, or a policy) in step with the sampled tokens: its KV window and the logits of
    the next token. A model with a conv stem is fed embeddings, made with the tokens before them."""

    def __init__(self, model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, capacity: int,
                 graphs: bool = False, compile_steps: bool = False) -> None:
        self.model = model
        self.window = KVWindow.for_model(model, model.config, mask.shape[0], capacity, mask.device, graphs)
        self.next_pos = mask.long().sum(-1)
        self.compile_steps = compile_steps
        width = context_width(model)
        self.recent = RecentTokens(ids, mask, width) if width else None
        self.input_name = "inputs_embeds" if width else "input_ids"  # a stem's model is fed embeddings
        inputs = model.embed(ids, mask) if width else ids
        self.logits = self.window.run(None, self._forward, inputs, positions(mask), _prefix_mask(mask), mask.bool())

    def _forward(self, inputs, attn, position_ids, cache, model=None) -> torch.Tensor:
        return (model or self.model)(**{self.input_name: inputs}, attention_mask=attn, position_ids=position_ids,
                                     cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    def _step_forward(self, inputs, attn, position_ids, cache) -> torch.Tensor:
        return self._forward(inputs, attn, position_ids, cache, compiled(self.model) if self.compile_steps else None)

    def advance(self, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        """Take in each row's sampled token (a masked pad for finished rows)."""
        one = torch.ones(tokens.shape[0], 1, 1, dtype=torch.bool, device=tokens.device)
        inputs = tokens.unsqueeze(1)
        if self.recent is not None:
            inputs = self.recent.embed(self.model.embed, inputs)
            self.recent.push(tokens, alive)
        self.logits = self.window.run("step", self._step_forward, inputs, self.next_pos.unsqueeze(1), one,
                                      alive.unsqueeze(1))
        self.next_pos = self.next_pos + alive.long()

    def rewind(self) -> None:
        """Forget the last token taken in (the benchmark times one step again and again)."""
        self.window.rewind(1)
        self.next_pos = self.next_pos - 1

    def select(self, keep: torch.Tensor) -> None:
        self.window.select(keep)
        self.next_pos, self.logits = self.next_pos[keep], self.logits[keep]
        if self.recent is not None:
            self.recent.select(keep)


class GuideState:
    """The guide's KV window and its per-step outputs, kept in step with pi_ref's: one guide pass per step. What
    a pass takes in and yields depends on the head kind (QGuideState, VGuideState; `guide_state` picks)."""

    def __init__(self, model: ReturnModel, ids: torch.Tensor, mask: torch.Tensor, capacity: int,
                 graphs: bool = False, compile_steps: bool = False) -> None:
        self.model = model
        self.compile_steps = compile_steps
        self.window = KVWindow.for_model(model, model.trunk.config, mask.shape[0], capacity, mask.device, graphs)
        self.next_pos = mask.long().sum(-1)
        width = model.context_width
        self.recent = RecentTokens(ids, mask, width) if width else None
        self.passes = 0

    def _prefill(self, ids: torch.Tensor, mask: torch.Tensor, outputs: int) -> torch.Tensor:
        return self._pass(None, self.model.embed(ids, mask), positions(mask), _prefix_mask(mask), mask.bool(), outputs)

    def _pass(self, key, embeds, position_ids, new_mask, kept_valid, outputs: int) -> torch.Tensor | None:
        """One guide forward; head outputs for the last `outputs` new tokens."""
        self.passes += 1
        model, compile_trunk = self.model, key is not None and self.compile_steps

        def forward(embeds, attn, position_ids, cache):
            hidden = model.hidden(embeds, attn, position_ids, cache, compile_trunk)
            return model.head_outputs(hidden[:, hidden.shape[1] - outputs :]) if outputs else hidden[:, :0]

        return self.window.run(key, forward, embeds, position_ids, new_mask, kept_valid)

    def _embed_new(self, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of one new token per row [B, n] (n candidates side by side, each alone)."""
        if self.recent is None:
            return self.model.embed(ids, torch.ones_like(ids))
        return self.recent.embed(self.model.embed, ids)

    def values(self, candidates: torch.Tensor) -> torch.Tensor:
        """Head outputs [B, k, D] for each candidate token after the current prefix."""
        raise NotImplementedError

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows `keep` (finished rows leave the batch)."""
        self.window.select(keep)
        self.next_pos = self.next_pos[keep]
        if self.recent is not None:
            self.recent.select(keep)

    def advance(self, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        """Take in the sampled token of every row (a masked pad for finished rows)."""
        self.next_pos = self.next_pos + alive.long()
        if self.recent is not None:
            self.recent.push(tokens, alive)

    def rewind(self) -> None:
        """Forget the last token taken in (the benchmark times one step again and again)."""
        self.window.rewind(1)
        self.next_pos = self.next_pos - 1


# The decoding state of each head kind (models/heads.HEADS), by the kind's name.
GUIDE_STATES: Registry[type[GuideState]] = Registry("decoding state of a head kind", "model.guide.head")


def register_guide_state(head: str) -> Callable[[type[GuideState]], type[GuideState]]:
    """Register a GuideState subclass as the decoding state of the head kind named `head`."""
    return GUIDE_STATES.register(head)


@register_guide_state("q")
class QGuideState(GuideState):
    """Q-type: the pass takes in the sampled token and yields every next candidate's value at once."""

    def __init__(self, model: ReturnModel, ids: torch.Tensor, mask: torch.Tensor, capacity: int,
                 graphs: bool = False, compile_steps: bool = False) -> None:
        super().__init__(model, ids, mask, capacity, graphs, compile_steps)
        self.outputs = self._prefill(ids, mask, 1)[:, -1]  # [B, V, D]

    def values(self, candidates: torch.Tensor) -> torch.Tensor:
        return self.outputs.gather(1, candidates.unsqueeze(-1).expand(-1, -1, self.outputs.shape[-1]))

    def select(self, keep: torch.Tensor) -> None:
        super().select(keep)
        self.outputs = self.outputs[keep]

    def advance(self, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        embeds = self._embed_new(tokens.unsqueeze(1))
        one = torch.ones(tokens.shape[0], 1, 1, dtype=torch.bool, device=tokens.device)
        self.outputs = self._pass("step", embeds, self.next_pos.unsqueeze(1), one, alive.unsqueeze(1), 1)[:, -1]
        super().advance(tokens, alive)


@register_guide_state("v")
class VGuideState(GuideState):
    """V-type: the sampled token is kept pending and goes into the next step's scoring pass together with the k
    candidates: the pending token sees the prefix, each candidate the prefix, the pending token and itself. Only
    the pending token's column stays in the cache; nothing is recomputed and no per-step branch depends on
    device values."""

    def __init__(self, model: ReturnModel, ids: torch.Tensor, mask: torch.Tensor, capacity: int,
                 graphs: bool = False, compile_steps: bool = False) -> None:
        super().__init__(model, ids, mask, capacity, graphs, compile_steps)
        self._prefill(ids, mask, 0)
        # The sampled token not yet in the cache: its embedding, position and whether it is real.
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def values(self, candidates: torch.Tensor) -> torch.Tensor:
        b, k = candidates.shape
        device = candidates.device
        embeds, pos = self._embed_new(candidates), self.next_pos.unsqueeze(1).expand(b, k)
        new_mask = torch.eye(k, dtype=torch.bool, device=device).expand(b, k, k)
        kept = torch.zeros(b, 0, dtype=torch.bool, device=device)
        key = None  # the first step, with no pending token, runs once: not worth a graph
        if self._pending is not None:
            pending_embed, pending_pos, kept = self._pending
            embeds = torch.cat([pending_embed, embeds], dim=1)
            pos = torch.cat([pending_pos.unsqueeze(1), pos], dim=1)
            new_mask = torch.cat([torch.ones(b, k + 1, 1, dtype=torch.bool, device=device),
                                  torch.cat([torch.zeros(b, 1, k, dtype=torch.bool, device=device), new_mask], 1)], 2)
            kept, key = kept.unsqueeze(1), "score"
        self._pending = None
        return self._pass(key, embeds, pos, new_mask, kept, k)

    def select(self, keep: torch.Tensor) -> None:
        super().select(keep)
        if self._pending is not None:
            self._pending = tuple(x[keep] for x in self._pending)

    def advance(self, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        self._pending = (self._embed_new(tokens.unsqueeze(1)), self.next_pos.clone(), alive.clone())
        super().advance(tokens, alive)


def guide_state(model: ReturnModel, ids: torch.Tensor, mask: torch.Tensor, capacity: int, top_k: int,
                options: dict | None = None) -> GuideState:
    """The decoding state of `model`'s head kind, with room for `capacity` tokens and the kind's extra columns
    for scoring `top_k` candidates; `options`: graphs, compile_steps."""
    state = GUIDE_STATES[model.kind.name]
    return state(model, ids, mask, capacity + model.kind.decoding_columns(top_k), **(options or {}))


@dataclass(frozen=True)
class Stops:
    """Where rows end: at a token of `ids` (EOS, end of turn), or after `budget` [B] new tokens (at most
    spec.max_new_tokens; e.g. what a roll-in prefix left of the response budget). Finished rows get `pad_id`."""

    ids: torch.Tensor
    pad_id: int
    budget: torch.Tensor | None = None


@dataclass(frozen=True)
class PromptBatch:
    """Left-padded prompts `ids` [B, L] (mask 1 = real token) and where their responses stop."""

    ids: torch.Tensor
    mask: torch.Tensor
    stops: Stops


@dataclass(frozen=True)
class Steering:
    """What samples instead of plain pi_ref: pi_ref guided by `guide`, or `policy`, a fine-tuned copy of pi_ref
    (REINFORCE, DPO, RPO). `explore`: those rows draw their first token uniformly from pi_ref's top
    `explore_top_k` tokens (the exploratory switch of Algorithm 2), then continue as usual; a [B] bool tensor
    where `generate` runs one batch, a list over all prompts where `Sampler.sample` cuts it into batches."""

    guide: Guidance | None = None
    policy: PreTrainedModel | None = None
    explore: torch.Tensor | list[bool] | None = None
    explore_top_k: int = 0


@dataclass(frozen=True)
class DecodeOptions:
    """How decoding runs, not what it samples (docs/performance.md).
    `cuda_graphs`: on CUDA, replay each kind of decoding step as a captured CUDA graph (not with lockstep).
    `compile_steps`: run the decoding steps' forwards through torch.compile (fused kernels; compiled once per
    shape), the prompt's prefill as it is.
    `lockstep`: ranks that share a ZeRO-3-sharded pi_ref; every rank keeps stepping (finished rows feed masked
    pads) until all ranks are done, because each forward gathers parameters collectively."""

    cuda_graphs: bool = False
    compile_steps: bool = False
    lockstep: Dist | None = None

    @property
    def graphs(self) -> bool:
        return self.cuda_graphs and self.lockstep is None  # a sharded forward gathers parameters: not capturable

    @property
    def model_options(self) -> dict[str, bool]:
        return {"graphs": self.graphs, "compile_steps": self.compile_steps and self.lockstep is None}


class StepDistribution:
    """One sampling mode: at each step, from pi_ref's logits and its sampler distribution `ref_logp`, the
    log-probabilities to sample from and the KL(pi || pi_ref) they add per row (None: pi is pi_ref, KL 0).
    A mode that keeps a model in step with the sampled tokens advances and drops rows with pi_ref's."""

    guide_passes = 0

    def logprobs(self, logits: torch.Tensor, ref_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return ref_logp, None

    def advance(self, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        pass

    def select(self, keep: torch.Tensor) -> None:
        pass


class Guided(StepDistribution):
    """pi_ref times exp(offset) on its top-k candidates (guidance.guided_logprobs), the guide's KV cache in step."""

    def __init__(self, guide: Guidance, ids: torch.Tensor, mask: torch.Tensor, capacity: int,
                 options: DecodeOptions) -> None:
        self.guide = guide
        self.state = guide_state(guide.model, ids, mask, capacity, guide.top_k, options.model_options)

    @property
    def guide_passes(self) -> int:
        return self.state.passes

    def offsets(self, ref_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pi_ref's top-k candidates [B, k] and their offsets [B, k]."""
        candidates = ref_logp.topk(self.guide.top_k, dim=-1).indices
        return candidates, self.guide.offsets(self.state.values(candidates))

    def logprobs(self, logits: torch.Tensor, ref_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logp = G.guided_logprobs(ref_logp, *self.offsets(ref_logp), self.guide.mask_non_candidates)
        return logp, G.kl_divergence(logp, ref_logp)

    def advance(self, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        self.state.advance(tokens, alive)

    def select(self, keep: torch.Tensor) -> None:
        self.state.select(keep)


class PaperCompat(StepDistribution):
    """The published code's decoding step (guidance.paper_compat_logprobs), guided or not."""

    def __init__(self, spec: SamplingSpec, guided: Guided | None) -> None:
        self.spec, self.guided = spec, guided

    @property
    def guide_passes(self) -> int:
        return self.guided.guide_passes if self.guided is not None else 0

    def logprobs(self, logits: torch.Tensor, ref_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        candidates = offsets = None
        if self.guided is not None:
            candidates, offsets = self.guided.offsets(ref_logp)
        mask = self.guided.guide.mask_non_candidates if self.guided is not None else False
        logp, kl_ref = G.paper_compat_logprobs(logits, self.spec.temperature, self.spec.top_p, candidates, offsets,
                                               mask)
        return logp, G.kl_divergence(logp, kl_ref)

    def advance(self, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        if self.guided is not None:
            self.guided.advance(tokens, alive)

    def select(self, keep: torch.Tensor) -> None:
        if self.guided is not None:
            self.guided.select(keep)


class FromPolicy(StepDistribution):
    """A fine-tuned copy of pi_ref samples, with its own KV cache; KL(policy || pi_ref) as the sampler sees both,
    or (spec.paper_compat) against pi_ref at the temperature without top-p, as the published code measures KL."""

    def __init__(self, policy: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, capacity: int,
                 spec: SamplingSpec, options: DecodeOptions) -> None:
        self.spec = spec
        self.state = LMState(policy, ids, mask, capacity, **options.model_options)

    def logprobs(self, logits: torch.Tensor, ref_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logp = G.sampler_logprobs(self.state.logits, self.spec.temperature, self.spec.top_p)
        if self.spec.paper_compat:
            ref_logp = torch.log_softmax(logits.float() / self.spec.temperature, dim=-1)
        return logp, G.kl_divergence(logp, ref_logp)

    def advance(self, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        self.state.advance(tokens, alive)

    def select(self, keep: torch.Tensor) -> None:
        self.state.select(keep)


def step_distribution(steering: Steering, ids: torch.Tensor, mask: torch.Tensor, capacity: int,
                      spec: SamplingSpec, options: DecodeOptions) -> StepDistribution:
    """The sampling mode that `steering` and `spec.paper_compat` ask for."""
    if steering.policy is not None:
        return FromPolicy(steering.policy, ids, mask, capacity, spec, options)
    guided = Guided(steering.guide, ids, mask, capacity, options) if steering.guide is not None else None
    if spec.paper_compat:
        return PaperCompat(spec, guided)
    return guided or StepDistribution()


UNSTEERED = Steering()


@torch.no_grad()
def generate(pi_ref: PreTrainedModel, prompts: PromptBatch, spec: SamplingSpec, generator: torch.Generator,
             steering: Steering = UNSTEERED, options: DecodeOptions = DecodeOptions()) -> Generation:
    """Sample responses to the prompts until each stops, from pi_ref or what `steering` asks for; KL per row
    against pi_ref's sampler distribution."""
    ids, mask, stops = prompts.ids, prompts.mask, prompts.stops
    b, device = ids.shape[0], ids.device
    capacity = ids.shape[1] + spec.max_new_tokens
    ref = LMState(pi_ref, ids, mask, capacity, **options.model_options)
    mode = step_distribution(steering, ids, mask, capacity, spec, options)
    batch = _Batch(b, device)
    tokens = torch.full((b, spec.max_new_tokens), stops.pad_id, dtype=torch.long, device=device)
    kl = torch.zeros(b, device=device)
    stop_ids = stops.ids.to(device)
    steps = 0
    for step in range(spec.max_new_tokens):
        ref_logp = G.sampler_logprobs(ref.logits, spec.temperature, spec.top_p)
        logp, step_kl = mode.logprobs(ref.logits, ref_logp)
        if step_kl is not None:
            kl[batch.rows] += step_kl * batch.alive
        token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
        if step == 0 and steering.explore is not None and bool(steering.explore.any()):
            token = _explore(token, ref_logp, steering, generator)
        token = torch.where(batch.alive, token, torch.full_like(token, stops.pad_id))
        tokens[batch.rows, step] = token
        steps = step + 1
        batch.took(token, stop_ids, stops.budget)
        if step == spec.max_new_tokens - 1:
            break  # the budget is spent: no forward for a token that will not be sampled
        remaining = int(batch.alive.sum())  # the one host synchronisation per step
        lockstep = options.lockstep
        if not (lockstep.any(remaining > 0) if lockstep is not None else remaining > 0):
            break
        ref.advance(token, batch.alive)  # finished rows feed a masked pad: every row keeps the same cache length
        mode.advance(token, batch.alive)
        # A quarter of the batch has stopped: drop the finished rows. Not with CUDA graphs, which are
        # captured for the whole batch; on a GPU a finished row costs little (a step reads the weights once).
        if not options.graphs and remaining <= batch.alive.numel() * 3 // 4:
            keep = batch.keep(remaining)
            ref.select(keep)
            mode.select(keep)
    return Generation(tokens=tokens[:, :steps], lengths=batch.lengths, kl=kl, guide_passes=mode.guide_passes,
                      row_steps=batch.row_steps)


def _explore(token: torch.Tensor, ref_logp: torch.Tensor, steering: Steering,
             generator: torch.Generator) -> torch.Tensor:
    """The explore rows' first token, drawn uniformly from pi_ref's top explore_top_k (of nonzero mass)."""
    top = ref_logp.topk(steering.explore_top_k, dim=-1)
    valid = top.values > float("-inf")
    pick = torch.multinomial(valid.float(), 1, generator=generator)
    return torch.where(steering.explore, top.indices.gather(1, pick).squeeze(1), token)


class _Batch:
    """Which rows are still in the batch (`rows`: batch position -> original row) and which of them are alive;
    `lengths` per original row."""

    def __init__(self, b: int, device: torch.device) -> None:
        self.alive = torch.ones(b, dtype=torch.bool, device=device)
        self.rows = torch.arange(b, device=device)
        self.lengths = torch.zeros(b, dtype=torch.long, device=device)
        self.row_steps = 0  # rows in the batch summed over decoding steps

    def took(self, token: torch.Tensor, stop_ids: torch.Tensor, budget: torch.Tensor | None) -> None:
        """Count the sampled token; a row that sampled a stop token or spent its budget is finished."""
        self.row_steps += self.rows.numel()
        self.lengths[self.rows] += self.alive.long()
        self.alive = self.alive & ~torch.isin(token, stop_ids)
        if budget is not None:
            self.alive = self.alive & (self.lengths[self.rows] < budget[self.rows])

    def keep(self, remaining: int) -> torch.Tensor:
        """Drop the finished rows; returns the batch positions kept (one, if none is alive)."""
        keep = self.alive.nonzero().squeeze(1) if remaining else torch.zeros(1, dtype=torch.long,
                                                                             device=self.alive.device)
        self.rows, self.alive = self.rows[keep], self.alive[keep]
        return keep
