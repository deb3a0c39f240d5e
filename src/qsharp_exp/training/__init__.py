"""Training stages: pretraining pi_ref, Algorithm 1's data collection, the return model."""
