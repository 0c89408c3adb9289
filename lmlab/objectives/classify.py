"""Classification by fine-tuning a language model, as GPT-1 (Radford et al. 2018, §3.2) does it.

Input transformation (GPT-1 Figure 1): ``<|bos|> text <|end|>`` for one text, ``<|bos|> premise <|eos|>
hypothesis <|end|>`` for a pair (lmlab has no separate delimiter token; ``<|eos|>``, the boundary every base
model has seen between documents, is the delimiter). A linear head reads the final hidden state of the
last token (``<|end|>``). The loss is ``L2 + λ·L1``: the classification cross-entropy plus λ times the
language-modeling loss on the same tokens (GPT-1's auxiliary objective, λ = 0.5; 0 turns it off).

Evaluation: accuracy, macro-F1 and Matthews correlation over the whole validation split, from a confusion
matrix summed over batches (and over processes).
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

from lmlab.data.formats.labeled import Example, label_names, read_labeled
from lmlab.data.loader import IndexedLoader, pad_rows
from lmlab.data.tokenizer import BOS, END, EOS
from lmlab.errors import LmlabError
from lmlab.objectives.base import FinetuneOptions, LossOut, Objective, holdout, register


@dataclass
class ClassifyOptions(FinetuneOptions):
    """GPT-1 classification: a linear head on the last token's hidden state, trained with the classification
    loss plus aux_lm times the language-modeling loss, on a labeled .tsv (with a header) or .jsonl file."""

    aux_lm: float = 0.5  # λ of the auxiliary language-modeling loss (GPT-1: 0.5); 0 = classification only

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.aux_lm < 0 or not math.isfinite(self.aux_lm):
            raise LmlabError(f"--aux-lm must be 0 or more, got {self.aux_lm}")


# GPT-1's fine-tuning recipe (§4.1): lr 6.25e-5, batch 32, linear warmup over 0.2% of training, linear decay,
# weight decay 0.01 (the warmup is set from the number of steps in lmlab.training.launch.finetune)
RECIPE: dict[str, Any] = {
    "lr": 6.25e-5,
    "min_lr": 0.0,
    "batch_size": 32,
    "schedule": "linear",
    "weight_decay": 0.01,
    "eval_steps": 1_000_000,  # every validation batch: accuracy is over the whole split
    "best_metric": "val_accuracy",
    "best_mode": "max",
    "sample_tokens": 0,
}


class Encoded(NamedTuple):
    ids: list[list[int]]  # one token list per example, special tokens included
    labels: np.ndarray  # (N,) class ids
    truncated: int  # examples cut to fit block_size


def encode(examples: Sequence[Example], tokenizer: Any, block_size: int, classes: list[str], where: str) -> Encoded:
    """GPT-1's input transformation of every example; a label outside ``classes`` is an error naming its line."""
    bos, end, delim = (tokenizer.token_to_id(t) for t in (BOS, END, EOS))
    if bos is None or end is None or delim is None:
        raise LmlabError(f"the run's tokenizer lacks {BOS}, {EOS} or {END}; classification needs all three")
    index = {c: i for i, c in enumerate(classes)}
    for e in examples:
        if e.label not in index:
            raise LmlabError(f"{where}:{e.line}: unknown label {e.label!r}; the run's labels are {', '.join(classes)}")
    texts = [e.text for e in examples] + [e.text_b for e in examples if e.text_b is not None]
    try:
        encoded = tokenizer.encode_batch(texts)
    except LmlabError as err:  # name the first example the tokenizer refuses
        for e in examples:
            for t in (e.text, e.text_b):
                if t is not None and tokenizer.unknown_chars(t):
                    raise LmlabError(f"{where}:{e.line}: {err}") from None
        raise
    a_ids, b_ids = encoded[: len(examples)], iter(encoded[len(examples) :])
    ids, truncated = [], 0
    for e, a in zip(examples, a_ids):
        b = next(b_ids) if e.text_b is not None else None
        room = block_size - (3 if b is not None else 2)  # special tokens
        if len(a) + len(b or []) > room:
            truncated += 1
            if b is None:
                a = a[:room]
            else:  # cut the longer text first, so both keep as much as they can
                while len(a) + len(b) > room:
                    if len(a) >= len(b):
                        a = a[:-1]
                    else:
                        b = b[:-1]
        ids.append([bos, *a, *([delim, *b] if b is not None else []), end])
    return Encoded(ids, np.array([index[e.label] for e in examples], dtype=np.int64), truncated)


class ClassBatch(NamedTuple):
    tokens: torch.Tensor  # (B, T) right-padded with PAD
    lengths: torch.Tensor  # (B,) real tokens per row
    labels: torch.Tensor  # (B,)
    lm_targets: torch.Tensor  # (B, T) the next token, −100 after the last real one


class ExampleLoader(IndexedLoader):
    """Batches of encoded examples (see ``IndexedLoader`` for the order and the last partial batch)."""

    def __init__(self, data: Encoded, batch_size: int, *, pad_id: int, **kw: Any) -> None:
        super().__init__(len(data.ids), batch_size, **kw)
        self.data, self.pad_id = data, pad_id

    def collate(self, rows: np.ndarray) -> ClassBatch:
        seqs = [self.data.ids[r] for r in rows]
        lengths = torch.tensor([len(s) for s in seqs])
        tokens = pad_rows(seqs, self.pad_id)
        targets = pad_rows([s[1:] for s in seqs], self.pad_id, fill=-100)  # the next token; -100 past the end
        targets = torch.cat([targets, torch.full((len(seqs), tokens.size(1) - targets.size(1)), -100)], 1)
        labels = torch.from_numpy(self.data.labels[rows])
        return ClassBatch(*(x.to(self.device) for x in (tokens, lengths, labels, targets)))


def confusion_scores(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 and Matthews correlation (Gorodkin's multiclass form) of a confusion matrix whose
    rows are the true classes and columns the predictions."""
    c = confusion.astype(np.float64)
    total = c.sum()
    tp = np.diag(c)
    true, pred = c.sum(1), c.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(true + pred > 0, 2 * tp / (true + pred), 0.0)
    cov = tp.sum() * total - (pred * true).sum()
    denom = math.sqrt((total**2 - (pred**2).sum()) * (total**2 - (true**2).sum()))
    return {
        "val_accuracy": float(tp.sum() / total) if total else 0.0,
        "val_f1": float(f1.mean()),
        "val_mcc": float(cov / denom) if denom > 0 else 0.0,
    }


@register
class Classification(Objective):
    """``L2 + λ·L1`` on labeled texts, for a ``SequenceClassifier`` (``lmlab.models.heads``)."""

    task = "classify"
    Options = ClassifyOptions
    RECIPE = RECIPE
    has_head = True

    def __init__(self, train: Encoded, val: Encoded, classes: list[str], aux_lm: float, pad_id: int) -> None:
        self.train, self.val, self.classes = train, val, classes
        self.aux_lm, self.pad_id = aux_lm, pad_id
        self.tokens_per_sequence = max(1, round(sum(map(len, train.ids)) / len(train.ids)))
        self.n_train = len(train.ids)

    @classmethod
    def from_files(
        cls, data: str | Path, opts: ClassifyOptions, tokenizer: Any, block_size: int, seed: int,
        classes: list[str] | None = None,
    ) -> Classification:  # fmt: skip
        """Read and encode ``data`` (and ``opts.val``, or a seeded held-out share of ``data``). ``classes`` fixes
        the label order (a resumed run's); by default it comes from the training labels."""
        examples = read_labeled(data)
        if opts.val is not None:
            train, val = examples, read_labeled(opts.val)
        else:
            train, val = holdout(examples, opts.val_fraction, seed, data, "example")
        classes = classes or label_names(train)
        if len(classes) < 2:
            raise LmlabError(f"{data}: every training example has the label {classes[0]!r}; a classifier needs two")
        val_where = Path(opts.val).name if opts.val is not None else Path(data).name
        enc_train = encode(train, tokenizer, block_size, classes, Path(data).name)
        enc_val = encode(val, tokenizer, block_size, classes, val_where)
        cut = enc_train.truncated + enc_val.truncated
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        obj = cls(enc_train, enc_val, classes, opts.aux_lm, pad)
        obj.summary = f"{Path(data).name}: {len(train):,} training and {len(val):,} validation examples; classes " + (
            ", ".join(classes) + (f"; {cut} cut to block_size {block_size}" if cut else "")
        )
        return obj

    def batches(self, split, *, batch_size, seed, rank=0, world_size=1, device="cpu") -> ExampleLoader:
        data = {"train": self.train, "val": self.val}.get(split)
        if data is None:
            raise LmlabError(f"unknown split {split!r}; choose train or val")
        return ExampleLoader(
            data, batch_size, pad_id=self.pad_id, shuffle=split == "train", seed=seed, rank=rank,
            world_size=world_size, device=device, name=split,
        )  # fmt: skip

    def loss(self, model: torch.nn.Module, batch: ClassBatch) -> LossOut:
        out = model(batch.tokens, batch.lengths, batch.lm_targets if self.aux_lm > 0 else None)
        cls_loss = F.cross_entropy(out.logits.float(), batch.labels)
        loss = cls_loss + self.aux_lm * out.lm.loss if self.aux_lm > 0 else cls_loss
        n = batch.labels.numel()
        if model.training:  # the metrics are for evaluation; bincount would add a device sync to every step
            return LossOut(loss, n)
        k = len(self.classes)
        pred = out.logits.detach().argmax(-1)
        confusion = torch.bincount(batch.labels * k + pred, minlength=k * k).view(k, k)
        return LossOut(loss, n, {"confusion": confusion, "cls_loss_sum": cls_loss.detach() * n})

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("val_loss", "val_cls_loss", "val_accuracy", "val_f1", "val_mcc")

    def reduce(self, outs: Sequence[LossOut]) -> dict[str, float]:
        mean = float(sum(o.loss.detach().float() for o in outs) / max(1, len(outs)))
        n = sum(float(o.n_tokens) for o in outs)
        confusion = sum(torch.as_tensor(o.metrics["confusion"]).cpu().numpy() for o in outs)
        cls_loss = sum(float(o.metrics["cls_loss_sum"]) for o in outs) / max(n, 1.0)
        return {"val_loss": mean, "val_cls_loss": cls_loss, **confusion_scores(np.asarray(confusion))}
