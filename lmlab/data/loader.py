"""Batch loaders: endless, resumable streams of training batches from a prepared dataset's token files.

``BatchLoader`` (language modeling): a split of N tokens is cut into non-overlapping windows of
``block_size + 1`` tokens (inputs and targets shifted by one share all but one token). Each epoch visits
every window once: in a seeded random order with a random offset (``shuffle=True``, for training) or in
file order from offset 0 (``shuffle=False``, for evaluation).

``PairLoader`` (translation): batches of padded (source, target) pairs of similar length.

Rank r of W takes every W-th item of the epoch's order, so ranks read disjoint data and all have the same
number of batches. Everything about a stream is a function of (seed, epoch, batch index), so its position is
a ``Cursor`` (``lmlab.data.cursor``) of two integers that restores exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from lmlab.data.cursor import Cursor
from lmlab.data.dataset import SplitTokens
from lmlab.errors import LmlabError

POOL_BATCHES = 100  # batches whose pairs are sorted by length together: little padding, still a random mix


class Loader:
    """What every loader shares: it is its own iterator, and its position is its ``cursor``."""

    cursor: Cursor

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> Any:
        raise NotImplementedError

    @property
    def batches_per_epoch(self) -> int:
        return self.cursor.batches_per_epoch

    @property
    def epoch(self) -> int:
        return self.cursor.epoch

    def state_dict(self) -> dict[str, Any]:
        return self.cursor.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor.load_state_dict(state)


class BatchLoader(Loader):
    """Yields ``(inputs, targets)`` LongTensors of shape (batch_size, block_size), forever (epoch after epoch)."""

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        block_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        name: str = "train",
    ):
        if batch_size < 1 or block_size < 1:
            raise LmlabError(f"batch_size and block_size must be at least 1, got {batch_size} and {block_size}")
        self.tokens = tokens
        self.batch_size = batch_size
        self.block_size = block_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.name = name
        # the fewest windows any epoch can have (the random offset can cost one window)
        n = len(tokens)
        min_windows = (n - 1 - (block_size - 1 if shuffle else 0)) // block_size
        per_rank = f" per rank ({world_size} ranks)" if world_size > 1 else ""
        self.cursor = Cursor(
            name,
            max(0, min_windows // world_size) // batch_size,
            rank=rank,
            world_size=world_size,
            identity={
                "seed": seed,
                "shuffle": shuffle,
                "batch_size": batch_size,
                "block_size": block_size,
                "num_tokens": n,
            },  # fmt: skip
            empty=f"the {name} split has {n:,} tokens: fewer than one batch of {batch_size} windows of "
            f"block_size+1 = {block_size + 1} tokens{per_rank}; use a smaller batch size or block size, or more data",
        )
        self._order_epoch = -1
        self._order: np.ndarray | None = None
        self._offset = 0
        self._span = np.arange(block_size + 1)

    def _epoch_order(self, epoch: int) -> None:
        if self._order_epoch == epoch:
            return
        n, T = len(self.tokens), self.block_size
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            self._offset = int(rng.integers(0, T))
            windows = (n - 1 - self._offset) // T
            order = rng.permutation(windows)
        else:
            self._offset = 0
            order = np.arange((n - 1) // T)
        per_rank = self.batches_per_epoch * self.batch_size
        self._order = order[self.rank :: self.world_size][:per_rank]
        self._order_epoch = epoch

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, b = self.cursor.advance()
        self._epoch_order(epoch)
        assert self._order is not None
        starts = self._offset + self._order[b * self.batch_size : (b + 1) * self.batch_size] * self.block_size
        # one fancy-index read from the memmap: (B, T+1)
        window = torch.from_numpy(self.tokens[starts[:, None] + self._span].astype(np.int64))
        x, y = window[:, :-1].contiguous(), window[:, 1:].contiguous()
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)


class PairBatch(NamedTuple):
    """A batch of pairs, right-padded: what ``Seq2Seq.forward`` takes."""

    src: torch.Tensor  # (B, S) source tokens + EOS, then PAD
    src_mask: torch.Tensor  # (B, S) True = real source token
    tgt_in: torch.Tensor  # (B, T) BOS + target, then PAD: the decoder input
    tgt_out: torch.Tensor  # (B, T) target + EOS, then -100: what each position predicts


def collate(
    srcs: Sequence[Sequence[int]],
    tgts: Sequence[Sequence[int]],
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_len: int,
    device: str | torch.device = "cpu",
) -> PairBatch:
    """Pad token lists into a :class:`PairBatch`; each side is cut to ``max_len`` tokens (EOS/BOS included)."""
    B = len(srcs)
    src_rows = [list(s[: max_len - 1]) + [eos_id] for s in srcs]
    tgt_rows = [list(t[: max_len - 1]) for t in tgts]
    S = max(len(r) for r in src_rows)
    T = max(len(r) for r in tgt_rows) + 1
    src = torch.full((B, S), pad_id, dtype=torch.long)
    tgt_in = torch.full((B, T), pad_id, dtype=torch.long)
    tgt_out = torch.full((B, T), -100, dtype=torch.long)
    for i, (s, t) in enumerate(zip(src_rows, tgt_rows)):
        src[i, : len(s)] = torch.tensor(s)
        tgt_in[i, : len(t) + 1] = torch.tensor([bos_id, *t])
        tgt_out[i, : len(t) + 1] = torch.tensor([*t, eos_id])
    src_mask = torch.arange(S)[None, :] < torch.tensor([len(s) for s in src_rows])[:, None]
    device = torch.device(device)
    return PairBatch(*(x.to(device) for x in (src, src_mask, tgt_in, tgt_out)))


class PairLoader(Loader):
    """Yields :class:`PairBatch` es of ``batch_size`` pairs forever, epoch after epoch.

    Each epoch takes the pairs in a seeded random order (``shuffle=True``) or in file order, cuts the
    order into pools of POOL_BATCHES batches, sorts each pool by length (so a batch holds pairs of
    similar length and little padding) and visits the batches in a random order (seeded by the seed and
    epoch when shuffling, fixed otherwise). Rank r of W takes every W-th batch. Everything is a function
    of (seed, epoch, batch index), so the cursor is two integers and a resumed run sees exactly the
    batches it would have seen.
    """

    def __init__(
        self,
        tokens: SplitTokens,
        batch_size: int,
        max_len: int,
        *,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        name: str = "train",
    ) -> None:
        if batch_size < 1 or max_len < 2:
            raise LmlabError(f"batch_size must be >= 1 and block_size >= 2, got {batch_size} and {max_len}")
        self.tokens = tokens
        self.batch_size, self.max_len = batch_size, max_len
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.device = torch.device(device)
        self.name = name
        n = len(tokens)
        per_rank = f" per rank ({world_size} ranks)" if world_size > 1 else ""
        self.cursor = Cursor(
            name,
            (n // batch_size) // world_size,
            rank=rank,
            world_size=world_size,
            identity={
                "seed": seed,
                "shuffle": shuffle,
                "batch_size": batch_size,
                "block_size": max_len,
                "num_pairs": n,
            },  # fmt: skip
            empty=f"the {name} split has {n:,} pairs: fewer than one batch of {batch_size}{per_rank}; "
            "use a smaller --train.batch-size or more data",
        )
        src_len = np.diff(np.asarray(tokens.src_offsets))
        tgt_len = np.diff(np.asarray(tokens.tgt_offsets))
        # sort key: longer side first, then the other side, so both paddings stay small
        self._length_key = np.maximum(src_len, tgt_len) * (int(tgt_len.max(initial=0)) + 1) + np.minimum(
            src_len, tgt_len
        )
        self._plan_epoch = -1
        self._plan: np.ndarray | None = None  # (batches_per_epoch, batch_size) pair indices for this rank

    def _make_plan(self, epoch: int) -> None:
        if self._plan_epoch == epoch:
            return
        n, B = len(self.tokens), self.batch_size
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        order = rng.permutation(n) if rng is not None else np.arange(n)
        order = order[: n // B * B]  # the last partial batch waits for another epoch's shuffle
        pool = POOL_BATCHES * B
        for start in range(0, len(order), pool):
            chunk = order[start : start + pool]
            order[start : start + pool] = chunk[np.argsort(self._length_key[chunk], kind="stable")]
        batches = order.reshape(-1, B)
        # batches in random order: a new one each epoch when shuffling; else a fixed one, so that the first
        # eval_steps batches of the validation split are a fair sample of every length at every evaluation
        batches = batches[(rng or np.random.default_rng(0)).permutation(len(batches))]
        self._plan = batches[self.rank :: self.world_size][: self.batches_per_epoch]
        self._plan_epoch = epoch

    def __next__(self) -> PairBatch:
        epoch, b = self.cursor.advance()
        self._make_plan(epoch)
        assert self._plan is not None
        idx = self._plan[b]
        t = self.tokens
        srcs = [t.src[t.src_offsets[i] : t.src_offsets[i + 1]].tolist() for i in idx]
        tgts = [t.tgt[t.tgt_offsets[i] : t.tgt_offsets[i + 1]].tolist() for i in idx]
        return collate(
            srcs, tgts, bos_id=self.bos_id, eos_id=self.eos_id, pad_id=self.pad_id, max_len=self.max_len,
            device=self.device,
        )  # fmt: skip


class IndexedLoader(Loader):
    """Batches of whole examples (indices 0..n-1), forever: a seeded new order every epoch (``shuffle``) or the
    file order. An unshuffled single-process loader also yields the last partial batch, so an evaluation covers
    every example; otherwise rank r of W takes every W-th batch and partial batches wait for another order.
    Subclasses turn the chosen indices into tensors (``collate``)."""

    def __init__(
        self, n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
        device: str | torch.device = "cpu", name: str = "train",
    ) -> None:  # fmt: skip
        if batch_size < 1:
            raise LmlabError(f"batch_size must be at least 1, got {batch_size}")
        self.n, self.batch_size = n, batch_size
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.device = torch.device(device)
        partial = not shuffle and world_size == 1
        per_rank = (-(-n // batch_size) if partial else n // batch_size) // world_size
        self.cursor = Cursor(
            name, per_rank, rank=rank, world_size=world_size,
            identity={"seed": seed, "shuffle": shuffle, "batch_size": batch_size, "num_examples": n},
            empty=f"the {name} split has {n:,} examples: fewer than one batch of {batch_size}"
            + (f" per rank ({world_size} ranks)" if world_size > 1 else "") + "; use a smaller --train.batch-size",
        )  # fmt: skip
        self._epoch, self._order = -1, np.arange(n)

    def __next__(self) -> Any:
        epoch, b = self.cursor.advance()
        if epoch != self._epoch:
            self._order = (
                np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
            )
            self._epoch = epoch
        i = (b * self.world_size + self.rank) * self.batch_size
        return self.collate(self._order[i : i + self.batch_size])

    def collate(self, rows: np.ndarray) -> Any:
        raise NotImplementedError


def pad_rows(seqs: Sequence[Sequence[int]], pad_id: int, fill: int | None = None) -> torch.Tensor:
    """(len(seqs), longest) LongTensor of right-padded rows (``fill`` defaults to ``pad_id``)."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), pad_id if fill is None else fill, dtype=torch.long)
    for j, s in enumerate(seqs):
        out[j, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out
