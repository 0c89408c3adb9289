"""Reading prepared datasets (written by ``lmlab prepare``): meta.json, tokenizers, memory-mapped token files.

DATA/meta.json          "task" (lm | translation), vocabulary, dtype, split sizes, sources
DATA/tokenizer.json     the tokenizer (a translation dataset's target or joint one)
DATA/{train,val}.bin    lm: the split's tokens, concatenated
DATA/{split}.{src,tgt}.bin/.idx, DATA/{split}.tsv     translation: see ``lmlab.data.prepare``
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lmlab.data.tokenizer import Tokenizer, load_tokenizer
from lmlab.errors import LmlabError

SPLITS = ("train", "val")  # of a language-modeling dataset
PAIR_SPLITS = ("train", "val", "test")  # of a translation dataset


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
    def tokenizer(self) -> Tokenizer:
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


class SplitTokens(NamedTuple):
    src: np.ndarray  # flat source tokens (memory-mapped)
    src_offsets: np.ndarray  # (pairs + 1,)
    tgt: np.ndarray
    tgt_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.src_offsets) - 1


class TranslationData:
    """A prepared translation dataset: token files per split, tokenizers, and the text of the pairs."""

    def __init__(self, path: str | Path, meta: dict[str, Any]) -> None:
        if meta.get("task") != "translation":
            raise LmlabError(f"{path} is a {meta.get('task', 'lm')} dataset, not a translation dataset")
        self.path, self.meta = Path(path), meta

    @classmethod
    def load(cls, path: str | Path) -> TranslationData:
        ds = load_dataset(path)
        return cls(ds.path, ds.meta)

    @cached_property
    def tgt_tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.path / "tokenizer.json")

    @cached_property
    def src_tokenizer(self) -> Tokenizer:
        separate = self.path / "tokenizer.src.json"
        return load_tokenizer(separate) if separate.is_file() else self.tgt_tokenizer

    def _check_split(self, split: str) -> None:
        if split not in PAIR_SPLITS:
            raise LmlabError(f"unknown split {split!r}; choose one of {', '.join(PAIR_SPLITS)}")

    def tokens(self, split: str) -> SplitTokens:
        self._check_split(split)
        dtype = np.dtype(self.meta["dtype"])
        arrays = []
        for side in ("src", "tgt"):
            for ext, dt in (("bin", dtype), ("idx", np.dtype(np.int64))):
                path = self.path / f"{split}.{side}.{ext}"
                if not path.is_file():
                    raise LmlabError(f"{path} is missing; prepare the dataset again with lmlab prepare")
                arrays.append(np.memmap(path, dtype=dt, mode="r") if path.stat().st_size else np.zeros(0, dt))
        toks = SplitTokens(*arrays)
        expected = self.meta.get("splits", {}).get(split, {})
        if expected and (len(toks) != expected["pairs"] or len(toks.src) != expected["src_tokens"]):
            raise LmlabError(f"the {split} split of {self.path} does not match meta.json; prepare it again")
        return toks

    def pairs(self, split: str) -> list[tuple[str, str]]:
        """The split's (source, target) texts, in token-file order."""
        self._check_split(split)
        path = self.path / f"{split}.tsv"
        if not path.is_file():
            raise LmlabError(f"{path} is missing; prepare the dataset again with lmlab prepare")
        rows = path.read_text(encoding="utf-8").split("\n")[:-1]
        return [tuple(r.split("\t", 1)) for r in rows]  # type: ignore[misc]
