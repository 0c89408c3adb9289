"""Batches of (inputs, targets) windows from a prepared dataset's memory-mapped token shards.

A split of N tokens is cut into non-overlapping windows of ``block_size + 1`` tokens (inputs and
targets shifted by one share all but one token). Each epoch visits every window once: in a seeded
random order with a random offset (``shuffle=True``, for training) or in file order from offset 0
(``shuffle=False``, for evaluation). Rank r of W takes every W-th window of the epoch's order, so
ranks read disjoint data and all have the same number of batches. Everything about the stream is a
function of (seed, epoch, batch index), which makes the cursor two integers that restore exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.errors import LmlabError

SPLITS = ("train", "val")


@dataclass
class Dataset:
    """A prepared dataset directory: ``meta.json``, ``tokenizer.json`` and one ``.bin`` shard per split."""

    path: Path
    meta: dict[str, Any]

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def task(self) -> str:
        return self.meta.get("task", "lm")

    @cached_property
    def tokenizer(self):
        from lmlab.data.tokenizer import load_tokenizer

        return load_tokenizer(self.path / "tokenizer.json")

    def tokens(self, split: str) -> np.ndarray:
        """The split's tokens, memory-mapped (nothing is read until indexed)."""
        if split not in SPLITS:
            raise LmlabError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        path = self.path / f"{split}.bin"
        if not path.is_file():
            raise LmlabError(f"{path} is missing; prepare the dataset again with lmlab prepare")
        dtype = np.dtype(self.meta["dtype"])
        expected = self.meta.get("splits", {}).get(split, {}).get("tokens")
        if expected is not None and path.stat().st_size != expected * dtype.itemsize:
            raise LmlabError(
                f"{path} has {path.stat().st_size} bytes but meta.json promises {expected} {dtype.name} tokens; "
                "the dataset is damaged: prepare it again"
            )
        if path.stat().st_size == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r")


def load_dataset(path: str | Path) -> Dataset:
    """Open a dataset directory written by ``lmlab prepare``."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not path.is_dir():
        raise LmlabError(f"dataset directory {path} not found; create it with: lmlab prepare SOURCE --out {path}")
    if not meta_path.is_file():
        raise LmlabError(f"{path} is not an lmlab dataset (no meta.json); create one with lmlab prepare")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        for key in ("vocab_size", "dtype"):
            meta[key]  # noqa: B018 - presence check
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise LmlabError(f"{meta_path} is damaged ({type(e).__name__}: {e}); prepare the dataset again") from None
    return Dataset(path, meta)


class BatchLoader:
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
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
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
        self.batches_per_epoch = max(0, min_windows // world_size) // batch_size
        if self.batches_per_epoch == 0:
            per_rank = f" per rank ({world_size} ranks)" if world_size > 1 else ""
            raise LmlabError(
                f"the {name} split has {n:,} tokens: fewer than one batch of {batch_size} windows of "
                f"block_size+1 = {block_size + 1} tokens{per_rank}; use a smaller batch size or block size, "
                "or more data"
            )
        self.epoch = 0
        self.batch_in_epoch = 0
        self._order_epoch = -1
        self._order: np.ndarray | None = None
        self._offset = 0
        self._span = np.arange(block_size + 1)

    def __iter__(self) -> BatchLoader:
        return self

    def _epoch_order(self) -> None:
        if self._order_epoch == self.epoch:
            return
        n, T = len(self.tokens), self.block_size
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._offset = int(rng.integers(0, T))
            windows = (n - 1 - self._offset) // T
            order = rng.permutation(windows)
        else:
            self._offset = 0
            order = np.arange((n - 1) // T)
        per_rank = self.batches_per_epoch * self.batch_size
        self._order = order[self.rank :: self.world_size][:per_rank]
        self._order_epoch = self.epoch

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
        self._epoch_order()
        assert self._order is not None
        b = self.batch_in_epoch
        starts = self._offset + self._order[b * self.batch_size : (b + 1) * self.batch_size] * self.block_size
        self.batch_in_epoch += 1
        # one fancy-index read from the memmap: (B, T+1)
        window = torch.from_numpy(self.tokens[starts[:, None] + self._span].astype(np.int64))
        x, y = window[:, :-1].contiguous(), window[:, 1:].contiguous()
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    # -- the cursor --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int | bool]:
        """Where the stream is, plus what it depends on (checked on restore)."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "num_tokens": len(self.tokens),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_cursor(self, state)


def restore_cursor(loader: Any, state: dict[str, Any]) -> None:
    """Move ``loader`` to the saved (epoch, batch) after checking that everything else its
    ``state_dict()`` records (seed, order, rank, sizes, data length) is unchanged."""
    mine = loader.state_dict()
    for key, value in mine.items():
        if key not in ("epoch", "batch_in_epoch") and state.get(key) != value:
            raise LmlabError(
                f"cannot restore the {loader.name} data cursor: {key} was {state.get(key)} and is now {value}; "
                "resume with the same dataset, batch size, block size, seed and number of processes"
            )
    loader.epoch = int(state["epoch"])
    loader.batch_in_epoch = int(state["batch_in_epoch"])
