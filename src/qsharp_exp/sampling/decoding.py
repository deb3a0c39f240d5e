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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel, StaticCache

from qsharp_exp import guidance as G
from qsharp_exp.distributed import Dist
from qsharp_exp.guidance import Guidance
from qsharp_exp.models.lm import compiled
from qsharp_exp.models.stem import context_width

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

    def select(self, keep: torch.Tensor) -> None:
        self.window.select(keep)
        self.next_pos, self.logits = self.next_pos[keep], self.logits[keep]
        if self.recent is not None:
            self.recent.select(keep)


class GuideState:
    """The guide's KV window and its per-step outputs, kept in step with pi_ref's: one guide pass per step.

    Q-type: the pass takes in the sampled token and yields every next candidate's value at once.
    V-type: the sampled token is kept pending and goes into the next step's scoring pass together with
    the k candidates: the pending token sees the prefix, each candidate the prefix, the pending token
    and itself. Only the pending token's column stays in the cache; nothing is recomputed and no
    per-step branch depends on device values.
    """

    def __init__(self, model: ReturnModel, ids: torch.Tensor, mask: torch.Tensor, capacity: int,
                 graphs: bool = False, compile_steps: bool = False) -> None:
        self.model = model
        self.compile_steps = compile_steps
        self.window = KVWindow.for_model(model, model.trunk.config, mask.shape[0], capacity, mask.device, graphs)
        self.next_pos = mask.long().sum(-1)
        width = model.context_width
        self.recent = RecentTokens(ids, mask, width) if width else None
        self.passes = 0
        # V-type: the sampled token not yet in the cache: its embedding, position and whether it is real.
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        q_type = model.cfg.head == "q"
        out = self._pass(None, model.embed(ids, mask), positions(mask), _prefix_mask(mask), mask.bool(), int(q_type))
        self.q_outputs = out[:, -1] if q_type else None  # [B, V, D]

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
        if self.q_outputs is not None:
            return self.q_outputs.gather(1, candidates.unsqueeze(-1).expand(-1, -1, self.q_outputs.shape[-1]))
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
        """Keep only the rows `keep` (finished rows leave the batch)."""
        self.window.select(keep)
        self.next_pos = self.next_pos[keep]
        if self.recent is not None:
            self.recent.select(keep)
        if self._pending is not None:
            self._pending = tuple(x[keep] for x in self._pending)
        if self.q_outputs is not None:
            self.q_outputs = self.q_outputs[keep]

    def advance(self, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        """Take in the sampled token of every row (a masked pad for finished rows)."""
        embeds = self._embed_new(tokens.unsqueeze(1))
        if self.q_outputs is not None:
            one = torch.ones(tokens.shape[0], 1, 1, dtype=torch.bool, device=tokens.device)
            self.q_outputs = self._pass("step", embeds, self.next_pos.unsqueeze(1), one, alive.unsqueeze(1), 1)[:, -1]
        else:
            self._pending = (embeds, self.next_pos.clone(), alive.clone())
        self.next_pos = self.next_pos + alive.long()
        if self.recent is not None:
            self.recent.push(tokens, alive)


@torch.no_grad()
def generate(
    pi_ref: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    spec: SamplingSpec,
    stop_ids: torch.Tensor,
    pad_id: int,
    generator: torch.Generator,
    *,
    guide: Guidance | None = None,
    explore: torch.Tensor | None = None,
    explore_top_k: int = 0,
    budget: torch.Tensor | None = None,
    lockstep: Dist | None = None,
    policy: PreTrainedModel | None = None,
    cuda_graphs: bool = False,
    compile_steps: bool = False,
) -> Generation:
    """Sample responses to left-padded prompts `ids` [B, L] (mask 1 = real token) until a token of
    `stop_ids` (EOS, end of turn) or `spec.max_new_tokens`.

    `explore` [B] bool: those rows draw their first token uniformly from pi_ref's top `explore_top_k`
    tokens (the exploratory switch of Algorithm 2), then continue as usual.
    `budget` [B]: at most this many new tokens per row (at most spec.max_new_tokens), e.g. what is left of
    the response budget after a roll-in prefix.
    `policy`: a fine-tuned copy of pi_ref (REINFORCE, DPO, RPO) that samples instead, with its own KV
    cache; KL is then KL(policy || pi_ref), both as the sampler sees them.
    `lockstep`: ranks that share a ZeRO-3-sharded pi_ref; every rank keeps stepping (finished rows feed
    masked pads) until all ranks are done, because each forward gathers parameters collectively.
    `cuda_graphs`: on CUDA, replay each kind of decoding step as a captured CUDA graph (not with lockstep).
    `compile_steps`: run the decoding steps' forwards through torch.compile (fused kernels; compiled once
    per shape), the prompt's prefill as it is.
    """
    b = ids.shape[0]
    device = ids.device
    capacity = ids.shape[1] + spec.max_new_tokens
    graphs = cuda_graphs and lockstep is None  # a sharded forward gathers parameters: not capturable
    fast = dict(graphs=graphs, compile_steps=compile_steps and lockstep is None)
    ref = LMState(pi_ref, ids, mask, capacity, **fast)
    state = None
    if guide is not None:  # a V-type pass also holds the k candidates
        extra = guide.top_k + 1 if guide.model.cfg.head == "v" else 0
        state = GuideState(guide.model, ids, mask, capacity + extra, **fast)
    sampler = LMState(policy, ids, mask, capacity, **fast) if policy is not None else None
    alive = torch.ones(b, dtype=torch.bool, device=device)  # of the rows still in the batch
    rows = torch.arange(b, device=device)  # batch position -> original row
    lengths = torch.zeros(b, dtype=torch.long, device=device)  # per original row, as are kl and tokens
    kl = torch.zeros(b, device=device)
    tokens = torch.full((b, spec.max_new_tokens), pad_id, dtype=torch.long, device=device)
    steps = row_steps = 0
    stop_ids = stop_ids.to(device)
    for step in range(spec.max_new_tokens):
        logits = ref.logits
        ref_logp = G.sampler_logprobs(logits, spec.temperature, spec.top_p)
        candidates = offsets = None
        if state is not None:
            candidates = ref_logp.topk(guide.top_k, dim=-1).indices
            offsets = guide.offsets(state.values(candidates))
        if spec.paper_compat:
            logp, kl_ref = G.paper_compat_logprobs(logits, spec.temperature, spec.top_p, candidates, offsets,
                                                   guide.mask_non_candidates if guide else False)
            kl[rows] += G.kl_divergence(logp, kl_ref) * alive
        elif state is not None:
            logp = G.guided_logprobs(ref_logp, candidates, offsets, guide.mask_non_candidates)
            kl[rows] += G.kl_divergence(logp, ref_logp) * alive
        elif sampler is not None:
            logp = G.sampler_logprobs(sampler.logits, spec.temperature, spec.top_p)
            kl[rows] += G.kl_divergence(logp, ref_logp) * alive
        else:
            logp = ref_logp
        token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
        if step == 0 and explore is not None and bool(explore.any()):
            top = ref_logp.topk(explore_top_k, dim=-1)
            valid = top.values > float("-inf")
            pick = torch.multinomial(valid.float(), 1, generator=generator)
            token = torch.where(explore, top.indices.gather(1, pick).squeeze(1), token)
        token = torch.where(alive, token, torch.full_like(token, pad_id))
        tokens[rows, step] = token
        steps, row_steps = step + 1, row_steps + rows.numel()
        lengths[rows] += alive.long()
        alive = alive & ~torch.isin(token, stop_ids)
        if budget is not None:
            alive = alive & (lengths[rows] < budget[rows])
        if step == spec.max_new_tokens - 1:
            break  # the budget is spent: no forward for a token that will not be sampled
        remaining = int(alive.sum())  # the one host synchronisation per step
        if not (lockstep.any(remaining > 0) if lockstep is not None else remaining > 0):
            break
        ref.advance(token, alive)  # finished rows feed a masked pad: every row keeps the same cache length
        if sampler is not None:
            sampler.advance(token, alive)
        if state is not None:
            state.advance(token, alive)
        # A quarter of the batch has stopped: drop the finished rows. Not with CUDA graphs, which are
        # captured for the whole batch; on a GPU a finished row costs little (a step reads the weights once).
        if not graphs and remaining <= alive.numel() * 3 // 4:
            keep = alive.nonzero().squeeze(1) if remaining else torch.zeros(1, dtype=torch.long, device=device)
            rows, alive = rows[keep], alive[keep]
            for model_state in (ref, sampler, state):
                if model_state is not None:
                    model_state.select(keep)
    return Generation(
        tokens=tokens[:, :steps], lengths=lengths, kl=kl, guide_passes=state.passes if state is not None else 0,
        row_steps=row_steps,
    )
