"""A causal convolution over the token embeddings before the transformer blocks, and GPT-2 with it.

Each position then sees its `width - 1` predecessors directly, so an edge `u , v` is one vector at v:
one attention step finds "the pair whose first element is u" (docs/star_graph.md measures that small
models do not learn the lookup at CPU scale without it). Padding embeds as zeros, so left padding and
the start of a sequence look the same to the convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, GPT2Model


class CausalConvStem(nn.Module):
    """y_t = x_t + W * [x_{t-w+1} .. x_t]: each position sees its w-1 predecessors before attention."""

    def __init__(self, width: int, hidden: int, init_std: float) -> None:
        super().__init__()
        self.width = width
        self.conv = nn.Conv1d(hidden, hidden, kernel_size=width)
        nn.init.normal_(self.conv.weight, std=init_std)
        nn.init.zeros_(self.conv.bias)

    def forward(self, embeds: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """embeds [B, T, H]; context [B, width-1, H] = the embeddings just before (zeros at the start)."""
        if context is None:
            context = embeds.new_zeros(embeds.shape[0], self.width - 1, embeds.shape[-1])
        window = torch.cat([context, embeds], dim=1).transpose(1, 2)
        return embeds + self.conv(window).transpose(1, 2)


def embed_tokens(table: nn.Embedding, stem: CausalConvStem | None, ids: torch.Tensor, mask: torch.Tensor,
                 context_ids: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Input embeddings of `ids` [B, T] (padding as zeros), through the stem when there is one;
    `context_ids` [B, width-1]: the tokens just before `ids` (for a step of cached decoding)."""
    embeds = table(ids) * mask.unsqueeze(-1).to(table.weight.dtype)
    if stem is None:
        return embeds
    context = None
    if context_ids is not None:
        context = table(context_ids) * context_mask.unsqueeze(-1).to(table.weight.dtype)
    return stem(embeds, context)


class ConvGPT2Config(GPT2Config):
    model_type = "qsharp_conv_gpt2"

    def __init__(self, conv_width: int = 4, **kwargs) -> None:
        super().__init__(**kwargs)
        self.conv_width = conv_width


class ConvGPT2LMHeadModel(GPT2LMHeadModel):
    """GPT-2 with a causal convolution stem: a plain HF causal LM for training, full-sequence calls
    (`model(input_ids=..., attention_mask=...)`) and transformers' cached `generate`; the framework's own
    decoding passes `inputs_embeds` from `embed` with the previous tokens as context (sampling/decoding.py)."""

    config_class = ConvGPT2Config

    def __init__(self, config: ConvGPT2Config) -> None:
        super().__init__(config)
        self.stem = CausalConvStem(config.conv_width, config.n_embd, config.initializer_range)

    @property
    def context_width(self) -> int:
        return self.stem.width - 1

    def embed(self, ids: torch.Tensor, mask: torch.Tensor, context_ids: torch.Tensor | None = None,
              context_mask: torch.Tensor | None = None) -> torch.Tensor:
        return embed_tokens(self.get_input_embeddings(), self.stem, ids, mask, context_ids, context_mask)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, position_ids=None, **kwargs):
        # `position_ids` named here: `generate` passes them (left padding) only to a forward that names them.
        if inputs_embeds is None:
            # A whole sequence from its start: the 2-D mask says which tokens are padding.
            plain = attention_mask is not None and attention_mask.dim() == 2
            inputs_embeds = self.embed(input_ids, attention_mask if plain else torch.ones_like(input_ids))
        return super().forward(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                               **kwargs)

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, *args, **kwargs) -> dict:
        """A cached step of `generate` feeds only the new tokens; their embeddings also need the `width - 1`
        tokens before them, which only the full `input_ids` here still has."""
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        step_ids = inputs.get("input_ids")
        if step_ids is None or step_ids.shape[1] == input_ids.shape[1]:
            return inputs  # the whole sequence: forward embeds it from its start
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None or mask.dim() != 2 else mask
        new, width = step_ids.shape[1], self.context_width
        earlier_ids = F.pad(input_ids[:, :-new], (width, 0))[:, -width:]  # zeros before the start: padding
        earlier_mask = F.pad(mask[:, :-new], (width, 0))[:, -width:]
        inputs["inputs_embeds"] = self.embed(step_ids, mask[:, -new:], earlier_ids, earlier_mask)
        inputs["input_ids"] = None
        return inputs


AutoConfig.register(ConvGPT2Config.model_type, ConvGPT2Config)
AutoModelForCausalLM.register(ConvGPT2Config, ConvGPT2LMHeadModel)


def context_width(model: nn.Module) -> int:
    """How many earlier tokens a new token's embedding needs (0 without a stem)."""
    return getattr(model, "context_width", 0)


def split_lm(lm: nn.Module) -> tuple[nn.Module, CausalConvStem | None]:
    """A causal LM's trunk without its LM head (a GPT-2 trunk with a plain GPT-2 config, so it saves and
    loads as one) and its stem: what a return model initialised from that LM starts from."""
    stem = getattr(lm, "stem", None)
    if isinstance(lm, ConvGPT2LMHeadModel):
        settings = {k: v for k, v in lm.config.to_dict().items() if k not in ("conv_width", "model_type")}
        trunk = GPT2Model(GPT2Config(**settings))
        trunk.load_state_dict(lm.transformer.state_dict())
        return trunk, stem
    return lm.base_model, stem
