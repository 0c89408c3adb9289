"""The verbs end to end through the real CLI: train, translate, eval, attention --source, resume, and every error."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lmlab
from lmlab import checkpoint as ckpt
from lmlab.api import train
from lmlab.config import get_preset
from lmlab.data.tokenizer import load_tokenizer
from lmlab.models import build_model
from lmlab.runs import save_run
from tests.helpers import assert_one_line_error, run_cli
from tests.translation.conftest import QUIET, copy_run


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_writes_a_self_contained_translation_run(tiny_run, en_fr):
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["model"]["arch"] == "seq2seq" and cfg["model"]["vocab_size"] == 600
    assert (tiny_run / "tokenizer.json").read_bytes() == (en_fr / "tokenizer.json").read_bytes()
    evals = [r for r in rows(tiny_run) if "val_loss" in r]
    assert [r["step"] for r in evals] == [15, 30] and evals[-1]["val_loss"] < 6.0
    assert " => " in evals[-1]["sample"]  # the trainer shows translations of validation sources
    first = next(r for r in rows(tiny_run) if "tok_per_s" in r)
    assert first["tokens"] < 16 * 32 * 10  # tokens count real pair tokens, not batch_size x block_size


def test_translate_verb_and_python_api(tiny_run, tmp_path, capsys):
    code, out, err = run_cli(["translate", str(tiny_run), "I am cold.", "Where is the station?", "--beam", "1"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert lmlab.translate(tiny_run, "I am cold.", beam=1) == lines[0]
    assert lmlab.translate(tiny_run, ["I am cold.", "Where is the station?"], beam=1) == lines

    text = tmp_path / "in.txt"
    text.write_text("I am cold.\n\nWhere is the station?\n", encoding="utf-8")
    code, out, err = run_cli(["translate", str(tiny_run), "--file", str(text), "--beam", "1"], capsys)
    assert code == 0, err
    assert out.split("\n")[:3] == [lines[0], "", lines[1]]  # line by line, empty lines kept
    code, out, err = run_cli(["translate", str(tiny_run), "--file", str(text), "--beam", "3"], capsys)
    assert code == 0 and len(out.split("\n")) == 4


def test_eval_verb_reports_bleu_chrf_and_loss(tiny_run, capsys):
    code, out, err = run_cli(["eval", str(tiny_run), "--split", "test", "--limit", "40", "--beam", "2"], capsys)
    assert code == 0, err
    assert "BLEU" in out and "chrF" in out and "loss" in out
    scores = json.loads((tiny_run / "eval-test.json").read_text())
    assert scores["sentences"] == 40 and scores["pairs"] >= 40 and scores["beam"] == 2
    assert 0 <= scores["bleu"] <= 100 and 0 <= scores["chrf"] <= 100 and scores["loss"] > 0
    assert scores["bleu_signature"].startswith("nrefs:")
    assert len(scores["examples"]) == 3 and scores["examples"][0]["references"]


def test_attention_draws_the_cross_attention_alignment(tiny_run, tmp_path, capsys):
    png = tmp_path / "align.png"
    code, out, err = run_cli(["attention", str(tiny_run), "--source", "I am cold.", "--out", str(png)], capsys)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in out


def test_resume_is_exact(tiny_run, tmp_path):
    """Cut the finished run back to its step-10 checkpoint, resume it: the same weights, losses and samples."""
    b = copy_run(tiny_run, tmp_path / "b")
    root = b / "checkpoints"
    for name in ("step-00000020", "step-00000030"):
        ckpt_dir = root / name
        for f in ckpt_dir.iterdir():
            f.unlink()
        ckpt_dir.rmdir()
    for link in ("latest", "best"):
        (root / link).unlink(missing_ok=True)
    ckpt.point(root, "latest", root / "step-00000010")
    result = train(resume=b, progress=False)
    assert result.step == 30
    wa = load_file(str(tiny_run / "checkpoints/step-00000030/model.safetensors"))
    wb = load_file(str(root / "step-00000030/model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = rows(tiny_run), rows(b)
    assert [r["step"] for r in rb] == [r["step"] for r in ra]
    assert [r.get("train_loss") for r in rb] == [r.get("train_loss") for r in ra]
    assert [r.get("sample") for r in rb] == [r.get("sample") for r in ra]


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, en_fr) -> Path:
    tok = load_tokenizer(en_fr)
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(get_preset("tiny").model, vocab_size=tok.vocab_size))
    return save_run(tmp_path_factory.mktemp("lm") / "gpt", model, tok)


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory, pairs_file, en_fr) -> Path:
    """The pairs file read as plain text, with the translation dataset's tokenizer (so lm_run fits it)."""
    from lmlab.api import prepare

    out = tmp_path_factory.mktemp("lmdata") / "text"
    prepare(str(pairs_file), out=str(out), tokenizer=str(en_fr / "tokenizer.json"), quiet=True)
    return out


def test_eval_of_a_language_model_reports_loss(lm_run, lm_data, capsys):
    code, out, err = run_cli(["eval", str(lm_run), "--split", "val", "--data", str(lm_data)], capsys)
    assert code == 0, err
    scores = json.loads((lm_run / "eval-val.json").read_text())
    assert scores["loss"] > 0 and scores["ppl"] > 1 and "bleu" not in scores
    assert f"loss {scores['loss']:.4f}" in out


def test_each_verb_names_the_command_that_fits_the_run(tiny_run, lm_run, en_fr, lm_data, tmp_path, capsys):
    assert_one_line_error(run_cli(["translate", str(lm_run), "Hello."], capsys), "language model", "lmlab sample")
    assert_one_line_error(run_cli(["sample", str(tiny_run)], capsys), "seq2seq", "lmlab translate")
    assert_one_line_error(run_cli(["attention", str(tiny_run), "--text", "Hello."], capsys), "--source")
    assert_one_line_error(
        run_cli(["train", str(en_fr), "tiny", "--out", str(tmp_path / "g"), *QUIET], capsys),
        "translation dataset",
        "seq2seq",
    )
    assert_one_line_error(
        run_cli(["train", str(lm_data), "seq2seq-tiny", "--out", str(tmp_path / "s"), *QUIET], capsys),
        "encoder",
        "--task translation",
    )
    assert_one_line_error(
        run_cli(["eval", str(lm_run), "--split", "test", "--data", str(lm_data)], capsys), "--split val"
    )
    assert_one_line_error(run_cli(["eval", str(tiny_run), "--data", str(lm_data)], capsys), "not a translation dataset")


def test_translate_and_eval_refuse_bad_requests(tiny_run, tmp_path, capsys):
    assert_one_line_error(run_cli(["translate", str(tiny_run)], capsys), "nothing to translate")
    assert_one_line_error(
        run_cli(["translate", str(tiny_run), "--file", str(tmp_path / "nope.txt")], capsys), "not found"
    )
    assert_one_line_error(run_cli(["translate", str(tiny_run), "Hi.", "--beam", "0"], capsys), "--beam")
    assert_one_line_error(run_cli(["eval", str(tiny_run), "--split", "dev"], capsys), "unknown split")
    assert_one_line_error(run_cli(["attention", str(tiny_run), "--source", "  "], capsys), "empty")
    elsewhere = tmp_path / "moved"
    copy_run(tiny_run, elsewhere)
    cfg = json.loads((elsewhere / "config.json").read_text())
    cfg["data"]["path"] = str(tmp_path / "gone")
    (elsewhere / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run_cli(["eval", str(elsewhere)], capsys), "--data")


def test_a_source_longer_than_the_model_is_truncated_or_refused(tiny_run, capsys):
    long = " ".join(["The cat is very very happy today."] * 12)  # far beyond block_size 32
    assert_one_line_error(run_cli(["translate", str(tiny_run), long, "--long", "error"], capsys), "longer than")
    code, out, err = run_cli(["translate", str(tiny_run), long, "--beam", "1"], capsys)
    assert code == 0 and len(out.splitlines()) == 1
    assert "warning: sentence 1 is" in err and "first 31 tokens" in err


def test_separate_tokenizers_train_and_translate(pairs_file, tmp_path, capsys):
    data, run = tmp_path / "fr-en", tmp_path / "run"
    argv = ["prepare", str(pairs_file), "--task", "translation", "--columns", "1", "0", "--separate-tokenizers"]
    code, _, err = run_cli([*argv, "--tokenizer", "bpe", "--vocab-size", "400", "--out", str(data), "--quiet"], capsys)
    assert code == 0, err
    train_argv = ["train", str(data), "seq2seq-tiny", "--out", str(run), "--train.max-steps", "4", *QUIET]
    code, _, err = run_cli([*train_argv, "--train.eval-every", "4", "--train.eval-steps", "1"], capsys)
    assert code == 0, err
    cfg = json.loads((run / "config.json").read_text())
    src_vocab = json.loads((data / "meta.json").read_text())["src_vocab_size"]
    assert cfg["model"]["src_vocab_size"] == src_vocab == load_tokenizer(data / "tokenizer.src.json").vocab_size
    assert (run / "tokenizer.src.json").read_bytes() == (data / "tokenizer.src.json").read_bytes()
    code, out, err = run_cli(["translate", str(run), "J'ai froid.", "--beam", "2"], capsys)
    assert code == 0 and len(out.splitlines()) == 1, err
