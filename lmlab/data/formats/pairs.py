"""Tab-separated sentence pairs: reading them (with the lines that are not pairs) and the leak-free split.

Pairs are split by *source sentence*: every pair of one source (compared case-folded, whitespace
collapsed) goes to the same split, chosen by a seeded shuffle, so no test source is seen in training
and all of a test source's reference translations are available to the BLEU score.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmlab.errors import LmlabError

SPLITS = ("train", "val", "test")


@dataclass
class PairFile:
    """Sentence pairs read from tab-separated files, with the lines that could not be read as pairs."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)  # "file:line: reason"
    sha256: dict[Path, str] = field(default_factory=dict)


def read_pairs(
    files: Sequence[Path], columns: tuple[int, int] = (0, 1), encoding: str = "utf-8", errors: str = "strict"
) -> PairFile:
    """(source, target) from columns ``columns`` of tab-separated lines; blank lines are skipped.

    A line without a tab, with fewer columns than ``columns`` needs, or with an empty (whitespace-only)
    source or target is malformed: it is recorded with its line number and left out.
    """
    out = PairFile()
    need = max(columns) + 1
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise LmlabError(f"cannot read {path}: {e.strerror}") from None
        out.sha256[path] = hashlib.sha256(raw).hexdigest()
        try:
            text = raw.decode(encoding, errors)
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise LmlabError(
                f"{path}:{line} is not valid {encoding} text; give the right --encoding (e.g. latin-1) "
                "or pass --errors replace"
            ) from None
        # split at "\n" only, so line numbers are those an editor shows (splitlines also cuts at U+2028 etc.)
        for n, line in enumerate(text.split("\n"), start=1):
            line = line.removesuffix("\r")
            if not line.strip():
                continue
            cells = line.split("\t")
            if len(cells) < need:
                why = "no tab" if len(cells) == 1 else f"{len(cells)} columns, column {need - 1} is missing"
                out.malformed.append(f"{path.name}:{n}: {why}")
                continue
            src, tgt = cells[columns[0]].strip(), cells[columns[1]].strip()
            if not src or not tgt:
                out.malformed.append(f"{path.name}:{n}: empty {'source' if not src else 'target'}")
                continue
            out.pairs.append((src, tgt))
    return out


def source_key(text: str) -> str:
    """What makes two sources "the same sentence" for the split: case and spacing do not count."""
    return " ".join(text.split()).casefold()


def split_pairs(
    pairs: Sequence[tuple[str, str]], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[tuple[str, str]]]:
    """Seeded train/val/test split by source sentence; within a split, pairs come in shuffled source order."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for pair in pairs:
        groups.setdefault(source_key(pair[0]), []).append(pair)
    keys = list(groups)  # first-seen order: a function of the file alone
    n = len(keys)
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    if n - n_test - n_val < 1:
        raise LmlabError(
            f"only {n} distinct source sentences: too few for a train, a validation and a test split; "
            "give more pairs or smaller --val-fraction / --test-fraction"
        )
    order = np.random.default_rng(seed).permutation(n)
    parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    return {split: [p for i in parts[split] for p in groups[keys[i]]] for split in SPLITS}
