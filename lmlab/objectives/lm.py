"""Language modeling: next-token prediction on a prepared text dataset (what ``lmlab train`` pretrains with)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from lmlab.data.dataset import Dataset
from lmlab.data.loader import BatchLoader
from lmlab.errors import LmlabError
from lmlab.objectives.base import LossOut, Objective, register


@register
class LanguageModeling(Objective):
    """Mean cross-entropy of every next token of ``block_size`` windows of the corpus."""

    task = "lm"

    def __init__(self, dataset: Dataset, block_size: int, tokenizer: Any = None) -> None:
        self.dataset = dataset
        self.block_size = block_size
        self.tokens_per_sequence = block_size
        self.tokenizer = tokenizer

    @classmethod
    def fit_model_config(cls, ds: Dataset, model_cfg: Any) -> Any:
        if model_cfg.arch == "seq2seq":
            raise LmlabError(
                f"{ds.path} is a {ds.task} dataset, but model.arch 'seq2seq' is an encoder–decoder for translation; "
                "prepare sentence pairs with lmlab prepare PAIRS.tsv --task translation, or train a gpt/rnn/lstm preset"
            )
        return model_cfg

    @classmethod
    def from_dataset(cls, ds: Dataset, model_cfg: Any, tokenizer: Any = None) -> LanguageModeling:
        return cls(ds, model_cfg.block_size, tokenizer)

    def batches(self, split, *, batch_size, seed, rank=0, world_size=1, device="cpu") -> BatchLoader:
        return BatchLoader(
            self.dataset.tokens(split),
            batch_size,
            self.block_size,
            shuffle=split == "train",
            seed=seed,
            rank=rank,
            world_size=world_size,
            device=device,
            name=split,
        )

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> LossOut:
        x, y = batch
        return LossOut(model(x, y).loss, y.numel())

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("val_loss", "val_ppl", *self._bits_metric(1.0))

    def _bits_metric(self, mean_loss: float) -> dict[str, float]:
        """Bits per character (char tokenizer) or per byte (others, when the split's size in bytes is known)."""
        meta = self.dataset.meta
        val = meta.get("splits", {}).get("val", {})
        bits = mean_loss / math.log(2)
        if meta.get("tokenizer", {}).get("kind") == "char":
            return {"val_bpc": bits}
        if val.get("bytes") and val.get("tokens"):
            return {"val_bpb": bits * val["tokens"] / val["bytes"]}
        return {}

    def reduce(self, outs: Sequence[LossOut]) -> dict[str, float]:
        m = super().reduce(outs)
        return {**m, **self._bits_metric(m["val_loss"])}

    def sample(self, model: torch.nn.Module, *, n_tokens: int, seed: int, rt: Any) -> str:
        """A short sample from the start of a document, seeded per step (the global RNG is untouched)."""
        if self.tokenizer is None or n_tokens <= 0:
            return ""
        from lmlab.generation.text import generate_text

        try:
            return generate_text(
                model, self.tokenizer, "", max_new_tokens=n_tokens, top_k=50, seed=seed, on_notice=lambda m: None
            )
        except LmlabError:
            return ""  # e.g. a tokenizer with no start token: the sample is a courtesy, not a reason to stop
