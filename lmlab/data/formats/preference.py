"""Preference data: responses to one prompt, best first, from pairs or rankings.

| one record (JSONL) | becomes |
| --- | --- |
| ``{"chosen", "rejected"}``, HH-RLHF transcripts | the shared turns as the prompt (a conversation), the two replies |
| ``{"chosen", "rejected"}`` plain texts | an empty prompt, the two texts |
| ``{"prompt", "chosen", "rejected"}`` | the prompt (text, or a list of messages), the two responses |
| ``{"prompt", "responses": [...], "ranking": [...]}`` | ``ranking`` lists the responses' indices best first |
| ``{"prompt", "responses": [...]}`` | the responses, listed best first |

A response may also be given as messages (``[{"role": "assistant", "content": ...}]``), as some datasets do. A
group of K ranked responses gives K·(K−1)/2 pairs (InstructGPT); the reward model and DPO keep a group in one
batch, so each response is scored once however many pairs it is in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.data.chat import check_messages
from lmlab.errors import LmlabError

HUMAN, ASSISTANT_TURN = "\n\nHuman:", "\n\nAssistant:"


class Divergent(LmlabError):
    """An HH-RLHF pair whose transcripts differ before the last turn: no shared prompt to rank replies to."""


@dataclass(frozen=True)
class Ranked:
    """Responses to one prompt, best first."""

    prompt: str | tuple[dict[str, str], ...]  # plain text, or the conversation before the responses
    responses: tuple[str, ...]
    line: int

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(better, worse) response indices: every pair of the ranking."""
        k = len(self.responses)
        return [(i, j) for i in range(k) for j in range(i + 1, k)]


def parse_hh(text: str, where: str) -> list[dict[str, str]]:
    """An HH-RLHF transcript as chat messages (Human → user, Assistant → assistant)."""
    out: list[dict[str, str]] = []
    rest = text
    if not rest.startswith(HUMAN):
        raise LmlabError(f"{where}: an HH-RLHF transcript starts with '\\n\\nHuman:'")
    while rest:
        role, marker = ("user", HUMAN) if rest.startswith(HUMAN) else ("assistant", ASSISTANT_TURN)
        rest = rest[len(marker) :]
        ends = [i for i in (rest.find(HUMAN), rest.find(ASSISTANT_TURN)) if i >= 0]
        cut = min(ends) if ends else len(rest)
        out.append({"role": role, "content": rest[:cut].strip()})
        rest = rest[cut:]
    return out


def _response(value: Any, where: str, key: str) -> str:
    if isinstance(value, list):  # [{"role": "assistant", "content": ...}]
        msgs = check_messages(value, f"{where} {key}")
        if msgs[-1]["role"] != "assistant":
            raise LmlabError(f"{where}: {key} must end with an assistant message")
        return msgs[-1]["content"]
    if not isinstance(value, str):
        raise LmlabError(f"{where}: {key} must be text or a list of messages")
    return value


def _prompt(value: Any, where: str) -> str | tuple[dict[str, str], ...]:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        msgs = check_messages(value, f"{where} prompt")
        if msgs[-1]["role"] == "assistant":
            raise LmlabError(f"{where}: the prompt's last message is the assistant's; the responses answer it")
        return tuple(msgs)
    raise LmlabError(f"{where}: prompt must be text or a list of messages")


def to_ranked(record: Any, where: str, line: int) -> Ranked:
    if not isinstance(record, dict):
        raise LmlabError(f"{where}: not a JSON object")
    if "responses" in record:
        responses = record["responses"]
        if not isinstance(responses, list) or len(responses) < 2:
            raise LmlabError(f"{where}: responses must be a list of at least two")
        texts = [_response(r, where, f"response {i}") for i, r in enumerate(responses)]
        ranking = record.get("ranking")
        if ranking is not None:
            ints = isinstance(ranking, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in ranking)
            if not ints or sorted(ranking) != list(range(len(texts))):
                raise LmlabError(
                    f"{where}: ranking must list every response index (0 to {len(texts) - 1}) once, best first"
                )
            texts = [texts[i] for i in ranking]
        if len(set(texts)) < len(texts):
            raise LmlabError(f"{where}: two responses are the same text; a ranking needs different responses")
        return Ranked(_prompt(record.get("prompt", ""), where), tuple(texts), line)
    missing = [k for k in ("chosen", "rejected") if k not in record]
    if missing:
        raise LmlabError(
            f"{where}: a preference record needs chosen and rejected (or prompt and responses); missing "
            + ", ".join(missing)
        )
    chosen, rejected = record["chosen"], record["rejected"]
    if "prompt" not in record and isinstance(chosen, str) and chosen.startswith(HUMAN):
        if not isinstance(rejected, str) or not rejected.startswith(HUMAN):
            raise LmlabError(f"{where}: chosen is an HH-RLHF transcript but rejected is not")
        a, b = parse_hh(chosen, where), parse_hh(rejected, where)
        if a[-1]["role"] != "assistant" or b[-1]["role"] != "assistant":
            raise LmlabError(f"{where}: both transcripts must end with an Assistant turn")
        if a[:-1] != b[:-1]:
            raise Divergent(f"{where}: chosen and rejected differ before their last Assistant turn")
        prompt: str | tuple[dict[str, str], ...] = tuple(check_messages(a[:-1], where)) if a[:-1] else ""
        pair = (a[-1]["content"], b[-1]["content"])
    else:
        prompt = _prompt(record.get("prompt", ""), where)
        pair = (_response(chosen, where, "chosen"), _response(rejected, where, "rejected"))
    if pair[0] == pair[1]:
        raise LmlabError(f"{where}: chosen and rejected are the same text")
    return Ranked(prompt, pair, line)


def read_preferences(path: str | Path) -> tuple[list[Ranked], int]:
    """(the ranked groups, records left out) of a JSONL preference file. A record that does not fit is an error
    naming its line, except an HH-RLHF pair whose transcripts differ before their last turn (5 of the 2,312 in
    the harmless-base test split): it has no shared prompt, so it is left out and counted."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"preference data {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LmlabError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    out, skipped = [], 0
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmlabError(f"{where}: not a JSON object ({e.msg})") from None
        try:
            out.append(to_ranked(record, where, n))
        except Divergent:
            skipped += 1
    if not out:
        raise LmlabError(f"{path} has no preference records")
    return out, skipped
