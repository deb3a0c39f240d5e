"""Tiny models built from configs for tests (random init, no hub)."""

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from qsharp_exp.config import ArchConfig, GuideConfig
from qsharp_exp.models.return_model import build_return_model

# Real test sets (gsm8k_test.jsonl, math500_test.jsonl, aime24_test.jsonl; fields problem, solution, answer and
# the ready `prompt`) for the tests that load real data: QSHARP_TEST_DATA=<their directory> make test, else
# shared/data beside the checkout when it is there. They are not part of the repository; without them those
# tests are skipped.
_BESIDE_CHECKOUT = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_DATA = (Path(os.environ["QSHARP_TEST_DATA"]) if os.environ.get("QSHARP_TEST_DATA")
             else _BESIDE_CHECKOUT if _BESIDE_CHECKOUT.is_dir() else None)


def real_data(*names: str) -> Path:
    """The real data directory, or a skip when it (or one of `names`) is not there."""
    if REAL_DATA is None:
        pytest.skip("no real GSM8K/MATH-500/AIME files: set QSHARP_TEST_DATA to their directory")
    missing = [name for name in names if not (REAL_DATA / name).exists()]
    if missing:
        pytest.skip(f"QSHARP_TEST_DATA={REAL_DATA} lacks {', '.join(missing)}")
    return REAL_DATA


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


def quiet(hw=None, seed: int = 0):
    """A training environment without progress bars (on the CPU unless `hw` is given)."""
    from qsharp_exp.config import HardwareConfig
    from qsharp_exp.hardware import Hardware
    from qsharp_exp.training.engine import TrainingEnv

    return TrainingEnv(hw or Hardware(HardwareConfig()), seed, show_progress=False)
