"""Sampling from pi_ref (guided or not): the decoding loop, batched and resumable sampling."""

from qsharp_exp.sampling.batched import Draw, PaddingStats, Sampled, Sampler
from qsharp_exp.sampling.decoding import (
    DecodeOptions,
    Generation,
    PromptBatch,
    SamplingSpec,
    Steering,
    Stops,
    generate,
)

__all__ = ["DecodeOptions", "Draw", "Generation", "PaddingStats", "PromptBatch", "Sampled", "Sampler", "SamplingSpec",
           "Steering", "Stops", "generate"]
