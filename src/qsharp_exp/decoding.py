"""One batched sampling loop with KV caches for pi_ref and the guide (pi_ref, CD and Q# alike).

Semantics: pi_ref is the sampler's distribution (temperature, then top-p). Guidance multiplies it
on pi_ref's top-k candidates by exp(offset) and renormalises. The per-token KL(pi || pi_ref) is
computed exactly over the vocabulary against that same sampler distribution, so it is 0 without
guidance. `paper_compat` switches to the published code's ordering instead (guidance.paper_compat_step).
Prompts are left-padded; each row stops at its own stop token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from qsharp_exp import guidance as G
from qsharp_exp.distributed import Dist
from qsharp_exp.models.return_model import ReturnModel


@dataclass(frozen=True)
class SamplingSpec:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    paper_compat: bool = False


@dataclass(frozen=True)
class Guidance:
    model: ReturnModel
    algo: str  # qsharp | cd
    eta: float
    top_k: int
    mask_non_candidates: bool = False


@dataclass
class Generation:
    tokens: torch.Tensor  # [B, T] response tokens, pad after EOS
    lengths: torch.Tensor  # [B] tokens up to and including EOS
    kl: torch.Tensor  # [B] sum over the response of KL(pi || pi_ref), nats
    guide_passes: int  # guide forwards, prefill included
    row_steps: int = 0  # rows in the batch summed over decoding steps (what the steps computed)


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def _select_rows(cache: DynamicCache, keep: torch.Tensor) -> None:
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[keep], layer.values[keep]


class GuideState:
    """The guide's KV cache and its per-step outputs, kept in step with pi_ref's: one guide pass per step.

    Q-type: the pass takes in the sampled token and yields every next candidate's value at once.
    V-type: the sampled token is kept pending and goes into the next step's scoring pass together with
    the k candidates: the pending token sees the prefix, each candidate the prefix, the pending token
    and itself. The candidates' cache entries are dropped after the pass; nothing is recomputed and no
    per-step branch depends on device values.
    """

    def __init__(self, model: ReturnModel, ids: torch.Tensor, mask: torch.Tensor) -> None:
        self.model = model
        self.cache = DynamicCache(config=model.trunk.config)
        self.mask = mask.clone()
        self.next_pos = mask.long().sum(-1)
        width = model.context_width
        self.recent_ids = ids[:, ids.shape[1] - width :] if width else None
        self.recent_mask = mask[:, mask.shape[1] - width :] if width else None
        self.passes = 0
        # V-type: the sampled token not yet in the cache, its position and the embedding of it.
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        out = self._forward(model.embed(ids, mask), mask, positions(mask))
        self.q_outputs = out[:, -1] if model.cfg.head == "q" else None  # [B, V, D]

    def _forward(self, embeds, attention_mask, position_ids) -> torch.Tensor:
        self.passes += 1
        return self.model.head_outputs(self.model.hidden(embeds, attention_mask, position_ids, self.cache))

    def _embed_new(self, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of one new token per row [B, n] (n candidates side by side, each alone)."""
        b, n = ids.shape
        if not self.model.context_width:
            return self.model.embed(ids, torch.ones_like(ids))
        ctx = self.recent_ids.repeat_interleave(n, 0)
        ctx_mask = self.recent_mask.repeat_interleave(n, 0)
        flat = ids.reshape(b * n, 1)
        return self.model.embed(flat, torch.ones_like(flat), ctx, ctx_mask).view(b, n, -1)

    def values(self, candidates: torch.Tensor) -> torch.Tensor:
        """Head outputs [B, k, D] for each candidate token after the current prefix."""
        if self.q_outputs is not None:
            return self.q_outputs.gather(1, candidates.unsqueeze(-1).expand(-1, -1, self.q_outputs.shape[-1]))
        b, k = candidates.shape
        device = candidates.device
        embeds, cand_pos = self._embed_new(candidates), self.next_pos.unsqueeze(1).expand(b, k)
        own = torch.eye(k, dtype=torch.bool, device=device).expand(b, k, k)
        seen = self.mask.bool()  # the prefix, the pending token's column included
        attn = torch.cat([seen.unsqueeze(1).expand(b, k, -1), own], dim=-1)
        pos = cand_pos
        if self._pending is not None:
            pending_embed, pending_pos, _ = self._pending
            embeds = torch.cat([pending_embed, embeds], dim=1)
            pos = torch.cat([pending_pos.unsqueeze(1), cand_pos], dim=1)
            pending_row = torch.cat([seen, torch.zeros(b, k, dtype=torch.bool, device=device)], dim=-1)
            attn = torch.cat([pending_row.unsqueeze(1), attn], dim=1)
        keep = self.cache.get_seq_length() + (1 if self._pending is not None else 0)
        out = self._forward(embeds, attn.unsqueeze(1), pos)[:, -k:]
        for layer in self.cache.layers:  # drop the candidates' entries: the cache is the prefix's again
            layer.keys, layer.values = layer.keys[:, :, :keep], layer.values[:, :, :keep]
        self._pending = None
        return out

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows `keep` (finished rows leave the batch)."""
        _select_rows(self.cache, keep)
        self.mask, self.next_pos = self.mask[keep], self.next_pos[keep]
        if self.recent_ids is not None:
            self.recent_ids, self.recent_mask = self.recent_ids[keep], self.recent_mask[keep]
        if self._pending is not None:
            self._pending = tuple(x[keep] for x in self._pending)
        if self.q_outputs is not None:
            self.q_outputs = self.q_outputs[keep]

    def advance(self, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        """Append the sampled token of every row (a masked pad for finished rows)."""
        step_mask = alive.to(self.mask.dtype).unsqueeze(1)
        self.mask = torch.cat([self.mask, step_mask], dim=1)
        if self.q_outputs is not None:
            out = self._forward(self._embed_new(tokens.unsqueeze(1)), self.mask, self.next_pos.unsqueeze(1))
            self.q_outputs = out[:, -1]
        else:
            self._pending = (self._embed_new(tokens.unsqueeze(1)), self.next_pos.clone(), tokens)
        self.next_pos = self.next_pos + alive.long()
        if self.recent_ids is not None:
            self.recent_ids = torch.cat([self.recent_ids[:, 1:], tokens.unsqueeze(1)], dim=1)
            self.recent_mask = torch.cat([self.recent_mask[:, 1:], step_mask], dim=1)


@torch.no_grad()
def generate(
    pi_ref: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    spec: SamplingSpec,
    stop_ids: torch.Tensor,
    pad_id: int,
    generator: torch.Generator,
    guide: Guidance | None = None,
    explore: torch.Tensor | None = None,
    explore_top_k: int = 0,
    lockstep: Dist | None = None,
    policy: PreTrainedModel | None = None,
) -> Generation:
    """Sample responses to left-padded prompts `ids` [B, L] (mask 1 = real token) until a token of
    `stop_ids` (EOS, end of turn) or `spec.max_new_tokens`.

    `explore` [B] bool: those rows draw their first token uniformly from pi_ref's top `explore_top_k`
    tokens (the exploratory switch of Algorithm 2), then continue as usual.
    `policy`: a fine-tuned copy of pi_ref (REINFORCE, DPO, RPO) that samples instead, with its own KV
    cache; KL is then KL(policy || pi_ref), both as the sampler sees them.
    `lockstep`: ranks that share a ZeRO-3-sharded pi_ref; every rank keeps stepping (finished rows feed
    masked pads) until all ranks are done, because each forward gathers parameters collectively.
    """
    b = ids.shape[0]
    device = ids.device
    cache = DynamicCache(config=pi_ref.config)
    mask = mask.clone()
    next_pos = mask.long().sum(-1)
    logits = pi_ref(
        input_ids=ids, attention_mask=mask, position_ids=positions(mask), cache=cache, use_cache=True
    ).logits[:, -1]
    state = GuideState(guide.model, ids, mask) if guide is not None else None
    policy_cache = DynamicCache(config=policy.config) if policy is not None else None
    if policy is not None:
        policy_logits = policy(input_ids=ids, attention_mask=mask, position_ids=positions(mask), cache=policy_cache,
                               use_cache=True).logits[:, -1]
    alive = torch.ones(b, dtype=torch.bool, device=device)  # of the rows still in the batch
    rows = torch.arange(b, device=device)  # batch position -> original row
    lengths = torch.zeros(b, dtype=torch.long, device=device)  # per original row, as are kl and tokens
    kl = torch.zeros(b, device=device)
    tokens = torch.full((b, spec.max_new_tokens), pad_id, dtype=torch.long, device=device)
    steps = row_steps = 0
    stop_ids = stop_ids.to(device)
    for step in range(spec.max_new_tokens):
        ref_logp = G.sampler_logprobs(logits, spec.temperature, spec.top_p)
        candidates = offsets = None
        if state is not None:
            candidates = ref_logp.topk(guide.top_k, dim=-1).indices
            offsets = guide.model.dist.offset(state.values(candidates), guide.eta, guide.algo)
        if spec.paper_compat:
            logp, kl_ref = G.paper_compat_logprobs(logits, spec.temperature, spec.top_p, candidates, offsets,
                                                   guide.mask_non_candidates if guide else False)
            kl[rows] += G.kl_divergence(logp, kl_ref) * alive
        elif state is not None:
            logp = G.guided_logprobs(ref_logp, candidates, offsets, guide.mask_non_candidates)
            kl[rows] += G.kl_divergence(logp, ref_logp) * alive
        elif policy is not None:
            logp = G.sampler_logprobs(policy_logits, spec.temperature, spec.top_p)
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
        if step == spec.max_new_tokens - 1:
            break  # the budget is spent: no forward for a token that will not be sampled
        remaining = int(alive.sum())  # the one host synchronisation per step
        if not (lockstep.any(remaining > 0) if lockstep is not None else remaining > 0):
            break
        step_mask = torch.cat([mask, alive.to(mask.dtype).unsqueeze(1)], dim=1)
        # Finished rows get a masked pad so that every row keeps the same cache length.
        logits = pi_ref(
            input_ids=token.unsqueeze(1), attention_mask=step_mask, position_ids=next_pos.unsqueeze(1),
            cache=cache, use_cache=True,
        ).logits[:, -1]
        if policy is not None:
            policy_logits = policy(input_ids=token.unsqueeze(1), attention_mask=step_mask,
                                   position_ids=next_pos.unsqueeze(1), cache=policy_cache, use_cache=True).logits[:, -1]
        mask = step_mask
        next_pos = next_pos + alive.long()
        if state is not None:
            state.advance(token, alive)
        if remaining <= alive.numel() * 3 // 4:  # a quarter of the batch has stopped: drop the finished rows
            keep = alive.nonzero().squeeze(1) if remaining else torch.zeros(1, dtype=torch.long, device=device)
            rows, alive, mask, next_pos, logits = rows[keep], alive[keep], mask[keep], next_pos[keep], logits[keep]
            _select_rows(cache, keep)
            if policy is not None:
                _select_rows(policy_cache, keep)
                policy_logits = policy_logits[keep]
            if state is not None:
                state.select(keep)
    return Generation(
        tokens=tokens[:, :steps], lengths=lengths, kl=kl, guide_passes=state.passes if state is not None else 0,
        row_steps=row_steps,
    )
