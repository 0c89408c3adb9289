"""Language models behind one interface.

Every model: ``forward(tokens, targets=None, cache=None, *, padding_mask=None, positions=None)``
→ :class:`ModelOutput`; ``config``; ``num_params(non_embedding=False)``; ``flops_per_token()``;
``new_cache(batch_size, max_len=None, device=None, dtype=None)``.
"""

from __future__ import annotations

from torch import nn

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.models.layers import KVCache, ModelOutput


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model a config describes, with fresh initial weights (on the CPU, in float32)."""
    cfg.validate()
    if cfg.arch == "gpt":
        from lmlab.models.gpt import GPT

        return GPT(cfg)
    if cfg.arch in ("rnn", "lstm"):
        from lmlab.models.rnn import RecurrentLM

        return RecurrentLM(cfg)
    if cfg.arch == "seq2seq":
        from lmlab.models.seq2seq import Seq2Seq

        return Seq2Seq(cfg)
    raise LmlabError(f"model.arch: unknown value {cfg.arch!r}; choose one of gpt, rnn, lstm, seq2seq")


__all__ = ["KVCache", "ModelOutput", "build_model"]
