"""The return model's head kinds (`model.guide.head`, docs/method.md section 2): what the value head outputs at a
position and how an action's value is read from it. A new kind is one class here, registered in HEADS, plus its
decoding state in sampling/decoding.py (`@register_guide_state`).

- Q-type (`q`): from the prefix x, one output per vocabulary token y: every candidate's value in one pass. An
  action's value is read at the token before it, in the action's column.
- V-type (`v`): the input is x·y, and the output at y's position is the value of (x, y). Scoring k candidates
  during decoding takes one pass over the k of them side by side, which needs k + 1 extra cache columns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from qsharp_exp.registry import Registry


class HeadKind(ABC):
    name: str
    label_shift: int  # an action at position t is valued by the output at position t - label_shift

    @abstractmethod
    def outputs_per_position(self, vocab_size: int) -> int:
        """How many return distributions the head outputs at one position."""

    @abstractmethod
    def shape(self, out: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """The head's flat outputs [..., n * D] as the kind reads them."""

    @abstractmethod
    def pick(self, outputs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Each example's outputs [N, D] for its action [N], from the outputs at its position."""

    @abstractmethod
    def decoding_columns(self, top_k: int) -> int:
        """Cache columns a decoding step needs beyond the sampled tokens."""


class QHead(HeadKind):
    name, label_shift = "q", 1

    def outputs_per_position(self, vocab_size: int) -> int:
        return vocab_size

    def shape(self, out: torch.Tensor, vocab_size: int) -> torch.Tensor:
        return out.view(*out.shape[:-1], vocab_size, out.shape[-1] // vocab_size)  # [..., V, D]

    def pick(self, outputs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return outputs[torch.arange(len(actions), device=outputs.device), actions.to(outputs.device)]

    def decoding_columns(self, top_k: int) -> int:
        return 0


class VHead(HeadKind):
    name, label_shift = "v", 0

    def outputs_per_position(self, vocab_size: int) -> int:
        return 1

    def shape(self, out: torch.Tensor, vocab_size: int) -> torch.Tensor:
        return out  # [..., D]

    def pick(self, outputs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return outputs

    def decoding_columns(self, top_k: int) -> int:
        return top_k + 1  # the pending token and the k candidates of one scoring pass


HEADS: Registry[HeadKind] = Registry("head kind", "model.guide.head")
for _kind in (QHead(), VHead()):
    HEADS.add(_kind.name, _kind)
