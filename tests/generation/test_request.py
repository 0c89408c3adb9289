"""GenerationRequest: flat or nested construction, overrides, and its one-line checks."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from lmlab.errors import LmlabError
from lmlab.generation.request import SAMPLING_FIELDS, GenerationRequest, as_request
from lmlab.generation.sampling import SamplingParams


def test_flat_and_nested_construction_are_the_same_request():
    flat = GenerationRequest(max_new_tokens=20, top_k=50, seed=0)
    assert flat == GenerationRequest(max_new_tokens=20, sampling=SamplingParams(top_k=50, seed=0))
    assert flat.sampling == SamplingParams(top_k=50, seed=0)
    assert GenerationRequest() == GenerationRequest(SamplingParams())
    assert GenerationRequest().max_new_tokens == 256
    # named sampling fields apply on top of a given SamplingParams, which is copied, never changed
    base = SamplingParams(temperature=0.5, top_k=3)
    r = GenerationRequest(base, top_k=7)
    assert (r.sampling.temperature, r.sampling.top_k, base.top_k) == (0.5, 7, 3)
    base.top_k = 9
    assert r.sampling.top_k == 7


def test_every_sampling_field_is_an_option():
    assert SAMPLING_FIELDS == tuple(f.name for f in dataclasses.fields(SamplingParams))
    values = dict(
        temperature=0.5, top_k=3, top_p=0.9, min_p=0.1, repetition_penalty=1.2, frequency_penalty=0.5,
        presence_penalty=-0.5, logit_bias={3: 1.0}, seed=4,
    )  # fmt: skip
    assert set(values) == set(SAMPLING_FIELDS)
    assert GenerationRequest(**values).sampling == SamplingParams(**values)
    assert set(SAMPLING_FIELDS) < set(inspect.signature(GenerationRequest).parameters)


def test_replace_and_as_request():
    r = GenerationRequest(max_new_tokens=5, seed=1, stop="x")
    s = r.replace(seed=2, max_new_tokens=6)
    assert (s.sampling.seed, s.max_new_tokens, s.stop) == (2, 6, ("x",))
    assert r.sampling.seed == 1  # the original is unchanged
    assert as_request(r) is r
    assert as_request(r, seed=2) == r.replace(seed=2)
    assert as_request(None, top_k=4) == GenerationRequest(top_k=4)
    assert as_request() == GenerationRequest()


def test_frozen_and_normalized():
    r = GenerationRequest(stop=["\n\n", ""], stop_token_ids=[3, 4])
    assert r.stop == ("\n\n",) and r.stop_token_ids == (3, 4)
    assert GenerationRequest(stop="END").stop == ("END",)
    assert GenerationRequest(stop=None).stop == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.max_new_tokens = 3


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1, got 0"),
        (dict(max_new_tokens=2.0), "max_new_tokens must be an integer >= 1, got 2.0"),
        (dict(top_logprobs=-1), "top_logprobs must be an integer >= 0, got -1"),
        (dict(stop=["a", 3]), "stop strings must be strings"),
        (dict(stop_token_ids=[1, -2]), r"stop_token_ids: -2 is not a token id \(an integer >= 0\)"),
        (dict(stop_token_ids=5), "stop_token_ids must be a list of token ids"),
        (dict(logprobs="yes"), "logprobs must be True or False"),
        (dict(allow_special_tokens=1), "allow_special_tokens must be True or False"),
        (dict(max_tokens=3), r"unknown generation option 'max_tokens' \(did you mean 'max_new_tokens'\?\)"),
        (dict(sampling={"top_k": 3}), "sampling must be a SamplingParams, got dict"),
        # the sampling fields keep SamplingParams' own messages
        (dict(temperature=-1), "temperature must be a finite number >= 0"),
        (dict(top_p=0), r"top_p must be in \(0, 1\]"),
        (dict(presence_penalty=3), r"presence_penalty must be in \[-2, 2\]"),
        (dict(logit_bias={1: 200}), r"logit_bias\[1\] must be in \[-100, 100\]"),
        (dict(seed=2**64), "seed must be an integer"),
    ],
)
def test_bad_values_are_one_line_errors(options, message):
    with pytest.raises(LmlabError, match=message) as exc:
        GenerationRequest(**options)
    assert "\n" not in str(exc.value)


def test_as_request_refuses_other_types():
    with pytest.raises(LmlabError, match=r"got SamplingParams \(wrap it: GenerationRequest\(sampling=...\)"):
        as_request(SamplingParams())
    with pytest.raises(LmlabError, match="request must be a GenerationRequest, got dict"):
        as_request({"top_k": 3})
