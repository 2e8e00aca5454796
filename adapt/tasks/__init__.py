"""Tasks: losses and metrics on model outputs (classification, causal LM)."""
