"""Fine-tuning a language model into a classifier (GPT-1 §3.2): data, input transformation, head, metrics, and
the real CLI (finetune, classify, eval, resume) on tiny models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lmlab
from lmlab.config import get_preset
from lmlab.data.formats.labeled import Example, label_names, read_labeled
from lmlab.data.tokenizer import train_char
from lmlab.errors import LmlabError
from lmlab.models import build_model
from lmlab.models.heads import SequenceClassifier
from lmlab.objectives.classify import ExampleLoader, confusion_scores, encode
from tests.helpers import assert_one_line_error, run_cli

QUIET = ["--train.no-progress", "--train.track", "none"]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# -- data ------------------------------------------------------------------------------------


def test_reads_tsv_with_header_and_jsonl_singles_and_pairs(tmp_path):
    tsv = read_labeled(write(tmp_path / "a.tsv", "sentence\tlabel\ngood film \t1\n\nbad film\t0\n"))
    assert tsv == [Example("good film", "1", None, 2), Example("bad film", "0", None, 4)]
    pairs = read_labeled(write(tmp_path / "p.tsv", "premise\thypothesis\tlabel\nA man\tA person\tentail\n"))
    assert pairs == [Example("A man", "entail", "A person", 2)]
    rows = ['{"text": "fine", "label": "pos"}', '{"text": "dull", "label": "neg"}']
    assert [e.label for e in read_labeled(write(tmp_path / "a.jsonl", "\n".join(rows)))] == ["pos", "neg"]
    both = read_labeled(write(tmp_path / "b.jsonl", '{"text_a": "x", "text_b": "y", "label": 2}\n'))
    assert both == [Example("x", "2", "y", 1)]
    assert label_names([Example("a", "10"), Example("b", "9")]) == ["9", "10"]  # numbers in numeric order
    assert label_names([Example("a", "pos"), Example("b", "neg")]) == ["neg", "pos"]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("x.tsv", "sentence\tlabel\ngood\t1\nbad\n", "x.tsv:3: 1 columns, the header has 2"),
        ("x.tsv", "sentence\tlabel\ngood\t\n", "x.tsv:2: no label"),
        ("x.tsv", "words\tlabel\ngood\t1\n", "x.tsv:1 (the header) has no text field"),
        ("x.tsv", "sentence\tscore\ngood\t1\n", "x.tsv:1: the header has no label column"),
        ("x.tsv", "", "is empty"),
        ("x.jsonl", '{"text": "a", "label": 1}\n{"text": "b"\n', "x.jsonl:2: not a JSON object"),
        ("x.jsonl", '{"text": "a", "label": 1}\n{"text": " ", "label": 0}\n', "x.jsonl:2: text is missing or empty"),
        ("x.jsonl", '{"text": "a", "label": [1]}\n', "x.jsonl:1: the label must be an integer or a string"),
        ("x.csv", "a,b\n", "give labeled data as .tsv"),
    ],
)
def test_bad_labeled_files_name_the_line(tmp_path, name, text, message):
    with pytest.raises(LmlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_labeled(write(tmp_path / name, text))


# -- the input transformation, the head, the loader, the metrics -------------------------------


@pytest.fixture(scope="module")
def tok():
    return train_char(["abcdefgh ?."])


def test_gpt1_input_transformation_and_truncation(tok):
    bos, eos, end = (tok.token_to_id(t) for t in ("<|bos|>", "<|eos|>", "<|end|>"))
    data = encode([Example("abc", "y"), Example("ab", "n", "cd")], tok, 16, ["n", "y"], "f.tsv")
    assert data.ids[0] == [bos, *tok.encode("abc"), end]
    assert data.ids[1] == [bos, *tok.encode("ab"), eos, *tok.encode("cd"), end]
    assert data.labels.tolist() == [1, 0] and data.truncated == 0
    cut = encode([Example("abcdefgh", "y"), Example("abcdef", "y", "gh")], tok, 6, ["n", "y"], "f.tsv")
    assert cut.ids[0] == [bos, *tok.encode("abcd"), end] and cut.truncated == 2
    assert cut.ids[1] == [bos, *tok.encode("a"), eos, *tok.encode("gh"), end]  # the longer text is cut first
    with pytest.raises(LmlabError, match="f.tsv:7: unknown label 'maybe'; the run's labels are n, y"):
        encode([Example("abc", "maybe", None, 7)], tok, 16, ["n", "y"], "f.tsv")
    with pytest.raises(LmlabError, match="f.tsv:3: text has 4 character"):
        encode([Example("abc", "y", None, 2), Example("xyz!", "y", None, 3)], tok, 16, ["n", "y"], "f.tsv")


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_the_head_reads_the_last_real_token_whatever_the_padding(arch, tok):
    import dataclasses

    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("tiny" if arch == "gpt" else "lstm").model, vocab_size=tok.vocab_size)
    if arch == "lstm":
        cfg = dataclasses.replace(cfg, n_layer=1, n_embd=16, n_hidden=24)
    model = SequenceClassifier(build_model(cfg), 3).eval()
    data = encode([Example("ab", "a"), Example("abcdefg", "a")], tok, 32, ["a", "b", "c"], "t")
    batch = next(ExampleLoader(data, 2, pad_id=tok.pad_id, shuffle=False))
    assert batch.tokens.shape == (2, 9) and batch.lengths.tolist() == [4, 9]
    assert batch.lm_targets[0].tolist() == [*data.ids[0][1:], -100, -100, -100, -100, -100, -100]
    together = model(batch.tokens, batch.lengths).logits
    alone = model(torch.tensor([data.ids[0]]), torch.tensor([4])).logits
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-5)


def test_evaluation_batches_cover_every_example_and_training_resumes(tok):
    data = encode([Example("a" * (i % 5 + 1), "n") for i in range(10)], tok, 16, ["n"], "t")
    val = ExampleLoader(data, 4, pad_id=0, shuffle=False)
    assert val.batches_per_epoch == 3 and sum(len(next(val).labels) for _ in range(3)) == 10
    a = ExampleLoader(data, 4, pad_id=0, seed=3)
    assert a.batches_per_epoch == 2  # training drops the last partial batch; the next epoch reshuffles
    for _ in range(3):
        next(a)
    b = ExampleLoader(data, 4, pad_id=0, seed=3)
    b.load_state_dict(a.state_dict())
    assert torch.equal(next(a).tokens, next(b).tokens)


def test_confusion_scores():
    s = confusion_scores(np.array([[5, 1], [2, 2]]))
    assert s["val_accuracy"] == pytest.approx(0.7)
    assert s["val_f1"] == pytest.approx((10 / 13 + 4 / 7) / 2)
    assert s["val_mcc"] == pytest.approx(16 / math.sqrt(42 * 48))
    assert confusion_scores(np.array([[3, 0], [4, 0]]))["val_mcc"] == 0.0  # one class predicted: no correlation
    assert confusion_scores(np.diag([2, 3, 4]))["val_mcc"] == pytest.approx(1.0)


# -- the real CLI on a tiny model --------------------------------------------------------------


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, shakespeare):
    lines = [ln.strip() for ln in shakespeare.read_text().splitlines() if 5 < len(ln.strip()) < 25]
    rows = [(ln, "question" if ln.endswith("?") else "other") for ln in lines[:200]]
    d = tmp_path_factory.mktemp("labeled")
    write(d / "train.tsv", "sentence\tlabel\n" + "".join(f"{a}\t{b}\n" for a, b in rows[:160]))
    write(d / "dev.tsv", "sentence\tlabel\n" + "".join(f"{a}\t{b}\n" for a, b in rows[160:]))
    return d


def finetune_cli(base, labeled, out, *extra, capsys=None):
    args = ["finetune", str(base), "classify", str(labeled / "train.tsv"), "--val", str(labeled / "dev.tsv")]
    return run_cli([*args, "--out", str(out), "--train.batch-size", "8", *QUIET, *extra], capsys)


def test_finetune_classify_end_to_end(base, labeled, tmp_path, capsys):
    run = tmp_path / "clf"
    result = finetune_cli(base, labeled, run, "--train.max-steps", "6", "--train.eval-every", "3", capsys=capsys)
    assert result.code == 0, result.err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["objective"] == "classify" and cfg["head"] == {"kind": "classify", "labels": ["other", "question"]}
    assert cfg["parent"]["run"] == str(base.resolve()) and cfg["finetune"]["options"]["aux_lm"] == 0.5
    assert cfg["train"]["lr"] == 6.25e-5 and cfg["train"]["best_metric"] == "val_accuracy"  # GPT-1's recipe
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_accuracy" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(0 <= r["val_accuracy"] <= 1 and -1 <= r["val_mcc"] <= 1 for r in evals)
    loaded = lmlab.load(run)
    assert isinstance(loaded.model, SequenceClassifier) and loaded.labels == ["other", "question"]
    assert [c["run"] for c in lmlab.lineage(run)] == [str(run), str(base.resolve())]
    # the parent's weights were the starting point: the language model barely moved in 6 steps at lr 6e-5
    parent_w = load_file(str(base / "checkpoints" / "latest" / "model.safetensors"))
    child_w = load_file(str(run / "checkpoints" / "latest" / "model.safetensors"))
    key = next(iter(parent_w))
    assert torch.allclose(parent_w[key], child_w["lm." + key], atol=1e-3)

    out = run_cli(["classify", str(run), "Who is there?", "Good night."], capsys)
    assert out.code == 0 and len(out.out.splitlines()) == 2
    label, probs = out.out.splitlines()[0].split("\t")
    assert label in ("other", "question") and "question" in probs
    one = lmlab.classify(run, "Who is there?")
    assert set(one["probs"]) == {"other", "question"} and sum(one["probs"].values()) == pytest.approx(1.0)
    for verb in ("sample", "chat"):
        assert_one_line_error(run_cli([verb, str(run)], capsys), "is a classifier", f"lmlab classify {run}")
    with pytest.raises(LmlabError, match="is a classifier"):
        lmlab.chat(run, "hello")
    assert_one_line_error(run_cli(["export-hf", str(run), str(tmp_path / "hf")], capsys), "is a classifier")
    assert lmlab.attention(run, "Who is there", out=tmp_path / "a.png").is_file()  # its language model's
    scores = run_cli(["eval", str(run)], capsys)
    assert scores.code == 0 and "accuracy" in scores.out
    saved = json.loads((run / "eval-classify.json").read_text())
    assert saved["n_examples"] == 40 and sum(map(sum, saved["confusion"])) == 40


def test_finetune_resume_is_exact(base, labeled, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    flat = ["--train.schedule", "constant", "--train.warmup-steps", "1", "--train.eval-every", "3"]  # no max_steps
    assert finetune_cli(base, labeled, straight, "--train.max-steps", "6", *flat, capsys=capsys).code == 0
    assert finetune_cli(base, labeled, split, "--train.max-steps", "3", *flat, capsys=capsys).code == 0
    assert run_cli(["train", "--resume", str(split), "--train.max-steps", "6", *QUIET], capsys).code == 0
    a = load_file(str(straight / "checkpoints" / "latest" / "model.safetensors"))
    b = load_file(str(split / "checkpoints" / "latest" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_an_lstm(tmp_path, shakespeare_char, labeled, capsys):
    lstm = tmp_path / "lstm"
    lmlab.train(
        shakespeare_char, "lstm", out=lstm, model={"n_layer": 1, "n_embd": 16, "n_hidden": 24}, max_steps=2,
        eval_every=0, progress=False, track="none", batch_size=4,
    )  # fmt: skip
    result = finetune_cli(lstm, labeled, tmp_path / "c", "--train.max-steps", "2", capsys=capsys)
    assert result.code == 0, result.err
    assert lmlab.load(tmp_path / "c").model.lm.config.arch == "lstm"


def test_finetune_errors(base, labeled, tmp_path, capsys):
    def err(*args, fragment):
        assert_one_line_error(run_cli(["finetune", *map(str, args), *QUIET], capsys), fragment, verb="finetune")

    train = labeled / "train.tsv"
    err(tmp_path / "nope", "classify", train, fragment="not found")
    err(base, "clasify", train, fragment="unknown method 'clasify' (did you mean 'classify'?)")
    err(base, "classify", train, "--format", "gsm8k", fragment="--format is an option of lmlab finetune RUN sft")
    err(base, fragment="give the method")
    err(base, "classify", tmp_path / "none.tsv", fragment="none.tsv not found")
    err(base, "classify", train, "--aux-lm", "-1", fragment="--aux-lm must be 0 or more")
    err(base, "classify", train, "--out", base, fragment="is the parent run itself")
    bad = write(tmp_path / "bad.tsv", "sentence\tlabel\nWho is there?\tquestion\nnow\t\n")
    err(base, "classify", bad, fragment="bad.tsv:3: no label")
    val = write(tmp_path / "val.tsv", "sentence\tlabel\nWho?\tquestion\nNo.\tmaybe\n")
    err(base, "classify", train, "--val", val, fragment="val.tsv:3: unknown label 'maybe'")
    one = write(tmp_path / "one.tsv", "sentence\tlabel\na b\tx\nc d\tx\n")
    err(base, "classify", one, fragment="a classifier needs two")
    err(
        base,
        "classify",
        write(tmp_path / "z.tsv", "sentence\tlabel\nzz\u00e9\tx\nab\ty\nab\tx\nba\ty\n"),
        fragment="z.tsv:2:",
    )
    err(base, "classify", train, "--epochs", "0", fragment="--epochs must be positive")
    err(base, "classify", train, "--val", tmp_path / "nova.tsv", fragment="nova.tsv not found")
    err(base, "classify", train, "--checkpoint", "step-99", fragment="checkpoint step-99 not found")
    err(base, "classify", train, "--lora.r", "-1", fragment="--lora.r must be 0")
    assert_one_line_error(run_cli(["classify", str(base), "hello"], capsys), "is not a classifier")


def test_classify_cli_errors(base, tmp_path, capsys):
    def err(*args, fragment):
        assert_one_line_error(run_cli(["classify", *map(str, args)], capsys), fragment, verb="classify")

    err(base, fragment="nothing to classify")
    err(base, "--file", tmp_path / "none.txt", fragment="--file")
    blank = write(tmp_path / "blank.txt", "good\n\nbad\n")
    err(base, "--file", blank, fragment="line 2 is empty")


def test_api_refuses_options_of_other_methods_and_unknown_ones(base, labeled):
    with pytest.raises(LmlabError, match="--beam is not an option of classify"):
        lmlab.finetune(base, "classify", labeled / "train.tsv", beam=4)
    with pytest.raises(LmlabError, match="--format is an option of sft, not of classify"):
        lmlab.finetune(base, "classify", labeled / "train.tsv", format="gsm8k")
    with pytest.raises(LmlabError, match="unknown fine-tuning method 'rlhf'"):
        lmlab.finetune(base, "rlhf", labeled / "train.tsv")
