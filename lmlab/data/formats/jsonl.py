"""JSON Lines: one object per non-blank line, with the file and line number in every error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from lmlab.errors import LmlabError


def jsonl_records(text: str, where: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of ``text``; ``where`` names the file in errors."""
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmlabError(f"{where}:{n}: not a JSON object ({e.msg})") from None
        if not isinstance(row, dict):
            raise LmlabError(f"{where}:{n}: not a JSON object")
        yield n, row
