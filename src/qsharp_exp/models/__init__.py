"""Models: pi_ref (any HF causal LM) and the return model that guides it."""
