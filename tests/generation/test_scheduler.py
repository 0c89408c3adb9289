"""Continuous batching: every request gets exactly the tokens it would get alone from the engine, whatever joins or
leaves the batch around it, and a cancelled or finished request frees its slot."""

from __future__ import annotations

import random
import time

import pytest
import torch

import lmlab
from lmlab.errors import LmlabError
from lmlab.generation.engine import generate_ids
from lmlab.generation.request import GenerationRequest
from lmlab.generation.scheduler import QueueFull, Scheduler
from lmlab.generation.text import banned_special_ids, detokenizer_for


@pytest.fixture(scope="module")
def run(base):
    return lmlab.load(base)


def scheduler(run, **kw) -> Scheduler:
    tok = run.tokenizer
    return Scheduler(run.model, eos_id=tok.eos_id, detokenizer=detokenizer_for(tok),
                     banned_ids=banned_special_ids(tok), **kw).start()  # fmt: skip


def alone(run, prompt, request):
    tok = run.tokenizer
    return generate_ids(run.model, [prompt], request, eos_id=tok.eos_id, detokenizer=detokenizer_for(tok),
                        banned_ids=banned_special_ids(tok))[0]  # fmt: skip


REQUESTS = [
    GenerationRequest(max_new_tokens=12, temperature=0),
    GenerationRequest(max_new_tokens=12, seed=5, top_k=10),
    GenerationRequest(max_new_tokens=12, seed=7, top_p=0.9, frequency_penalty=0.5, presence_penalty=0.3),
    GenerationRequest(max_new_tokens=12, seed=9, min_p=0.05, repetition_penalty=1.3, logit_bias={5: 3.0}),
    GenerationRequest(max_new_tokens=20, seed=11, stop=("e",), logprobs=True, top_logprobs=3),
]


@pytest.mark.parametrize("i", range(len(REQUESTS)))
def test_a_seeded_request_gets_the_same_tokens_alone_and_among_63_others(run, i):
    request = REQUESTS[i]
    prompt = run.tokenizer.encode("ROMEO:")
    ref = alone(run, prompt, request)
    s = scheduler(run, max_batch=64)
    try:
        solo = list(s.submit(prompt, request).events())
        rng = random.Random(i)
        others = [
            s.submit(run.tokenizer.encode("x" * rng.randint(1, 20)),
                     GenerationRequest(max_new_tokens=rng.randint(1, 10), seed=j, top_k=rng.choice([0, 5])))
            for j in range(63)
        ]  # fmt: skip
        crowd = list(s.submit(prompt, request).events())
        for h in others:
            assert list(h.events(timeout=60))[-1].finish_reason in ("stop", "length")
    finally:
        s.close()
    for events in (solo, crowd):
        assert [e.token for e in events] == ref.tokens
        assert "".join(e.text for e in events) == ref.text
        assert events[-1].finish_reason == ref.finish_reason
        if request.logprobs:
            assert [e.logprob for e in events] == pytest.approx(ref.logprobs, abs=1e-5)
            assert [[t for t, _ in e.top_logprobs] for e in events] == [[t for t, _ in x] for x in ref.top_logprobs]


def test_requests_joining_and_leaving_at_any_step_match_the_engine(run):
    """Prompts of every length arrive while others run: rows move right (a longer prompt joins) and left (the
    shared cache fills up), and each still gets its own tokens."""
    tok = run.tokenizer
    block = run.model.config.block_size
    rng = random.Random(0)
    jobs = []
    for j in range(24):
        n = rng.randint(1, block - 2)
        prompt = [rng.randrange(4, tok.vocab_size) for _ in range(n)]
        jobs.append((prompt, GenerationRequest(max_new_tokens=rng.randint(1, block - n), seed=100 + j, top_k=8)))
    refs = [alone(run, p, r) for p, r in jobs]
    s = scheduler(run, max_batch=6, max_queue=64, prefill_chunk=5)
    try:
        handles = []
        for p, r in jobs:
            handles.append(s.submit(p, r))
            time.sleep(rng.random() * 0.004)  # land at different steps of the running batch
        got = [[e.token for e in h.events(timeout=60)] for h in handles]
    finally:
        s.close()
    assert got == [r.tokens for r in refs]
    assert s.stats["prefill_chunks"] > len(jobs)  # long prompts were prefilled in several chunks


def test_a_cancelled_request_frees_its_slot(run):
    s = scheduler(run, max_batch=1, max_queue=4)
    try:
        long = s.submit([5], GenerationRequest(max_new_tokens=30, seed=0))
        it = long.events(timeout=30)
        next(it)  # it runs, holding the only slot
        waiting = s.submit([6], GenerationRequest(max_new_tokens=3, seed=0))
        long.cancel()
        rest = list(it)
        assert rest[-1].finish_reason == "cancelled" and len(rest) < 29
        assert [e.finish_reason for e in waiting.events(timeout=30)][-1] == "length"
    finally:
        s.close()
    assert s.batch_size == 0


def test_a_full_queue_is_refused(run):
    s = Scheduler(run.model, max_batch=1, max_queue=2)  # not started: nothing leaves the queue
    for _ in range(3):  # one for the free slot, two queued
        s.submit([5], GenerationRequest(max_new_tokens=2))
    with pytest.raises(QueueFull, match="1 requests are running and 3 are waiting"):
        s.submit([5], GenerationRequest(max_new_tokens=2))


def test_prompt_checks_name_both_numbers(run):
    s = Scheduler(run.model, max_batch=2)
    block = run.model.config.block_size
    with pytest.raises(LmlabError, match=rf"maximum context length is {block} tokens, but {block + 5} were requested"):
        s.submit([5] * 10, GenerationRequest(max_new_tokens=block - 5))
    with pytest.raises(LmlabError, match="prompt is empty"):
        s.submit([], GenerationRequest(max_new_tokens=2))
    with pytest.raises(LmlabError, match="outside the model's vocabulary"):
        s.submit([10**6], GenerationRequest(max_new_tokens=2))
    with pytest.raises(LmlabError, match="max_batch must be an integer >= 1"):
        Scheduler(run.model, max_batch=0)


def test_only_gpt_models(tmp_path):
    from lmlab.config import ModelConfig
    from lmlab.models import build_model

    lstm = build_model(ModelConfig(arch="lstm", vocab_size=20, n_layer=1, n_embd=8, n_hidden=8, block_size=8))
    with pytest.raises(LmlabError, match="continuous batching serves GPT runs"):
        Scheduler(lstm)


def test_the_cache_is_preallocated_per_slot(run):
    cfg = run.model.config
    s = Scheduler(run.model, max_batch=8)
    per_slot = 2 * cfg.n_layer * cfg.kv_heads * cfg.head_dim * s.max_len * 4
    assert s.memory_bytes == 8 * per_slot and s.max_len >= cfg.block_size
    assert torch.count_nonzero(s.cache.k) == 0
