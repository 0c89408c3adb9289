"""The text layer: the detokenizer and stop strings, prompts through the tokenizer, and the text-level
functions with a ``GenerationRequest`` and/or its fields as keywords."""

from __future__ import annotations

import pytest
import torch

import lmlab
from lmlab.config import ModelConfig
from lmlab.data.tokenizer import Tokenizer, train_bpe, train_char, train_word
from lmlab.errors import LmlabError
from lmlab.generation.engine import generate_ids
from lmlab.generation.request import GenerationRequest as R
from lmlab.generation.text import (
    Detokenizer,
    banned_special_ids,
    detokenizer_for,
    encode_prompt,
    generate_text,
    stream_events,
    stream_text,
)
from lmlab.models import build_model

TEXT = "hello world, the quick brown fox jumps over the lazy dog.\nHELLO WORLD!?"


# ---------------------------------------------------------------------------------------------
# the detokenizer and stop strings


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


# ---------------------------------------------------------------------------------------------
# text in, text out


@pytest.fixture(scope="module")
def char_model():
    tok = train_char([TEXT])
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16, init_std=0.5)
    torch.manual_seed(3)
    return build_model(cfg).eval(), tok


def test_generate_stop_string_cuts_the_text(char_model):
    model, tok = char_model
    free = generate_text(model, tok, "the ", max_new_tokens=24, seed=1)
    stop = free[6:9]
    cut = generate_text(model, tok, "the ", max_new_tokens=24, seed=1, stop=stop)
    assert cut == free[: free.index(stop)]
    (c,) = generate_ids(
        model, [tok.encode("the ")], R(seed=1, max_new_tokens=24, stop=[stop]), detokenizer=detokenizer_for(tok),
        banned_ids=banned_special_ids(tok), eos_id=tok.eos_id,
    )  # fmt: skip
    assert (c.text, c.finish_reason, c.stop) == (cut, "stop", stop)
    steps = stream_events(model, tok, [tok.encode("the ")], R(seed=1, max_new_tokens=24, stop=stop))
    assert "".join(ev.text for step in steps for ev in step) == cut


def test_stream_equals_generate(char_model):
    model, tok = char_model
    for kw in (dict(seed=4), dict(seed=4, stop=["e", "xyz"]), dict(temperature=0)):
        pieces = list(stream_text(model, tok, "hello", max_new_tokens=25, **kw))
        assert "".join(pieces) == generate_text(model, tok, "hello", max_new_tokens=25, **kw)
        assert all(pieces)


def test_generate_a_list_of_prompts(char_model):
    model, tok = char_model
    texts = generate_text(model, tok, ["hello", "the lazy", ""], max_new_tokens=15, seed=2)
    assert texts == [
        generate_text(model, tok, p, max_new_tokens=15, seed=2 + i) for i, p in enumerate(["hello", "the lazy", ""])
    ]
    assert len(set(generate_text(model, tok, ["the"] * 3, max_new_tokens=15, seed=0))) == 3  # different samples


def test_base_models_write_no_special_tokens_but_eos(char_model):
    model, tok = char_model
    user = tok.special_tokens["<|user|>"]
    favour = torch.zeros(tok.vocab_size)
    favour[user] = 50.0  # the model now prefers <|user|> above everything
    handle = model.lm_head.register_forward_hook(lambda mod, inp, out: out + favour)
    try:  # (a hook also checks that the engine honours hooks: it then decodes with model.forward)
        assert banned_special_ids(tok) == sorted(set(tok.special_tokens.values()) - {tok.eos_id})
        ids = tok.encode("hello")
        (c,) = generate_ids(model, [ids], R(temperature=0, max_new_tokens=5), banned_ids=banned_special_ids(tok))
        assert user not in c.tokens
        (c,) = generate_ids(model, [ids], R(temperature=0, max_new_tokens=5))
        assert c.tokens == [user] * 5
        assert generate_text(model, tok, "hello", max_new_tokens=5, temperature=0, allow_special_tokens=True) == ""
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
        generate_text(model, tok, "héllo $")


def test_public_api_names(char_model):
    model, tok = char_model
    want = generate_text(model, tok, "hello", max_new_tokens=8, seed=0)
    assert lmlab.generate(model, tok, "hello", max_new_tokens=8, seed=0) == want
    assert "".join(lmlab.stream(model, tok, "hello", max_new_tokens=8, seed=0)) == want


def test_a_request_and_options_that_override_it(char_model):
    model, tok = char_model
    request = R(max_new_tokens=12, top_k=5, seed=3, stop=["zz"])
    flat = generate_text(model, tok, "the ", max_new_tokens=12, top_k=5, seed=3, stop="zz")
    assert generate_text(model, tok, "the ", request) == flat
    assert "".join(stream_text(model, tok, "the ", request)) == flat
    # keywords given with a request replace those fields only
    other = generate_text(model, tok, "the ", max_new_tokens=12, top_k=5, seed=4, stop="zz")
    assert generate_text(model, tok, "the ", request, seed=4) == other
    assert lmlab.generate(model, tok, "the ", request, seed=4) == other
    assert "".join(lmlab.stream(model, tok, "the ", request, seed=4)) == other
    with pytest.raises(LmlabError, match=r"unknown generation option 'topk' \(did you mean 'top_k'\?\)"):
        generate_text(model, tok, "the ", topk=5)


def test_errors_come_before_the_first_piece(char_model):
    model, tok = char_model
    with pytest.raises(LmlabError, match="top_p must be in"):
        stream_text(model, tok, "the", top_p=0)
    with pytest.raises(LmlabError, match="stream takes one prompt"):
        stream_text(model, tok, ["a", "b"])
    with pytest.raises(LmlabError, match="needs the run's tokenizer"):
        stream_text(model, None, "the")
    with pytest.raises(LmlabError, match=r"prompt \(3 tokens\) \+ max_new_tokens \(40\)"):
        rope = build_model(ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16,
                                       pos="rope"))  # fmt: skip
        stream_text(rope, tok, "the", max_new_tokens=40)
