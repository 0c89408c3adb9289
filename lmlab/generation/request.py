"""``GenerationRequest``: what to generate, as one value that every caller hands to the one engine.

The CLI (``lmlab sample``, ``lmlab chat``), the public API (``lmlab.generate``), the server and RL
rollouts all describe a generation the same way: how to sample (a ``SamplingParams``), when to stop
(stop strings, stop token ids, ``max_new_tokens``) and what to report (log-probabilities). The
engine (``lmlab.generation.engine.stream_ids``) and the text layer (``lmlab.generation.text``) take
this object instead of a keyword list each.

The sampling fields are not repeated here: a request holds a ``SamplingParams`` (``request.sampling``)
and its constructor takes their names flat, so ``GenerationRequest(max_new_tokens=20, top_k=50, seed=0)``
and ``GenerationRequest(max_new_tokens=20, sampling=SamplingParams(top_k=50, seed=0))`` are the same
request. Every value is checked on construction, with the same one-line ``LmlabError`` as
``SamplingParams``; a request is frozen, so one can be shared between calls and threads.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

from lmlab.errors import LmlabError, did_you_mean
from lmlab.generation.sampling import SamplingParams

__all__ = ["GenerationRequest", "as_request"]

SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams))


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True, init=False)
class GenerationRequest:
    """Sampling parameters, stop conditions and limits of one generation.

    Construct it with any of the fields below and any ``SamplingParams`` field by name (temperature,
    top_k, top_p, min_p, repetition_penalty, frequency_penalty, presence_penalty, logit_bias, seed),
    or with ``sampling=SamplingParams(...)``, whose fields the named ones then override. With a seed
    and a batch of prompts, prompt i uses ``seed + i``.
    """

    sampling: SamplingParams = field(default_factory=SamplingParams)  # how to pick each token
    max_new_tokens: int = 256  # most tokens generated per prompt (a final stop token included)
    min_new_tokens: int = 0  # no end-of-text or stop token before this many tokens (stop strings still stop)
    stop: tuple[str, ...] = ()  # end at any of these strings; the text stops right before it
    stop_token_ids: tuple[
        int, ...
    ] = ()  # end at any of these tokens (returned as the last token); eos is added by the caller
    allow_special_tokens: bool = False  # text layer: let the model write special tokens other than <|eos|>
    logprobs: bool = False  # report each chosen token's log-probability under the model
    top_logprobs: int = 0  # report the n most likely tokens at each step (0: none)

    def __init__(self, sampling: SamplingParams | None = None, **options) -> None:
        own = {f.name: f for f in dataclasses.fields(self) if f.name != "sampling"}
        for name in options:
            if name not in own and name not in SAMPLING_FIELDS:
                known = (*own, *SAMPLING_FIELDS)
                raise LmlabError(f"unknown generation option {name!r}{did_you_mean(name, known)}")
        picked = {k: options[k] for k in SAMPLING_FIELDS if k in options}
        if sampling is None:
            sampling = SamplingParams(**picked)
        elif not isinstance(sampling, SamplingParams):
            raise LmlabError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")
        else:  # a copy either way: SamplingParams is mutable, and a request must not change under the engine
            sampling = dataclasses.replace(sampling, **picked)
        object.__setattr__(self, "sampling", sampling)
        for name, f in own.items():
            object.__setattr__(self, name, options[name] if name in options else f.default)
        self._validate()

    def _validate(self) -> None:
        n = self.max_new_tokens
        if not (_is_int(n) and n >= 1):
            raise LmlabError(f"max_new_tokens must be an integer >= 1, got {n!r}")
        m = self.min_new_tokens
        if not (_is_int(m) and 0 <= m <= n):
            raise LmlabError(f"min_new_tokens must be an integer from 0 to max_new_tokens ({n}), got {m!r}")
        stop = () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, Sequence) or any(not isinstance(s, str) for s in stop):
            raise LmlabError("stop strings must be strings")
        object.__setattr__(self, "stop", tuple(s for s in stop if s))  # "" would stop everywhere: it is no stop
        ids = self.stop_token_ids
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise LmlabError(f"stop_token_ids must be a list of token ids, got {type(ids).__name__}")
        for t in ids:
            if not (_is_int(t) and t >= 0):
                raise LmlabError(f"stop_token_ids: {t!r} is not a token id (an integer >= 0)")
        object.__setattr__(self, "stop_token_ids", tuple(ids))
        for name in ("allow_special_tokens", "logprobs"):
            if not isinstance(getattr(self, name), bool):
                raise LmlabError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not (_is_int(self.top_logprobs) and self.top_logprobs >= 0):
            raise LmlabError(f"top_logprobs must be an integer >= 0, got {self.top_logprobs!r}")

    def replace(self, **options) -> GenerationRequest:
        """A copy with some fields changed; sampling fields by name too (``request.replace(seed=1)``)."""
        # dataclasses.replace passes every field, sampling included, to __init__, which applies the named
        # sampling fields on top of it
        return dataclasses.replace(self, **options)


# help() and inspect show every option a request takes, the flat sampling ones included
GenerationRequest.__signature__ = inspect.Signature(
    [
        inspect.Parameter("sampling", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
        *(
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
            for cls in (GenerationRequest, SamplingParams)
            for f in dataclasses.fields(cls)
            if f.name != "sampling"
        ),
    ]
)


def as_request(request: GenerationRequest | None = None, **options) -> GenerationRequest:
    """``request`` with ``options`` (request fields or sampling fields by name) applied on top of it;
    without a request, one built from the options alone."""
    if request is None:
        return GenerationRequest(**options)
    if not isinstance(request, GenerationRequest):
        hint = ""
        if isinstance(request, SamplingParams):
            hint = " (wrap it: GenerationRequest(sampling=...), or give it as params=)"
        raise LmlabError(f"request must be a GenerationRequest, got {type(request).__name__}{hint}")
    return request.replace(**options) if options else request
