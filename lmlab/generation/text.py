"""Text in, text out: prompts through the tokenizer, token ids back into text, stop strings.

The engine (``lmlab.generation.engine``) knows token ids only. This layer encodes prompts
(``encode_prompt``), turns each row's new tokens into text as they come (``Detokenizer``: never
releasing half a character or the beginning of a stop string) and wires a tokenizer into the
engine (``stream_events``: stop at ``<|eos|>``, no special tokens in base-model text). The
text-level functions ``generate_text`` and ``stream_text`` are what ``lmlab.generate`` and
``lmlab.stream`` call.

Options: every function here takes a ``GenerationRequest`` and/or its fields as keywords; keywords
given with a request override its fields (``generate_text(m, tok, p, request, seed=1)``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

import torch

from lmlab.errors import LmlabError
from lmlab.generation.engine import MakeRowText, TokenEvent, stream_ids
from lmlab.generation.request import GenerationRequest, as_request

__all__ = [
    "Detokenizer",
    "banned_special_ids",
    "detokenizer_for",
    "encode_prompt",
    "generate_text",
    "stream_events",
    "stream_text",
]

CONTEXT_TOKENS = 8  # prompt tokens the detokenizer decodes before the first new token (leading spaces, joins)
_REPLACEMENT = "\ufffd"  # what a decoder makes of an incomplete UTF-8 sequence


# ---------------------------------------------------------------------------------------------
# Incremental decoding with stop strings


class Detokenizer:
    """Turns a stream of token ids into text pieces, holding back what is not final yet.

    Decoding one token at a time is wrong for byte-level BPE (a character may span tokens) and for
    word tokenizers (spaces depend on the neighbour), so each step decodes a short window of recent
    tokens and releases only what the new token added; nothing is released while the window ends in
    U+FFFD (an incomplete character). With stop strings, the longest tail that could begin one is held
    back; when one appears the text before it is released and ``stop`` is set.

    ``context`` is the end of the prompt, decoded with the first tokens so their text joins right.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = (), context: Sequence[int] = ()):
        self._decode = decode
        self._ids = list(context)[-CONTEXT_TOKENS:]
        self._start = 0  # the decoded window starts here ...
        self._read = len(self._ids)  # ... and the tokens before this are already text
        self._stops = [s for s in stop if s]
        self._longest = max((len(s) for s in self._stops), default=0)
        self._pending = ""  # decoded but not released: it may begin a stop string
        self.stop: str | None = None

    def _advance(self, final: bool = False) -> str:
        """Text of the tokens not yet read, or "" while they end inside a multi-byte character."""
        before = self._decode(self._ids[self._start : self._read])
        now = self._decode(self._ids[self._start :])
        if len(now) <= len(before) or (now.endswith(_REPLACEMENT) and not final):
            return ""
        # keep a short window: decoding all the text each step would cost O(n) per token
        self._start, self._read = self._read, len(self._ids)
        return now[len(before) :]

    def _release(self, final: bool) -> str:
        if not self._stops:
            out, self._pending = self._pending, ""
            return out
        hits = [(i, s) for s in self._stops if (i := self._pending.find(s)) >= 0]
        if hits:
            i, self.stop = min(hits, key=lambda h: h[0])
            out, self._pending = self._pending[:i], ""
            return out
        hold = 0
        if not final:
            for k in range(min(len(self._pending), self._longest - 1), 0, -1):
                tail = self._pending[-k:]
                if any(s.startswith(tail) for s in self._stops):
                    hold = k
                    break
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def push(self, token: int) -> str:
        """Add one token; return the text it releases (maybe ""). Check ``stop`` afterwards."""
        if self.stop is not None:
            return ""
        self._ids.append(token)
        self._pending += self._advance()
        return self._release(final=False)

    def finish(self) -> str:
        """The text still held back, once no token will follow (an incomplete character comes out as U+FFFD)."""
        if self.stop is not None:
            return ""
        self._pending += self._advance(final=True)
        return self._release(final=True)


def detokenizer_for(tokenizer) -> MakeRowText:
    """The engine's ``detokenizer`` argument for a tokenizer: (stop strings, prompt ids) -> a ``Detokenizer``
    of the text without special tokens."""
    return functools.partial(Detokenizer, lambda ids: tokenizer.decode(ids, skip_special_tokens=True))


# ---------------------------------------------------------------------------------------------
# Prompts and the tokenizer's special tokens


def encode_prompt(tokenizer, prompt: str, *, start_if_empty: bool = True) -> list[int]:
    """Token ids of a prompt. An empty prompt starts a new document: the tokenizer's ``<|eos|>`` id
    (base models are trained with it between documents), else its ``<|bos|>``; with neither it is an
    error (``start_if_empty=False`` returns [] instead). A character a char vocabulary lacks is named
    in the error."""
    if not isinstance(prompt, str):
        raise LmlabError(f"a prompt must be a string, got {type(prompt).__name__}")
    unknown = tokenizer.unknown_chars(prompt)
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise LmlabError(
            f"the prompt has {len(unknown)} character(s) not in this model's char vocabulary: {shown}; "
            "remove or replace them"
        )
    ids = tokenizer.encode(prompt) if prompt else []
    if ids or not start_if_empty:
        return ids
    start = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.bos_id
    if start is None:
        raise LmlabError("the prompt is empty and this tokenizer has no <|eos|> or <|bos|> token to start from")
    return [start]


def banned_special_ids(tokenizer) -> list[int]:
    """Special tokens a base model should never write: all but ``<|eos|>`` (chat markers, pad, bos, unk)."""
    return sorted(i for i in tokenizer.special_tokens.values() if i != tokenizer.eos_id)


def _need(tokenizer) -> None:
    if tokenizer is None:
        raise LmlabError("generation from text needs the run's tokenizer (tokenizer.json), but there is none")


# ---------------------------------------------------------------------------------------------
# The engine with a tokenizer


def stream_events(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    request: GenerationRequest | None = None,
    *,
    on_notice: Callable[[str], None] | None = None,
    **options,
) -> Iterator[list[TokenEvent]]:
    """``stream_ids`` for prompts already tokenized, with each event's text filled in.

    A row stops at the tokenizer's ``<|eos|>`` (besides the request's stops); its text leaves special
    tokens out, and special tokens other than ``<|eos|>`` are never chosen unless the request has
    ``allow_special_tokens``. Arguments are checked before this returns.
    """
    _need(tokenizer)
    request = as_request(request, **options)
    return stream_ids(
        model,
        prompts,
        request,
        eos_id=tokenizer.eos_id,
        detokenizer=detokenizer_for(tokenizer),
        # a stop token the request asks for (a chat model's <|end|>) must stay writable, or it could never stop
        banned_ids=()
        if request.allow_special_tokens
        else [i for i in banned_special_ids(tokenizer) if i not in request.stop_token_ids],
        on_notice=on_notice,
    )


def generate_text(
    model: torch.nn.Module,
    tokenizer,
    prompt: str | Sequence[str] = "",
    request: GenerationRequest | None = None,
    *,
    on_notice: Callable[[str], None] | None = None,
    **options,
) -> str | list[str]:
    """The text a model writes after ``prompt`` (the prompt itself not included).

    A list of prompts is generated as one batch and gives a list of texts; with a seed, prompt i
    uses ``seed + i``, so ``generate_text(m, t, [p] * 4, seed=0)`` draws four different samples. An
    empty prompt starts a new document. Generation stops at ``<|eos|>``, at a ``stop`` string (left out
    of the text), at a ``stop_token_ids`` token, or after ``max_new_tokens``. Special tokens other than
    ``<|eos|>`` are never produced unless ``allow_special_tokens``.

    ``request`` (a ``GenerationRequest``) and ``options`` (its fields by name: max_new_tokens, stop,
    temperature, top_k, top_p, seed, ...) say what to generate; options override the request's fields.
    ``on_notice`` receives the one-time message that the context window slides (default: a
    ``ContextWindowWarning``).
    """
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    _need(tokenizer)
    request = as_request(request, **options)
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    steps = stream_events(model, tokenizer, ids, request, on_notice=on_notice)
    texts: list[list[str]] = [[] for _ in prompts]
    for step in steps:
        for ev in step:
            texts[ev.index].append(ev.text)
    out = ["".join(t) for t in texts]
    return out[0] if single else out


def stream_text(
    model: torch.nn.Module,
    tokenizer,
    prompt: str = "",
    request: GenerationRequest | None = None,
    *,
    on_notice: Callable[[str], None] | None = None,
    **options,
) -> Iterator[str]:
    """Like ``generate_text`` for one prompt, but yields the text in pieces as the tokens come.

    The pieces join to exactly what ``generate_text`` returns; a piece never ends inside a multi-byte
    character nor shows the beginning of a stop string before it is known not to be one. Arguments
    are checked before this returns; the model runs as the pieces are consumed.
    """
    if not isinstance(prompt, str):
        raise LmlabError("stream takes one prompt (a string); use generate for a list of prompts")
    _need(tokenizer)
    request = as_request(request, **options)
    steps = stream_events(model, tokenizer, [encode_prompt(tokenizer, prompt)], request, on_notice=on_notice)
    return _texts(steps)


def _texts(steps: Iterator[list[TokenEvent]]) -> Iterator[str]:
    for step in steps:
        for ev in step:
            if ev.text:
                yield ev.text
