"""Shared fixtures. Real data comes from ../shared/data beside the repository; tests never use the network."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

# One thread per test process: pytest-xdist already runs one process per core, and tiny models gain
# nothing from intra-op threads (on a busy 2-core machine two threads made some tests ~100x slower).
# The golden losses (tests/training/test_golden_losses.py) are pinned with one thread too.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SHAKESPEARE = SHARED_DATA / "shakespeare" / "input.txt"
GUTENBERG = SHARED_DATA / "gutenberg"
EN_FR = SHARED_DATA / "translation" / "eng-fra.tsv"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt to open a network connection fails the test loudly; loopback (a test's own server on
    127.0.0.1) is allowed."""
    real = socket.socket.connect

    def guard(self, address, *args, **kwargs):
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host in ("127.0.0.1", "::1", "localhost"):
            return real(self, address, *args, **kwargs)
        raise AssertionError("tests must not use the network")

    monkeypatch.setattr(socket.socket, "connect", guard)


@pytest.fixture(autouse=True)
def _one_thread():
    """Put back one thread if a test (or the code it ran) changed the count, so the next tests do not pay for it."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LMLAB_SHAKESPEARE_FILE", raising=False)


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    assert SHAKESPEARE.is_file(), f"tests need the shared data: {SHAKESPEARE} is missing"
    return SHAKESPEARE


@pytest.fixture(scope="session")
def gutenberg() -> Path:
    assert GUTENBERG.is_dir(), f"tests need the shared data: {GUTENBERG} is missing"
    return GUTENBERG


@pytest.fixture(scope="session")
def shakespeare_char(tmp_path_factory, shakespeare) -> Path:
    """tiny Shakespeare prepared once with the char tokenizer, shared by tests that only read it."""
    from lmlab.api import prepare

    out = tmp_path_factory.mktemp("data") / "shakespeare-char"
    prepare(str(shakespeare), out=str(out), quiet=True)
    return out


@pytest.fixture(scope="session")
def base(tmp_path_factory, shakespeare_char) -> Path:
    """A `tiny` GPT trained 10 steps on tiny Shakespeare (char): the parent run of the fine-tuning tests, which
    write their child runs elsewhere and only read it."""
    from lmlab.api import train

    run = tmp_path_factory.mktemp("runs") / "base"
    train(shakespeare_char, "tiny", out=run, max_steps=10, eval_every=0, progress=False, track="none")
    return run


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
    from lmlab.api import prepare

    out = tmp_path_factory.mktemp("data") / "en-fr"
    prepare(str(pairs_file), out=str(out), task="translation", tokenizer="bpe", vocab_size=600, quiet=True)
    return out
