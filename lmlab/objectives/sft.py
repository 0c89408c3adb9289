"""Supervised fine-tuning: next-token loss on the assistant's tokens of conversations rendered by the chat template.

Each conversation is rendered once (``lmlab.data.chat.render``: ids and the loss mask, made together), cut to
``block_size + 1`` tokens, and trained on as inputs ``ids[:-1]`` and targets ``ids[1:]`` with every target the
mask does not cover set to −100: the model learns each assistant reply and the ``<|end|>`` that closes it,
never the prompt. Conversations are right-padded in a batch. A batch with no trainable target is an error,
not a silent step of nothing (it means the data or the template lost the assistant turns).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from lmlab.data.chat import render
from lmlab.data.formats.chat import Conversation, Format, read_conversations
from lmlab.data.loader import IndexedLoader, pad_rows
from lmlab.data.tokenizer import END
from lmlab.errors import LmlabError
from lmlab.objectives.base import FinetuneOptions, LossOut, Objective, holdout, register


@dataclass
class SFTOptions(FinetuneOptions):
    """Supervised fine-tuning on conversations rendered by lmlab's chat template: the loss covers every assistant
    reply and its <|end|>, nothing else; data in any of the formats of lmlab.data.formats.chat."""

    format: Format = "auto"  # the data's format; auto = detect it from the first record
    packing: bool = True  # several conversations per block, each seeing only itself (gpt); --no-packing pads


RECIPE: dict[str, Any] = {
    "lr": 1e-4,
    "min_lr": 0.0,
    "batch_size": 16,
    "schedule": "linear",
    "weight_decay": 0.0,
    "eval_steps": 1_000_000,  # every validation batch
    "best_metric": "val_loss",
    "best_mode": "min",
}


class Rendered(NamedTuple):
    inputs: list[list[int]]  # ids[:-1] of each conversation
    targets: list[list[int]]  # ids[1:], −100 where the mask is 0
    prompts: list[list[int]]  # each conversation up to its first reply, ending with <|assistant|> (for samples)
    truncated: int
    dropped: int  # conversations whose every reply fell past block_size


def render_all(convs: Sequence[Conversation], tokenizer: Any, block_size: int, where: str) -> Rendered:
    inputs, targets, prompts, truncated, dropped = [], [], [], 0, 0
    for c in convs:
        r = render(tokenizer, c.messages, where=f"{where}:{c.line}")
        ids, mask = r.ids, r.mask
        if len(ids) > block_size + 1:
            ids, mask = ids[: block_size + 1], mask[: block_size + 1]
            truncated += 1
        tgt = [t if m else -100 for t, m in zip(ids[1:], mask[1:])]
        if all(t == -100 for t in tgt):
            dropped += 1
            continue
        first = next(i for i, m in enumerate(mask) if m)  # the first reply token; <|assistant|> is just before
        inputs.append(ids[:-1])
        targets.append(tgt)
        prompts.append(ids[:first])
    return Rendered(inputs, targets, prompts, truncated, dropped)


class Rows(NamedTuple):
    """What a batch is cut from: one conversation per row, or several packed in a row (``segments``)."""

    inputs: list[list[int]]
    targets: list[list[int]]
    segments: list[list[int]] | None  # per token: which conversation of the row (1, 2, ...); None = unpacked


def pack(data: Rendered, block_size: int) -> Rows:
    """Conversations packed into rows of at most ``block_size`` tokens, first fit in data order (among the last
    64 rows still open, which keeps it linear in time); each token is tagged with its conversation in the row."""
    rows: list[tuple[list[int], list[int], list[int]]] = []
    open_rows: list[int] = []
    for x, y in zip(data.inputs, data.targets):
        fit = next((i for i in open_rows if len(rows[i][0]) + len(x) <= block_size), None)
        if fit is None:
            rows.append(([], [], []))
            fit = len(rows) - 1
            open_rows = [*open_rows[-63:], fit]
        inp, tgt, seg = rows[fit]
        segment = (seg[-1] if seg else 0) + 1
        inp += x
        tgt += y
        seg += [segment] * len(x)
    return Rows([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


class SFTBatch(NamedTuple):
    tokens: torch.Tensor  # (B, T) right-padded
    targets: torch.Tensor  # (B, T) −100 = not trained on
    segments: torch.Tensor | None  # (B, T) packed conversations (0 = padding), or None


class ConversationLoader(IndexedLoader):
    def __init__(self, data: Rows, batch_size: int, *, pad_id: int, **kw: Any) -> None:
        super().__init__(len(data.inputs), batch_size, **kw)
        self.data, self.pad_id = data, pad_id

    def collate(self, rows: np.ndarray) -> SFTBatch:
        tokens = pad_rows([self.data.inputs[r] for r in rows], self.pad_id)
        targets = pad_rows([self.data.targets[r] for r in rows], self.pad_id, fill=-100)
        # checked here, on the CPU copy: in the loss it would cost a device sync every step
        if not bool((targets != -100).any()):
            raise LmlabError("a batch has no assistant token to train on; the data or the chat template lost them")
        segments = None
        if self.data.segments is not None:
            segments = pad_rows([self.data.segments[r] for r in rows], 0).to(self.device)
        return SFTBatch(tokens.to(self.device), targets.to(self.device), segments)


def reply_accuracy(logits: torch.Tensor, targets: torch.Tensor, segments: torch.Tensor | None) -> dict[str, Any]:
    """Counts (device tensors) over the trained targets (≠ −100) of a batch: ``tokens``, ``correct`` (the argmax is
    the target), ``replies`` (conversations with a trained target: rows, or (row, segment) when packed) and ``exact``
    (those whose every trained target is the argmax)."""
    B, T = targets.shape
    scored = targets != -100
    wrong = (logits.argmax(-1) != targets) & scored  # (B, T)
    rows = torch.arange(B, device=targets.device)[:, None].expand(B, T)
    key = rows if segments is None else rows * (T + 1) + segments  # one id per conversation of the batch
    n_keys = B * (T + 1)
    has = torch.bincount(key[scored], minlength=n_keys) > 0
    bad = torch.bincount(key[wrong], minlength=n_keys) > 0
    tokens = scored.sum()
    return {"tokens": tokens, "correct": tokens - wrong.sum(), "replies": has.sum(), "exact": (has & ~bad).sum()}


@register
class SFT(Objective):
    """Mean next-token cross-entropy over the assistant tokens of rendered conversations."""

    task = "sft"
    Options = SFTOptions
    RECIPE = RECIPE
    chat = True

    def __init__(self, train: Rendered, val: Rendered, tokenizer: Any, fmt: str, packing: int = 0) -> None:
        """``packing``: the block size to pack conversations into; 0 = one conversation per row."""
        self.train, self.val, self.tokenizer, self.data_format = train, val, tokenizer, fmt
        rows = (lambda r: pack(r, packing)) if packing else (lambda r: Rows(r.inputs, r.targets, None))
        self.rows = {"train": rows(train), "val": rows(val)}
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        batched = self.rows["train"].inputs  # rows of a batch: packed or not
        self.tokens_per_sequence = max(1, round(sum(map(len, batched)) / len(batched)))
        self.n_train = len(batched)

    @classmethod
    def fit_options(cls, opts: SFTOptions, model_cfg: Any) -> SFTOptions:
        """Packing needs attention confined to each conversation: a recurrent model pads instead."""
        return dataclasses.replace(opts, packing=opts.packing and model_cfg.arch == "gpt")

    @classmethod
    def fit_model_config(cls, ds: Any, model_cfg: Any) -> Any:
        if model_cfg.arch == "seq2seq":
            raise LmlabError(f"{ds.path} holds conversations for a decoder (gpt, rnn or lstm); model.arch 'seq2seq' "
                             "is an encoder–decoder for translation")  # fmt: skip
        return model_cfg

    @classmethod
    def from_dataset(cls, ds: Any, model_cfg: Any, tokenizer: Any = None) -> SFT:
        """Training from scratch on a conversation dataset (``lmlab prepare FILE --task sft``): its train.jsonl and
        val.jsonl, packed for a gpt."""
        files = {split: ds.path / f"{split}.jsonl" for split in ("train", "val")}
        for path in files.values():
            if not path.is_file():
                raise LmlabError(f"{path} is missing; prepare the dataset again with lmlab prepare --task sft")
        opts = cls.fit_options(SFTOptions(), model_cfg)
        train, val = (read_conversations(files[s], "messages")[1] for s in ("train", "val"))
        return cls._build(train, val, tokenizer, model_cfg.block_size, opts, ds.meta.get("format", "messages"),
                          ds.path.name, ds.path.name)  # fmt: skip

    @classmethod
    def from_files(cls, data: str | Path, opts: SFTOptions, tokenizer: Any, block_size: int, seed: int) -> SFT:
        fmt, convs = read_conversations(data, opts.format)
        if opts.val is not None:
            train, val = convs, read_conversations(opts.val, opts.format)[1]
        else:
            train, val = holdout(convs, opts.val_fraction, seed, data, "conversation")
        name = Path(data).name
        return cls._build(train, val, tokenizer, block_size, opts, fmt, name, Path(opts.val).name if opts.val else name)

    @classmethod
    def _build(cls, train, val, tokenizer, block_size, opts, fmt, name, val_name) -> SFT:
        r_train = render_all(train, tokenizer, block_size, name)
        r_val = render_all(val, tokenizer, block_size, val_name)
        for split, r in (("training", r_train), ("validation", r_val)):
            if not r.inputs:
                raise LmlabError(
                    f"the {split} split has no conversation with an assistant reply within block_size {block_size}"
                )
        cut = r_train.truncated + r_val.truncated
        gone = r_train.dropped + r_val.dropped
        obj = cls(r_train, r_val, tokenizer, fmt, block_size if opts.packing else 0)
        obj.summary = (
            f"{name} read as {fmt}: {len(r_train.inputs):,} training and {len(r_val.inputs):,} validation "
            "conversations" + (f"; {cut} cut to block_size {block_size}" if cut else "")
            + (f"; {gone} dropped (no reply within block_size)" if gone else "")
            + (f"; packed into {len(obj.rows['train'].inputs):,} rows" if opts.packing else "")
        )  # fmt: skip
        return obj

    def batches(self, split, *, batch_size, seed, rank=0, world_size=1, device="cpu") -> ConversationLoader:
        data = self.rows.get(split)
        if data is None:
            raise LmlabError(f"unknown split {split!r}; choose train or val")
        return ConversationLoader(
            data, batch_size, pad_id=self.pad_id, shuffle=split == "train", seed=seed, rank=rank,
            world_size=world_size, device=device, name=split,
        )  # fmt: skip

    def loss(self, model: torch.nn.Module, batch: SFTBatch) -> LossOut:
        extra = {} if batch.segments is None else {"segments": batch.segments}
        out = model(batch.tokens, batch.targets, **extra)
        counts = reply_accuracy(out.logits, batch.targets, batch.segments)  # stays on the device: no sync
        log = {"token_accuracy": counts["correct"] / counts["tokens"], "exact": counts["exact"] / counts["replies"]}
        return LossOut(out.loss, counts["tokens"], counts, log)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("val_loss", "val_ppl", "val_token_accuracy", "val_exact")

    def reduce(self, outs: Sequence[LossOut]) -> dict[str, float]:
        """Mean loss over every assistant token of the validation split (batches weighted by their tokens), the
        share of those tokens the model ranks first, and the share of conversations whose every reply token it
        ranks first (what greedy decoding would reproduce exactly)."""
        total = sum(float(o.loss) * float(o.n_tokens) for o in outs)
        n = sum(float(o.n_tokens) for o in outs)
        mean = total / max(n, 1.0)
        sums = {k: sum(float(o.metrics[k]) for o in outs) for k in ("correct", "exact", "replies")}
        return {
            "val_loss": mean,
            "val_ppl": math.exp(min(mean, 50.0)),
            "val_token_accuracy": sums["correct"] / max(n, 1.0),
            "val_exact": sums["exact"] / max(sums["replies"], 1.0),
        }

    def sample(self, model: torch.nn.Module, *, n_tokens: int, seed: int, rt: Any) -> str:
        """The model's reply to the first validation conversation's first prompt, greedy, up to <|end|>."""
        from lmlab.generation.engine import generate_ids
        from lmlab.generation.request import GenerationRequest

        end = self.tokenizer.token_to_id(END)
        prompt = self.val.prompts[0][-(model.config.block_size - n_tokens) :] if n_tokens else []
        if not prompt or n_tokens >= model.config.block_size:
            return ""
        request = GenerationRequest(max_new_tokens=n_tokens, temperature=0.0, stop_token_ids=(end,))
        with rt.autocast():
            done = generate_ids(model, [prompt], request, eos_id=self.tokenizer.eos_id, on_notice=lambda m: None)[0]
        return self.tokenizer.decode([t for t in done.tokens if t != end], skip_special_tokens=True)
