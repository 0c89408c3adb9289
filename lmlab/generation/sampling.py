"""Samplers: pure functions on a (B, V) logits tensor.

Every function takes logits of shape (B, V) (one row per request, one column per token id) and returns
a new tensor; none mutates its input. Filters mark removed tokens with ``-inf`` so that a softmax gives
them probability exactly 0 and renormalizes the rest.

The order is fixed and the same for every caller (``process_logits``)::

    repetition penalty -> frequency/presence penalties -> logit bias -> temperature -> top-k -> top-p -> min-p

Each stage sees the distribution left by the one before it (renormalized), so top-p measures its mass
after temperature and top-k, and min-p compares against the most likely token that survived top-p.

Ties are broken by the lower token id everywhere: ``greedy`` picks the lowest id among equal maxima,
top-k keeps exactly k tokens (the lowest ids among those equal to the k-th value), top-p sorts equal
probabilities by id so its kept set is an exact prefix, and ``top_logprobs`` lists equal values by id.

Parameters that the serving engine batches (temperature, top_k, top_p, min_p and the three penalties)
are a Python number, applied to every row, or a (B,) tensor with one value per row; a number is checked
and raises ``LmlabError`` when out of range, while a per-row tensor is trusted (check the requests with
``SamplingParams.validate`` first). Randomness comes only from an explicit ``torch.Generator``, never
from the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Union

import torch
from torch import Tensor

from lmlab.errors import LmlabError

__all__ = [
    "SamplingParams",
    "make_generator",
    "token_counts",
    "apply_penalties",
    "apply_logit_bias",
    "apply_temperature",
    "top_k_filter",
    "top_p_filter",
    "min_p_filter",
    "process_logits",
    "probs_from_logits",
    "greedy",
    "sample",
    "sample_next",
    "top_logprobs",
]

Scalar = Union[int, float]
RowParam = Union[int, float, Tensor]  # a number for every row, or a (B,) tensor with one value per row
LogitBias = Union[Mapping[int, float], Sequence[Union[Mapping[int, float], None]], Tensor, None]
PrevTokens = Union[Tensor, Sequence[Sequence[int]], None]
Generators = Union[torch.Generator, Sequence[torch.Generator], None]

# OpenAI's accepted ranges for the fields it shares with us, so a request valid there is valid here.
PENALTY_RANGE = 2.0
LOGIT_BIAS_RANGE = 100.0
_NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------
# Parameters and their checks. The checks are shared by SamplingParams.validate and the functions,
# so a bad value gets the same one-line message wherever it enters.


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_temperature(t: object) -> None:
    if not (_is_number(t) and math.isfinite(t) and t >= 0):
        raise LmlabError(f"temperature must be a finite number >= 0 (0 means greedy), got {t!r}")


def _check_top_k(k: object) -> None:
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 0):
        raise LmlabError(f"top_k must be an integer >= 1, or 0 to turn it off, got {k!r}")


def _check_top_p(p: object) -> None:
    if not (_is_number(p) and 0 < p <= 1):
        raise LmlabError(f"top_p must be in (0, 1] (1 turns it off), got {p!r}")


def _check_min_p(p: object) -> None:
    if not (_is_number(p) and 0 <= p <= 1):
        raise LmlabError(f"min_p must be in [0, 1] (0 turns it off), got {p!r}")


def _check_repetition_penalty(r: object) -> None:
    if not (_is_number(r) and math.isfinite(r) and r > 0):
        raise LmlabError(f"repetition_penalty must be a finite number > 0 (1 turns it off), got {r!r}")


def _check_openai_penalty(name: str, v: object) -> None:
    if not (_is_number(v) and -PENALTY_RANGE <= v <= PENALTY_RANGE):
        raise LmlabError(f"{name} must be in [-{PENALTY_RANGE:g}, {PENALTY_RANGE:g}] (0 turns it off), got {v!r}")


def _check_logit_bias(bias: object) -> None:
    if bias is None:
        return
    if not isinstance(bias, Mapping):
        raise LmlabError(f"logit_bias must map token ids to numbers, got {type(bias).__name__}")
    for tok, v in bias.items():
        if not (isinstance(tok, int) and not isinstance(tok, bool) and tok >= 0):
            raise LmlabError(f"logit_bias keys must be token ids (integers >= 0), got {tok!r}")
        if not (_is_number(v) and -LOGIT_BIAS_RANGE <= v <= LOGIT_BIAS_RANGE):
            raise LmlabError(f"logit_bias[{tok}] must be in [-{LOGIT_BIAS_RANGE:g}, {LOGIT_BIAS_RANGE:g}], got {v!r}")


def _check_seed(seed: object) -> None:
    # the range torch.Generator.manual_seed accepts
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool) and -(2**63) <= seed < 2**64):
        raise LmlabError(f"seed must be an integer in [-2**63, 2**64) or None, got {seed!r}")


@dataclass
class SamplingParams:
    """How to pick the next token. Defaults sample from the model's own distribution, unchanged.

    Semantics follow the OpenAI API where it has the field. Checked on construction and by ``validate()``.
    """

    temperature: float = 1.0  # divide logits by this; 0 = greedy (argmax), as in the OpenAI API
    top_k: int = 0  # keep only the k most likely tokens (ties: lower token id); 0 = off
    top_p: float = 1.0  # nucleus: keep the smallest most-likely set whose probability reaches p; in (0, 1], 1 = off
    min_p: float = 0.0  # drop tokens less likely than min_p times the most likely one; in [0, 1], 0 = off
    repetition_penalty: float = 1.0  # CTRL: divide positive / multiply negative logits of seen tokens; 1 = off
    frequency_penalty: float = 0.0  # subtract this times a token's count so far; in [-2, 2] (OpenAI)
    presence_penalty: float = 0.0  # subtract this from every token seen so far; in [-2, 2] (OpenAI)
    logit_bias: dict[int, float] | None = None  # token id -> value added to its logit, in [-100, 100] (OpenAI)
    seed: int | None = None  # seed of this request's generator; the same seed and inputs give the same tokens

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``LmlabError`` naming the first out-of-range field and its allowed range."""
        _check_temperature(self.temperature)
        _check_top_k(self.top_k)
        _check_top_p(self.top_p)
        _check_min_p(self.min_p)
        _check_repetition_penalty(self.repetition_penalty)
        _check_openai_penalty("frequency_penalty", self.frequency_penalty)
        _check_openai_penalty("presence_penalty", self.presence_penalty)
        _check_logit_bias(self.logit_bias)
        _check_seed(self.seed)


def make_generator(seed: int | None = None, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator for one request: seeded with ``seed``, or from the OS's entropy when None.

    Keep it for the whole request: re-creating it each step would replay the same random numbers.
    """
    _check_seed(seed)
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


# ---------------------------------------------------------------------------------------------
# Helpers


def _check_logits(logits: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (batch, vocab), got {tuple(logits.shape)}")


def _rows(x: RowParam, logits: Tensor, dtype: torch.dtype | None = None) -> Scalar | Tensor:
    """A number stays a number (so fast paths can test it); a (B,) tensor becomes (B, 1) to broadcast."""
    if not isinstance(x, Tensor):
        return x
    if x.numel() != logits.shape[0]:
        raise ValueError(f"a per-row parameter needs {logits.shape[0]} values (one per row), got {x.numel()}")
    return x.reshape(-1, 1).to(device=logits.device, dtype=dtype or logits.dtype)


def _fresh(out: Tensor, logits: Tensor) -> Tensor:
    # the public functions promise a new tensor; the pipeline skips the copies of stages that do nothing
    return out.clone() if out is logits else out


def _first_max_mask(x: Tensor) -> Tensor:
    """(B, V) bool: True at the lowest token id among each row's maxima (torch.argmax returns the first)."""
    return torch.zeros_like(x, dtype=torch.bool).scatter_(1, x.argmax(dim=-1, keepdim=True), True)


# ---------------------------------------------------------------------------------------------
# Penalties and bias


def token_counts(prev_tokens: PrevTokens, vocab_size: int, device: torch.device | str | None = None) -> Tensor:
    """(B, V) int32 count of each token id in each row of ``prev_tokens``.

    ``prev_tokens`` is a (B, T) integer tensor, where negative ids are padding and ignored, or a list of
    B token-id lists of any lengths. An id >= ``vocab_size`` raises ``LmlabError``.
    """
    if isinstance(prev_tokens, Tensor):
        ids = prev_tokens.to(device=device or prev_tokens.device, dtype=torch.long)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
    else:
        rows = [list(r) for r in prev_tokens]
        width = max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), width), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        ids = ids.to(device or "cpu")
    if ids.numel() and int(ids.max()) >= vocab_size:
        raise LmlabError(f"previous token id {int(ids.max())} is out of range for a vocabulary of {vocab_size}")
    valid = ids >= 0
    counts = torch.zeros(ids.shape[0], vocab_size, dtype=torch.int32, device=ids.device)
    return counts.scatter_add_(1, ids.clamp(min=0), valid.to(torch.int32))


def _apply_penalties(
    logits: Tensor,
    counts: Tensor | None,
    repetition_penalty: RowParam = 1.0,
    frequency_penalty: RowParam = 0.0,
    presence_penalty: RowParam = 0.0,
) -> Tensor:
    """``apply_penalties`` without the copy: returns ``logits`` itself when there is nothing to do."""
    _check_logits(logits)
    for name, v in (("frequency_penalty", frequency_penalty), ("presence_penalty", presence_penalty)):
        if not isinstance(v, Tensor):
            _check_openai_penalty(name, v)
    if not isinstance(repetition_penalty, Tensor):
        _check_repetition_penalty(repetition_penalty)
    off = all(
        not isinstance(v, Tensor) and v == neutral
        for v, neutral in ((repetition_penalty, 1.0), (frequency_penalty, 0.0), (presence_penalty, 0.0))
    )
    if counts is None or off:
        return logits
    if counts.shape != logits.shape:
        raise ValueError(f"counts must have the shape of logits {tuple(logits.shape)}, got {tuple(counts.shape)}")
    counts = counts.to(logits.device)
    seen = counts > 0
    out = logits
    r = _rows(repetition_penalty, logits)
    if isinstance(r, Tensor) or r != 1.0:
        out = torch.where(seen, torch.where(out > 0, out / r, out * r), out)
    f = _rows(frequency_penalty, logits)
    if isinstance(f, Tensor) or f != 0.0:
        out = out - counts.to(logits.dtype) * f
    p = _rows(presence_penalty, logits)
    if isinstance(p, Tensor) or p != 0.0:
        out = out - seen.to(logits.dtype) * p
    return out


def apply_penalties(
    logits: Tensor,
    counts: Tensor | None,
    repetition_penalty: RowParam = 1.0,
    frequency_penalty: RowParam = 0.0,
    presence_penalty: RowParam = 0.0,
) -> Tensor:
    """Penalize tokens already seen, given their (B, V) ``counts`` (see ``token_counts``).

    First the repetition penalty r (CTRL, Keskar et al. 2019, as in Hugging Face): for every token with
    count > 0, a logit x becomes x / r if x > 0 else x * r, so r > 1 always makes it less likely.
    Then the OpenAI penalties: x -= count * frequency_penalty + (count > 0) * presence_penalty.
    Which tokens count (prompt, output, both) is the caller's choice. ``counts=None`` means nothing was seen.
    """
    return _fresh(_apply_penalties(logits, counts, repetition_penalty, frequency_penalty, presence_penalty), logits)


def _apply_logit_bias(logits: Tensor, bias: LogitBias) -> Tensor:
    """``apply_logit_bias`` without the copy: returns ``logits`` itself when there is nothing to do."""
    _check_logits(logits)
    if bias is None:
        return logits
    if isinstance(bias, Tensor):
        return logits + bias.to(device=logits.device, dtype=logits.dtype)
    B, V = logits.shape
    per_row = [bias] * B if isinstance(bias, Mapping) else list(bias)
    if len(per_row) != B:
        raise ValueError(f"logit_bias needs one mapping per row ({B}), got {len(per_row)}")
    rows, ids, vals = [], [], []
    for i, m in enumerate(per_row):
        _check_logit_bias(m)
        for tok, v in (m or {}).items():
            if tok >= V:
                raise LmlabError(f"logit_bias token id {tok} is out of range for a vocabulary of {V}")
            rows.append(i)
            ids.append(tok)
            vals.append(float(v))
    if not rows:
        return logits
    dense = torch.zeros(B, V, dtype=logits.dtype, device=logits.device)
    dense[torch.tensor(rows, device=logits.device), torch.tensor(ids, device=logits.device)] = torch.tensor(
        vals, dtype=logits.dtype, device=logits.device
    )
    return logits + dense


def apply_logit_bias(logits: Tensor, bias: LogitBias) -> Tensor:
    """Add a bias to chosen logits: ``logits[:, id] += value``, as OpenAI's ``logit_bias``.

    ``bias`` is a mapping {token id: value} for every row, a list of B mappings (or None) with one per
    row, or a tensor broadcastable to (B, V). OpenAI's convention: -100 effectively bans a token and
    +100 effectively forces it. A token id outside the vocabulary raises ``LmlabError``.
    """
    return _fresh(_apply_logit_bias(logits, bias), logits)


# ---------------------------------------------------------------------------------------------
# Temperature and filters


def _apply_temperature(logits: Tensor, temperature: RowParam) -> Tensor:
    """``apply_temperature`` without the copy: returns ``logits`` itself when there is nothing to do."""
    _check_logits(logits)
    t = _rows(temperature, logits)
    if not isinstance(t, Tensor):
        _check_temperature(t)
        if t == 1:
            return logits
        if t == 0:
            return logits.masked_fill(~_first_max_mask(logits), _NEG_INF)
        return (logits - logits.amax(dim=-1, keepdim=True)) / t
    greedy_rows = t == 0  # (B, 1)
    scaled = (logits - logits.amax(dim=-1, keepdim=True)) / torch.where(greedy_rows, torch.ones_like(t), t)
    # rows at τ = 0 or 1 keep their values untouched, exactly as the scalar path does, so a request
    # batched with others gets bit-identical logits to the same request alone
    scaled = torch.where(greedy_rows | (t == 1), logits, scaled)
    return scaled.masked_fill(greedy_rows & ~_first_max_mask(logits), _NEG_INF)


def apply_temperature(logits: Tensor, temperature: RowParam) -> Tensor:
    """Scale logits for sampling at temperature τ: the result's softmax is softmax(logits / τ).

    τ = 0 means greedy, as in the OpenAI API: only the argmax survives (lowest id among equal maxima)
    and every other entry becomes -inf, so no division by zero happens. Each row is shifted by its
    maximum before dividing, which leaves the distribution unchanged and keeps a tiny τ from overflowing
    to inf. τ = 1 returns an unchanged copy. Per-row τ may mix 0 and positive values.
    """
    return _fresh(_apply_temperature(logits, temperature), logits)


def _top_k_mask(x: Tensor, k: Tensor) -> Tensor:
    """(B, V) bool keeping exactly min(k, V) entries per row: the largest, ties at the k-th value by lower id.

    ``k`` is (B, 1) long with every value in [1, V].
    """
    kmax = int(k.max())
    kth = torch.topk(x, kmax, dim=-1, sorted=True).values.gather(1, k - 1)  # (B, 1) the k-th largest value
    above = x > kth
    at = x == kth
    # torch.topk breaks ties in no documented order; count the tied entries left to right instead
    room = k - above.sum(dim=-1, keepdim=True)
    return above | (at & (at.cumsum(dim=-1) <= room))


def _top_k_filter(logits: Tensor, top_k: RowParam) -> Tensor:
    """``top_k_filter`` without the copy: returns ``logits`` itself when there is nothing to do."""
    _check_logits(logits)
    V = logits.shape[1]
    if not isinstance(top_k, Tensor):
        _check_top_k(top_k)
        if top_k == 0 or top_k >= V:
            return logits
        k = torch.full((logits.shape[0], 1), top_k, dtype=torch.long, device=logits.device)
        return logits.masked_fill(~_top_k_mask(logits, k), _NEG_INF)
    k = _rows(top_k, logits, torch.long)
    off = (k <= 0) | (k >= V)  # (B, 1)
    if bool(off.all()):
        return logits
    keep = _top_k_mask(logits, torch.where(off, torch.ones_like(k), k)) | off
    return logits.masked_fill(~keep, _NEG_INF)


def top_k_filter(logits: Tensor, top_k: RowParam) -> Tensor:
    """Keep exactly the k highest logits of each row (the k most likely tokens); the rest become -inf.

    Ties at the k-th value are broken by lower token id, so exactly min(k, V) tokens survive. k = 0 turns
    the filter off for that row, and k >= V keeps everything. Uses one ``torch.topk``, not a full sort.
    """
    return _fresh(_top_k_filter(logits, top_k), logits)


def _top_p_filter(logits: Tensor, top_p: RowParam) -> Tensor:
    """``top_p_filter`` without the copy: returns ``logits`` itself when there is nothing to do."""
    _check_logits(logits)
    p = _rows(top_p, logits, torch.float64)
    if not isinstance(p, Tensor):
        _check_top_p(p)
        if p >= 1:
            return logits
    elif bool((p >= 1).all()):
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    cum = sorted_probs.double().cumsum(dim=-1)  # cum[:, i]: mass of sorted positions 0..i
    keep_sorted = torch.ones_like(sorted_probs, dtype=torch.bool)
    keep_sorted[:, 1:] = cum[:, :-1] < p  # the mass before position i has not reached p yet
    if isinstance(p, Tensor):
        # rounding can make the float sum stop short of 1, so p = 1 would drop the tail without this
        keep_sorted |= p >= 1
    keep = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
    return logits.masked_fill(~keep, _NEG_INF)


def top_p_filter(logits: Tensor, top_p: RowParam) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches p.

    Probabilities are softmax(logits) in float32, sorted in decreasing order with ties by lower id; a
    token is kept when the cumulative probability of the tokens before it (summed in float64) is < p.
    So the token that crosses (or exactly reaches) p is kept, the most likely token always survives,
    and dropping the least likely kept token would fall below p. p = 1 keeps everything (and skips the
    sort). p must be in (0, 1].
    """
    return _fresh(_top_p_filter(logits, top_p), logits)


def _min_p_filter(logits: Tensor, min_p: RowParam) -> Tensor:
    """``min_p_filter`` without the copy: returns ``logits`` itself when there is nothing to do."""
    _check_logits(logits)
    m = _rows(min_p, logits, torch.float32)
    if not isinstance(m, Tensor):
        _check_min_p(m)
        if m == 0:
            return logits
    elif bool((m == 0).all()):
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    keep = probs >= m * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(~keep, _NEG_INF)


def min_p_filter(logits: Tensor, min_p: RowParam) -> Tensor:
    """Keep tokens whose probability is at least min_p times that of the most likely token.

    Probabilities are softmax(logits) in float32. The most likely token always survives; min_p = 1 keeps
    only the tokens tied for the maximum, and min_p = 0 turns the filter off. min_p must be in [0, 1].
    """
    return _fresh(_min_p_filter(logits, min_p), logits)


# ---------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class _RowParams:
    """SamplingParams for a batch: each field a number shared by all rows, or a (B,) tensor."""

    temperature: RowParam
    top_k: RowParam
    top_p: RowParam
    min_p: RowParam
    repetition_penalty: RowParam
    frequency_penalty: RowParam
    presence_penalty: RowParam
    logit_bias: LogitBias


def _batch_params(params: SamplingParams | Sequence[SamplingParams], B: int, device: torch.device) -> _RowParams:
    if isinstance(params, SamplingParams):
        params.validate()
        return _RowParams(**{f.name: getattr(params, f.name) for f in fields(_RowParams)})
    params = list(params)
    if len(params) != B:
        raise ValueError(f"need one SamplingParams per row ({B}), got {len(params)}")
    for p in params:
        p.validate()

    def column(name: str, dtype: torch.dtype) -> RowParam:
        values = [getattr(p, name) for p in params]
        # one shared number keeps the fast paths (no sort when every row has top_p = 1, ...)
        if all(v == values[0] for v in values):
            return values[0]
        return torch.tensor(values, dtype=dtype, device=device)

    biases = [p.logit_bias for p in params]
    return _RowParams(
        temperature=column("temperature", torch.float32),
        top_k=column("top_k", torch.long),
        top_p=column("top_p", torch.float64),
        min_p=column("min_p", torch.float32),
        repetition_penalty=column("repetition_penalty", torch.float32),
        frequency_penalty=column("frequency_penalty", torch.float32),
        presence_penalty=column("presence_penalty", torch.float32),
        logit_bias=None if all(b is None for b in biases) else biases,
    )


def process_logits(
    logits: Tensor,
    params: SamplingParams | Sequence[SamplingParams],
    prev_tokens: PrevTokens = None,
    *,
    counts: Tensor | None = None,
) -> Tensor:
    """The final (B, V) float32 logits to sample from, after every stage in the fixed order.

    repetition penalty -> frequency/presence penalties -> logit bias -> temperature -> top-k -> top-p -> min-p.

    ``params`` is one SamplingParams for all rows or a list with one per row. Penalties count the tokens
    in ``prev_tokens`` (see ``token_counts``) or take precomputed (B, V) ``counts``. Removed tokens are
    -inf; at least one token per row always survives. Each input row needs at least one finite logit.
    """
    _check_logits(logits)
    B, V = logits.shape
    rp = _batch_params(params, B, logits.device)
    x = logits.float()
    if counts is None and prev_tokens is not None:
        counts = token_counts(prev_tokens, V, logits.device)
    x = _apply_penalties(x, counts, rp.repetition_penalty, rp.frequency_penalty, rp.presence_penalty)
    x = _apply_logit_bias(x, rp.logit_bias)
    x = _apply_temperature(x, rp.temperature)
    x = _top_k_filter(x, rp.top_k)
    x = _top_p_filter(x, rp.top_p)
    x = _min_p_filter(x, rp.min_p)
    return _fresh(x, logits)


def probs_from_logits(logits: Tensor) -> Tensor:
    """softmax over the vocabulary in float32; -inf logits get probability exactly 0."""
    return torch.softmax(logits.float(), dim=-1)


def greedy(logits: Tensor) -> Tensor:
    """(B,) argmax token ids; among equal maxima the lowest id wins."""
    _check_logits(logits)
    return logits.argmax(dim=-1)


def sample(probs: Tensor, generator: Generators = None, *, from_logits: bool = False) -> Tensor:
    """(B,) token ids drawn from each row's distribution with ``torch.multinomial``.

    ``probs`` are non-negative weights per row (they need not sum to 1); pass logits with
    ``from_logits=True``. ``generator`` is one ``torch.Generator`` for the whole batch, a list with one
    per row (a request then draws the same tokens whether it runs alone or batched with others), or
    None for a fresh generator seeded from the OS. The global RNG is never used.
    """
    _check_logits(probs)
    if from_logits:
        probs = probs_from_logits(probs)
    if generator is None:
        generator = make_generator(None, probs.device)
    if isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    gens = list(generator)
    if len(gens) != probs.shape[0]:
        raise ValueError(f"need one generator per row ({probs.shape[0]}), got {len(gens)}")
    # torch.multinomial takes one generator per call, so each row draws from its own
    return torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=g).squeeze(1) for i, g in enumerate(gens)])


def sample_next(
    logits: Tensor,
    params: SamplingParams | Sequence[SamplingParams],
    generator: Generators,
    prev_tokens: PrevTokens = None,
    *,
    counts: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Choose the next token of each row: ``(token_ids (B,), logprobs (B,))``.

    Logprobs are under the final processed distribution (``process_logits``), the one the token was
    drawn from, so a greedy row (temperature 0) has logprob 0. Greedy for all rows skips the draw and
    leaves the generator untouched. For the raw model's log-probabilities use ``top_logprobs`` on the
    raw logits.
    """
    x = process_logits(logits, params, prev_tokens, counts=counts)
    logp = torch.log_softmax(x, dim=-1)
    all_greedy = (
        params.temperature == 0 if isinstance(params, SamplingParams) else all(p.temperature == 0 for p in params)
    )
    tokens = greedy(x) if all_greedy else sample(logp.exp(), generator)
    return tokens, logp.gather(1, tokens.unsqueeze(1)).squeeze(1)


def top_logprobs(logits: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The n most likely tokens of each row: ``(token_ids (B, n), logprobs (B, n))``, most likely first.

    Logprobs are log_softmax(logits); ties are listed by lower token id. n is clamped to the vocabulary
    size; n = 0 gives empty (B, 0) tensors.
    """
    _check_logits(logits)
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
        raise LmlabError(f"top_logprobs must be an integer >= 0, got {n!r}")
    B, V = logits.shape
    n = min(n, V)
    logp = torch.log_softmax(logits.float(), dim=-1)
    if n == 0:
        return torch.empty(B, 0, dtype=torch.long, device=logits.device), logp[:, :0]
    keep = _top_k_mask(logp, torch.full((B, 1), n, dtype=torch.long, device=logits.device))
    ids = keep.nonzero()[:, 1].reshape(B, n)  # exactly n per row, in increasing id order
    vals = logp.gather(1, ids)
    vals, pos = torch.sort(vals, dim=-1, descending=True, stable=True)
    return ids.gather(1, pos), vals
