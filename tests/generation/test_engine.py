"""The decoding engine against plain uncached decoding, on every architecture and positional encoding;
batching, stopping, streaming, seeds, log-probabilities, the context window, and the fast decode step
going through the model's own (possibly replaced) linear modules."""

from __future__ import annotations

import warnings

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.generation import engine as engine_module
from lmlab.generation.engine import ContextWindowWarning, generate_ids, stream_ids
from lmlab.generation.request import GenerationRequest as R
from lmlab.generation.sampling import SamplingParams, make_generator, sample_next
from lmlab.models import build_model

V = 41

CONFIGS = {
    "learned": ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=16, init_std=0.5),
    "sinusoidal": ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=16, pos="sinusoidal",
                              tie_embeddings=False, init_std=0.5),  # √16-scaled tied inputs would just repeat
    "rope": ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=16, pos="rope", init_std=0.5),
    "rope-gqa-swiglu-rmsnorm": ModelConfig(
        vocab_size=V, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, pos="rope", norm="rmsnorm",
        activation="swiglu", bias=False, tie_embeddings=False, init_std=0.5,
    ),
    "nopos-postnorm-relu2": ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=16, pos="none",
                                        norm_position="post", activation="relu2", init_std=0.5),
    "batchnorm": ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=16, norm="batchnorm",
                             init_std=0.5),
    # no norm lets the residual stream grow with init_std: 0.5 would give logits beyond the tests' logit biases
    "nonorm": ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=16, norm="none", init_std=0.2),
    "rnn": ModelConfig(arch="rnn", vocab_size=V, block_size=32, n_layer=2, n_embd=16, n_hidden=24,
                       tie_embeddings=False, init_std=0.5),
    "lstm": ModelConfig(arch="lstm", vocab_size=V, block_size=32, n_layer=2, n_embd=16, n_hidden=24,
                        tie_embeddings=False, init_std=0.5),
}  # fmt: skip
GPTS = [n for n, c in CONFIGS.items() if c.arch == "gpt"]
PROMPTS = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5, 8, 9, 7], [2], [7, 1, 8]]


def make(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(CONFIGS[name]).eval()
    with torch.no_grad():  # non-zero biases and gains, so the fast decode step is checked on all of them
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
        if CONFIGS[name].norm == "batchnorm":  # running statistics of real activations, as after training
            model.train()
            for _ in range(20):
                model(torch.randint(0, V, (4, 16)))
            model.eval()
    return model


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {name: make(name) for name in CONFIGS}


@torch.no_grad()
def naive(model, prompt, n, params=None, *, keep=None, stop_ids=()):
    """Plain decoding without a cache: the whole visible sequence through ``model.forward`` every step.

    The same rule for the context as the engine's: once the visible part would exceed block_size, it
    restarts from the last ``keep`` tokens. Draws with ``sample_next`` and a generator seeded like row 0.
    """
    params = params or SamplingParams(temperature=0)
    gen = make_generator(params.seed)
    window = model.config.block_size if model.config.arch == "gpt" else None
    seq, start, out, logps = list(prompt), 0, [], []
    for _ in range(n):
        if window is not None and len(seq) - start > window:
            start = len(seq) - keep
        logits = model(torch.tensor([seq[start:]])).logits[:, -1]
        tok, _ = sample_next(logits, params, gen)
        t = int(tok)
        out.append(t)
        logps.append(float(torch.log_softmax(logits, -1)[0, t]))
        if t in stop_ids:
            break
        seq.append(t)
    return out, logps


# ---------------------------------------------------------------------------------------------
# cached decoding == uncached decoding


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_equals_uncached_greedy(models, name):
    model = models[name]
    for prompt in PROMPTS[:2]:
        (c,) = generate_ids(model, [prompt], R(temperature=0, max_new_tokens=20, logprobs=True))
        want, logps = naive(model, prompt, 20)
        assert c.tokens == want
        assert c.finish_reason == "length" and c.stop is None
        torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(logps), rtol=1e-4, atol=1e-5)
    if CONFIGS[name].arch == "gpt":
        assert engine_module._VERIFIED[model][1] is True  # the fast decode step agreed with model.forward


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_equals_uncached_sampled(models, name):
    model = models[name]
    for params in (SamplingParams(top_k=5, seed=11), SamplingParams(temperature=0.7, top_p=0.9, seed=12)):
        (c,) = generate_ids(model, [PROMPTS[1]], R(params, max_new_tokens=16))
        assert c.tokens == naive(model, PROMPTS[1], 16, params)[0]


def test_plain_sampler_draws_exactly_what_sample_next_draws():
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    logits[2, :9] = torch.tensor([20.0, 19, 18, 17, 16, 15, 14, 12, 12])  # 8th and 9th largest tie
    for temperature, top_k in ((1.0, 0), (0.7, 5), (1.3, 49), (0.0, 5), (1.0, 8)):
        params = SamplingParams(temperature=temperature, top_k=top_k)
        for rows, per_row in ((slice(None), True), (slice(None), False), (slice(2, 3), True), (slice(0, 1), True)):
            x, ids = logits[rows], range(6)[rows]  # all six rows, or one (batch 1 has a path of its own)
            mine = [make_generator(i) for i in ids] if per_row else make_generator(0)
            theirs = [make_generator(i) for i in ids] if per_row else make_generator(0)
            for _ in range(20):
                got = engine_module._sample_plain(x, temperature, top_k, mine)
                want, _ = sample_next(x, params, theirs)
                # a tie at the k-th logit (row 2) is left to sample_next's rule
                assert (got is None) == (top_k == 8 and 2 in ids)
                if got is None:
                    got = sample_next(x, params, mine)[0]
                assert torch.equal(got, want)


def test_fast_step_falls_back_when_it_disagrees_with_forward():
    model = make("learned", seed=1)
    # as if the model's code changed and the fast step did not: the first step must catch it
    norm_f = model.norm_f
    model.norm_f.forward = lambda x: torch.layer_norm(x, norm_f.weight.shape, norm_f.weight, None, 1e-5)
    with pytest.warns(RuntimeWarning, match="fast decode step does not match"):
        (c,) = generate_ids(model, [PROMPTS[0]], R(temperature=0, max_new_tokens=12))
    assert engine_module._VERIFIED[model][1] is False
    assert c.tokens == naive(model, PROMPTS[0], 12)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decided once per model: no second warning
        generate_ids(model, [PROMPTS[0]], R(temperature=0, max_new_tokens=3))


class Shifted(torch.nn.Module):
    """A linear layer wrapped with a LoRA-like low-rank delta: what an adapter or a quantized layer does to a
    model after it was built. Counts its calls on (B, C) rows, which only the fast decode step makes."""

    def __init__(self, inner: torch.nn.Module, rank: int = 2, *, rows_only: bool = True) -> None:
        super().__init__()
        self.inner = inner
        self.a = torch.nn.Parameter(torch.randn(rank, inner.in_features))
        self.b = torch.nn.Parameter(torch.randn(inner.out_features, rank))
        self.sequences_only = not rows_only
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            self.rows += 1
            if self.sequences_only:
                raise ValueError("this layer takes (B, T, C) inputs only")
        return self.inner(x) + torch.nn.functional.linear(torch.nn.functional.linear(x, self.a), self.b)


def swap(model, where: str, **kw) -> Shifted:
    """Replace the linear at ``where`` (e.g. "blocks.1.attn.proj") with a Shifted wrapping it."""
    owner_path, _, name = where.rpartition(".")
    owner = model.get_submodule(owner_path) if owner_path else model
    torch.manual_seed(7)
    wrapper = Shifted(getattr(owner, name), **kw)
    setattr(owner, name, wrapper)
    return wrapper


@pytest.mark.parametrize(
    "name, where",
    [
        ("learned", "blocks.1.attn.proj"),
        ("rope-gqa-swiglu-rmsnorm", "blocks.0.mlp.up"),
        ("nopos-postnorm-relu2", "blocks.1.attn.qkv"),
        ("sinusoidal", "blocks.0.mlp.down"),
        ("rope-gqa-swiglu-rmsnorm", "lm_head"),
    ],
)
def test_fast_step_uses_a_linear_replaced_after_verification(name, where):
    model = make(name)
    request = R(temperature=0, max_new_tokens=12)
    (before,) = generate_ids(model, [PROMPTS[0]], request)
    assert engine_module._VERIFIED[model][1] is True
    wrapper = swap(model, where)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (c,) = generate_ids(model, [PROMPTS[0]], request)
    assert wrapper.rows == 11  # the fast step ran the wrapper at each of the 11 decode steps ...
    assert engine_module._VERIFIED[model] == (engine_module._structure(model), True)  # ... checked again, and kept
    assert c.tokens == naive(model, PROMPTS[0], 12)[0]  # what model.forward, through the wrapper, decodes
    assert c.tokens != before.tokens  # (and the wrapper does change the model's choices)


def test_fast_step_calls_the_module_itself(monkeypatch):
    """Even with no second verification, the fast step runs whatever module the model holds now."""
    model = make("learned")
    request = R(temperature=0, max_new_tokens=12)
    generate_ids(model, [PROMPTS[0]], request)
    monkeypatch.setattr(engine_module, "_structure", lambda model: ())  # swaps go unnoticed by the check
    wrapper = swap(model, "blocks.0.attn.proj")
    generate_ids(model, [PROMPTS[0]], request)  # the step is built per generation, from the modules of now
    (c,) = generate_ids(model, [PROMPTS[0]], request)
    assert wrapper.rows == 22
    assert c.tokens == naive(model, PROMPTS[0], 12)[0]


def test_a_replaced_module_the_fast_step_cannot_run_falls_back_to_forward():
    model = make("learned")
    request = R(temperature=0, max_new_tokens=12)
    generate_ids(model, [PROMPTS[0]], request)
    swap(model, "blocks.0.mlp.up", rows_only=False)  # refuses the fast step's (B, C) rows
    with pytest.warns(RuntimeWarning, match="fast decode step does not match"):
        (c,) = generate_ids(model, [PROMPTS[0]], request)
    assert engine_module._VERIFIED[model][1] is False
    assert c.tokens == naive(model, PROMPTS[0], 12)[0]


# ---------------------------------------------------------------------------------------------
# batches


@pytest.mark.parametrize("name", CONFIGS)
def test_batched_equals_one_by_one(models, name):
    model = models[name]
    free = generate_ids(model, PROMPTS, R(top_k=8, seed=5, max_new_tokens=14))
    # a stop token that ends two or three rows early: they leave the batch while the others go on
    stop = next(t for t in range(V) if sum(t in c.tokens[:-2] for c in free) in (2, 3))
    request = R(top_k=8, seed=5, max_new_tokens=14, stop_token_ids=[stop], logprobs=True, top_logprobs=3)
    batch = generate_ids(model, PROMPTS, request)
    for i, prompt in enumerate(PROMPTS):
        (alone,) = generate_ids(model, [prompt], request.replace(seed=5 + i))
        assert batch[i].tokens == alone.tokens
        assert batch[i].finish_reason == alone.finish_reason
        torch.testing.assert_close(torch.tensor(batch[i].logprobs), torch.tensor(alone.logprobs))
        assert [[t for t, _ in top] for top in batch[i].top_logprobs] == [
            [t for t, _ in top] for top in alone.top_logprobs
        ]
    assert {c.finish_reason for c in batch} == {"stop", "length"}


@pytest.mark.parametrize("name", ["sinusoidal", "rope-gqa-swiglu-rmsnorm"])
def test_batch_drops_its_padded_rows(models, name):
    """When only the longest prompt is left, the batch has no padding any more and decodes unmasked."""
    model = models[name]
    prompts = [PROMPTS[1], PROMPTS[2], PROMPTS[3]]  # 9, 1 and 3 tokens
    free = generate_ids(model, prompts, R(temperature=0, max_new_tokens=14))
    # a stop token that ends both short rows after a few padded steps, but not the long one
    late = lambda t, c: t in c.tokens[2:-3] and t not in c.tokens[:2]  # noqa: E731
    stop = next(t for t in range(V) if t not in free[0].tokens and all(late(t, c) for c in free[1:]))
    batch = generate_ids(model, prompts, R(temperature=0, max_new_tokens=14, stop_token_ids=[stop]))
    assert [c.finish_reason for c in batch] == ["length", "stop", "stop"]
    assert batch[0].tokens == free[0].tokens == naive(model, prompts[0], 14)[0]
    assert batch[1].tokens == free[1].tokens[: free[1].tokens.index(stop) + 1]


@pytest.mark.parametrize("name", ["learned", "rope-gqa-swiglu-rmsnorm", "lstm"])
def test_batched_per_request_params(models, name):
    model = models[name]
    params = [
        SamplingParams(temperature=0),
        SamplingParams(temperature=0.8, top_p=0.8, seed=1),
        SamplingParams(top_k=3, min_p=0.05, seed=2),
        SamplingParams(repetition_penalty=1.5, presence_penalty=0.5, seed=3),
    ]
    batch = generate_ids(model, PROMPTS, R(max_new_tokens=10), params=params)
    for i, prompt in enumerate(PROMPTS):
        assert batch[i].tokens == generate_ids(model, [prompt], R(params[i], max_new_tokens=10))[0].tokens
        assert batch[i].tokens == generate_ids(model, [prompt], R(max_new_tokens=10), params=[params[i]])[0].tokens


def test_penalties_count_prompt_and_output(models):
    model = models["learned"]
    plain = generate_ids(model, [PROMPTS[0]], R(temperature=0, max_new_tokens=20))[0].tokens
    penalized = generate_ids(model, [PROMPTS[0]], R(temperature=0, presence_penalty=2.0, max_new_tokens=20))[0].tokens
    assert len(set(penalized)) > len(set(plain))  # penalized decoding repeats itself less


# ---------------------------------------------------------------------------------------------
# context window


@pytest.mark.parametrize("name", ["learned", "sinusoidal", "nopos-postnorm-relu2"])
def test_sliding_window_matches_naive_and_warns_once(models, name):
    model = models[name]
    keep = int(model.config.block_size * engine_module.KEEP_FRACTION)
    with pytest.warns(ContextWindowWarning, match="sliding a window") as record:
        (c,) = generate_ids(model, [PROMPTS[1]], R(temperature=0, max_new_tokens=60))
    assert len(record) == 1
    assert c.tokens == naive(model, PROMPTS[1], 60, keep=keep)[0]
    # a prompt longer than the context starts from its last `keep` tokens
    long_prompt = (PROMPTS[1] * 5)[:40]
    notes = []
    (c,) = generate_ids(model, [long_prompt], R(temperature=0, max_new_tokens=30), on_notice=notes.append)
    assert len(notes) == 1
    assert c.tokens == naive(model, long_prompt, 30, keep=keep)[0]


def test_sliding_window_in_a_padded_batch(models):
    model = models["learned"]
    request, quiet = R(top_k=6, seed=9, max_new_tokens=50), lambda m: None
    batch = generate_ids(model, PROMPTS, request, on_notice=quiet)
    for i, prompt in enumerate(PROMPTS):
        assert batch[i].tokens == generate_ids(model, [prompt], request.replace(seed=9 + i), on_notice=quiet)[0].tokens


def test_rope_refuses_past_its_context(models):
    with pytest.raises(LmlabError, match=r"prompt \(9 tokens\) \+ max_new_tokens \(24\) = 33 tokens .* RoPE"):
        generate_ids(models["rope"], [PROMPTS[1]], R(max_new_tokens=24))
    assert len(generate_ids(models["rope"], [PROMPTS[1]], R(max_new_tokens=23))[0].tokens) == 23


def test_recurrent_models_have_no_context_limit(models):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (c,) = generate_ids(models["lstm"], [PROMPTS[0]], R(temperature=0, max_new_tokens=80))
    assert c.tokens == naive(models["lstm"], PROMPTS[0], 80)[0]


# ---------------------------------------------------------------------------------------------
# stopping, streaming, seeds, log-probabilities


def test_stop_token_is_returned_last(models):
    model = models["learned"]
    free = naive(model, PROMPTS[0], 12)[0]
    stop = free[5]
    (c,) = generate_ids(model, [PROMPTS[0]], R(temperature=0, max_new_tokens=12), eos_id=stop)
    assert c.tokens == free[: free.index(stop) + 1]
    assert (c.finish_reason, c.stop) == ("stop", stop)


def test_stream_ids_yields_each_step(models):
    steps = list(stream_ids(models["rnn"], PROMPTS[:2], R(seed=0, max_new_tokens=7)))
    assert len(steps) == 7 and all(len(s) == 2 for s in steps)
    assert [ev.finish_reason for ev in steps[-1]] == ["length", "length"]
    assert all(ev.finish_reason is None for s in steps[:-1] for ev in s)


def test_seeds_reproduce(models):
    model = models["rope"]
    run = lambda seed: generate_ids(model, PROMPTS, R(seed=seed, max_new_tokens=12))  # noqa: E731
    assert [c.tokens for c in run(7)] == [c.tokens for c in run(7)]
    assert [c.tokens for c in run(7)] != [c.tokens for c in run(8)]


def test_logprobs_and_top_alternatives(models):
    model = models["sinusoidal"]
    banned = [0, 1, 2]
    request = R(temperature=1.5, top_k=10, seed=3, max_new_tokens=10, logprobs=True, top_logprobs=4)
    (c,) = generate_ids(model, [PROMPTS[0]], request, banned_ids=banned)
    seq = list(PROMPTS[0])
    with torch.no_grad():
        for tok, lp, top in zip(c.tokens, c.logprobs, c.top_logprobs):
            logits = model(torch.tensor([seq])).logits[0, -1]
            logits[banned] = float("-inf")
            # the model's own distribution (banned tokens removed), not the one sampled at temperature 1.5
            want = torch.log_softmax(logits, -1)
            assert tok not in banned
            assert lp == pytest.approx(float(want[tok]), abs=1e-5)
            values, ids = want.topk(4)
            assert [t for t, _ in top] == ids.tolist()
            assert [v for _, v in top] == pytest.approx(values.tolist(), abs=1e-5)
            seq.append(tok)


def test_training_mode_is_restored(models):
    model = make("learned")
    model.train()
    generate_ids(model, [PROMPTS[0]], R(max_new_tokens=2))
    assert model.training


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompts=[[]]), "prompt 0 is empty"),
        (dict(prompts=[[1, V]]), f"token id {V} is outside the model's vocabulary of {V}"),
        (dict(prompts=[1, 2]), "wrap a single prompt in a list"),
        (dict(request=R(stop=["x"])), "stop strings need a detokenizer"),
        (dict(request=R(stop_token_ids=[V])), f"stop_token_ids: token id {V} is outside"),
        (dict(banned_ids=[-1]), "banned_ids: token id -1 is outside"),
        (dict(eos_id=V), "eos_id: token id"),
        (dict(params=[SamplingParams()]), r"need one SamplingParams per prompt \(2\)"),
        (dict(params=[SamplingParams(), dict(top_k=3)]), "one SamplingParams per prompt"),
        (dict(params=dict(top_k=3)), "params must be a SamplingParams or a list"),
        (dict(request=SamplingParams()), r"request must be a GenerationRequest, got SamplingParams \(wrap it"),
    ],
)
def test_bad_arguments(models, kwargs, message):
    args = dict(prompts=[[1], [2]], request=R(max_new_tokens=3)) | kwargs
    with pytest.raises(LmlabError, match=message):
        stream_ids(models["learned"], **args)  # refused before the first step


@pytest.mark.parametrize("name", CONFIGS)
def test_min_new_tokens_holds_the_stop_tokens_back(models, name):
    model = models[name]
    stop = 3
    rush = R(temperature=0, max_new_tokens=10, stop_token_ids=(stop,), logit_bias={stop: 100.0})
    (now,) = generate_ids(model, [PROMPTS[0]], rush)
    assert now.tokens == [stop] and now.finish_reason == "stop"  # the bias makes it end at once
    rows = generate_ids(model, [PROMPTS[0], PROMPTS[1]], rush.replace(min_new_tokens=4), eos_id=5)
    for c in rows:  # neither the stop id nor eos before the 5th token; then the bias ends it
        assert len(c.tokens) == 5 and c.tokens[-1] == stop and not {stop, 5} & set(c.tokens[:4])
    with pytest.raises(LmlabError, match="min_new_tokens must be an integer from 0 to max_new_tokens"):
        R(max_new_tokens=4, min_new_tokens=5)
