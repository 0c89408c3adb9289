"""lmlab prepare --task translation, the split, and the pair loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmlab.api import prepare
from lmlab.data.dataset import TranslationData, load_dataset
from lmlab.data.formats.pairs import read_pairs, source_key
from lmlab.data.loader import PairLoader
from lmlab.errors import LmlabError
from tests.helpers import assert_one_line_error, run_cli


def test_prepared_directory_follows_the_dataset_contract(en_fr, pairs_file):
    ds = load_dataset(en_fr)
    assert ds.task == "translation"
    meta = ds.meta
    assert meta["joint_tokenizer"] and meta["vocab_size"] == meta["src_vocab_size"] == 600
    assert meta["dtype"] == "uint16" and (meta["bos_id"], meta["eos_id"], meta["pad_id"]) == (0, 1, 2)
    names = {p.name for p in en_fr.iterdir()}
    for split in ("train", "val", "test"):
        assert {f"{split}.src.bin", f"{split}.src.idx", f"{split}.tgt.bin", f"{split}.tgt.idx", f"{split}.tsv"} <= names
    assert {"tokenizer.json", "meta.json"} <= names and "tokenizer.src.json" not in names
    assert not any(n.startswith(".") for n in names)  # no temporary leftovers

    data = TranslationData.load(en_fr)
    lines = pairs_file.read_text(encoding="utf-8").splitlines()
    assert sum(meta["splits"][s]["pairs"] for s in ("train", "val", "test")) == len(lines)
    assert sorted(p for s in ("train", "val", "test") for p in data.pairs(s)) == sorted(
        tuple(line.split("\t")) for line in lines
    )
    tok = data.tgt_tokenizer
    toks = data.tokens("val")
    for i, (src, tgt) in enumerate(data.pairs("val")[:50]):  # token files and texts line up, losslessly
        assert tok.decode(toks.src[toks.src_offsets[i] : toks.src_offsets[i + 1]].tolist()) == src
        assert tok.decode(toks.tgt[toks.tgt_offsets[i] : toks.tgt_offsets[i + 1]].tolist()) == tgt


def test_split_is_seeded_and_no_test_source_is_seen_in_training(en_fr, pairs_file, tmp_path):
    data = TranslationData.load(en_fr)
    keys = {s: {source_key(src) for src, _ in data.pairs(s)} for s in ("train", "val", "test")}
    assert keys["test"] and keys["val"]
    assert not keys["test"] & keys["train"] and not keys["val"] & keys["train"] and not keys["test"] & keys["val"]
    test_share = len(keys["test"]) / sum(len(k) for k in keys.values())
    assert test_share == pytest.approx(0.05, abs=0.005)

    again = tmp_path / "again"
    prepare(str(pairs_file), out=str(again), task="translation", tokenizer="bpe", vocab_size=600, quiet=True)
    for name in ("train.src.bin", "test.tgt.idx", "test.tsv", "tokenizer.json"):
        assert (again / name).read_bytes() == (en_fr / name).read_bytes()
    other = tmp_path / "other"
    prepare(str(pairs_file), out=str(other), task="translation", tokenizer="bpe", vocab_size=600, seed=7, quiet=True)
    assert (other / "test.tsv").read_bytes() != (en_fr / "test.tsv").read_bytes()


def test_a_source_differing_only_in_case_or_spacing_stays_in_one_split(tmp_path):
    lines = [f"Sentence number {i}.\tPhrase numéro {i}." for i in range(60)]
    lines += ["I am cold.\tJ'ai froid.", "i  am COLD.\tJ'ai très froid.", "I am cold. \tMoi, j'ai froid."]
    src = tmp_path / "p.tsv"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for seed in range(6):
        out = tmp_path / f"d{seed}"
        prepare(str(src), out=str(out), task="translation", tokenizer="char", seed=seed, test_fraction=0.2, quiet=True)
        data = TranslationData.load(out)
        homes = [s for s in ("train", "val", "test") if any(source_key(a) == "i am cold." for a, _ in data.pairs(s))]
        assert len(homes) == 1
        assert sum(source_key(a) == "i am cold." for a, _ in data.pairs(homes[0])) == 3


def test_columns_choose_the_direction_and_separate_tokenizers(pairs_file, tmp_path):
    out = tmp_path / "fr-en"
    prepare(
        str(pairs_file), out=str(out), task="translation", tokenizer="bpe", vocab_size=400,
        columns=(1, 0), separate_tokenizers=True, quiet=True,
    )  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert not meta["joint_tokenizer"] and meta["columns"] == [1, 0]
    assert (out / "tokenizer.src.json").is_file()
    data = TranslationData.load(out)
    fr, en = data.pairs("train")[0]
    english = {line.split("\t")[0] for line in pairs_file.read_text(encoding="utf-8").splitlines()}
    assert en in english and fr not in english
    assert data.src_tokenizer is not data.tgt_tokenizer
    toks = data.tokens("train")
    assert data.src_tokenizer.decode(toks.src[: toks.src_offsets[1]].tolist()) == fr


def test_malformed_lines_are_counted_reported_and_refused_with_strict(tmp_path, capsys):
    good = [f"Sentence {i}.\tPhrase {i}." for i in range(40)]
    lines = good[:3] + ["no tab here"] + good[3:20] + ["\tvide"] + good[20:] + ["Empty target.\t   ", ""]
    src = tmp_path / "bad.tsv"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "d"
    argv = ["prepare", str(src), "--task", "translation", "--tokenizer", "char", "--out", str(out)]

    line = assert_one_line_error(run_cli([*argv, "--strict"], capsys), "3 malformed")
    assert not out.exists()
    assert "bad.tsv:4: no tab" in line and "bad.tsv:22: empty source" in line and "bad.tsv:43: empty target" in line

    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "skipped 3 malformed pair line(s)" in err and "bad.tsv:4" in err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["malformed"]["count"] == 3
    assert sum(meta["splits"][s]["pairs"] for s in ("train", "val", "test")) == 40

    three_cols = tmp_path / "three.tsv"
    three_cols.write_text("a\tb\tc\nd\te\n", encoding="utf-8")
    read = read_pairs([three_cols], columns=(2, 0))
    assert read.pairs == [("c", "a")] and read.malformed == ["three.tsv:2: 2 columns, column 2 is missing"]


def test_prepare_errors(tmp_path, pairs_file, capsys):
    out = str(tmp_path / "x")
    base = ["prepare", str(pairs_file), "--task", "translation", "--out", out, "--tokenizer", "char"]
    for extra, message in (
        (["--columns", "1", "1"], "two different"),
        (["--test-fraction", "0.95"], "--test-fraction"),
    ):
        assert_one_line_error(run_cli([*base, *extra], capsys), message)
    tiny = tmp_path / "two.tsv"
    tiny.write_text("a\tb\nc\td\n", encoding="utf-8")
    assert_one_line_error(run_cli(["prepare", str(tiny), "--task", "translation", "--out", out], capsys), "too few")
    with pytest.raises(LmlabError, match="exists"):
        prepare(str(pairs_file), out=str(tmp_path), task="translation", tokenizer="char", quiet=True)


# ---------------------------------------------------------------------------------------------
# The loader


def loader(en_fr, **kw) -> PairLoader:
    data = TranslationData.load(en_fr)
    args = dict(batch_size=32, max_len=32, bos_id=0, eos_id=1, pad_id=2, seed=3)
    return PairLoader(data.tokens(kw.pop("split", "train")), **{**args, **kw})


def test_batches_group_similar_lengths_and_cover_the_epoch(en_fr):
    ld = loader(en_fr)
    seen, real, padded = [], 0, 0
    for _ in range(ld.batches_per_epoch):
        b = next(ld)
        assert b.src.shape[0] == 32 and b.tgt_in.shape == b.tgt_out.shape
        assert (b.src_mask == (b.src != 2)).all()
        assert (b.tgt_in[:, 0] == 0).all()  # BOS first
        assert ((b.tgt_out == 1).sum(1) == 1).all()  # one EOS per row
        assert ((b.src == 1).sum(1) == 1).all()
        real += int(b.src_mask.sum()) + int((b.tgt_out != -100).sum())
        padded += b.src.numel() + b.tgt_out.numel()
        seen.append(b)
    assert real / padded > 0.85  # random batches of this data are about 65% real tokens
    n = len(TranslationData.load(en_fr).tokens("train"))
    assert ld.batches_per_epoch == n // 32


def test_loader_cursor_resumes_exactly_and_ranks_are_disjoint(en_fr):
    a = loader(en_fr)
    for _ in range(a.batches_per_epoch + 3):  # into the second epoch
        next(a)
    state = a.state_dict()
    b = loader(en_fr)
    b.load_state_dict(state)
    for _ in range(5):
        x, y = next(a), next(b)
        assert all(np.array_equal(u.numpy(), v.numpy()) for u, v in zip(x, y))
    with pytest.raises(LmlabError, match="batch_size"):
        loader(en_fr, batch_size=16).load_state_dict(state)

    r0, r1 = loader(en_fr, rank=0, world_size=2), loader(en_fr, rank=1, world_size=2)
    rows0 = {tuple(t.tolist()) for _ in range(r0.batches_per_epoch) for t in next(r0).src}
    rows1 = {tuple(t.tolist()) for _ in range(r1.batches_per_epoch) for t in next(r1).src}
    assert len(rows0 & rows1) < 0.05 * len(rows0)  # disjoint pairs (a few sentences repeat in the data)

    val1, val2 = loader(en_fr, split="val", shuffle=False), loader(en_fr, split="val", shuffle=False, seed=99)
    assert all(np.array_equal(u.numpy(), v.numpy()) for u, v in zip(next(val1), next(val2)))


def test_the_first_validation_batches_are_a_fair_sample_of_lengths(en_fr):
    """The trainer evaluates on the first eval_steps batches: they must not be the shortest pairs."""
    ld = loader(en_fr, split="val", shuffle=False, batch_size=8)
    lengths = [float(b.src_mask.sum(1).float().mean()) for b in (next(ld) for _ in range(ld.batches_per_epoch))]
    first = lengths[: len(lengths) // 3]
    assert sum(first) / len(first) > 0.8 * sum(lengths) / len(lengths)
    assert lengths != sorted(lengths)


def test_loader_truncates_long_pairs_and_refuses_a_split_smaller_than_a_batch(en_fr):
    ld = loader(en_fr, max_len=4)
    b = next(ld)
    assert b.src.shape[1] <= 4 and b.tgt_in.shape[1] <= 4
    assert ((b.src == 1).sum(1) == 1).all() and ((b.tgt_out == 1).sum(1) == 1).all()
    with pytest.raises(LmlabError, match="fewer than one batch"):
        loader(en_fr, split="test", batch_size=10_000)
