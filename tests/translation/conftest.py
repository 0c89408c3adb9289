"""Fixtures for the translation tests: a tiny run trained on the eng-fra slice (``en_fr``, in tests/conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

QUIET = ["--train.no-progress", "--train.track", "none"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, en_fr) -> Path:
    """seq2seq-tiny (with dropout, so resume must restore the RNG) trained for 30 steps on the slice: enough to
    exercise every verb, not to translate well."""
    from lmlab.api import train

    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(
        en_fr, "seq2seq-tiny", out=run, model={"dropout": 0.1}, max_steps=30, eval_every=15, save_every=10, keep_last=5,
        progress=False, track="none", sample_tokens=8,
    )  # fmt: skip
    return run


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst
