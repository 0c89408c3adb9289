"""Data: tokenizers, dataset preparation, batch loading."""
