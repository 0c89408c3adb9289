"""A retrieval encoder trained contrastively on (question, passage) pairs, as DPR (Karpukhin et al. 2020) trains one.

The encoder is the language model itself: a text's embedding is the mean of its final hidden states over its
tokens, L2-normalized (``lmlab.rag.dense.pool``, the same function ``lmlab rag index --dense`` embeds with, so a
trained encoder is used by passing its run to ``--dense``). One network embeds questions and passages (a shared
encoder: at this scale two copies would halve the data each sees). The loss is InfoNCE with in-batch negatives,
both ways: each question's passage must score highest among the batch's passages at temperature ``tau``, and
each passage's question among the questions. Two pairs with the same passage (SQuAD asks several questions
about a paragraph) are not each other's negatives: those entries are masked out.

Data: JSONL ``{"question", "passage"}`` (``query``/``positive``/``context`` are read too), or a SQuAD-format JSON
file (each answerable question with its paragraph). Evaluation: the loss and in-batch top-1 accuracy of the
question → passage direction, over every validation batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.data.formats.jsonl import jsonl_records
from lmlab.data.loader import IndexedLoader, pad_rows
from lmlab.errors import LmlabError
from lmlab.objectives.base import FinetuneOptions, LossOut, Objective, holdout, register


@dataclass
class EncoderOptions(FinetuneOptions):
    """A dense retrieval encoder: mean-pooled hidden states trained with in-batch contrastive loss on (question,
    passage) pairs (JSONL {"question", "passage"} or SQuAD JSON); the run is then given to lmlab rag index
    --dense."""

    temperature: float = 0.05  # InfoNCE temperature: similarities (cosines) are divided by it

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise LmlabError(f"--temperature must be positive, got {self.temperature}")


RECIPE: dict[str, Any] = {
    "lr": 3e-4,
    "min_lr": 0.0,
    "batch_size": 32,  # pairs: each question's negatives are the other 31 passages
    "schedule": "linear",
    "weight_decay": 0.0,
    "eval_steps": 1_000_000,  # every validation batch
    "best_metric": "val_accuracy",
    "best_mode": "max",
    "sample_tokens": 0,
}

_Q_KEYS, _P_KEYS = ("question", "query"), ("passage", "positive", "context")


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """(question, passage) pairs of a JSONL or SQuAD-format JSON file."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"pair file {path} not found")
    pairs: list[tuple[str, str]] = []
    if path.suffix.lower() == ".json":  # SQuAD: each answerable question with its paragraph
        from lmlab.rag.evaluate import read_questions

        pairs = [(q.question, q.context) for q in read_questions(path) if q.context]
    else:
        for n, rec in jsonl_records(path.read_text(encoding="utf-8"), str(path)):
            q = next((rec[k] for k in _Q_KEYS if k in rec), None)
            p = next((rec[k] for k in _P_KEYS if k in rec), None)
            if not (isinstance(q, str) and q.strip() and isinstance(p, str) and p.strip()):
                raise LmlabError(f'{path}:{n}: a pair needs a non-empty "question" and "passage" (strings)')
            pairs.append((q, p))
    if len(pairs) < 2:
        raise LmlabError(f"{path} has {len(pairs)} pair(s); contrastive training needs at least 2")
    return pairs


class Encoded(NamedTuple):
    questions: list[list[int]]
    passages: list[list[int]]
    passage_id: np.ndarray  # the same id for the same passage text: not a negative of itself
    truncated: int


def encode_pairs(pairs: Sequence[tuple[str, str]], tokenizer: Any, block_size: int) -> Encoded:
    from lmlab.rag.dense import text_ids

    ids: dict[str, int] = {}
    qs, ps, pid, cut = [], [], [], 0
    for q, p in pairs:
        qs.append(text_ids(tokenizer, q, block_size))
        full = text_ids(tokenizer, p, None)
        cut += len(full) > block_size
        ps.append(full[:block_size])
        pid.append(ids.setdefault(p, len(ids)))
    return Encoded(qs, ps, np.array(pid), cut)


class PairBatch(NamedTuple):
    q: torch.Tensor  # (B, Tq) right-padded question tokens
    q_mask: torch.Tensor  # (B, Tq) True = real token
    p: torch.Tensor
    p_mask: torch.Tensor
    same: torch.Tensor  # (B, B) True where two pairs share a passage (the diagonal included)


class PairLoader(IndexedLoader):
    def __init__(self, data: Encoded, batch_size: int, *, pad_id: int, **kw: Any) -> None:
        super().__init__(len(data.questions), batch_size, **kw)
        self.data, self.pad_id = data, pad_id

    def collate(self, rows: np.ndarray) -> PairBatch:
        d = self.data
        qs, ps = [d.questions[r] for r in rows], [d.passages[r] for r in rows]
        pid = torch.as_tensor(d.passage_id[rows])
        out = (pad_rows(qs, self.pad_id), _mask(qs), pad_rows(ps, self.pad_id), _mask(ps), pid[:, None] == pid[None])
        return PairBatch(*(x.to(self.device) for x in out))


def _mask(seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    lengths = torch.tensor([len(s) for s in seqs])
    return torch.arange(int(lengths.max()))[None, :] < lengths[:, None]


@register
class Encoder(Objective):
    """Symmetric InfoNCE over mean-pooled embeddings of questions and passages, in-batch negatives."""

    task = "encoder"
    Options = EncoderOptions
    RECIPE = RECIPE

    def __init__(self, train: Encoded, val: Encoded, temperature: float, pad_id: int) -> None:
        self.data = {"train": train, "val": val}
        self.temperature, self.pad_id = temperature, pad_id
        self.tokens_per_sequence = max(1, round(sum(map(len, train.questions + train.passages)) / len(train.questions)))
        self.n_train = len(train.questions)

    @classmethod
    def fit_options(cls, opts: Any, model_cfg: Any) -> Any:
        if model_cfg.arch != "gpt":
            raise LmlabError(f"the encoder is a GPT run's mean-pooled hidden states; this run is {model_cfg.arch!r}")
        return opts

    @classmethod
    def from_files(cls, data: str | Path, opts: EncoderOptions, tokenizer: Any, block_size: int, seed: int) -> Encoder:
        pairs = read_pairs(data)
        if opts.val is not None:
            train, val = pairs, read_pairs(opts.val)
        else:
            train, val = holdout(pairs, opts.val_fraction, seed, data, "pair")
        enc_t, enc_v = encode_pairs(train, tokenizer, block_size), encode_pairs(val, tokenizer, block_size)
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        obj = cls(enc_t, enc_v, opts.temperature, pad)
        cut = enc_t.truncated + enc_v.truncated
        obj.summary = (f"{Path(data).name}: {len(train):,} training and {len(val):,} validation pairs "
                       f"({len(set(enc_t.passage_id.tolist())):,} distinct training passages)"
                       + (f"; {cut} passage(s) cut to block_size {block_size}" if cut else ""))  # fmt: skip
        return obj

    def batches(self, split, *, batch_size, seed, rank=0, world_size=1, device="cpu") -> PairLoader:
        data = self.data.get(split)
        if data is None:
            raise LmlabError(f"unknown split {split!r}; choose train or val")
        return PairLoader(data, batch_size, pad_id=self.pad_id, shuffle=split == "train", seed=seed, rank=rank,
                          world_size=world_size, device=device, name=split)  # fmt: skip

    def loss(self, model: torch.nn.Module, batch: PairBatch) -> LossOut:
        from lmlab.rag.dense import pool

        q, p = pool(model, batch.q, batch.q_mask), pool(model, batch.p, batch.p_mask)
        sim = (q @ p.T) / self.temperature  # (B, B)
        eye = torch.eye(sim.size(0), dtype=torch.bool, device=sim.device)
        sim = sim.masked_fill(batch.same & ~eye, float("-inf"))  # another question about the same passage
        labels = torch.arange(sim.size(0), device=sim.device)
        q2p = F.cross_entropy(sim, labels, reduction="none")
        loss = (q2p.mean() + F.cross_entropy(sim.T, labels)) / 2
        n = sim.size(0)
        if model.training:
            return LossOut(loss, n)
        return LossOut(loss, n, {"correct": (sim.argmax(1) == labels).sum(), "loss_sum": q2p.detach().sum()})

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("val_loss", "val_accuracy")

    def reduce(self, outs: Sequence[LossOut]) -> dict[str, float]:
        n = max(1.0, sum(float(o.n_tokens) for o in outs))
        return {
            "val_loss": sum(float(o.metrics["loss_sum"]) for o in outs) / n,
            "val_accuracy": sum(float(o.metrics["correct"]) for o in outs) / n,
        }
