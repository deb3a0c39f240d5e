"""A guided pi_ref as a model of lm-evaluation-harness (the `eval` extra: `pip install qsharp_exp[eval]`), so that
any of its generation tasks (gsm8k, minerva_math, ...) runs guided and its scores sit beside the numbers people
quote:

    qsharp-lm-eval --model qsharp --model_args pretrained=PI_REF,guide=DIR,eta=0.1,top_k=20 --tasks gsm8k

`qsharp-lm-eval` (cli/lm_eval.py) is the harness's own command line with the model `qsharp` registered. The
model is the harness's `hf` model with its generation guided by GuidanceLogitsProcessor (the framework's guided
distribution: docs/method.md, section 3): a task's temperature and top_p are pi_ref's sampler before guidance, a
greedy task takes the most likely token of the guided distribution. Each response's KL to pi_ref (nats) is kept
in `.kl` and, with `kl_path=FILE`, appended there.
Scoring tasks (log-likelihoods) score pi_ref itself: guidance changes sampling only.
"""

from __future__ import annotations

import json
from dataclasses import fields

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from transformers import LogitsProcessorList

from qsharp_exp.api import load_guide
from qsharp_exp.guidance import GuidanceSettings
from qsharp_exp.sampling.decoding import SamplingSpec
from qsharp_exp.sampling.logits_processor import GuidanceLogitsProcessor

# Sampling settings a task may give that guidance takes over: pi_ref's temperature and top_p go into the
# processor's spec (before guidance); the others would act on the guided distribution.
SAMPLER_KEYS = ("temperature", "top_p", "top_k", "do_sample")


@register_model("qsharp")
class GuidedHFLM(HFLM):
    def __init__(self, guide: str, kl_path: str | None = None, **kwargs) -> None:
        """`guide`: a trained guide's folder (a run's return_model_round<N>/<key>/model, or qsharp-export-guide's
        --out); `pretrained` (the harness's): its pi_ref; `rule`, `eta`, `top_k`, `non_candidates`: GuidanceSettings
        (the model's other arguments are the harness's `hf` model's)."""
        given = {f.name: kwargs.pop(f.name) for f in fields(GuidanceSettings) if f.name in kwargs}
        super().__init__(**kwargs)
        self.guide = load_guide(guide).to(self.device)
        default = GuidanceSettings()  # the harness passes numbers it could parse as numbers, others as strings
        self.guidance = GuidanceSettings(**{key: type(getattr(default, key))(value) for key, value in given.items()})
        self.kl_path = kl_path
        self.kl: list[float] = []

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs):
        """The harness's own generation (its stop conditions and padding), with pi_ref's sampler settings
        moved into the processor's spec and the processor handed to `generate`."""
        task = {key: generation_kwargs.pop(key) for key in SAMPLER_KEYS if key in generation_kwargs}
        temperature = float(task.get("temperature") or 0.0)
        sample = bool(task.get("do_sample", temperature > 0))
        spec = SamplingSpec(temperature=temperature if sample and temperature > 0 else 1.0,
                            top_p=float(task.get("top_p") or 1.0), max_new_tokens=max_length - context.shape[1])
        processor = GuidanceLogitsProcessor(self.guide, self.guidance, tokenizer=self.tokenizer, spec=spec)
        guided = (processor.generate_kwargs() if sample else
                  {"do_sample": False, "temperature": 0.0, "logits_processor": LogitsProcessorList([processor])})
        out = super()._model_generate(context, max_length, stop, **generation_kwargs, **guided)
        kl = processor.kl.tolist()
        self.kl += kl
        if self.kl_path:
            with open(self.kl_path, "a") as f:
                f.writelines(json.dumps({"kl": value}) + "\n" for value in kl)
        return out

