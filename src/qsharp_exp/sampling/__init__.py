"""Sampling from pi_ref (guided or not): the decoding loop, batched and resumable sampling."""

from qsharp_exp.sampling.batched import PaddingStats, Sampled, Sampler
from qsharp_exp.sampling.decoding import DecodeOptions, Generation, SamplingSpec, Steering, Stops, generate

__all__ = ["DecodeOptions", "Generation", "PaddingStats", "Sampled", "Sampler", "SamplingSpec", "Steering", "Stops",
           "generate"]
