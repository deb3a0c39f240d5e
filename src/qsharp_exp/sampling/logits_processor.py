"""Value-guided sampling inside transformers' own `model.generate`: a `LogitsProcessor` that turns pi_ref's
next-token logits into the guided distribution of a trained return model (Q#, CD, or any registered rule).

    guide = qsharp_exp.load_guide("path/to/return_model")
    spec = qsharp_exp.SamplingSpec(temperature=1.0, top_p=1.0, max_new_tokens=64)
    settings = qsharp_exp.GuidanceSettings(rule="qsharp", eta=0.1, top_k=20)
    processor = qsharp_exp.GuidanceLogitsProcessor(guide, settings, tokenizer=tokenizer, spec=spec)
    out = pi_ref.generate(**batch, max_new_tokens=64, **processor.generate_kwargs())
    processor.kl  # [B] KL(pi || pi_ref) of each response, nats

It computes what the framework's sampler computes (docs/method.md, section 3): pi_ref's sampler
distribution (temperature, then top-p: those of the processor's `spec`), its top-k candidates
shifted by the rule's offsets, renormalised. `generate` must then sample from that as it is:
`do_sample=True, temperature=1.0, top_k=0, top_p=1.0` (what `generate_kwargs()` returns); a temperature or
top-p given to `generate` would be applied a second time, after guidance.

The guide keeps its own KV cache across steps, one guide pass per step as in the framework's loop. Prompts are
left-padded (right padding is refused); the prompt mask is read from the tokenizer's leading pad tokens. Rows
that emitted its EOS stop adding KL. A call whose input is the previous one plus one token continues; any other
starts afresh (a new `generate`), except two that `generate` makes only inside one call and that the guide's
cache cannot follow, which are refused: beam search reordering its beams, and assisted (speculative)
decoding going back to an earlier position. Several return sequences per prompt (sampling) work as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase

from qsharp_exp import guidance as G
from qsharp_exp.config import ETA_RANGE, TEMPERATURE_RANGE, NonCandidates
from qsharp_exp.guidance import Guidance, GuidanceSettings
from qsharp_exp.prompts import context_length
from qsharp_exp.sampling.decoding import DecodeOptions, Guided, SamplingSpec

if TYPE_CHECKING:
    from qsharp_exp.models.return_model import ReturnModel


def check_sampler_settings(eta: float, temperature: float, top_p: float,
                           spell: Callable[[str, float], str] = lambda key, value: f"{key}={value}") -> None:
    """The numbers guided sampling takes: eta and pi_ref's temperature within their ranges (config.py), top_p in
    (0, 1]; `spell` names a setting in the message (a keyword argument, or a command's flag)."""
    for key, value, (low, high) in (("eta", eta, ETA_RANGE), ("temperature", temperature, TEMPERATURE_RANGE)):
        if not low <= value <= high:  # (also refuses nan)
            raise ValueError(f"{spell(key, value)} must lie in [{low:g}, {high:g}]")
    if not 0 < top_p <= 1:
        raise ValueError(f"{spell('top_p', top_p)} must lie in (0, 1]: 1 disables top-p")


class GuidanceLogitsProcessor(LogitsProcessor):
    def __init__(self, guide: ReturnModel, settings: GuidanceSettings | None = None, *,
                 tokenizer: PreTrainedTokenizerBase | None = None, spec: SamplingSpec | None = None) -> None:
        """`guide`: a return model (`load_guide`) on pi_ref's device, sharing its tokenizer. `settings`: the rule, eta,
        top_k and non_candidates (default: Q# at eta 0.1 on 20 candidates). `tokenizer`: pi_ref's,
        for its pad token (the prompt mask) and EOS (where a response's KL stops). `spec`: pi_ref's sampler (its
        temperature and top_p) and the most tokens one `generate` call samples, which sizes the guide's cache
        (default: temperature 1, no top-p, up to the guide's context)."""
        settings, spec = settings or GuidanceSettings(), spec or SamplingSpec(max_new_tokens=0)
        check_sampler_settings(settings.eta, spec.temperature, spec.top_p)
        if spec.paper_compat:
            raise ValueError("paper_compat orders guidance as the published code does; the processor follows the "
                             "framework's order only: use SamplingSpec(paper_compat=False)")
        choices = [c.value for c in NonCandidates]
        if settings.non_candidates not in choices:
            raise ValueError(f"non_candidates={settings.non_candidates!r} must be one of {', '.join(choices)}")
        if not 1 <= settings.top_k <= guide.vocab_size:
            raise ValueError(f"top_k={settings.top_k} must lie in 1..{guide.vocab_size} (the guide's vocabulary)")
        if tokenizer is not None and len(tokenizer) != guide.vocab_size:
            raise ValueError(f"the guide scores a vocabulary of {guide.vocab_size} tokens and pi_ref's tokenizer has "
                             f"{len(tokenizer)}: use the guide trained with this pi_ref.")
        self.guidance = Guidance.from_settings(guide.eval(), settings)
        self.spec = spec
        self.pad_token_id = tokenizer.pad_token_id if tokenizer is not None else None
        eos = tokenizer.eos_token_id if tokenizer is not None else None
        self.eos_ids = torch.tensor([eos] if eos is not None else [], dtype=torch.long)
        self._guided: Guided | None = None
        self._seen = torch.zeros(0, 0, dtype=torch.long)  # the input of the last call: what the guide's cache holds
        self._capacity = self._prompt_width = 0
        self._alive = torch.ones(0, dtype=torch.bool)
        self.kl = torch.zeros(0)  # [B] KL(pi || pi_ref) of each response so far, nats

    def generate_kwargs(self) -> dict:
        """The `generate` arguments that sample from the guided distribution as it is."""
        return {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
                "logits_processor": LogitsProcessorList([self])}

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._continues(input_ids):
            if input_ids.shape[1] > self._capacity:
                raise ValueError(f"this generate call samples more tokens than the processor's "
                                 f"spec.max_new_tokens={self.spec.max_new_tokens}, which sizes the guide's cache: give "
                                 "the processor a SamplingSpec whose max_new_tokens is at least generate's")
            token = input_ids[:, -1]
            self._alive = self._alive & ~torch.isin(token, self.eos_ids)
            self._guided.advance(token, self._alive)
        else:
            self._start(input_ids)
        self._seen = input_ids.clone()  # (generate may reuse the tensor it passed)
        ref_logp = G.sampler_logprobs(scores, self.spec.temperature, self.spec.top_p)
        logp, kl = self._guided.logprobs(scores, ref_logp)
        self.kl += kl * self._alive
        return logp

    def _continues(self, input_ids: torch.Tensor) -> bool:
        """Whether this call is the last one plus one token (the same `generate`); raises for the two inputs
        that only happen inside one `generate` and that the guide's cache cannot follow."""
        seen = self._seen
        if self._guided is None or input_ids.shape[0] != seen.shape[0]:
            return False
        width, last = input_ids.shape[1], seen.shape[1]
        if width == last + 1:
            prefix = input_ids[:, :-1]
            if torch.equal(prefix, seen):
                return True
            if (prefix[:, None, :] == seen[None, :, :]).all(-1).any(-1).all():
                raise ValueError("beam search reorders the sequences between steps and the guide's cache does not "
                                 "follow them: the processor samples (num_beams=1); for several completions per "
                                 "prompt, use num_return_sequences")
        elif self._prompt_width < width <= last and torch.equal(input_ids[:, :-1], seen[:, : width - 1]):
            raise ValueError("this call goes back to an earlier position of the sequences the processor is guiding, "
                             "as assisted (speculative) decoding does, which the guide's cache does not follow: "
                             "generate without an assistant model (for a new generate call on a prefix of the last "
                             "one's output, use a new processor)")
        return False

    def _start(self, prompts: torch.Tensor) -> None:
        """A new batch of left-padded prompts: the guide reads them into a fresh cache."""
        if self.pad_token_id is None:
            mask = torch.ones_like(prompts)
        else:
            mask = ((prompts != self.pad_token_id).long().cumsum(-1) > 0).long()  # leading pads only
            if (prompts[mask.bool().any(-1), -1] == self.pad_token_id).any():
                raise ValueError("a prompt ends with padding: the processor reads left-padded prompts only: set "
                                 "tokenizer.padding_side = 'left' before tokenizing the batch")
        context = context_length(self.guidance.model.trunk.config) or prompts.shape[1] + 1
        capacity = prompts.shape[1] + (self.spec.max_new_tokens or max(1, context - prompts.shape[1]))
        self._guided = Guided(self.guidance, prompts, mask, capacity, DecodeOptions())
        self._prompt_width = prompts.shape[1]
        self._capacity = capacity
        self._alive = torch.ones(prompts.shape[0], dtype=torch.bool, device=prompts.device)
        self.eos_ids = self.eos_ids.to(prompts.device)
        self.kl = torch.zeros(prompts.shape[0], device=prompts.device)
