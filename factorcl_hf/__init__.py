"""factorcl-hf: Factorized Contrastive Learning as a Hugging Face-style model package."""

__version__ = "0.1.0"
