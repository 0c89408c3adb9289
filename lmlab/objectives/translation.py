"""Translation: teacher-forced next-token prediction of the target given the source (an encoder–decoder)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lmlab.data.dataset import Dataset, TranslationData
from lmlab.data.loader import PairBatch, PairLoader
from lmlab.errors import LmlabError
from lmlab.objectives.base import LossOut, Objective, register


@register
class Translation(Objective):
    """Mean cross-entropy of each target token given the source and the target before it."""

    task = "translation"

    def __init__(self, data: TranslationData, block_size: int) -> None:
        self.data = data
        self.block_size = block_size
        train = data.meta["splits"]["train"]
        # real tokens per pair (BOS/EOS included), so the trainer's tokens/s counts no padding
        self.tokens_per_sequence = max(1, round(train["tokens"] / max(1, train["pairs"])) + 2)
        tok = data.tgt_tokenizer
        self.bos_id, self.eos_id, self.pad_id = tok.bos_id, tok.eos_id, tok.pad_id

    @classmethod
    def fit_model_config(cls, ds: Dataset, model_cfg: Any) -> Any:
        """Refuses an architecture other than seq2seq and takes the source vocabulary from a dataset with
        separate tokenizers."""
        if model_cfg.arch != "seq2seq":
            raise LmlabError(
                f"{ds.path} is a translation dataset; train an encoder–decoder on it (lmlab train {ds.path} "
                f"seq2seq-base), not model.arch {model_cfg.arch!r}"
            )
        src_vocab = int(ds.meta["src_vocab_size"])
        if ds.meta.get("joint_tokenizer", True):
            # one vocabulary: share the embedding (0), or ask for a separate table of the same size
            if model_cfg.src_vocab_size not in (0, src_vocab):
                raise LmlabError(
                    f"--model.src-vocab-size {model_cfg.src_vocab_size} does not match the dataset's joint vocabulary "
                    f"({src_vocab}); leave it at 0 to share the embedding, or set {src_vocab} for a separate one"
                )
            return model_cfg
        if model_cfg.src_vocab_size not in (0, src_vocab):
            raise LmlabError(
                f"--model.src-vocab-size {model_cfg.src_vocab_size} does not match the dataset's source vocabulary "
                f"({src_vocab}); leave it at 0 to take the dataset's"
            )
        return dataclasses.replace(model_cfg, src_vocab_size=src_vocab)

    @classmethod
    def from_dataset(cls, ds: Dataset, model_cfg: Any, tokenizer: Any = None) -> Translation:
        return cls(TranslationData(ds.path, ds.meta), model_cfg.block_size)

    def batches(self, split, *, batch_size, seed, rank=0, world_size=1, device="cpu") -> PairLoader:
        return PairLoader(
            self.data.tokens(split),
            batch_size,
            self.block_size,
            bos_id=self.bos_id,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            shuffle=split == "train",
            seed=seed,
            rank=rank,
            world_size=world_size,
            device=device,
            name=split,
        )

    def loss(self, model: torch.nn.Module, batch: PairBatch) -> LossOut:
        out = model(batch.src, batch.tgt_in, batch.tgt_out, src_mask=batch.src_mask)
        return LossOut(out.loss, (batch.tgt_out != -100).sum())

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, *, n_tokens: int, seed: int, rt: Any) -> str:
        """Greedy translations of the first two validation sources: what the trainer shows at each evaluation."""
        if n_tokens <= 0:
            return ""
        from lmlab.generation.translation import translate_texts

        sources = [s for s, _ in self.data.pairs("val")[:2]]
        with rt.autocast():
            hyps = translate_texts(
                model, self.data.src_tokenizer, self.data.tgt_tokenizer, sources, beam=1, max_new_tokens=n_tokens
            )
        return " | ".join(f"{s} => {h}" for s, h in zip(sources, hyps))
