"""The OpenAI API's request bodies, checked field by field, and its error shape.

Bodies are read by hand rather than through pydantic models: every OpenAI-compatible server answers a wrong field
with ``{"error": {"message", "type", "param", "code"}}`` naming it, and a hand-written check says exactly what was
wrong ("temperature must be a number from 0 to 2, got 'hot'") where a schema error would be a list of loc tuples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lmlab.errors import LmlabError


class ApiError(Exception):
    """An error the client caused (or a full queue): its HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not low <= v <= high:
        raise _bad(name, f"{name} must be a number from {low:g} to {high:g}, got {v!r}")
    return float(v)


def _integer(body: dict, name: str, default: int | None, low: int, high: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
        upto = f" to {high}" if high is not None else " or more"
        raise _bad(name, f"{name} must be an integer from {low}{upto}, got {v!r}")
    return v


def _boolean(body: dict, name: str, default: bool = False) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(name, f"{name} must be true or false, got {v!r}")
    return v


def _stops(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v) or len(v) > 4:
        raise _bad("stop", f"stop must be a string or a list of up to 4 strings, got {v!r}")
    return tuple(s for s in v if s)


def _logit_bias(body: dict, vocab_size: int) -> dict[int, float] | None:
    v = body.get("logit_bias")
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _bad("logit_bias", f"logit_bias must be an object of token id -> bias, got {v!r}")
    out = {}
    for k, b in v.items():
        try:
            tid = int(k)
        except (TypeError, ValueError):
            raise _bad("logit_bias", f"logit_bias: {k!r} is not a token id") from None
        if not 0 <= tid < vocab_size:
            raise _bad("logit_bias", f"logit_bias: token id {tid} is outside the vocabulary of {vocab_size}")
        if isinstance(b, bool) or not isinstance(b, int | float) or not -100 <= b <= 100:
            raise _bad("logit_bias", f"logit_bias: the bias of token {tid} must be a number from -100 to 100")
        out[tid] = float(b)
    return out


@dataclass
class Sampling:
    """What both endpoints share: how to sample and when to stop."""

    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    logit_bias: dict[int, float] | None
    seed: int | None
    stop: tuple[str, ...]
    n: int
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int
    ignore_eos: bool = False  # vLLM's extra: run to max_tokens (load tests that need exact lengths)

    def request(self, max_new_tokens: int, seed: int | None):
        """The engine's GenerationRequest for one choice."""
        from lmlab.generation.request import GenerationRequest

        try:
            return GenerationRequest(
                max_new_tokens=max_new_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                min_p=self.min_p, repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty, logit_bias=self.logit_bias, seed=seed, stop=self.stop,
                logprobs=self.logprobs or self.top_logprobs > 0, top_logprobs=self.top_logprobs,
            )  # fmt: skip
        except LmlabError as e:  # a value the checks above let through but the engine refuses
            raise _bad(str(e).split()[0], str(e)) from None


def sampling(body: dict, vocab_size: int, *, chat: bool) -> Sampling:
    if chat:
        max_tokens = _integer(body, "max_completion_tokens", None, 1)
        if max_tokens is None:
            max_tokens = _integer(body, "max_tokens", None, 1)
        logprobs = _boolean(body, "logprobs")
        top = _integer(body, "top_logprobs", 0, 0, 20)
        if top and not logprobs:
            raise _bad("top_logprobs", "top_logprobs needs logprobs: true")
    else:
        max_tokens = _integer(body, "max_tokens", 16, 1)
        top_or_none = _integer(body, "logprobs", None, 0, 5)  # completions: logprobs is the number of alternatives
        logprobs, top = top_or_none is not None, top_or_none or 0
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("stream_options", f"stream_options must be an object, got {options!r}")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64):
        raise _bad("seed", f"seed must be an integer, got {seed!r}")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user", f"user must be a string, got {user!r}")
    return Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0, 2),
        top_p=_number(body, "top_p", 1.0, 0, 1) or 1e-9,
        top_k=_integer(body, "top_k", 0, -1) if body.get("top_k") != -1 else 0,  # -1: off, as vLLM
        min_p=_number(body, "min_p", 0.0, 0, 1),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 1e-6, 100),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2, 2),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2, 2),
        logit_bias=_logit_bias(body, vocab_size),
        seed=seed,
        stop=_stops(body),
        n=_integer(body, "n", 1, 1, 16),
        stream=_boolean(body, "stream"),
        include_usage=bool(options and _boolean(options, "include_usage")),
        logprobs=logprobs,
        top_logprobs=top,
        ignore_eos=_boolean(body, "ignore_eos"),
    )


def messages(body: dict) -> list[dict[str, str]]:
    v = body.get("messages")
    if not isinstance(v, list) or not v:
        raise _bad("messages", "messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(v):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad(f"messages[{i}]", f"messages[{i}] must be an object with a role and a content")
        content = m.get("content")
        if isinstance(content, list):  # the content-parts form: text parts only
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
                raise _bad(f"messages[{i}].content", "only text content parts are supported")
            content = "".join(parts)
        if not isinstance(content, str):
            raise _bad(f"messages[{i}].content", f"messages[{i}].content must be a string")
        if m["role"] not in ("system", "user", "assistant", "developer"):
            raise _bad(f"messages[{i}].role", f"messages[{i}].role must be system, user or assistant, got "
                       f"{m['role']!r}")  # fmt: skip
        out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
    return out


def prompts(body: dict) -> list[str | list[int]]:
    """A completion's prompts: a string, a list of strings, a list of token ids, or a list of such lists."""
    v = body.get("prompt")
    if v is None:
        raise _bad("prompt", "prompt is required")
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool) for t in v):
        return [v]
    if isinstance(v, list) and v and all(isinstance(p, str) for p in v):
        return list(v)
    if isinstance(v, list) and v and all(isinstance(p, list) and p and all(
            isinstance(t, int) and not isinstance(t, bool) for t in p) for p in v):  # fmt: skip
        return list(v)
    raise _bad("prompt", "prompt must be a string, a list of strings, or token ids (a list of integers, or of lists)")
