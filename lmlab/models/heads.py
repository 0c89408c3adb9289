"""Heads on top of a language model's hidden states: a linear classifier on the last real token (GPT-1 §3.2).

``SequenceClassifier`` wraps any lmlab language model (GPT, RNN, LSTM): the model runs as usual (so its
language-modeling loss is there for GPT-1's auxiliary objective), and a linear layer reads the final hidden
state of each sequence's last real token. Sequences are right-padded; the models are causal (or
unidirectional recurrent), so the hidden state at position ``length - 1`` never sees the padding after it.
Its state dict is the language model's under ``lm.`` plus ``head.``, and ``lmlab.load`` rebuilds it from the
run's ``config.json`` ``head`` section.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmlab.models.layers import ModelOutput
from lmlab.models.linear import Linear


@dataclass
class ClassifierOutput:
    logits: Tensor  # (B, K) class scores
    lm: ModelOutput  # the language model's output (logits, loss when targets were given, hidden states)


class SequenceClassifier(nn.Module):
    """A language model plus a linear head on the hidden state of each sequence's last real token."""

    def __init__(self, lm: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.lm = lm
        self.config = lm.config
        self.n_classes = n_classes
        # the width of the hidden states: the output head's input (n_embd for a GPT, the hidden size of an RNN)
        self.head = Linear(lm.lm_head.in_features, n_classes)
        nn.init.normal_(self.head.weight, std=0.02)  # GPT-1's init for new weights
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: Tensor, lengths: Tensor, targets: Tensor | None = None) -> ClassifierOutput:
        """tokens (B, T) right-padded, lengths (B,) real tokens per row → class logits (B, K); ``targets`` (B, T)
        (−100 = ignore) gives the language-modeling loss too."""
        out = self.lm(tokens, targets)
        h = out.hidden_states  # (B, T, C)
        last = h[torch.arange(h.size(0), device=h.device), lengths - 1]  # (B, C)
        return ClassifierOutput(self.head(last), out)

    def num_params(self, non_embedding: bool = False) -> int:
        return self.lm.num_params(non_embedding) + sum(p.numel() for p in self.head.parameters())

    def flops_per_token(self) -> int:
        return self.lm.flops_per_token()  # the head runs once per sequence, not per token
