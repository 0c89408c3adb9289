"""Runs started from another run's weights (--init-from): weights carried over, parent recorded, lineage,
errors; and the run-directory lock (one writer at a time)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import lmlab
from lmlab import io
from lmlab.errors import LmlabError
from lmlab.runs import lineage
from tests.helpers import assert_one_line_error, run_cli

QUIET = dict(progress=False, track="none", sample_tokens=0)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, shakespeare_char):
    run = tmp_path_factory.mktemp("runs") / "base"
    lmlab.train(shakespeare_char, "tiny", out=run, max_steps=20, eval_every=0, **QUIET)
    return run


def weights(run, name="latest"):
    return load_file(str(run / "checkpoints" / name / "model.safetensors"))


def test_init_from_starts_at_the_parent_weights_and_records_it(base_run, shakespeare_char, tmp_path):
    child = tmp_path / "child"
    # a learning rate so small that one step leaves the weights where the parent left them
    lmlab.train(
        shakespeare_char, "tiny", out=child, init_from=base_run, max_steps=1, lr=1e-12, min_lr=0.0, warmup_steps=0,
        eval_every=0, **QUIET,
    )  # fmt: skip
    parent_w, child_w = weights(base_run), weights(child)
    assert parent_w.keys() == child_w.keys()
    assert all(torch.allclose(parent_w[k], child_w[k], atol=1e-6) for k in parent_w)
    cfg = json.loads((child / "config.json").read_text())
    parent = cfg["parent"]
    assert parent["run"] == str(base_run.resolve()) and parent["checkpoint"] == "step-00000020"
    assert parent["step"] == 20 and parent["objective"] == "lm"
    manifest = json.loads((base_run / "checkpoints" / "step-00000020" / "manifest.json").read_text())
    assert parent["model_sha256"] == manifest["files"]["model.safetensors"]
    assert cfg["objective"] == "lm" and cfg["model"] == json.loads((base_run / "config.json").read_text())["model"]
    chain = lineage(child)
    assert [c["run"] for c in chain] == [str(child), str(base_run.resolve())]
    assert chain[0]["parent_checkpoint"] == "step-00000020" and "parent_checkpoint" not in chain[1]


def test_a_fresh_run_differs_from_the_parent(base_run, shakespeare_char, tmp_path):
    """The control for the test above: without --init-from the same one step lands elsewhere."""
    fresh = tmp_path / "fresh"
    lmlab.train(shakespeare_char, "tiny", out=fresh, max_steps=1, lr=1e-12, min_lr=0.0, warmup_steps=0, **QUIET)
    parent_w, fresh_w = weights(base_run), weights(fresh)
    assert not all(torch.allclose(parent_w[k], fresh_w[k], atol=1e-6) for k in parent_w)
    assert "parent" not in json.loads((fresh / "config.json").read_text())


def test_cli_init_from_and_its_errors(base_run, shakespeare_char, tmp_path, capsys):
    quiet = ["--train.no-progress", "--train.track", "none", "--train.sample-tokens", "0", "--train.eval-every", "0"]
    ok = run_cli(
        [
            "train", str(shakespeare_char), "tiny", "--init-from", str(base_run), "--init-checkpoint", "latest",
            "--out", str(tmp_path / "c"), "--train.max-steps", "2", *quiet,
        ],
        capsys,
    )  # fmt: skip
    assert ok.code == 0, ok.err
    assert json.loads((tmp_path / "c" / "config.json").read_text())["parent"]["checkpoint"] == "step-00000020"
    assert_one_line_error(
        run_cli(["train", str(shakespeare_char), "tiny", "--init-from", str(tmp_path / "nope"), *quiet], capsys),
        "not found",
    )
    assert_one_line_error(
        run_cli(
            ["train", str(shakespeare_char), "tiny", "--init-from", str(base_run), "--out", str(base_run), *quiet],
            capsys,
        ),
        "is the --init-from run itself",
    )
    assert_one_line_error(
        run_cli(["train", "--resume", str(base_run), "--init-from", str(base_run), *quiet], capsys), "--init-from"
    )
    args = ["train", str(shakespeare_char), "tiny", "--init-from", str(base_run), "--init-checkpoint", "nope"]
    assert_one_line_error(run_cli([*args, *quiet], capsys), "unknown checkpoint 'nope'")


def test_init_from_refuses_another_tokenizer(base_run, shakespeare, tmp_path, capsys):
    other = tmp_path / "words"
    lmlab.prepare(str(shakespeare), out=str(other), tokenizer="word", vocab_size=500, quiet=True)
    result = run_cli(["train", str(other), "tiny", "--init-from", str(base_run), "--train.no-progress"], capsys)
    assert_one_line_error(result, "tokenizer is not the one", "--tokenizer")


def test_a_run_directory_has_one_writer(base_run, tmp_path, capsys):
    with io.DirLock(base_run, "run directory"):
        assert_one_line_error(
            run_cli(["train", "--resume", str(base_run), "--train.max-steps", "21", "--train.no-progress"], capsys),
            "is in use by process",
        )
        with pytest.raises(LmlabError, match="in use"):
            io.DirLock(base_run).acquire()
    io.DirLock(base_run).acquire().release()  # released: free again
