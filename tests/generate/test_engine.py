"""The decoding engine against plain uncached decoding, on every architecture and positional encoding;
batching, stopping, streaming, seeds, log-probabilities, the context window, and the text layer."""

from __future__ import annotations

import warnings

import pytest
import torch

import lmlab
from lmlab.config import ModelConfig
from lmlab.data.tokenizer import Tokenizer, train_bpe, train_char, train_word
from lmlab.errors import LmlabError
from lmlab.generate import (
    ContextWindowWarning,
    Detokenizer,
    SamplingParams,
    banned_special_ids,
    encode_prompt,
    generate,
    generate_ids,
    make_generator,
    sample_next,
    stream,
    stream_ids,
)
from lmlab.generate import engine as engine_module
from lmlab.models import build_model

V = 41
TEXT = "hello world, the quick brown fox jumps over the lazy dog.\nHELLO WORLD!?"

CONFIGS = {
    "learned": ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=16, init_std=0.5),
    "sinusoidal": ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=16, pos="sinusoidal",
                              init_std=0.5),
    "rope": ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=16, pos="rope", init_std=0.5),
    "rope-gqa-swiglu-rmsnorm": ModelConfig(
        vocab_size=V, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, pos="rope", norm="rmsnorm",
        activation="swiglu", bias=False, tie_embeddings=False, init_std=0.5,
    ),
    "nopos-postnorm-relu2": ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=16, pos="none",
                                        norm_position="post", activation="relu2", init_std=0.5),
    "rnn": ModelConfig(arch="rnn", vocab_size=V, block_size=32, n_layer=2, n_embd=16, n_hidden=24,
                       tie_embeddings=False, init_std=0.5),
    "lstm": ModelConfig(arch="lstm", vocab_size=V, block_size=32, n_layer=2, n_embd=16, n_hidden=24,
                        tie_embeddings=False, init_std=0.5),
}  # fmt: skip
GPTS = [n for n, c in CONFIGS.items() if c.arch == "gpt"]
PROMPTS = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5, 8, 9, 7], [2], [7, 1, 8]]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models decode fastest on one thread; two threads on a busy machine can be 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(CONFIGS[name]).eval()
    with torch.no_grad():  # non-zero biases and gains, so the fast decode step is checked on all of them
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
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
        (c,) = generate_ids(model, [prompt], SamplingParams(temperature=0), max_new_tokens=20, logprobs=True)
        want, logps = naive(model, prompt, 20)
        assert c.tokens == want
        assert c.finish_reason == "length" and c.stop is None
        torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(logps), rtol=1e-4, atol=1e-5)
    if CONFIGS[name].arch == "gpt":
        assert engine_module._VERIFIED[model] is True  # the fast decode step agreed with model.forward


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_equals_uncached_sampled(models, name):
    model = models[name]
    for params in (SamplingParams(top_k=5, seed=11), SamplingParams(temperature=0.7, top_p=0.9, seed=12)):
        (c,) = generate_ids(model, [PROMPTS[1]], params, max_new_tokens=16)
        assert c.tokens == naive(model, PROMPTS[1], 16, params)[0]


def test_plain_sampler_draws_exactly_what_sample_next_draws():
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    logits[2, :9] = torch.tensor([20.0, 19, 18, 17, 16, 15, 14, 12, 12])  # 8th and 9th largest tie
    for temperature, top_k in ((1.0, 0), (0.7, 5), (1.3, 49), (0.0, 5), (1.0, 8)):
        params = SamplingParams(temperature=temperature, top_k=top_k)
        for per_row in (True, False):
            mine = [make_generator(i) for i in range(6)] if per_row else make_generator(0)
            theirs = [make_generator(i) for i in range(6)] if per_row else make_generator(0)
            for _ in range(20):
                got = engine_module._sample_plain(logits, temperature, top_k, mine)
                want, _ = sample_next(logits, params, theirs)
                assert (got is None) == (top_k == 8)  # a tie at the k-th logit is left to sample_next's rule
                if got is None:
                    got = sample_next(logits, params, mine)[0]
                assert torch.equal(got, want)


def test_fast_step_falls_back_when_it_disagrees_with_forward():
    model = make("learned", seed=1)
    # as if the model's code changed and the fast step did not: the first step must catch it
    norm_f = model.norm_f
    model.norm_f.forward = lambda x: torch.layer_norm(x, norm_f.weight.shape, norm_f.weight, None, 1e-5)
    with pytest.warns(RuntimeWarning, match="fast decode step does not match"):
        (c,) = generate_ids(model, [PROMPTS[0]], SamplingParams(temperature=0), max_new_tokens=12)
    assert engine_module._VERIFIED[model] is False
    assert c.tokens == naive(model, PROMPTS[0], 12)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decided once per model: no second warning
        generate_ids(model, [PROMPTS[0]], SamplingParams(temperature=0), max_new_tokens=3)


# ---------------------------------------------------------------------------------------------
# batches


@pytest.mark.parametrize("name", CONFIGS)
def test_batched_equals_one_by_one(models, name):
    model = models[name]
    free = generate_ids(model, PROMPTS, SamplingParams(top_k=8, seed=5), max_new_tokens=14)
    # a stop token that ends two or three rows early: they leave the batch while the others go on
    stop = next(t for t in range(V) if sum(t in c.tokens[:-2] for c in free) in (2, 3))
    kw = dict(max_new_tokens=14, stop_token_ids=[stop], logprobs=True, top_logprobs=3)
    batch = generate_ids(model, PROMPTS, SamplingParams(top_k=8, seed=5), **kw)
    for i, prompt in enumerate(PROMPTS):
        (alone,) = generate_ids(model, [prompt], SamplingParams(top_k=8, seed=5 + i), **kw)
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
    free = generate_ids(model, prompts, SamplingParams(temperature=0), max_new_tokens=14)
    # a stop token that ends both short rows after a few padded steps, but not the long one
    late = lambda t, c: t in c.tokens[2:-3] and t not in c.tokens[:2]  # noqa: E731
    stop = next(t for t in range(V) if t not in free[0].tokens and all(late(t, c) for c in free[1:]))
    batch = generate_ids(model, prompts, SamplingParams(temperature=0), max_new_tokens=14, stop_token_ids=[stop])
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
    batch = generate_ids(model, PROMPTS, params, max_new_tokens=10)
    for i, prompt in enumerate(PROMPTS):
        assert batch[i].tokens == generate_ids(model, [prompt], params[i], max_new_tokens=10)[0].tokens


def test_penalties_count_prompt_and_output(models):
    model = models["learned"]
    plain = generate_ids(model, [PROMPTS[0]], SamplingParams(temperature=0), max_new_tokens=20)[0].tokens
    penalized = generate_ids(
        model, [PROMPTS[0]], SamplingParams(temperature=0, presence_penalty=2.0), max_new_tokens=20
    )[0].tokens
    assert len(set(penalized)) > len(set(plain))  # penalized decoding repeats itself less


# ---------------------------------------------------------------------------------------------
# context window


@pytest.mark.parametrize("name", ["learned", "sinusoidal", "nopos-postnorm-relu2"])
def test_sliding_window_matches_naive_and_warns_once(models, name):
    model = models[name]
    keep = int(model.config.block_size * engine_module.KEEP_FRACTION)
    with pytest.warns(ContextWindowWarning, match="sliding a window") as record:
        (c,) = generate_ids(model, [PROMPTS[1]], SamplingParams(temperature=0), max_new_tokens=60)
    assert len(record) == 1
    assert c.tokens == naive(model, PROMPTS[1], 60, keep=keep)[0]
    # a prompt longer than the context starts from its last `keep` tokens
    long_prompt = (PROMPTS[1] * 5)[:40]
    notes = []
    (c,) = generate_ids(model, [long_prompt], SamplingParams(temperature=0), max_new_tokens=30, on_notice=notes.append)
    assert len(notes) == 1
    assert c.tokens == naive(model, long_prompt, 30, keep=keep)[0]


def test_sliding_window_in_a_padded_batch(models):
    model = models["learned"]
    kw = dict(max_new_tokens=50, on_notice=lambda m: None)
    batch = generate_ids(model, PROMPTS, SamplingParams(top_k=6, seed=9), **kw)
    for i, prompt in enumerate(PROMPTS):
        assert batch[i].tokens == generate_ids(model, [prompt], SamplingParams(top_k=6, seed=9 + i), **kw)[0].tokens


def test_rope_refuses_past_its_context(models):
    with pytest.raises(LmlabError, match=r"prompt \(9 tokens\) \+ max_new_tokens \(24\) = 33 tokens .* RoPE"):
        generate_ids(models["rope"], [PROMPTS[1]], max_new_tokens=24)
    assert len(generate_ids(models["rope"], [PROMPTS[1]], max_new_tokens=23)[0].tokens) == 23


def test_recurrent_models_have_no_context_limit(models):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (c,) = generate_ids(models["lstm"], [PROMPTS[0]], SamplingParams(temperature=0), max_new_tokens=80)
    assert c.tokens == naive(models["lstm"], PROMPTS[0], 80)[0]


# ---------------------------------------------------------------------------------------------
# stopping, streaming, seeds, log-probabilities


def test_stop_token_is_returned_last(models):
    model = models["learned"]
    free = naive(model, PROMPTS[0], 12)[0]
    stop = free[5]
    (c,) = generate_ids(model, [PROMPTS[0]], SamplingParams(temperature=0), max_new_tokens=12, eos_id=stop)
    assert c.tokens == free[: free.index(stop) + 1]
    assert (c.finish_reason, c.stop) == ("stop", stop)


def test_stream_ids_yields_each_step(models):
    steps = list(stream_ids(models["rnn"], PROMPTS[:2], SamplingParams(seed=0), max_new_tokens=7))
    assert len(steps) == 7 and all(len(s) == 2 for s in steps)
    assert [ev.finish_reason for ev in steps[-1]] == ["length", "length"]
    assert all(ev.finish_reason is None for s in steps[:-1] for ev in s)


def test_seeds_reproduce(models):
    model = models["rope"]
    run = lambda seed: generate_ids(model, PROMPTS, SamplingParams(seed=seed), max_new_tokens=12)  # noqa: E731
    assert [c.tokens for c in run(7)] == [c.tokens for c in run(7)]
    assert [c.tokens for c in run(7)] != [c.tokens for c in run(8)]


def test_logprobs_and_top_alternatives(models):
    model = models["sinusoidal"]
    banned = [0, 1, 2]
    (c,) = generate_ids(
        model, [PROMPTS[0]], SamplingParams(temperature=1.5, top_k=10, seed=3), max_new_tokens=10, logprobs=True,
        top_logprobs=4, banned_ids=banned,
    )  # fmt: skip
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
    generate_ids(model, [PROMPTS[0]], max_new_tokens=2)
    assert model.training


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompts=[[]]), "prompt 0 is empty"),
        (dict(prompts=[[1, V]]), f"token id {V} is outside the model's vocabulary of {V}"),
        (dict(prompts=[1, 2]), "wrap a single prompt in a list"),
        (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
        (dict(stop=["x"]), "stop strings need a decode function"),
        (dict(params=[SamplingParams()]), r"need one SamplingParams per prompt \(2\)"),
    ],
)
def test_bad_arguments(models, kwargs, message):
    args = dict(prompts=[[1], [2]], max_new_tokens=3) | kwargs
    with pytest.raises(LmlabError, match=message):
        stream_ids(models["learned"], **args)  # refused before the first step


# ---------------------------------------------------------------------------------------------
# text: the detokenizer, stop strings, the text API


def pieces_of(decode, ids, stop=(), context=()):
    d = Detokenizer(decode, stop, context)
    pieces = [d.push(t) for t in ids]
    return pieces, d


def test_detokenizer_never_splits_a_character():
    bpe = train_bpe(["plain ascii text, nothing else. " * 40], vocab_size=300)
    text = "héllo wörld 😀 ok ∑"
    ids = bpe.encode(text)
    assert len(ids) > len(text)  # the non-ASCII characters take several byte tokens each
    pieces, d = pieces_of(bpe.decode, ids)
    pieces.append(d.finish())
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_detokenizer_joins_words_and_prompt():
    word = train_word(["the cat sat on the mat .\nthe dog sat ."] * 3, vocab_size=40, min_frequency=1)
    prompt, out = word.encode("the cat"), word.encode("sat on the mat .\nthe dog")
    pieces, d = pieces_of(word.decode, out, context=prompt)
    assert "".join(pieces) + d.finish() == word.decode(prompt + out)[len(word.decode(prompt)) :]


def test_detokenizer_stop_strings():
    tok = train_char([TEXT])
    ids = tok.encode("hello world, the quick")
    pieces, d = pieces_of(tok.decode, ids, stop=["o w", "quick"])
    assert "".join(pieces) == "hell" and d.stop == "o w"
    # the held-back start of a stop string ("o" before " ") never shows before it is resolved
    assert pieces[:5] == ["h", "e", "l", "l", ""]
    # text that only looked like the start of a stop string comes out once it is clear
    pieces, d = pieces_of(tok.decode, tok.encode("the lazy dog"), stop=["lazy cat"])
    assert pieces == ["t", "h", "e", " ", "", "", "", "", "", "lazy d", "o", "g"]
    assert d.stop is None and d.finish() == ""
    # at the end, a held-back tail that never became a stop string is released
    pieces, d = pieces_of(tok.decode, tok.encode("the lazy"), stop=["lazy cat"])
    assert "".join(pieces) == "the " and d.finish() == "lazy"
    # the earliest stop string wins, wherever the others are
    pieces, d = pieces_of(tok.decode, tok.encode("brown fox jumps"), stop=["jumps", "fox", "own fox"])
    assert "".join(pieces) == "br" and d.stop == "own fox"


@pytest.fixture(scope="module")
def char_model():
    tok = train_char([TEXT])
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16, init_std=0.5)
    torch.manual_seed(3)
    return build_model(cfg).eval(), tok


def test_generate_stop_string_cuts_the_text(char_model):
    model, tok = char_model
    free = generate(model, tok, "the ", max_new_tokens=24, seed=1)
    stop = free[6:9]
    cut = generate(model, tok, "the ", max_new_tokens=24, seed=1, stop=stop)
    assert cut == free[: free.index(stop)]
    (c,) = generate_ids(
        model, [tok.encode("the ")], SamplingParams(seed=1), max_new_tokens=24, stop=[stop], decode=tok.decode,
        banned_ids=banned_special_ids(tok), eos_id=tok.eos_id,
    )  # fmt: skip
    assert (c.text, c.finish_reason, c.stop) == (cut, "stop", stop)


def test_stream_equals_generate(char_model):
    model, tok = char_model
    for kw in (dict(seed=4), dict(seed=4, stop=["e", "xyz"]), dict(temperature=0)):
        pieces = list(stream(model, tok, "hello", max_new_tokens=25, **kw))
        assert "".join(pieces) == generate(model, tok, "hello", max_new_tokens=25, **kw)
        assert all(pieces)


def test_generate_a_list_of_prompts(char_model):
    model, tok = char_model
    texts = generate(model, tok, ["hello", "the lazy", ""], max_new_tokens=15, seed=2)
    assert texts == [
        generate(model, tok, p, max_new_tokens=15, seed=2 + i) for i, p in enumerate(["hello", "the lazy", ""])
    ]
    assert len(set(generate(model, tok, ["the"] * 3, max_new_tokens=15, seed=0))) == 3  # different samples


def test_base_models_write_no_special_tokens_but_eos(char_model):
    model, tok = char_model
    user = tok.special_tokens["<|user|>"]
    favour = torch.zeros(tok.vocab_size)
    favour[user] = 50.0  # the model now prefers <|user|> above everything
    handle = model.lm_head.register_forward_hook(lambda mod, inp, out: out + favour)
    try:  # (a hook also checks that the engine honours hooks: it then decodes with model.forward)
        assert banned_special_ids(tok) == sorted(set(tok.special_tokens.values()) - {tok.eos_id})
        ids = tok.encode("hello")
        (c,) = generate_ids(model, [ids], SamplingParams(temperature=0), max_new_tokens=5,
                            banned_ids=banned_special_ids(tok))  # fmt: skip
        assert user not in c.tokens
        (c,) = generate_ids(model, [ids], SamplingParams(temperature=0), max_new_tokens=5)
        assert c.tokens == [user] * 5
        assert generate(model, tok, "hello", max_new_tokens=5, temperature=0, allow_special_tokens=True) == ""
    finally:
        handle.remove()


def test_empty_prompt_starts_a_document(char_model):
    model, tok = char_model
    assert encode_prompt(tok, "") == [tok.eos_id]
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token=None))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    hf.decoder = decoders.Fuse()
    bare = Tokenizer(hf, "char")
    with pytest.raises(LmlabError, match="prompt is empty and this tokenizer has no <|eos|> or <|bos|>"):
        encode_prompt(bare, "")
    assert encode_prompt(bare, "ab") == [0, 1]


def test_unknown_characters_are_named(char_model):
    model, tok = char_model
    with pytest.raises(LmlabError, match=r"2 character\(s\) not in this model's char vocabulary: '\$', 'é'"):
        generate(model, tok, "héllo $")


def test_public_api_names(char_model):
    model, tok = char_model
    assert lmlab.generate(model, tok, "hello", max_new_tokens=8, seed=0) == generate(
        model, tok, "hello", max_new_tokens=8, seed=0
    )
    assert "".join(lmlab.stream(model, tok, "hello", max_new_tokens=8, seed=0)) == generate(
        model, tok, "hello", max_new_tokens=8, seed=0
    )
