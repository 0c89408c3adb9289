from __future__ import annotations

import hashlib
import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from lmlab.api import prepare
from lmlab.data.dataset import load_dataset
from lmlab.data.prepare import PrepareConfig
from lmlab.data.sources import NAMED_DATASETS
from lmlab.errors import LmlabError
from tests.helpers import assert_one_line_error, run_cli


def decode_split(ds, split):
    tok = ds.tokenizer
    return tok.decode(ds.tokens(split).tolist())


def test_shakespeare_char_end_to_end(shakespeare_char, shakespeare):
    ds = load_dataset(shakespeare_char)
    meta = ds.meta
    assert meta["tokenizer"]["kind"] == "char"
    assert meta["tokenizer"]["num_chars"] == 65
    assert meta["vocab_size"] == 65 + 7
    assert meta["dtype"] == "uint16"
    assert meta["split"]["unit"] == "line"
    assert meta["sources"][0]["sha256"] == NAMED_DATASETS["shakespeare"].sha256
    assert {p.name for p in shakespeare_char.iterdir()} == {"train.bin", "val.bin", "tokenizer.json", "meta.json"}
    n_train, n_val = meta["splits"]["train"]["tokens"], meta["splits"]["val"]["tokens"]
    assert 0.09 < n_val / (n_train + n_val) < 0.11
    # the two splits, each closed by <|eos|>, decode back to exactly the source text
    eos = "<|eos|>"
    train, val = decode_split(ds, "train"), decode_split(ds, "val")
    assert train.endswith(eos) and val.endswith(eos)
    assert train[: -len(eos)] + val[: -len(eos)] == shakespeare.read_text(encoding="utf-8")
    assert train[: -len(eos)].endswith("\n")  # cut on a line boundary


def test_gutenberg_bpe_end_to_end(gutenberg, tmp_path):
    out = tmp_path / "gb"
    result = prepare(str(gutenberg), out=str(out), tokenizer="bpe", vocab_size=1024, quiet=True)
    meta = result.meta
    assert meta["tokenizer"]["kind"] == "bpe" and meta["vocab_size"] == 1024
    files = sorted(p for p in gutenberg.iterdir() if p.is_file())
    assert [s["path"] for s in meta["sources"]] == [str(p.resolve()) for p in files]
    for src, p in zip(meta["sources"], files):
        assert src["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    ds = load_dataset(out)
    eos_id = meta["eos_id"]
    train = ds.tokens("train")
    assert int((train == eos_id).sum()) == len(files)  # one separator closes each file's training part
    # byte-level BPE loses nothing: the first book's training part decodes back to its text
    first_end = int(np.argmax(train == eos_id))
    text = files[0].read_text(encoding="utf-8")
    decoded = ds.tokenizer.decode(train[:first_end].tolist())
    assert len(decoded) > 0.85 * len(text)
    assert decoded == text[: len(decoded)]


def test_existing_tokenizer_reused(shakespeare_char, tmp_path):
    src = tmp_path / "new.txt"
    src.write_text("To be, or not to be, that is the question.\n" * 200)
    out = prepare(str(src), out=str(tmp_path / "o"), tokenizer=str(shakespeare_char / "tokenizer.json"), quiet=True)
    assert out.meta["vocab_size"] == 72
    assert (out.path / "tokenizer.json").read_text() == (shakespeare_char / "tokenizer.json").read_text()


def test_split_is_deterministic_and_seeded_by_document(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"doc{i:02d}.txt").write_text(f"document number {i} " * 40 + "\n")
    a = prepare(str(docs), out=str(tmp_path / "a"), tokenizer="word", vocab_size=100, min_frequency=1, quiet=True)
    b = prepare(str(docs), out=str(tmp_path / "b"), tokenizer="word", vocab_size=100, min_frequency=1, quiet=True)
    c = prepare(
        str(docs), out=str(tmp_path / "c"), tokenizer="word", vocab_size=100, min_frequency=1, seed=7, quiet=True
    )
    assert a.meta["split"]["unit"] == "document"
    val_docs = lambda r: [s["path"] for s in r.meta["sources"] if s["splits"] == ["val"]]  # noqa: E731
    assert len(val_docs(a)) == 3
    assert val_docs(a) == val_docs(b)
    assert val_docs(a) != val_docs(c)
    for split in ("train", "val"):
        assert (a.path / f"{split}.bin").read_bytes() == (b.path / f"{split}.bin").read_bytes()


def test_documents_lines_makes_every_line_a_document(tmp_path):
    text = tmp_path / "reviews.txt"
    text.write_text("a fine film .\n\nso dull .\n" * 300, encoding="utf-8")
    ds = prepare(str(text), out=str(tmp_path / "d"), tokenizer="word", vocab_size=50, min_frequency=1,
                 documents="lines", quiet=True)  # fmt: skip
    tokens = np.concatenate([np.fromfile(ds.path / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    eos = ds.meta["eos_id"]
    assert int((tokens == eos).sum()) == 600 and ds.meta["documents"] == "lines"  # one per non-empty line
    assert tokens[-1] == eos
    whole = prepare(str(text), out=str(tmp_path / "w"), tokenizer="word", vocab_size=50, min_frequency=1, quiet=True)
    both = [np.fromfile(whole.path / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")]
    assert sum(int((t == eos).sum()) for t in both) == 2  # the default: the file is one document (train, val)
    with pytest.raises(LmlabError, match="--documents: unknown value 'pages'"):
        prepare(str(text), out=str(tmp_path / "x"), documents="pages", quiet=True)


def test_uint32_when_vocabulary_exceeds_uint16(tmp_path):
    src = tmp_path / "many.txt"
    words = [f"w{i}" for i in range(70_000)]
    text = "\n".join(" ".join(words[i : i + 20]) for i in range(0, len(words), 20)) + "\n"
    src.write_text(text * 2)  # every word also occurs in the training split
    r = prepare(str(src), out=str(tmp_path / "o"), tokenizer="word", vocab_size=80_000, min_frequency=1, quiet=True)
    assert r.meta["vocab_size"] > 2**16
    assert r.meta["dtype"] == "uint32"
    ds = load_dataset(r.path)
    assert ds.tokens("train").dtype == np.uint32
    assert int(ds.tokens("train").max()) >= 2**16


def test_named_dataset_local_copy_by_option_and_env(shakespeare, tmp_path, monkeypatch):
    r = prepare("shakespeare", source_file=str(shakespeare), out=str(tmp_path / "a"), quiet=True)
    assert r.meta["name"] == "shakespeare"
    monkeypatch.setenv("LMLAB_SHAKESPEARE_FILE", str(shakespeare))
    r2 = prepare("shakespeare", out=str(tmp_path / "b"), quiet=True)
    assert (r.path / "train.bin").read_bytes() == (r2.path / "train.bin").read_bytes()


def test_named_dataset_download_is_verified_and_cached(shakespeare, tmp_path, monkeypatch):
    payload = shakespeare.read_bytes()
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    prepare("shakespeare", out=str(tmp_path / "a"), quiet=True)
    prepare("shakespeare", out=str(tmp_path / "b"), quiet=True)
    assert calls == [NAMED_DATASETS["shakespeare"].url]  # the second run used the verified cache
    assert (tmp_path / "cache" / "shakespeare" / "input.txt").read_bytes() == payload


# ---------------------------------------------------------------------------------------------
# every user error: one line, exit status 2, nothing left behind


def assert_nothing_left(parent):
    leftovers = [p.name for p in parent.iterdir() if p.name.startswith(".")] if parent.exists() else []
    assert leftovers == []


def test_error_missing_source(tmp_path, capsys):
    result = run_cli(["prepare", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(result, "not found: no such file or directory")


def test_error_unknown_named_dataset(capsys):
    assert_one_line_error(
        run_cli(["prepare", "shakespear"], capsys),
        "unknown named dataset 'shakespear' (did you mean 'shakespeare'?)",
    )


def test_error_unreadable_source(tmp_path, capsys, monkeypatch):
    import builtins

    f = tmp_path / "secret.txt"
    f.write_text("hello\n")
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):  # chmod 000 does not stop root, so refuse the read here
        if str(file) == str(f):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    assert_one_line_error(run_cli(["prepare", str(f)], capsys), "cannot read")


def test_error_empty_corpus(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("  \n\n")
    assert_one_line_error(
        run_cli(["prepare", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "o")], capsys),
        "is empty",
    )
    assert not (tmp_path / "o").exists()
    assert_nothing_left(tmp_path)


def test_error_binary_file(tmp_path, capsys):
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 10)
    assert_one_line_error(run_cli(["prepare", str(tmp_path / "blob.bin")], capsys), "is not a text file")


def test_error_not_utf8_then_encoding_and_replace_work(tmp_path, capsys):
    f = tmp_path / "latin.txt"
    f.write_bytes(("Café crème brûlée\n" * 50).encode("latin-1"))
    assert_one_line_error(
        run_cli(["prepare", str(f), "--out", str(tmp_path / "o"), "--min-val-tokens", "10"], capsys),
        "not valid utf-8 text (bad byte at offset 3)",
        "--encoding",
    )
    assert not (tmp_path / "o").exists()
    assert_nothing_left(tmp_path)
    r = prepare(str(f), out=str(tmp_path / "a"), encoding="latin-1", min_val_tokens=10, quiet=True)
    assert "é" in load_dataset(r.path).tokenizer.chars
    r = prepare(str(f), out=str(tmp_path / "b"), errors="replace", min_val_tokens=10, quiet=True)
    assert "\ufffd" in load_dataset(r.path).tokenizer.chars


def test_error_unknown_encoding(tmp_path):
    with pytest.raises(LmlabError, match="not a known text encoding"):
        PrepareConfig(source="x", encoding="utf-9")


def test_error_corpus_too_small(tmp_path, capsys):
    (tmp_path / "small.txt").write_text("a tiny corpus\n" * 20)
    assert_one_line_error(
        run_cli(["prepare", str(tmp_path / "small.txt"), "--out", str(tmp_path / "o")], capsys),
        "corpus too small: the val split has",
        "--val-fraction",
    )
    assert not (tmp_path / "o").exists()
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tokenizer", "bpe", "--vocab-size", "100"], "too small: bpe needs more than 263"),
        (["--tokenizer", "bpe", "--vocab-size", str(2**33)], "larger than 2**32"),
        (["--tokenizer", "bpee"], "(did you mean 'bpe'?)"),
        (["--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
    ],
)
def test_error_bad_options(shakespeare, tmp_path, capsys, args, message):
    assert_one_line_error(run_cli(["prepare", str(shakespeare), "--out", str(tmp_path / "o"), *args], capsys), message)
    assert not (tmp_path / "o").exists()


def test_error_output_exists_unless_overwrite(shakespeare_char, shakespeare, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_one_line_error(run_cli(["prepare", str(shakespeare), "--out", str(out)], capsys), "exists; pass --overwrite")
    assert (out / "keep.txt").read_text() == "precious"
    # --overwrite replaces a dataset (or an empty directory), never a directory of other files
    assert_one_line_error(run_cli(["prepare", str(shakespeare), "--out", str(out), "--overwrite"], capsys),
                          "is not a prepared dataset")  # fmt: skip
    assert (out / "keep.txt").read_text() == "precious"
    (out / "keep.txt").unlink()
    prepare(str(shakespeare), out=str(out), overwrite=True, quiet=True)
    first = (out / "meta.json").read_bytes()
    prepare(str(shakespeare), out=str(out), overwrite=True, quiet=True, seed=1)
    assert (out / "meta.json").is_file() and (out / "meta.json").read_bytes() != first
    assert_nothing_left(tmp_path)


def test_error_local_copy_with_wrong_sha(tmp_path, capsys):
    fake = tmp_path / "input.txt"
    fake.write_text("not shakespeare\n" * 100)
    assert_one_line_error(
        run_cli(["prepare", "shakespeare", "--source-file", str(fake)], capsys),
        "is not the published shakespeare file",
        f"lmlab prepare {fake}",
    )


def test_error_download_sha_mismatch_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"tampered\n" * 1000))
    assert_one_line_error(
        run_cli(["prepare", "shakespeare", "--out", str(tmp_path / "o")], capsys),
        "has sha256",
        "expected 86c4e6aa9db7",
    )
    cached = tmp_path / "cache" / "shakespeare"
    assert list(cached.iterdir()) == []
    assert not (tmp_path / "o").exists()


def test_error_no_network_says_how_to_use_a_local_copy(tmp_path, monkeypatch, capsys):
    def offline(url, timeout):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert_one_line_error(
        run_cli(["prepare", "shakespeare"], capsys),
        "could not download shakespeare",
        "--source-file PATH",
        "LMLAB_SHAKESPEARE_FILE",
    )


def test_meta_records_what_was_done(shakespeare_char):
    meta = json.loads((shakespeare_char / "meta.json").read_text())
    for key in ("lmlab_version", "vocab_size", "dtype", "tokenizer", "splits", "sources", "split", "eos_id"):
        assert key in meta
    assert meta["split"] == {"unit": "line", "val_fraction": 0.1, "seed": 1337}
