"""Tiny models built from configs for tests (random init, no hub)."""

from dataclasses import replace

import torch

from qsharp_exp.config import ArchConfig, GuideConfig
from qsharp_exp.models.return_model import build_return_model


def stops(tokenizer):
    """Rows end at EOS; finished rows get the pad token."""
    from qsharp_exp.sampling import Stops

    return Stops(torch.tensor([tokenizer.eos_token_id]), tokenizer.pad_token_id)


def codec(tokenizer, model, chat_template=False):
    from qsharp_exp.prompts import PromptCodec

    return PromptCodec.for_model(tokenizer, model, chat_template)


def sampler(pi_ref, tokenizer, spec=None, batch_size=8, prompt_codec=None):
    """pi_ref's sampler on the CPU, without progress bars."""
    from qsharp_exp.config import HardwareConfig
    from qsharp_exp.hardware import Hardware
    from qsharp_exp.sampling import Sampler, SamplingSpec

    return Sampler(pi_ref, prompt_codec or codec(tokenizer, pi_ref), spec or SamplingSpec(), Hardware(HardwareConfig()),
                   batch_size, show_progress=False)


def tiny_arch(arch: str = "gpt2") -> ArchConfig:
    return ArchConfig(arch=arch, n_layer=2, n_embd=32, n_head=4, max_positions=128)


def make_guide(tokenizer, arch="gpt2", head="q", distribution="bernoulli", conv_width=4, seed=1):
    cfg = GuideConfig(arch=replace(tiny_arch(arch), conv_width=conv_width), head=head, distribution=distribution,
                      num_atoms=5)
    model = build_return_model(cfg, tokenizer, seed).eval()
    with torch.no_grad():  # make the head matter: random init is near zero
        model.head.weight.normal_(0, 1.0)
    return model
