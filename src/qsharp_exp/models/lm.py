"""Hugging Face causal LMs: pretrained (hub id or local path) or built from a config with random init.

Paper scale is a config choice: GPT-2 small is n_layer=12, n_embd=768, n_head=12; the math
experiments load pretrained models (`pretrained: meta-llama/...`).
"""

from __future__ import annotations

import functools
import os

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
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
from transformers.utils import logging as hf_logging

from qsharp_exp.config import ArchConfig, UserError
from qsharp_exp.models.stem import ConvGPT2Config, ConvGPT2LMHeadModel


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
        # Exact "gelu" rather than GPT-2's tanh approximation "gelu_new": faster on CPU (docs/performance.md).
        return GPT2Config(
            n_layer=arch.n_layer, n_embd=arch.n_embd, n_head=arch.n_head, n_inner=inner,
            n_positions=arch.max_positions, activation_function="gelu", resid_pdrop=arch.dropout,
            embd_pdrop=arch.dropout, attn_pdrop=arch.dropout, **special,
        )
    return LlamaConfig(
        num_hidden_layers=arch.n_layer, hidden_size=arch.n_embd, num_attention_heads=arch.n_head,
        num_key_value_heads=arch.n_kv_head or arch.n_head, intermediate_size=inner,
        max_position_embeddings=arch.max_positions, attention_dropout=arch.dropout, **special,
    )


def build_causal_lm(arch: ArchConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """Random init; GPT-2 with a causal convolution stem when `arch.conv_width` > 1 (models/stem.py)."""
    torch.manual_seed(seed)
    config = hf_config(arch, tokenizer)
    if arch.conv_width > 1:
        return ConvGPT2LMHeadModel(ConvGPT2Config(conv_width=arch.conv_width, **config.to_diff_dict()))
    cls = GPT2LMHeadModel if arch.arch == "gpt2" else LlamaForCausalLM
    return cls(config)


def looks_like_path(source: str) -> bool:
    """A source that can only be a local path (a hub id is `name` or `owner/name`)."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or os.path.exists(source)


def check_local_source(source: str, key: str) -> None:
    """A path that is not a folder gets a message about the path, not the hub's about repository ids."""
    if looks_like_path(source) and not os.path.isdir(os.path.expanduser(source)):
        what = "is a file, not a model folder" if os.path.isfile(source) else "does not exist"
        raise UserError(f"{key}={source} {what}: give the folder a model was saved to (config.json and weights), "
                        "or a hub id.")


def _from_hub(loader, source: str, key: str, **kwargs):
    """`loader.from_pretrained(source)` with one actionable message when it cannot be had."""
    check_local_source(source, key)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline and not os.path.isdir(source):
        raise UserError(f"{key}={source} is not a local directory and the Hugging Face hub is offline "
                        f"(HF_HUB_OFFLINE): set {key} to a local copy of the model.")
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError, SafetensorError) as err:  # missing, unreachable, or damaged files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{key}={source} could not be loaded ({type(err).__name__}: {first}): set {key} to a hub "
                        "id you can access or to a local directory with the model's complete files.") from None


CAUSAL_ARCHITECTURES = ("ForCausalLM", "LMHeadModel")  # how transformers names causal LM classes


def load_pretrained_lm(source: str, key: str, dtype: torch.dtype | None) -> PreTrainedModel:
    """A causal LM, whole: a checkpoint of another kind (an encoder such as BERT, a model without its LM head)
    would load with a random head and sample noise, so it is refused naming what it is."""
    model, info = _from_hub(AutoModelForCausalLM, source, key, dtype=dtype, output_loading_info=True)
    saved_as = getattr(model.config, "architectures", None) or []
    if saved_as and not any(name.endswith(CAUSAL_ARCHITECTURES) for name in saved_as):
        raise UserError(f"{key}={source} is a {', '.join(saved_as)}, not a causal LM (a *ForCausalLM or "
                        f"*LMHeadModel): set {key} to a causal language model.")
    if info["missing_keys"]:
        raise UserError(f"{key}={source} lacks weights a causal LM needs ({', '.join(info['missing_keys'][:3])}"
                        f"{', ...' if len(info['missing_keys']) > 3 else ''}): it was saved without its LM head; set "
                        f"{key} to a complete causal language model.")
    return model


def load_config(source: str, key: str) -> PretrainedConfig:
    """A pretrained model's config alone (its architecture and context), without its weights."""
    return _from_hub(AutoConfig, source, key)


def load_tokenizer(source: str, key: str) -> PreTrainedTokenizerBase:
    tokenizer = _from_hub(AutoTokenizer, source, key)
    if len(tokenizer) <= 1:  # transformers builds an empty tokenizer where the files are missing
        raise UserError(f"{key}={source} has no tokenizer files (tokenizer.json, or the vocabulary files): save "
                        "the tokenizer beside the model (tokenizer.save_pretrained(directory)).")
    return tokenizer


def build_trunk(arch: ArchConfig, tokenizer: PreTrainedTokenizerBase, seed: int, key: str = "model.guide.arch",
                dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A causal LM without its LM head (the return model puts its own head on top): pretrained weights
    when `arch.pretrained` is set, else the configured architecture with random init."""
    torch.manual_seed(seed)
    if arch.pretrained is not None:
        # Loading a causal LM's weights without its LM head reports lm_head as unexpected: that is the point.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            return _from_hub(AutoModel, arch.pretrained, f"{key}.pretrained", dtype=dtype)
        finally:
            hf_logging.set_verbosity(verbosity)
    config = hf_config(arch, tokenizer)
    cls = GPT2Model if arch.arch == "gpt2" else LlamaModel
    return cls(config)


@functools.cache
def _compiled_forward(forward):
    return torch.compile(forward)


def compiled(module: torch.nn.Module):
    """`module(...)` through torch.compile: compiled once per model class and input shape (a decoding
    step's shapes are fixed, so it compiles once), with no reference kept to `module` itself."""
    return functools.partial(_compiled_forward(type(module).forward), module)
