"""Sampling from pi_ref (guided or not): the decoding loop, batched and resumable sampling, padding."""

from qsharp_exp.sampling.batched import PaddingStats, Sampled, Sampler
from qsharp_exp.sampling.decoding import Generation, SamplingSpec, generate

__all__ = ["Generation", "PaddingStats", "Sampled", "Sampler", "SamplingSpec", "generate"]
