"""Evaluation protocols for FactorCL embeddings: linear probes, latent decoding, zero-shot, retrieval."""
