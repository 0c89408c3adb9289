from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmlab.data import tokenizer as T
from lmlab.errors import LmlabError


@pytest.fixture(scope="module")
def corpus(shakespeare) -> str:
    return shakespeare.read_text(encoding="utf-8")[:200_000]


@pytest.fixture(scope="module")
def bpe(corpus) -> T.Tokenizer:
    return T.train_bpe([corpus], vocab_size=600)


@pytest.fixture(scope="module")
def char(corpus) -> T.Tokenizer:
    return T.train_char([corpus])


@pytest.fixture(scope="module")
def word(corpus) -> T.Tokenizer:
    return T.train_word([corpus], vocab_size=3000, min_frequency=1)


def test_char_roundtrip_and_layout(char, corpus):
    assert char.kind == "char"
    # special tokens take the first ids, then the sorted characters
    assert [char.token_to_id(t) for t in T.SPECIAL_TOKENS] == list(range(len(T.SPECIAL_TOKENS)))
    assert char.vocab_size == len(T.SPECIAL_TOKENS) + len(set(corpus))
    text = corpus[:5000]
    ids = char.encode(text)
    assert len(ids) == len(text)  # one token per character
    assert char.decode(ids) == text


def test_char_unknown_characters_are_named(char):
    with pytest.raises(LmlabError, match=r"2 character\(s\) not in this char vocabulary: '@', 'é'"):
        char.encode("hello é @")


def test_bpe_roundtrip_on_corpus(bpe, corpus):
    ids = bpe.encode(corpus[:20000])
    assert bpe.decode(ids) == corpus[:20000]
    assert len(ids) < 20000 / 2  # merges were learned: fewer tokens than characters


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_bpe_roundtrips_arbitrary_unicode(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


def test_word_tokenizer_unknowns_and_roundtrip(word):
    text = "To be, or not to be: that is the question.\nWhether"
    ids = word.encode(text)
    assert word.unk_id not in ids
    assert word.decode(ids) == "To be , or not to be : that is the question .\nWhether"
    unknown = word.encode("Zyzzyva")
    assert unknown == [word.unk_id]


def test_word_min_frequency_drops_rare_words():
    tok = T.train_word(["common common common rare"], vocab_size=100, min_frequency=2)
    assert tok.token_to_id("common") is not None
    assert tok.token_to_id("rare") is None


@pytest.mark.parametrize("kind", ["char", "bpe", "word"])
def test_special_tokens_never_split(kind, char, bpe, word):
    tok = {"char": char, "bpe": bpe, "word": word}[kind]
    for special in T.SPECIAL_TOKENS:
        sid = tok.token_to_id(special)
        assert tok.encode(special) == [sid]
        ids = tok.encode(f"the{special}the")
        assert ids.count(sid) == 1
        assert tok.decode(ids).replace(" ", "") == f"the{special}the"


@pytest.mark.parametrize("kind", ["char", "bpe", "word"])
def test_save_load_keeps_kind_and_ids(kind, char, bpe, word, tmp_path):
    tok = {"char": char, "bpe": bpe, "word": word}[kind]
    tok.save(tmp_path / "tokenizer.json")
    back = T.load_tokenizer(tmp_path)  # a directory holding tokenizer.json works too
    assert back.kind == kind
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    assert back.encode(text) == tok.encode(text)
    assert back.special_tokens == tok.special_tokens


def test_vocab_size_bounds():
    with pytest.raises(LmlabError, match="too small: bpe needs more than 263"):
        T.check_vocab_size("bpe", 200)
    with pytest.raises(LmlabError, match="too small: word needs more than 8"):
        T.check_vocab_size("word", 5)
    with pytest.raises(LmlabError, match="larger than 2\\*\\*32"):
        T.check_vocab_size("bpe", 2**32 + 1)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(LmlabError, match="not found"):
        T.load_tokenizer(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(LmlabError, match="is not a valid tokenizer.json"):
        T.load_tokenizer(bad)
