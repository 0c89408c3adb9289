"""Shared fixtures. Real data comes from ../shared/data beside the repository; tests never use the network."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

# One thread per test process: pytest-xdist already runs one process per core, and tiny models gain
# nothing from intra-op threads (on a busy 2-core machine two threads made some tests ~100x slower).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SHAKESPEARE = SHARED_DATA / "shakespeare" / "input.txt"
GUTENBERG = SHARED_DATA / "gutenberg"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt to open a network connection fails the test loudly."""

    def guard(*args, **kwargs):
        raise AssertionError("tests must not use the network")

    monkeypatch.setattr(socket.socket, "connect", guard)


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
    from lmlab.data.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "shakespeare-char"
    prepare(str(shakespeare), out=str(out), quiet=True)
    return out
