"""Fixtures for the translation tests: a slice of the shared eng-fra pairs, prepared once, and a tiny run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lmlab.__main__ import main

EN_FR = Path(__file__).resolve().parents[2].parent / "shared/data/translation/eng-fra.tsv"
QUIET = ["--train.no-progress", "--train.track", "none"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a shared machine two can be far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(argv: list[str], capsys=None) -> tuple[int, str, str]:
    """The real CLI in-process: (exit status, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory) -> Path:
    """Every 25th line of eng-fra.tsv (about 3,000 pairs of every length; the file is sorted by length)."""
    assert EN_FR.is_file(), f"tests need the shared data: {EN_FR} is missing"
    lines = EN_FR.read_text(encoding="utf-8").splitlines(keepends=True)[::25]
    path = tmp_path_factory.mktemp("pairs") / "en-fr.tsv"
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def en_fr(tmp_path_factory, pairs_file) -> Path:
    """The slice prepared with a joint BPE of 600 tokens, shared by tests that only read it."""
    from lmlab.data.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "en-fr"
    prepare(str(pairs_file), out=str(out), task="translation", tokenizer="bpe", vocab_size=600, quiet=True)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, en_fr) -> Path:
    """seq2seq-tiny (with dropout, so resume must restore the RNG) trained for 30 steps on the slice: enough to
    exercise every verb, not to translate well."""
    from lmlab.train.trainer import train

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(
        en_fr, "seq2seq-tiny", out=run, model={"dropout": 0.1}, max_steps=30, eval_every=15, save_every=10, keep_last=5,
        progress=False, track="none", sample_tokens=8,
    )  # fmt: skip
    return run


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst
