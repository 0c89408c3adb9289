"""Readers of source formats, one file each (text lines are read by ``prepare``), and ``holdout``: the seeded
validation split of a list of records that every record reader shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmlab.errors import LmlabError


def holdout(items: Sequence[Any], fraction: float, seed: int, source: Any, what: str) -> tuple[list, list]:
    """(train, val): a seeded ``fraction`` of ``items`` held out, both in file order."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(items))
    n_val = max(1, round(len(items) * fraction))
    if len(items) - n_val < 1:
        raise LmlabError(f"{source} has {len(items)} {what}(s): too few to hold out a validation split")
    return [items[i] for i in sorted(order[n_val:])], [items[i] for i in sorted(order[:n_val])]
