"""Labeled texts for classification: one text (sentiment) or a pair of texts (entailment, similarity) and a label.

Two formats, chosen by the file's suffix:

- TSV with a header line (SST-2's ``sentence<TAB>label``): the text column is ``sentence`` or ``text``; a pair
  is ``text_a``/``text_b`` (or ``sentence1``/``sentence2``, ``premise``/``hypothesis``); the label column is
  ``label``.
- JSONL, one object per line: ``{"text": ..., "label": ...}`` or ``{"text_a": ..., "text_b": ..., "label": ...}``.

Labels are integers or strings; they are kept as strings (``"0"``, ``"positive"``) and mapped to class ids by
``label_names``. Every mistake names the file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmlab.data.formats.jsonl import jsonl_records
from lmlab.errors import LmlabError

TEXT_KEYS = ("text", "sentence")
PAIR_KEYS = (("text_a", "text_b"), ("sentence1", "sentence2"), ("premise", "hypothesis"))


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    text_b: str | None = None  # the second text of a pair
    line: int = 0  # where it came from (1-based line of the file)


def _columns(keys: set[str], where: str) -> tuple[str, str | None]:
    """(text column, second text column or None) among ``keys``."""
    for a, b in PAIR_KEYS:
        if a in keys and b in keys:
            return a, b
    for a in TEXT_KEYS:
        if a in keys:
            return a, None
    wanted = ", ".join(TEXT_KEYS) + " (or a pair: " + ", ".join("/".join(p) for p in PAIR_KEYS) + ")"
    raise LmlabError(f"{where} has no text field: expected one of {wanted} and a label")


def _example(row: dict, a: str, b: str | None, where: str, n: int) -> Example:
    if "label" not in row or row["label"] is None or str(row["label"]).strip() == "":
        raise LmlabError(f"{where}:{n}: no label")
    label = row["label"]
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise LmlabError(f"{where}:{n}: the label must be an integer or a string, got {json.dumps(label)}")
    texts = [row.get(a)] + ([row.get(b)] if b else [])
    for key, text in zip((a, b), texts):
        if not isinstance(text, str) or not text.strip():
            raise LmlabError(f"{where}:{n}: {key} is missing or empty")
    return Example(texts[0].strip(), str(label).strip(), texts[1].strip() if b else None, n)


def read_labeled(path: str | Path) -> list[Example]:
    """The examples of a labeled TSV (with header) or JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"labeled data {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LmlabError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = text.split("\n")
    out: list[Example] = []
    if path.suffix in (".jsonl", ".json"):
        cols = None
        for n, row in jsonl_records(text, path.name):
            cols = cols or _columns(set(row), f"{path.name}:{n}")
            out.append(_example(row, *cols, path.name, n))
    elif path.suffix in (".tsv", ".txt"):
        header = next((i for i, line in enumerate(lines) if line.strip()), None)
        if header is None:
            raise LmlabError(f"{path} is empty")
        names = [c.strip() for c in lines[header].rstrip("\r").split("\t")]
        a, b = _columns(set(names), f"{path.name}:{header + 1} (the header)")
        if "label" not in names:
            raise LmlabError(f"{path.name}:{header + 1}: the header has no label column (columns: {', '.join(names)})")
        for n, line in enumerate(lines[header + 1 :], start=header + 2):
            if not line.strip():
                continue
            cells = line.rstrip("\r").split("\t")
            if len(cells) != len(names):
                raise LmlabError(f"{path.name}:{n}: {len(cells)} columns, the header has {len(names)}")
            out.append(_example(dict(zip(names, cells)), a, b, path.name, n))
    else:
        raise LmlabError(f"{path}: give labeled data as .tsv (with a header line) or .jsonl")
    if not out:
        raise LmlabError(f"{path} has no examples")
    return out


def label_names(examples: list[Example]) -> list[str]:
    """The classes in a stable order: numerically when every label is an integer, else alphabetically."""
    labels = {e.label for e in examples}
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)
