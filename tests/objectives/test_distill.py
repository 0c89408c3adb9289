"""Distillation: `lmlab finetune TEACHER distill DATA --student PRESET` trains a new student on the teacher's
next-token distributions through the one trainer; the loss, the run it writes, resume, and the one-line errors."""

from __future__ import annotations

import copy
import json

import torch
import torch.nn.functional as F

import lmlab
from lmlab.objectives.distill import Distill, DistillOptions
from tests.helpers import assert_one_line_error, run_cli

QUIET = ["--train.no-progress", "--train.track", "none"]


def _objective(teacher, alpha, temperature=2.0):
    obj = Distill.__new__(Distill)
    obj.opts = DistillOptions(alpha=alpha, temperature=temperature)
    obj.teacher = teacher
    return obj


def test_the_loss_mixes_the_soft_and_the_hard_term():
    import dataclasses

    from lmlab.config import get_preset
    from lmlab.models import build_model

    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("tiny").model, vocab_size=40)
    student, teacher = build_model(cfg), build_model(cfg).eval()
    x = torch.randint(0, student.config.vocab_size, (2, 8))
    y = torch.randint(0, student.config.vocab_size, (2, 8))
    y[0, :3] = -100  # ignored targets count in neither term
    ce = F.cross_entropy(student(x).logits.flatten(0, 1), y.flatten(), ignore_index=-100)
    data_only = _objective(teacher, 0.0).loss(student, (x, y))
    assert torch.allclose(data_only.loss, ce) and data_only.n_tokens == 13
    T = 3.0
    out = _objective(teacher, 0.7, T).loss(student, (x, y))
    keep = y.flatten() >= 0
    p_t = F.softmax(teacher(x).logits.flatten(0, 1)[keep] / T, -1)
    log_s = F.log_softmax(student(x).logits.flatten(0, 1)[keep] / T, -1)
    kl = (p_t * (p_t.log() - log_s)).sum(-1).mean()
    torch.testing.assert_close(out.loss, 0.7 * T * T * kl + 0.3 * ce)
    same = _objective(copy.deepcopy(student).eval(), 1.0).loss(student, (x, y))
    assert float(same.metrics["kl"]) < 1e-6  # a student that is its teacher has nothing to learn from it


def test_distill_trains_a_new_student_and_resumes(base, shakespeare_char, tmp_path, capsys):
    out = tmp_path / "student"
    argv = ["finetune", str(base), "distill", str(shakespeare_char), "--student", "tiny", "--alpha", "0.8",
            "--out", str(out), "--train.max-steps", "6", "--train.eval-every", "3", "--train.eval-steps", "2",
            *QUIET]  # fmt: skip
    r = run_cli(argv, capsys)
    assert r.code == 0, r.err
    cfg = json.loads((out / "config.json").read_text())
    teacher = json.loads((base / "config.json").read_text())
    assert cfg["objective"] == "distill" and cfg["finetune"]["options"]["student"] == "tiny"
    assert cfg["parent"]["run"] == str(base.resolve()) and cfg["parent"]["model_sha256"]
    assert cfg["model"]["vocab_size"] == teacher["model"]["vocab_size"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if "val_kl" in row]
    assert evals and all(row["val_kl"] >= 0 and row["val_loss"] > 0 for row in evals)
    assert any("train_ce" in row for row in rows)
    r = run_cli(["train", "--resume", str(out), "--train.max-steps", "8", *QUIET], capsys)
    assert r.code == 0, r.err
    assert lmlab.load(out).state["step"] == 8
    # the student is scored on the dataset it was distilled on, with no --data
    scores = lmlab.evaluate(out, out=tmp_path / "eval.json")
    assert scores["split"] == "val" and scores["loss"] > 0


def test_distill_errors(base, shakespeare_char, tmp_path, capsys):
    def err(*argv: str, fragment: str):
        assert_one_line_error(run_cli(["finetune", str(base), "distill", *argv, *QUIET], capsys), fragment)

    other = tmp_path / "other.txt"
    other.write_text("zzzz yyyy xxxx 0123 " * 400)
    lmlab.prepare(str(other), out=str(tmp_path / "other"), quiet=True)
    out = ["--out", str(tmp_path / "s")]
    err(str(tmp_path / "other"), *out, fragment="another tokenizer than the teacher's")
    err(str(shakespeare_char), "--alpha", "1.5", *out, fragment="--alpha must be between 0 and 1")
    err(str(shakespeare_char), "--temperature", "0", *out, fragment="--temperature must be positive")
    err(str(shakespeare_char), "--student", "seq2seq-tiny", *out, fragment="encoder-decoder")
    err(str(shakespeare_char), "--student", "nope", *out, fragment="nope")
    err(str(shakespeare_char), "--lora.r", "4", *out, fragment="takes no --scratch and no --lora.r")
    assert not (tmp_path / "s" / "checkpoints").exists()
