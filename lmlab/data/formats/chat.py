"""Instruction data as conversations (``[{"role", "content"}, ...]``), from the formats people have it in.

| format | one record | becomes |
| --- | --- | --- |
| ``messages`` | ``{"messages": [{"role", "content"}, ...]}`` (OpenAI) | the messages as they are |
| ``prompt-completion`` | ``{"prompt", "completion"}`` | user: prompt; assistant: completion |
| ``alpaca`` | ``{"instruction", "input", "output"}`` | user: instruction (+ blank line + input); assistant: output |
| ``dolly`` | ``{"instruction", "context", "response"}`` | the same, with context and response |
| ``gsm8k`` | ``{"question", "answer"}`` | user: question; assistant: answer (reasoning, then ``#### n``) |
| ``self-instruct`` | ``{"instruction", "instances": [{"input", "output"}]}`` | one conversation per instance |

A file is JSONL (one record a line) or a JSON array (Dolly's). The format is detected from the first record's
keys and named in the log, or given (``--format``); a record that does not fit it is an error with its line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from lmlab.data.chat import check_messages
from lmlab.errors import LmlabError

Format = Literal["auto", "messages", "prompt-completion", "alpaca", "dolly", "gsm8k", "self-instruct"]
FORMATS: tuple[str, ...] = get_args(Format)[1:]

# format -> the keys that identify it (the first format whose keys a record has wins)
KEYS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "self-instruct": ("instruction", "instances"),
    "dolly": ("instruction", "response"),
    "alpaca": ("instruction", "output"),
    "prompt-completion": ("prompt", "completion"),
    "gsm8k": ("question", "answer"),
}


@dataclass(frozen=True)
class Conversation:
    messages: tuple[dict[str, str], ...]
    line: int  # where its record starts (1-based line; a JSON array's records count from 1)


def detect(record: dict[str, Any]) -> str | None:
    return next((name for name, keys in KEYS.items() if all(k in record for k in keys)), None)


def _text(record: dict, key: str, where: str, required: bool = True) -> str:
    value = record.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise LmlabError(f"{where}: {key} is missing, empty or not text")
    return value


def _ask(instruction: str, extra: str) -> str:
    return instruction.strip() + ("\n\n" + extra.strip() if extra.strip() else "")


def to_conversations(record: Any, fmt: str, where: str) -> list[list[dict[str, str]]]:
    """The conversations of one record in format ``fmt``."""
    if not isinstance(record, dict):
        raise LmlabError(f"{where}: not a JSON object")
    missing = [k for k in KEYS[fmt] if k not in record]
    if missing:
        raise LmlabError(f"{where}: a {fmt} record needs {', '.join(KEYS[fmt])} (missing {', '.join(missing)})")
    if fmt == "messages":
        convs = [list(check_messages(record["messages"], where))]
    elif fmt == "prompt-completion":
        convs = [[_user(_text(record, "prompt", where)), _reply(_text(record, "completion", where))]]
    elif fmt in ("alpaca", "dolly"):
        extra_key, out_key = ("input", "output") if fmt == "alpaca" else ("context", "response")
        ask = _ask(_text(record, "instruction", where), _text(record, extra_key, where, required=False))
        convs = [[_user(ask), _reply(_text(record, out_key, where))]]
    elif fmt == "gsm8k":
        convs = [[_user(_text(record, "question", where)), _reply(_text(record, "answer", where))]]
    else:  # self-instruct
        instances = record["instances"]
        if not isinstance(instances, list) or not instances:
            raise LmlabError(f"{where}: instances must be a non-empty list")
        instruction = _text(record, "instruction", where)
        convs = []
        for j, inst in enumerate(instances, start=1):
            if not isinstance(inst, dict):
                raise LmlabError(f"{where}: instance {j} is not an object")
            ask = _ask(instruction, _text(inst, "input", f"{where} instance {j}", required=False))
            convs.append([_user(ask), _reply(_text(inst, "output", f"{where} instance {j}"))])
    for c in convs:
        check_messages(c, where)
    return convs


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _reply(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def read_conversations(path: str | Path, fmt: str = "auto") -> tuple[str, list[Conversation]]:
    """(the format, the conversations) of a JSONL or JSON-array file of instruction data."""
    path = Path(path)
    if fmt not in ("auto", *FORMATS):
        raise LmlabError(f"--format {fmt!r}: choose auto or one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise LmlabError(f"instruction data {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LmlabError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    records: list[tuple[int, Any]] = []
    if text.lstrip().startswith("["):
        try:
            records = list(enumerate(json.loads(text), start=1))
        except json.JSONDecodeError as e:
            raise LmlabError(f"{path.name}:{e.lineno}: not valid JSON ({e.msg})") from None
        label = "record"
    else:
        for n, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    records.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise LmlabError(f"{path.name}:{n}: not a JSON object ({e.msg})") from None
        label = "line"
    if not records:
        raise LmlabError(f"{path} has no records")
    if fmt == "auto":
        first = records[0][1]
        fmt = detect(first) if isinstance(first, dict) else None
        if fmt is None:
            keys = ", ".join(sorted(first)) if isinstance(first, dict) else type(first).__name__
            raise LmlabError(
                f"{path.name}: cannot tell the format from the first record ({keys}); give --format, one of "
                + ", ".join(FORMATS)
            )
    out = []
    for n, record in records:
        where = f"{path.name}:{n}" if label == "line" else f"{path.name} record {n}"
        out += [Conversation(tuple(c), n) for c in to_conversations(record, fmt, where)]
    return fmt, out
