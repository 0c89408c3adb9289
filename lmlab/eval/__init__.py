"""Scoring and looking inside runs: BLEU, chrF and loss on a split; attention and cross-attention maps."""
