"""The one resumable cursor of every batch loader: which epoch, which batch of it, and what that depends on.

A loader whose batches are a function of (seed, epoch, batch index) is restored exactly by two integers.
The cursor keeps them, advances them epoch after epoch, and records what else the stream depends on
(seed, shuffle, rank, world size, batch and block size, data length): restoring a cursor saved under a
different value of any of those is refused, since the batches would silently differ.
"""

from __future__ import annotations

from typing import Any

from lmlab.errors import LmlabError


class Cursor:
    """Position of an endless batch stream of ``batches_per_epoch`` batches per epoch.

    ``identity`` holds what the stream depends on besides the position; it is saved with the position and
    must be equal on restore. ``empty`` is the error message when an epoch would have no batch at all."""

    def __init__(
        self, name: str, batches_per_epoch: int, *, rank: int, world_size: int, identity: dict[str, Any], empty: str
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if batches_per_epoch <= 0:
            raise LmlabError(empty)
        self.name = name
        self.batches_per_epoch = batches_per_epoch
        self.identity = {**identity, "rank": rank, "world_size": world_size}
        self.epoch = 0
        self.batch_in_epoch = 0

    def advance(self) -> tuple[int, int]:
        """(epoch, batch index) of the next batch, moving on to the next epoch after the last batch of one."""
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
        position = (self.epoch, self.batch_in_epoch)
        self.batch_in_epoch += 1
        return position

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is, plus what it depends on (checked on restore)."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, **self.identity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Move to the saved (epoch, batch) after checking that everything else recorded is unchanged."""
        for key, value in self.identity.items():
            if state.get(key) != value:
                raise LmlabError(
                    f"cannot restore the {self.name} data cursor: {key} was {state.get(key)} and is now {value}; "
                    "resume with the same dataset, batch size, block size, seed and number of processes"
                )
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
