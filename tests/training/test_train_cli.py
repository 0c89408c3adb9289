"""The real `lmlab train` CLI end to end on a tiny model, resume, and every user error."""

from __future__ import annotations

import json

import pytest

from lmlab.runs import load
from tests.helpers import assert_one_line_error, run_cli
from tests.training.conftest import FAST, read_rows


def test_tiny_run_end_to_end_then_resume(data, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(
        [
            "train",
            str(data),
            "tiny",
            "--out",
            str(run),
            "--train.max-steps",
            "60",
            "--train.eval-every",
            "30",
            "--train.log-every",
            "5",
            "--train.track",
            "tensorboard",
            "--train.no-progress",
            "--train.sample-tokens",
            "20",
        ],
        capsys,
    )
    assert code == 0, err
    for name in ("config.json", "tokenizer.json", "metrics.jsonl", "checkpoints/latest", "checkpoints/best"):
        assert (run / name).exists(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    rows = read_rows(run)
    train = [r["train_loss"] for r in rows if "train_loss" in r]
    assert train[-1] < train[0] - 0.5  # it learns
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [30, 60]
    assert {"val_ppl", "val_bpc", "sample", "tokens"} <= set(evals[0])
    for key in ("lr", "grad_norm", "tok_per_s", "mfu"):
        assert key in rows[0]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["preset"] == "tiny" and cfg["model"]["vocab_size"] == 72 and cfg["train"]["max_steps"] == 60

    # resume with more steps and a new learning rate: allowed, logged, continues from step 60
    code, _, err = run_cli(
        [
            "train",
            "--resume",
            str(run),
            "--train.max-steps",
            "80",
            "--train.lr",
            "0.001",
            "--train.no-progress",
            "--train.sample-tokens",
            "0",
        ],
        capsys,
    )
    assert code == 0, err
    rows = read_rows(run)
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 80
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["max_steps"] == 80
    assert cfg["resumes"][0]["changed"]["lr"] == [0.003, 0.001]
    loaded = load(run, "latest")
    assert loaded.state["step"] == 80 and loaded.tokenizer.vocab_size == 72


@pytest.mark.parametrize("preset", ["lstm", "rnn"])
def test_recurrent_presets_train_with_the_same_command(data, tmp_path, preset, capsys):
    run = tmp_path / preset
    code, _, err = run_cli(
        [
            "train",
            str(data),
            preset,
            "--out",
            str(run),
            "--train.max-steps",
            "30",
            "--train.eval-every",
            "30",
            "--train.log-every",
            "1",
            "--train.eval-steps",
            "2",
            "--train.batch-size",
            "4",
            "--model.n-hidden",
            "64",
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    rows = read_rows(run)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert json.loads((run / "config.json").read_text())["model"]["arch"] == preset


# ---------------------------------------------------------------------------------------------
# user errors: one line, exit status 2


def test_error_missing_dataset(tmp_path, capsys):
    code, _, err = run_cli(["train", str(tmp_path / "nope"), "tiny"], capsys)
    assert_one_line_error(code, err, "dataset directory", "nope not found; make one with lmlab prepare")
    (tmp_path / "a.txt").write_text("text")
    code, _, err = run_cli(["train", str(tmp_path / "a.txt"), "tiny"], capsys)
    assert_one_line_error(code, err, "a.txt is a file, not a dataset directory; prepare it first")
    code, _, err = run_cli(["train", "tiny"], capsys)
    assert_one_line_error(code, err, "give the dataset directory to train on")


def test_error_not_a_dataset(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    code, _, err = run_cli(["train", str(tmp_path / "d"), "tiny", "--out", str(tmp_path / "r"), *FAST], capsys)
    assert_one_line_error(code, err, "is not an lmlab dataset (no meta.json)")


def test_error_unknown_preset(data, capsys):
    code, _, err = run_cli(["train", str(data), "tinny"], capsys)
    assert_one_line_error(code, err, "unknown preset 'tinny' (did you mean 'tiny'?)")


def test_error_vocabulary_mismatch(data, tmp_path, capsys):
    code, _, err = run_cli(
        ["train", str(data), "tiny", "--out", str(tmp_path / "r"), "--model.vocab-size", "50000", *FAST], capsys
    )
    assert_one_line_error(code, err, "--model.vocab-size 50000 does not match the dataset's vocabulary (72)")


def test_error_batch_larger_than_data(data, tmp_path, capsys):
    code, _, err = run_cli(
        ["train", str(data), "tiny", "--out", str(tmp_path / "r"), "--train.batch-size", "100000", *FAST], capsys
    )
    assert_one_line_error(code, err, "fewer than one batch of 100000 windows")


def test_error_unwritable_run_directory(data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = run_cli(["train", str(data), "tiny", "--out", str(blocker / "run"), *FAST], capsys)
    assert_one_line_error(code, err, "cannot write", "Not a directory")
    assert not (blocker / "run").exists() and blocker.read_text() == "not a directory"


def test_error_bad_training_option(data, tmp_path, capsys):
    code, _, err = run_cli(["train", str(data), "tiny", "--train.lr", "-1", *FAST], capsys)
    assert_one_line_error(code, err, "need 0 <= --train.min-lr <= --train.lr and lr > 0")


def test_error_inconsistent_model_option(data, tmp_path, capsys):
    code, _, err = run_cli(["train", str(data), "tiny", "--model.n-head", "3", *FAST], capsys)
    assert_one_line_error(code, err, "model.n_embd (32) must be divisible by model.n_head (3)")


def test_error_existing_run_and_resume_mismatches(data, tmp_path, capsys, shakespeare):
    run = tmp_path / "r"
    assert run_cli(["train", str(data), "tiny", "--out", str(run), "--train.max-steps", "10", *FAST], capsys)[0] == 0
    code, _, err = run_cli(["train", str(data), "tiny", "--out", str(run), *FAST], capsys)
    assert_one_line_error(code, err, f"already has checkpoints; continue it with --resume {run}")
    code, _, err = run_cli(["train", "--resume", str(run), "--model.n-layer", "3", *FAST], capsys)
    assert_one_line_error(code, err, "cannot change the model shape on resume (model.n_layer)")
    # another dataset (same text, another tokenizer) is refused
    from lmlab.api import prepare

    other = prepare(str(shakespeare), out=str(tmp_path / "bpe"), tokenizer="bpe", vocab_size=300, quiet=True)
    code, _, err = run_cli(["train", str(other.path), "--resume", str(run), *FAST], capsys)
    assert_one_line_error(code, err, "is not the dataset this run was trained on")
    code, _, err = run_cli(["train", "--resume", str(tmp_path / "missing"), *FAST], capsys)
    assert_one_line_error(code, err, "run directory")


def test_cpu_bf16_is_an_opt_in_that_trains(data, tmp_path, capsys):
    run = tmp_path / "bf16"
    code, _, err = run_cli(
        [
            "train",
            str(data),
            "tiny",
            "--out",
            str(run),
            "--train.max-steps",
            "20",
            "--train.precision",
            "bf16",
            "--train.log-every",
            "1",
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    rows = read_rows(run)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_fp16_on_cpu_is_refused(data, tmp_path, capsys):
    code, _, err = run_cli(
        ["train", str(data), "tiny", "--out", str(tmp_path / "r"), "--train.precision", "fp16", *FAST], capsys
    )
    assert_one_line_error(code, err, "--train.precision fp16 needs a GPU")


def test_wandb_without_the_package_says_how_to_install(data, tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    code, _, err = run_cli(
        [
            "train",
            str(data),
            "tiny",
            "--out",
            str(tmp_path / "r"),
            "--train.max-steps",
            "2",
            "--train.no-progress",
            "--train.track",
            "wandb",
        ],
        capsys,
    )
    assert_one_line_error(code, err, "pip install 'lmlab[wandb]'")


def test_error_unknown_best_metric(data, tmp_path, capsys):
    code, _, err = run_cli(
        ["train", str(data), "tiny", "--out", str(tmp_path / "r"), "--train.best-metric", "val_los", *FAST], capsys
    )
    assert_one_line_error(code, err, "--train.best-metric 'val_los' (did you mean 'val_loss'?) is not a metric")


def test_error_cuda_asked_for_on_a_cpu_machine(data, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_cli(
        ["train", str(data), "tiny", "--out", str(tmp_path / "r"), "--train.device", "cuda", *FAST], capsys
    )
    assert_one_line_error(
        code, err, "--train.device cuda: CUDA is not available on this machine; use --train.device cpu"
    )
    code, _, err = run_cli(
        ["train", str(data), "tiny", "--out", str(tmp_path / "r"), "--train.device", "gpu0", *FAST], capsys
    )
    assert_one_line_error(code, err, "unknown device 'gpu0'")


def test_error_resume_of_a_run_not_made_by_train(tmp_path, capsys):
    import dataclasses

    from lmlab.config import get_preset
    from lmlab.data.tokenizer import train_char
    from lmlab.models import build_model
    from lmlab.runs import save_run

    tok = train_char(["hello world"])
    model = build_model(dataclasses.replace(get_preset("tiny").model, vocab_size=tok.vocab_size))
    save_run(tmp_path / "imported", model, tok)
    code, _, err = run_cli(["train", "--resume", str(tmp_path / "imported"), *FAST], capsys)
    assert_one_line_error(code, err, "was not made by lmlab train (no train section in config.json)")
