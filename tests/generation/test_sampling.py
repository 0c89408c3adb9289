"""The samplers, each against a slow plain-Python reference, plus the pipeline order, statistics and seeds."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.errors import LmlabError
from lmlab.generation.sampling import (
    SamplingParams,
    apply_logit_bias,
    apply_penalties,
    apply_temperature,
    greedy,
    make_generator,
    min_p_filter,
    probs_from_logits,
    process_logits,
    sample,
    sample_next,
    token_counts,
    top_k_filter,
    top_logprobs,
    top_p_filter,
)

NEG_INF = float("-inf")

# ---------------------------------------------------------------------------------------------
# Slow references: loops over plain Python floats, written from the documented semantics.


def ref_order(values: list[float]) -> list[int]:
    """Token ids from most to least likely; equal values by lower id."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def ref_top_k(row: list[float], k: int) -> set[int]:
    return set(range(len(row))) if k == 0 else set(ref_order(row)[:k])


def ref_top_p(probs: list[float], p: float) -> set[int]:
    if p >= 1:
        return set(range(len(probs)))
    kept, mass = [], 0.0
    for i in ref_order(probs):
        if kept and mass >= p:
            break
        kept.append(i)
        mass += probs[i]
    return set(kept)


def ref_min_p(probs: list[float], m: float) -> set[int]:
    top = max(probs)
    return {i for i, q in enumerate(probs) if q >= m * top}


def ref_penalties(row: list[float], prev: list[int], rep: float, freq: float, pres: float) -> list[float]:
    counts = Counter(prev)
    out = []
    for tok, x in enumerate(row):
        c = counts.get(tok, 0)
        if c > 0:
            x = x / rep if x > 0 else x * rep
        out.append(x - c * freq - (1.0 if c > 0 else 0.0) * pres)
    return out


def kept(row: torch.Tensor) -> set[int]:
    return set(torch.isfinite(row).nonzero().flatten().tolist())


def softmax_list(row: torch.Tensor) -> list[float]:
    """The float32 probabilities the filters are defined on, as Python floats (exact copies)."""
    return torch.softmax(row.float(), dim=-1).tolist()


def random_logits(rng: random.Random, b: int, v: int) -> torch.Tensor:
    """Logits of several kinds: smooth, peaked, heavily tied, and with tokens already removed (-inf)."""
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    kind = rng.choice(["normal", "peaked", "ties", "masked"])
    if kind == "normal":
        return torch.randn(b, v, generator=g)
    if kind == "peaked":
        return torch.randn(b, v, generator=g) * 6
    if kind == "ties":
        return torch.randint(-2, 3, (b, v), generator=g).float()
    x = torch.randn(b, v, generator=g)
    mask = torch.rand(b, v, generator=g) < 0.4
    mask[:, 0] = False  # every row keeps a finite logit
    return x.masked_fill(mask, NEG_INF)


def chi_square_pvalue(observed: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """Pearson goodness of fit over the categories with nonzero expected probability."""
    n = observed.sum().item()
    support = expected_probs > 0
    expected = expected_probs[support].double() * n
    assert bool((expected >= 5).all()), "too few draws for the chi-square approximation"
    stat = (((observed[support].double() - expected) ** 2) / expected).sum()
    df = int(support.sum()) - 1
    # the chi-square survival function is the regularized upper incomplete gamma Q(df/2, x/2)
    return torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2).item()


# ---------------------------------------------------------------------------------------------
# Parameters and errors


def test_defaults_are_valid_and_off():
    p = SamplingParams()
    p.validate()
    x = torch.randn(3, 17)
    assert torch.equal(process_logits(x, p), x)


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("temperature", float("inf")),
        ("temperature", True),
        ("top_k", -1),
        ("top_k", 2.5),
        ("top_k", True),
        ("top_p", 0.0),
        ("top_p", -0.5),
        ("top_p", 1.0001),
        ("top_p", float("nan")),
        ("min_p", -0.01),
        ("min_p", 1.5),
        ("min_p", float("nan")),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.2),
        ("repetition_penalty", float("inf")),
        ("frequency_penalty", 2.5),
        ("presence_penalty", -2.01),
        ("presence_penalty", float("nan")),
        ("logit_bias", {-1: 1.0}),
        ("logit_bias", {"5": 1.0}),
        ("logit_bias", {3: 101.0}),
        ("logit_bias", {3: float("nan")}),
        ("logit_bias", [1.0]),
        ("seed", 1.5),
        ("seed", 2**64),
        ("seed", "7"),
    ],
)
def test_out_of_range_parameter_is_a_one_line_error_naming_it(field, value):
    with pytest.raises(LmlabError) as err:
        SamplingParams(**{field: value})
    msg = str(err.value)
    assert msg.startswith(field) and "\n" not in msg
    # and validate() catches the same value set after construction
    p = SamplingParams()
    setattr(p, field, value)
    with pytest.raises(LmlabError, match=field):
        p.validate()


def test_boundary_values_are_accepted():
    SamplingParams(temperature=0, top_k=1, top_p=1.0, min_p=1.0, frequency_penalty=-2, presence_penalty=2)
    SamplingParams(top_p=1e-9, min_p=0.0, repetition_penalty=1e-3, logit_bias={0: -100, 5: 100.0}, seed=0)


@pytest.mark.parametrize(
    "call",
    [
        lambda x: apply_temperature(x, -1.0),
        lambda x: top_k_filter(x, -1),
        lambda x: top_p_filter(x, 0.0),
        lambda x: top_p_filter(x, 1.5),
        lambda x: min_p_filter(x, -0.1),
        lambda x: min_p_filter(x, 1.1),
        lambda x: apply_penalties(x, None, repetition_penalty=0.0),
        lambda x: apply_logit_bias(x, {7: 1.0}),  # outside a vocabulary of 5
        lambda x: token_counts([[5]], 5),
        lambda x: top_logprobs(x, -1),
        lambda x: make_generator(-(2**63) - 1),
    ],
)
def test_functions_refuse_out_of_range_numbers(call):
    with pytest.raises(LmlabError) as err:
        call(torch.zeros(2, 5))
    assert "\n" not in str(err.value)


def test_logits_must_be_two_dimensional():
    with pytest.raises(ValueError):
        top_k_filter(torch.zeros(5), 2)


# ---------------------------------------------------------------------------------------------
# Purity: a new tensor every time, the input untouched (fast paths included)

PURE_CALLS = {
    "penalties": lambda x: apply_penalties(x, token_counts([[0, 1, 1]] * x.shape[0], x.shape[1]), 1.3, 0.5, 0.2),
    "penalties-off": lambda x: apply_penalties(x, None),
    "bias": lambda x: apply_logit_bias(x, {1: 2.0}),
    "bias-none": lambda x: apply_logit_bias(x, None),
    "temperature": lambda x: apply_temperature(x, 0.7),
    "temperature-0": lambda x: apply_temperature(x, 0),
    "temperature-1": lambda x: apply_temperature(x, 1.0),
    "top-k": lambda x: top_k_filter(x, 3),
    "top-k-off": lambda x: top_k_filter(x, 0),
    "top-p": lambda x: top_p_filter(x, 0.5),
    "top-p-off": lambda x: top_p_filter(x, 1.0),
    "min-p": lambda x: min_p_filter(x, 0.2),
    "min-p-off": lambda x: min_p_filter(x, 0.0),
    "process": lambda x: process_logits(x, SamplingParams(top_k=4, top_p=0.8, min_p=0.1), [[1, 2]] * x.shape[0]),
    "process-off": lambda x: process_logits(x, SamplingParams()),
}


@pytest.mark.parametrize("name", list(PURE_CALLS))
def test_functions_return_a_new_tensor_and_leave_the_input_alone(name):
    x = torch.randn(4, 10)
    before = x.clone()
    out = PURE_CALLS[name](x)
    assert torch.equal(x, before)
    assert out.shape == x.shape and out.data_ptr() != x.data_ptr()


# ---------------------------------------------------------------------------------------------
# top-k


def test_top_k_hand_cases_and_tie_rule():
    x = torch.tensor([[1.0, 3.0, 3.0, 3.0, 2.0]])
    assert kept(top_k_filter(x, 2)[0]) == {1, 2}  # ties at the k-th value: lower ids win
    assert kept(top_k_filter(x, 4)[0]) == {1, 2, 3, 4}
    assert kept(top_k_filter(x, 1)[0]) == {1}
    assert kept(top_k_filter(x, 0)[0]) == set(range(5))
    assert kept(top_k_filter(x, 99)[0]) == set(range(5))
    assert torch.equal(top_k_filter(x, 3)[0, 1:4], x[0, 1:4])  # survivors keep their values


def test_top_k_matches_reference_on_many_random_logits():
    rng = random.Random(0)
    for _ in range(200):
        b, v = rng.randint(1, 4), rng.randint(1, 40)
        x = random_logits(rng, b, v)
        k = rng.choice([0, 1, 2, rng.randint(1, v), v, v + 3])
        out = top_k_filter(x, k)
        for row_in, row_out in zip(x, out):
            finite = kept(row_in)
            assert kept(row_out) == ref_top_k(row_in.tolist(), k) & finite
            if len(finite) == v:
                assert len(kept(row_out)) == (v if k == 0 else min(k, v))


def test_top_k_per_row_tensor_equals_each_row_alone():
    rng = random.Random(1)
    for _ in range(30):
        b, v = rng.randint(2, 6), rng.randint(2, 30)
        x = random_logits(rng, b, v)
        ks = [rng.choice([0, 1, rng.randint(1, v), v + 1]) for _ in range(b)]
        out = top_k_filter(x, torch.tensor(ks))
        for i, k in enumerate(ks):
            assert torch.equal(out[i], top_k_filter(x[i : i + 1], k)[0])


# ---------------------------------------------------------------------------------------------
# top-p


def test_top_p_hand_cases_on_exact_probabilities():
    x = torch.zeros(1, 4)  # uniform: each probability is exactly 0.25
    assert kept(top_p_filter(x, 0.25)[0]) == {0}  # reaching p exactly is enough
    assert kept(top_p_filter(x, 0.2)[0]) == {0}
    assert kept(top_p_filter(x, 0.5)[0]) == {0, 1}
    assert kept(top_p_filter(x, 0.5000001)[0]) == {0, 1, 2}  # the token that crosses p is kept
    assert kept(top_p_filter(x, 1.0)[0]) == {0, 1, 2, 3}
    x = torch.tensor([[0.0, 0.0, NEG_INF, math.log(2.0)]])  # probabilities 1/4, 1/4, 0, 1/2
    assert kept(top_p_filter(x, 0.5)[0]) == {3}
    assert kept(top_p_filter(x, 0.6)[0]) == {3, 0}
    assert kept(top_p_filter(x, 1e-9)[0]) == {3}  # at least one token survives


def check_top_p_properties(probs: list[float], kept_ids: set[int], p: float) -> None:
    """Kept = a prefix of the (prob desc, id asc) order; its mass reaches p, and without its last token it does not."""
    order = ref_order(probs)
    assert kept_ids == set(order[: len(kept_ids)]) and kept_ids
    if p >= 1:
        assert len(kept_ids) == len(probs)
        return
    masses = [0.0]
    for i in order:
        masses.append(masses[-1] + probs[i])
    n = len(kept_ids)
    assert masses[n - 1] < p  # minimal: dropping the crossing token falls short of p
    assert masses[n] >= p or n == len(probs)  # reaches p (or rounding left the total short and all are kept)


def test_top_p_matches_reference_including_exact_hits():
    rng = random.Random(2)
    for _ in range(250):
        b, v = rng.randint(1, 3), rng.randint(1, 50)
        x = random_logits(rng, b, v)
        for row in x:
            probs = softmax_list(row)
            order = ref_order(probs)
            masses = [0.0]
            for i in order:
                masses.append(masses[-1] + probs[i])
            # p equal to a cumulative sum exactly: the token that reaches it is the last one kept
            j = rng.randrange(v)
            hit = masses[j + 1]
            for p in [rng.uniform(0.01, 1.0), rng.uniform(0.9, 1.0), 1e-6, 1.0] + ([hit] if 0 < hit <= 1 else []):
                got = kept(top_p_filter(row[None], p)[0])
                assert got == ref_top_p(probs, p) & kept(row), (p, probs)
                if kept(row) == set(range(v)):
                    check_top_p_properties(probs, got, p)
            if 0 < hit < 1 and masses[j] < hit:
                assert kept(top_p_filter(row[None], hit)[0]) == set(order[: j + 1])


def test_top_p_one_keeps_everything_even_when_the_float_sum_falls_short():
    x = torch.cat([torch.tensor([[30.0]]), torch.full((1, 999), -30.0)], dim=1)  # the tail underflows in float32
    assert torch.equal(top_p_filter(x, 1.0), x)
    assert torch.equal(top_p_filter(x, torch.tensor([1.0])), x)


def test_top_p_per_row_tensor_equals_each_row_alone():
    rng = random.Random(3)
    for _ in range(30):
        b, v = rng.randint(2, 6), rng.randint(2, 30)
        x = random_logits(rng, b, v)
        ps = [rng.choice([1.0, rng.uniform(0.05, 1.0), 0.5]) for _ in range(b)]
        out = top_p_filter(x, torch.tensor(ps))
        for i, p in enumerate(ps):
            assert torch.equal(out[i], top_p_filter(x[i : i + 1], p)[0])


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.sampled_from([-3.0, -1.0, -0.5, 0.0, 0.25, 1.0, 2.0, 5.0]), min_size=1, max_size=24),
    p=st.floats(min_value=1e-6, max_value=1.0),
)
def test_top_p_properties_hold_for_any_tied_logits(values, p):
    row = torch.tensor([values])
    probs = softmax_list(row[0])
    got = kept(top_p_filter(row, p)[0])
    assert got == ref_top_p(probs, p)
    check_top_p_properties(probs, got, p)


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.floats(min_value=-30, max_value=30, width=32), min_size=1, max_size=16),
    temperature=st.sampled_from([0.0, 0.05, 0.7, 1.0, 3.0]),
    top_k=st.integers(min_value=0, max_value=20),
    top_p=st.floats(min_value=1e-6, max_value=1.0, exclude_min=False),
    min_p=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_any_valid_params_leave_a_proper_distribution(values, temperature, top_k, top_p, min_p, seed):
    p = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, presence_penalty=0.5)
    x = torch.tensor([values])
    out = process_logits(x, p, [[0]])
    probs = probs_from_logits(out)
    assert len(kept(out[0])) >= 1 and not probs.isnan().any()
    assert abs(probs.sum().item() - 1) < 1e-5
    token, logprob = sample_next(x, p, make_generator(seed), [[0]])
    assert int(token) in kept(out[0]) and math.isfinite(float(logprob))
    if top_k:
        assert len(kept(out[0])) <= top_k


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.floats(min_value=-20, max_value=20, width=32), min_size=1, max_size=24),
    k=st.integers(min_value=0, max_value=30),
)
def test_top_k_properties_hold_for_any_logits(values, k):
    row = torch.tensor([values])
    got = kept(top_k_filter(row, k)[0])
    assert got == ref_top_k(values, k)
    assert len(got) == (len(values) if k == 0 else min(k, len(values)))
    dropped = set(range(len(values))) - got
    assert all(values[i] >= values[j] for i in got for j in dropped)


# ---------------------------------------------------------------------------------------------
# min-p


def test_min_p_matches_reference():
    rng = random.Random(4)
    for _ in range(200):
        x = random_logits(rng, rng.randint(1, 3), rng.randint(1, 40))
        m = rng.choice([0.0, 1.0, rng.random(), rng.uniform(0, 0.2)])
        out = min_p_filter(x, m)
        for row_in, row_out in zip(x, out):
            assert kept(row_out) == ref_min_p(softmax_list(row_in), m) & kept(row_in)
            assert int(row_in.argmax()) in kept(row_out)
    x = torch.tensor([[2.0, 5.0, 5.0, 1.0]])
    assert kept(min_p_filter(x, 1.0)[0]) == {1, 2}  # min_p = 1 keeps every token tied for the maximum
    per_row = min_p_filter(x.repeat(2, 1), torch.tensor([0.0, 1.0]))
    assert kept(per_row[0]) == {0, 1, 2, 3} and kept(per_row[1]) == {1, 2}


# ---------------------------------------------------------------------------------------------
# Penalties and logit bias


def test_penalties_match_reference():
    rng = random.Random(5)
    for _ in range(60):
        b, v = rng.randint(1, 4), rng.randint(2, 30)
        x = torch.randn(b, v, generator=torch.Generator().manual_seed(rng.randrange(1000)))
        prev = [[rng.randrange(v) for _ in range(rng.randint(0, 12))] for _ in range(b)]
        rep, freq, pres = rng.choice([1.0, 1.3, 0.7]), rng.uniform(-2, 2), rng.uniform(-2, 2)
        out = apply_penalties(x, token_counts(prev, v), rep, freq, pres)
        for i in range(b):
            want = torch.tensor(ref_penalties(x[i].tolist(), prev[i], rep, freq, pres))
            assert torch.allclose(out[i], want, atol=1e-5)


def test_penalty_inputs_agree_ragged_padded_counts_and_per_row():
    v = 12
    prev = [[1, 1, 3], [], [0, 11, 11, 11, 2]]
    padded = torch.full((3, 5), -1)
    for i, r in enumerate(prev):
        padded[i, : len(r)] = torch.tensor(r)
    counts = token_counts(prev, v)
    assert torch.equal(counts, token_counts(padded, v))
    assert counts[0, 1] == 2 and counts[2, 11] == 3 and counts[1].sum() == 0
    x = torch.randn(3, v)
    rep, freq, pres = [1.5, 1.0, 0.8], [0.5, 0.0, -1.0], [0.0, 2.0, 1.0]
    batched = apply_penalties(x, counts, torch.tensor(rep), torch.tensor(freq), torch.tensor(pres))
    for i in range(3):
        alone = apply_penalties(x[i : i + 1], counts[i : i + 1], rep[i], freq[i], pres[i])
        assert torch.allclose(batched[i], alone[0])
    params = SamplingParams(repetition_penalty=1.5, frequency_penalty=0.5)
    assert torch.equal(process_logits(x, params, prev), process_logits(x, params, counts=counts))
    assert torch.equal(process_logits(x, params, padded), process_logits(x, params, counts=counts))


def test_repetition_penalty_makes_seen_tokens_less_likely_whatever_their_sign():
    x = torch.tensor([[2.0, -2.0, 0.5, -0.5]])
    out = apply_penalties(x, token_counts([[0, 1]], 4), repetition_penalty=2.0)
    assert out.tolist() == [[1.0, -4.0, 0.5, -0.5]]


def test_logit_bias_forms():
    x = torch.randn(2, 6)
    out = apply_logit_bias(x, {1: 2.0, 4: -100})
    want = x.clone()
    want[:, 1] += 2.0
    want[:, 4] -= 100
    assert torch.allclose(out, want)
    per_row = apply_logit_bias(x, [{0: 1.5}, None])
    assert torch.allclose(per_row[0, 0], x[0, 0] + 1.5) and torch.equal(per_row[1], x[1])
    assert torch.allclose(apply_logit_bias(x, torch.arange(6.0)), x + torch.arange(6.0))
    # -100 bans a token in practice, +100 forces one
    forced = sample_next(x, SamplingParams(logit_bias={3: 100}), make_generator(0))[0]
    assert forced.tolist() == [3, 3]


# ---------------------------------------------------------------------------------------------
# Temperature


def test_temperature_divides_logits():
    x = torch.randn(5, 20)
    for t in (0.3, 1.0, 2.5):
        assert torch.allclose(probs_from_logits(apply_temperature(x, t)), torch.softmax(x / t, dim=-1), atol=1e-6)


def test_temperature_zero_is_greedy_with_lowest_id_on_ties():
    x = torch.tensor([[1.0, 4.0, 4.0, 0.0], [3.0, -1.0, 2.0, 3.0]])
    out = apply_temperature(x, 0)
    assert [kept(r) for r in out] == [{1}, {0}]
    assert greedy(x).tolist() == [1, 0]
    g = make_generator(0)
    state = g.get_state()
    tokens, logprobs = sample_next(x, SamplingParams(temperature=0), g)
    assert tokens.tolist() == [1, 0] and logprobs.tolist() == [0.0, 0.0]
    assert torch.equal(g.get_state(), state)  # a greedy step draws nothing


def test_temperature_to_zero_approaches_greedy():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(8, 50, generator=gen) * 2
    top = greedy(x)
    mass = [
        probs_from_logits(apply_temperature(x, t)).gather(1, top[:, None]).squeeze(1)
        for t in (1, 0.3, 0.1, 0.01, 1e-4, 1e-6)
    ]
    for hotter, colder in zip(mass, mass[1:]):
        assert bool((colder >= hotter - 1e-6).all())
    assert bool((mass[-1] > 0.999).all())
    # a vanishing temperature stays finite (no overflow to inf, no NaN) and puts all mass on the argmax
    tiny = probs_from_logits(apply_temperature(x, 1e-38))
    assert not tiny.isnan().any() and torch.equal(tiny.argmax(-1), top) and bool((tiny.max(-1).values == 1).all())


def test_per_row_temperature_mixes_greedy_and_sampling_rows():
    x = torch.randn(3, 9)
    ts = [0.0, 0.5, 2.0]
    out = apply_temperature(x, torch.tensor(ts))
    for i, t in enumerate(ts):
        assert torch.allclose(probs_from_logits(out[i : i + 1]), probs_from_logits(apply_temperature(x[i : i + 1], t)))


# ---------------------------------------------------------------------------------------------
# The pipeline: fixed order, renormalization, fast path


def test_process_logits_is_the_documented_composition():
    rng = random.Random(7)
    for _ in range(40):
        b, v = rng.randint(1, 4), rng.randint(2, 40)
        x = random_logits(rng, b, v)
        prev = [[rng.randrange(v) for _ in range(rng.randint(0, 6))] for _ in range(b)]
        p = SamplingParams(
            temperature=rng.choice([0.0, 0.5, 1.0, 1.7]),
            top_k=rng.choice([0, 1, 5]),
            top_p=rng.choice([1.0, 0.9, 0.5]),
            min_p=rng.choice([0.0, 0.05, 0.3]),
            repetition_penalty=rng.choice([1.0, 1.2]),
            frequency_penalty=rng.choice([0.0, 0.4]),
            presence_penalty=rng.choice([0.0, -0.3]),
            logit_bias=rng.choice([None, {0: 1.0, v - 1: -2.0}]),
        )
        y = apply_penalties(x, token_counts(prev, v), p.repetition_penalty, p.frequency_penalty, p.presence_penalty)
        y = apply_logit_bias(y, p.logit_bias)
        y = apply_temperature(y, p.temperature)
        y = top_p_filter(top_k_filter(y, p.top_k), p.top_p)
        y = min_p_filter(y, p.min_p)
        assert torch.equal(process_logits(x, p, prev), y)


def test_order_matters_where_it_should():
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    x = probs.log()
    # top-k before top-p: top-p measures the renormalized top-2 distribution (0.57, 0.43)
    assert kept(process_logits(x, SamplingParams(top_k=2, top_p=0.5))[0]) == {0}
    # top-p before min-p: top-p on the full distribution keeps 3; min-p first would leave top-p only 2
    assert kept(process_logits(x, SamplingParams(top_p=0.75, min_p=0.3))[0]) == {0, 1, 2}
    # temperature before top-p: sharpened to (0.67, 0.26, ...) at t = 0.3, top-p 0.6 keeps one token, not two
    assert kept(process_logits(x, SamplingParams(top_p=0.6))[0]) == {0, 1}
    assert kept(process_logits(x, SamplingParams(temperature=0.3, top_p=0.6))[0]) == {0}
    # penalties before temperature: (x - f) / t, not x / t - f
    y = torch.tensor([[1.0, 0.0]])
    out = process_logits(y, SamplingParams(temperature=0.5, frequency_penalty=0.5), [[0]])
    assert torch.allclose(probs_from_logits(out), torch.softmax(torch.tensor([[1.0, 0.0]]), -1))
    # bias before temperature: (x + b) / t
    out = process_logits(y, SamplingParams(temperature=0.5, logit_bias={1: 1.0}))
    assert torch.allclose(probs_from_logits(out), torch.tensor([[0.5, 0.5]]))
    # penalties before greedy: temperature 0 picks the argmax of the penalized logits
    z = torch.tensor([[3.0, 2.0, 1.0]])
    assert sample_next(z, SamplingParams(temperature=0, presence_penalty=2.0), None, [[0]])[0].tolist() == [1]


def test_filtered_probabilities_sum_to_one_and_are_the_renormalized_originals():
    rng = random.Random(8)
    for _ in range(100):
        x = random_logits(rng, rng.randint(1, 4), rng.randint(1, 60))
        p = SamplingParams(top_k=rng.choice([0, 3, 10]), top_p=rng.choice([1.0, 0.8, 0.3]), min_p=rng.random() / 4)
        out = probs_from_logits(process_logits(x, p))
        assert torch.allclose(out.sum(-1), torch.ones(x.shape[0]), atol=1e-5)
        base = torch.softmax(x, -1)
        keep = torch.isfinite(process_logits(x, p))
        assert bool(keep.any(-1).all())
        renorm = torch.where(keep, base, 0) / torch.where(keep, base, 0).sum(-1, keepdim=True)
        assert torch.allclose(out, renorm, atol=1e-6)


def test_per_row_params_equal_each_row_alone():
    rng = random.Random(9)
    v = 30
    x = torch.randn(4, v)
    params = [
        SamplingParams(),
        SamplingParams(temperature=0.0, presence_penalty=1.0),
        SamplingParams(temperature=0.7, top_k=5, top_p=0.9, min_p=0.05, logit_bias={2: 3.0}),
        SamplingParams(temperature=1.3, top_p=0.6, repetition_penalty=1.4, frequency_penalty=0.3),
    ]
    prev = [[rng.randrange(v) for _ in range(5)] for _ in range(4)]
    batched = process_logits(x, params, prev)
    for i, p in enumerate(params):
        # bit-identical, so a request's draws cannot depend on what else is in the batch
        assert torch.equal(batched[i : i + 1], process_logits(x[i : i + 1], p, prev[i : i + 1]))


def test_common_case_skips_sorting(monkeypatch):
    x = torch.randn(2, 100)

    def forbidden(*args, **kwargs):
        raise AssertionError("sorted although top_p = 1 and top_k = 0")

    monkeypatch.setattr(torch, "sort", forbidden)
    monkeypatch.setattr(torch, "topk", forbidden)
    process_logits(x, SamplingParams(temperature=0.8, min_p=0.1))
    process_logits(x, [SamplingParams(), SamplingParams(temperature=0.5)])
    sample_next(x, SamplingParams(), make_generator(0))
    with pytest.raises(AssertionError):
        process_logits(x, SamplingParams(top_p=0.9))


def test_low_precision_logits_come_out_float32():
    x = torch.randn(2, 10).to(torch.bfloat16)
    out = process_logits(x, SamplingParams(temperature=0.7, top_p=0.9))
    assert out.dtype == torch.float32 and x.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------
# Drawing tokens: statistics, log-probabilities, seeds

CHI_LOGITS = torch.tensor([[2.0, 1.5, 1.2, 1.0, 0.8, 0.5, 0.3, 0.0, -0.5, -1.0, -2.0, -4.0]])
CHI_PARAMS = SamplingParams(temperature=0.9, top_k=9, top_p=0.97, min_p=0.02, repetition_penalty=1.3)


def test_sampled_frequencies_match_the_filtered_distribution():
    n = 60_000
    logits = CHI_LOGITS.expand(n, -1)
    prev = torch.tensor([[0, 4]]).expand(n, -1)
    target = probs_from_logits(process_logits(CHI_LOGITS, CHI_PARAMS, [[0, 4]]))[0]
    assert 3 <= int((target > 0).sum()) < CHI_LOGITS.shape[1]  # the filters did remove something
    tokens, logprobs = sample_next(logits, CHI_PARAMS, make_generator(1234), prev)
    observed = torch.bincount(tokens, minlength=CHI_LOGITS.shape[1])
    assert observed[target == 0].sum() == 0  # a filtered token is never drawn
    assert chi_square_pvalue(observed, target) > 1e-3
    # the test has power: the same draws are far from the unfiltered distribution
    unfiltered = torch.softmax(CHI_LOGITS[0] / 0.9, -1)
    stat = (((observed - unfiltered * n) ** 2) / (unfiltered * n)).sum()
    assert stat > 1000
    assert torch.allclose(logprobs, target.log()[tokens])


def test_per_row_generators_sample_the_same_distribution():
    n = 4000
    probs = torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.0625, 0.0]])
    g = make_generator(99)
    tokens = sample(probs.expand(n, -1), [g] * n)
    observed = torch.bincount(tokens, minlength=probs.shape[1])
    assert observed[-1] == 0 and chi_square_pvalue(observed, probs[0]) > 1e-3
    from_logits = sample(probs.log().expand(n, -1), make_generator(5), from_logits=True)
    assert chi_square_pvalue(torch.bincount(from_logits, minlength=6), probs[0]) > 1e-3


def test_logprobs_are_under_the_processed_distribution():
    x = torch.randn(5, 40)
    p = SamplingParams(temperature=0.6, top_k=10, top_p=0.8, presence_penalty=0.5)
    prev = [[1, 2, 3]] * 5
    tokens, logprobs = sample_next(x, p, make_generator(3), prev)
    final = torch.log_softmax(process_logits(x, p, prev), -1)
    assert torch.equal(logprobs, final.gather(1, tokens[:, None]).squeeze(1))
    assert bool(torch.isfinite(logprobs).all()) and bool((logprobs <= 0).all())


def test_top_logprobs_matches_reference():
    rng = random.Random(10)
    for _ in range(60):
        x = random_logits(rng, rng.randint(1, 3), rng.randint(1, 30))
        n = rng.randint(0, 35)
        ids, lps = top_logprobs(x, n)
        full = torch.log_softmax(x, -1)
        for row, row_ids, row_lps in zip(full, ids, lps):
            want = ref_order(row.tolist())[: min(n, x.shape[1])]
            assert row_ids.tolist() == want
            assert torch.equal(row_lps, row[row_ids])
    ids, _ = top_logprobs(torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]]), 2)
    assert ids.tolist() == [[1, 2]]


def run_request(logits_fn, params, seed, steps=12):
    """Decode `steps` tokens for one request alone."""
    g = make_generator(seed)
    out, lps = [], []
    for step in range(steps):
        tok, lp = sample_next(logits_fn(step), params, g, [out])
        out.append(int(tok[0]))
        lps.append(float(lp[0]))
    return out, lps


def fake_model(row: int):
    """Deterministic logits per (row, step), standing in for a model."""
    return lambda step: torch.randn(1, 50, generator=torch.Generator().manual_seed(1000 * row + step))


def test_same_seed_same_tokens_different_seed_different_tokens():
    p = SamplingParams(temperature=1.2, top_p=0.95, frequency_penalty=0.3, seed=42)
    a = run_request(fake_model(0), p, p.seed)
    b = run_request(fake_model(0), p, p.seed)
    c = run_request(fake_model(0), p, 43)
    assert a == b and a[0] != c[0]


def test_a_request_draws_the_same_tokens_alone_or_batched():
    params = [
        SamplingParams(temperature=1.0, seed=1),
        SamplingParams(temperature=0.0, seed=2),
        SamplingParams(temperature=0.8, top_k=7, top_p=0.9, repetition_penalty=1.2, seed=3),
    ]
    steps = 12
    alone = [run_request(fake_model(i), p, p.seed, steps) for i, p in enumerate(params)]
    gens = [make_generator(p.seed) for p in params]
    history: list[list[int]] = [[] for _ in params]
    batched_lps: list[list[float]] = [[] for _ in params]
    for step in range(steps):
        x = torch.cat([fake_model(i)(step) for i in range(len(params))])
        tokens, lps = sample_next(x, params, gens, history)
        for i in range(len(params)):
            history[i].append(int(tokens[i]))
            batched_lps[i].append(float(lps[i]))
    for i in range(len(params)):
        assert history[i] == alone[i][0]
        assert batched_lps[i] == alone[i][1]


def test_global_rng_is_never_touched():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    x = torch.randn(4, 30)
    torch.set_rng_state(state)
    sample_next(x, SamplingParams(top_p=0.9), make_generator(7))
    sample_next(x, SamplingParams(), None)
    sample(torch.softmax(x, -1), None)
    make_generator(None)
    assert torch.equal(torch.get_rng_state(), state)
