"""Tokenizers: characters, byte-level BPE and words, all stored as one Hugging Face `tokenizers` file.

Why HF `tokenizers` for all three kinds: one file format (``tokenizer.json``, also readable by
``transformers``), special tokens that are matched before pre-tokenization (so they are never
split), and batch encoding in Rust on every core. The kind is not stored separately: it is read
back from the model type and pre-tokenizer we build, so a ``tokenizer.json`` alone is enough.

Special tokens take the first ids, in the same order for every kind, and are reserved from the
start so that fine-tuning later never changes the vocabulary.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from lmlab.errors import LmlabError

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD, SYSTEM, USER, ASSISTANT, END)
UNK = "<unk>"  # only the word tokenizer has unknowns; byte-level BPE and char vocabularies cover their text
KINDS = ("char", "bpe", "word")
MAX_VOCAB = 2**32

# Words for the word-level tokenizer: runs of word characters, single punctuation marks, and newlines
# (kept so generated text keeps its line structure); other whitespace only separates.
_WORD_SPLIT = r"\w+|[^\w\s]|\n"


class Tokenizer:
    """Text <-> token ids. Wraps a HF ``tokenizers.Tokenizer`` built by one of the ``train_*`` functions."""

    def __init__(self, hf: HFTokenizer, kind: str):
        if kind not in KINDS:
            raise ValueError(f"unknown tokenizer kind {kind!r}")
        self.hf = hf
        self.kind = kind
        vocab = hf.get_vocab(with_added_tokens=True)
        self.special_tokens: dict[str, int] = {t: vocab[t] for t in (*SPECIAL_TOKENS, UNK) if t in vocab}
        self.bos_id = self.special_tokens.get(BOS)
        self.eos_id = self.special_tokens.get(EOS)
        self.pad_id = self.special_tokens.get(PAD)
        self.unk_id = self.special_tokens.get(UNK)
        # char kind: the characters it knows, to name the ones it does not (HF would only say "missing UNK")
        self.chars: frozenset[str] | None = None
        if kind == "char":
            self.chars = frozenset(t for t in vocab if t not in self.special_tokens)

    # -- sizes and lookups ------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.hf.id_to_token(i)

    # -- encoding ---------------------------------------------------------------------------
    def unknown_chars(self, text: str) -> list[str]:
        """Characters of ``text`` outside a char vocabulary (special tokens excepted); [] for other kinds."""
        if self.chars is None:
            return []
        for tok in self.special_tokens:
            text = text.replace(tok, "")
        return sorted(set(text) - self.chars)

    def _check_chars(self, texts: Iterable[str]) -> None:
        if self.chars is None:
            return
        missing = sorted({c for t in texts for c in self.unknown_chars(t)})
        if missing:
            shown = ", ".join(repr(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise LmlabError(
                f"text has {len(missing)} character(s) not in this char vocabulary: {shown}; "
                "remove them, or prepare the data with a bpe tokenizer (no unknown characters)"
            )

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``. Special tokens written in the text (``<|eos|>``) become their ids."""
        self._check_chars([text])
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts, encoded in parallel on every core."""
        self._check_chars(texts)
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)  # _fast skips char offsets
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        text = self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.kind == "word":
            # words are joined by single spaces; newline tokens should not carry spaces around them
            text = re.sub(r" ?\n ?", "\n", text)
        return text

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` atomically (temporary file, then rename)."""
        from lmlab.io import write_text

        write_text(path, self.hf.to_str(pretty=True))

    def describe(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "special_tokens": self.special_tokens}

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _kind_of(hf_json: dict) -> str:
    model_type = hf_json.get("model", {}).get("type")
    if model_type == "BPE":
        return "bpe"
    if model_type == "WordLevel":
        pre = json.dumps(hf_json.get("pre_tokenizer") or {})
        return "word" if UNK in hf_json["model"].get("vocab", {}) or "\\\\w+" in pre else "char"
    raise LmlabError(
        f"unsupported tokenizer model {model_type!r}: lmlab reads char, word and byte-level BPE tokenizers"
    )


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Read a ``tokenizer.json`` written by lmlab (or any HF byte-level BPE / WordLevel tokenizer file).

    ``path`` may also be a dataset or run directory that contains ``tokenizer.json``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise LmlabError(f"tokenizer file {path} not found; give a tokenizer.json or a directory that has one")
    try:
        text = path.read_text(encoding="utf-8")
        hf = HFTokenizer.from_str(text)
        kind = _kind_of(json.loads(text))
    except LmlabError:
        raise
    except Exception as e:  # HF raises plain Exception with a serde message
        raise LmlabError(f"{path} is not a valid tokenizer.json ({str(e).splitlines()[0]})") from None
    return Tokenizer(hf, kind)


# ---------------------------------------------------------------------------------------------
# Training


def train_char(texts: Iterable[str]) -> Tokenizer:
    """A vocabulary of every character that occurs in ``texts``, after the special tokens."""
    chars: set[str] = set()
    for t in texts:
        chars.update(t)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for c in sorted(chars):
        vocab.setdefault(c, len(vocab))
    hf = HFTokenizer(models.WordLevel(vocab, unk_token=None))
    # Oniguruma: (?m) makes '.' match newlines too, so every character is its own piece
    hf.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens(list(SPECIAL_TOKENS))
    return Tokenizer(hf, "char")


def check_vocab_size(kind: str, vocab_size: int) -> None:
    """Refuse a vocabulary too small for the special tokens (and, for BPE, the 256 bytes) or too large."""
    floor = len(SPECIAL_TOKENS) + (256 if kind == "bpe" else 1 if kind == "word" else 0)
    if kind in ("bpe", "word") and vocab_size < floor + 1:
        need = "the special tokens and the 256 byte tokens" if kind == "bpe" else "the special tokens and <unk>"
        raise LmlabError(f"--vocab-size {vocab_size} is too small: {kind} needs more than {floor} for {need}")
    if vocab_size > MAX_VOCAB:
        raise LmlabError(f"--vocab-size {vocab_size} is larger than 2**32, the most a uint32 token file can hold")


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Byte-level BPE (GPT-2 pre-tokenization): every string encodes, no unknown tokens."""
    check_vocab_size("bpe", vocab_size)
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(_nonempty(texts), trainer)
    return Tokenizer(hf, "bpe")


def train_word(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Whole words and punctuation marks; words rarer than ``min_frequency`` become ``<unk>``."""
    check_vocab_size("word", vocab_size)
    hf = HFTokenizer(models.WordLevel(unk_token=UNK))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),  # whitespace other than newline
            pre_tokenizers.Split(Regex(_WORD_SPLIT), behavior="isolated"),
        ]
    )
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[*SPECIAL_TOKENS, UNK], show_progress=False
    )
    hf.train_from_iterator(_nonempty(texts), trainer)
    return Tokenizer(hf, "word")


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    return (t for t in texts if t)
