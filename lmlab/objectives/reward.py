"""A reward model from human rankings (InstructGPT, Ouyang et al. 2022, §3.5): a scalar on the last token.

The model is the language model with a one-output linear head on the final hidden state of each sequence's last
real token (``SequenceClassifier`` with one class): ``r(prompt, response)``. A sequence is the prompt and the
response as ``lmlab.data.responses`` encodes them (through the chat template, or as plain text), so the last
token is always the one that ends the response. The loss is Bradley–Terry's ``−log σ(r_better − r_worse)`` over
every pair of a prompt's ranking; a prompt's K responses are in one batch, each scored once, and every prompt
weighs the same however many pairs it has (InstructGPT divides by K·(K−1)/2). ``--center`` adds
``center · mean((r_better + r_worse)²)``, which keeps rewards near zero without changing their differences
(Eisenstein et al. 2023), so a reward threshold or a KL coefficient means the same from run to run.

Evaluation: pairwise accuracy (the better response scored higher) with its standard error, the mean margin, and
the mean loss, over every pair of the validation split.
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

from lmlab.data.formats.preference import Ranked, read_preferences
from lmlab.data.loader import IndexedLoader, pad_rows
from lmlab.data.responses import prompt_ids, response_ids
from lmlab.errors import LmlabError
from lmlab.objectives.base import FinetuneOptions, LossOut, Objective, holdout, register


@dataclass
class RewardOptions(FinetuneOptions):
    """A reward model: a scalar head on the last token, trained with the Bradley-Terry loss on preference pairs or
    rankings (JSONL: chosen/rejected, HH-RLHF transcripts, or prompt + responses + ranking)."""

    center: float = 0.0  # weight of the reward-centering penalty mean((r_better + r_worse)^2); 0 = off

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.center >= 0 and math.isfinite(self.center)):
            raise LmlabError(f"--center must be 0 or more, got {self.center}")


RECIPE: dict[str, Any] = {
    "lr": 1e-4,
    "min_lr": 0.0,
    "batch_size": 16,  # prompts (each with all of its responses)
    "schedule": "linear",
    "weight_decay": 0.0,
    "eval_steps": 1_000_000,  # every validation pair
    "best_metric": "val_accuracy",
    "best_mode": "max",
    "sample_tokens": 0,
}


class Encoded(NamedTuple):
    """Ranked groups as token sequences: group g's responses are rows ``starts[g] .. starts[g + 1] - 1``."""

    seqs: list[list[int]]  # prompt + response ids, one per response
    prompt_len: list[int]  # tokens of each sequence's prompt (what comes before the response)
    starts: np.ndarray  # (G + 1,) first sequence of every group
    truncated: int  # sequences cut to block_size


def join(prompt: list[int], response: list[int], block_size: int) -> tuple[list[int], int, bool]:
    """(ids, prompt length, cut) of a prompt and a response in at most ``block_size`` tokens: the prompt loses its
    oldest tokens first, then the response its end."""
    room = block_size - len(response)
    if room >= len(prompt):
        return prompt + response, len(prompt), False
    if room >= 1:
        return prompt[-room:] + response, room, True
    keep = prompt[-1:]  # the response alone fills the context: keep the token it follows
    return keep + response[: block_size - 1], 1, True


def encode_groups(groups: Sequence[Ranked], tokenizer: Any, block_size: int, template: bool, where: str) -> Encoded:
    seqs, plens, starts, truncated = [], [], [0], 0
    for g in groups:
        at = f"{where}:{g.line}"
        p = prompt_ids(tokenizer, g.prompt, template, where=at)
        for r in g.responses:
            ids, n_prompt, cut = join(p, response_ids(tokenizer, r, template, where=at), block_size)
            seqs.append(ids)
            plens.append(n_prompt)
            truncated += cut
        starts.append(len(seqs))
    return Encoded(seqs, plens, np.array(starts), truncated)


class PreferenceBatch(NamedTuple):
    tokens: torch.Tensor  # (N, T) every response of the batch's groups, right-padded
    lengths: torch.Tensor  # (N,) real tokens per row
    prompt_len: torch.Tensor  # (N,) prompt tokens per row (the response starts there)
    better: torch.Tensor  # (P,) row of the better response of each pair
    worse: torch.Tensor  # (P,) row of the worse one
    weight: torch.Tensor  # (P,) 1 / pairs of its group / groups in the batch: the loss is sum(weight · loss)
    rows: torch.Tensor  # (N,) each row's index in the split's sequences (DPO's reference log-probs)


class GroupLoader(IndexedLoader):
    """Batches of whole groups (a prompt and all its responses)."""

    def __init__(self, data: Encoded, batch_size: int, *, pad_id: int, **kw: Any) -> None:
        super().__init__(len(data.starts) - 1, batch_size, **kw)
        self.data, self.pad_id = data, pad_id

    def collate(self, groups: np.ndarray) -> PreferenceBatch:
        d = self.data
        rows, better, worse, weight = [], [], [], []
        for g in groups:
            first, k = len(rows), int(d.starts[g + 1] - d.starts[g])
            rows += range(int(d.starts[g]), int(d.starts[g + 1]))
            pairs = [(first + i, first + j) for i in range(k) for j in range(i + 1, k)]
            better += [p[0] for p in pairs]
            worse += [p[1] for p in pairs]
            weight += [1.0 / (len(pairs) * len(groups))] * len(pairs)
        seqs = [d.seqs[r] for r in rows]
        out = (
            pad_rows(seqs, self.pad_id),
            torch.tensor([len(s) for s in seqs]),
            torch.tensor([d.prompt_len[r] for r in rows]),
            torch.tensor(better),
            torch.tensor(worse),
            torch.tensor(weight),
            torch.tensor(rows),
        )
        return PreferenceBatch(*(x.to(self.device) for x in out))


def read_split(data: str | Path, opts: FinetuneOptions, seed: int) -> tuple[list[Ranked], list[Ranked], int]:
    """(train, val, records left out) of preference data: ``opts.val``, or a seeded held-out share of ``data``."""
    groups, skipped = read_preferences(data)
    if opts.val is not None:
        val, more = read_preferences(opts.val)
        return groups, val, skipped + more
    train, val = holdout(groups, opts.val_fraction, seed, data, "preference record")
    return train, val, skipped


def describe(data: str | Path, train: Sequence[Ranked], val: Sequence[Ranked], skipped: int, cut: int, bs: int) -> str:
    pairs = sum(len(g.pairs) for g in train)
    return (
        f"{Path(data).name}: {len(train):,} training prompts ({pairs:,} pairs) and {len(val):,} validation prompts"
        + (f"; {skipped} HH-RLHF record(s) whose transcripts differ before the last turn left out" if skipped else "")
        + (f"; {cut} sequence(s) cut to block_size {bs}" if cut else "")
    )


class PreferenceObjective(Objective):
    """What the reward model and DPO share: ranked groups encoded once, batches of whole groups."""

    reads_preferences = True

    def __init__(self, train: Encoded, val: Encoded, pad_id: int, chat: bool) -> None:
        self.data = {"train": train, "val": val}
        self.pad_id, self.chat = pad_id, chat
        self.tokens_per_sequence = max(1, round(sum(map(len, train.seqs)) / len(train.seqs)))
        self.n_train = len(train.starts) - 1

    @staticmethod
    def encode(data: str | Path, opts: FinetuneOptions, tokenizer: Any, block_size: int, seed: int,
               template: bool) -> tuple[Encoded, Encoded, int, bool, str]:  # fmt: skip
        """(train, val, pad id, chat, summary) of a preference file. ``template``: the parent is a chat model, so a
        text prompt is a user turn (a conversation always is)."""
        train, val, skipped = read_split(data, opts, seed)
        chat = template or any(not isinstance(g.prompt, str) for g in train + val)
        name = Path(data).name
        enc_t = encode_groups(train, tokenizer, block_size, chat, name)
        enc_v = encode_groups(val, tokenizer, block_size, chat, Path(opts.val).name if opts.val else name)
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        summary = describe(data, train, val, skipped, enc_t.truncated + enc_v.truncated, block_size)
        return enc_t, enc_v, pad, chat, summary

    def batches(self, split, *, batch_size, seed, rank=0, world_size=1, device="cpu") -> GroupLoader:
        data = self.data.get(split)
        if data is None:
            raise LmlabError(f"unknown split {split!r}; choose train or val")
        return GroupLoader(
            data, batch_size, pad_id=self.pad_id, shuffle=split == "train", seed=seed, rank=rank,
            world_size=world_size, device=device, name=split,
        )  # fmt: skip


@register
class Reward(PreferenceObjective):
    """Bradley–Terry loss on every ranked pair, for a one-output ``SequenceClassifier``."""

    task = "reward"
    Options = RewardOptions
    RECIPE = RECIPE
    has_head = True
    classes = ["reward"]  # the head's one output (config.json "head" labels)

    def __init__(self, train: Encoded, val: Encoded, center: float, pad_id: int, chat: bool) -> None:
        super().__init__(train, val, pad_id, chat)
        self.center = center

    @classmethod
    def from_files(
        cls, data: str | Path, opts: RewardOptions, tokenizer: Any, block_size: int, seed: int, template: bool = False
    ) -> Reward:
        enc_t, enc_v, pad, chat, summary = cls.encode(data, opts, tokenizer, block_size, seed, template)
        obj = cls(enc_t, enc_v, opts.center, pad, chat)
        obj.summary = summary
        return obj

    def loss(self, model: torch.nn.Module, batch: PreferenceBatch) -> LossOut:
        r = model(batch.tokens, batch.lengths).logits[:, 0].float()  # (N,)
        margin = r[batch.better] - r[batch.worse]  # (P,)
        pair_loss = -F.logsigmoid(margin)
        loss = (batch.weight * pair_loss).sum()
        if self.center:
            loss = loss + self.center * (batch.weight * (r[batch.better] + r[batch.worse]) ** 2).sum()
        n = margin.numel()
        if model.training:
            return LossOut(loss, n)
        m = margin.detach()
        return LossOut(loss, n, {"correct": (m > 0).sum(), "margin_sum": m.sum(), "loss_sum": pair_loss.detach().sum()})

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("val_loss", "val_accuracy", "val_accuracy_se", "val_margin")

    def reduce(self, outs: Sequence[LossOut]) -> dict[str, float]:
        n = sum(float(o.n_tokens) for o in outs)
        acc = sum(float(o.metrics["correct"]) for o in outs) / max(n, 1.0)
        return {
            "val_loss": sum(float(o.metrics["loss_sum"]) for o in outs) / max(n, 1.0),
            "val_accuracy": acc,
            "val_accuracy_se": math.sqrt(acc * (1 - acc) / max(n, 1.0)),  # binomial standard error over the pairs
            "val_margin": sum(float(o.metrics["margin_sum"]) for o in outs) / max(n, 1.0),
        }
