"""qsharp_exp: Q#, CD and pi_ref value-guided decoding experiments."""

from qsharp_exp.sampling.logits_processor import GuidanceLogitsProcessor

__all__ = ["GuidanceLogitsProcessor"]
