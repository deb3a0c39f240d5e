"""qsharp_exp: Q#, CD and pi_ref value-guided decoding experiments."""
