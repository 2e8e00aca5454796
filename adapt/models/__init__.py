"""Flax linen models whose parameter names mirror Hugging Face's module paths."""
