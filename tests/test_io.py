"""lmlab.io: files and directories are replaced whole or not at all; JSON and hashing in one place."""

from __future__ import annotations

import hashlib
import json

import pytest

from lmlab import io
from lmlab.errors import LmlabError


def leftovers(d):
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def test_write_json_replaces_atomically(tmp_path):
    path = tmp_path / "x.json"
    io.write_json(path, {"a": 1})
    io.write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2} and path.read_text().endswith("}\n")
    assert leftovers(tmp_path) == []


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "x.json"
    io.write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        io.write_json(path, {"a": object()})  # not JSON: fails before anything is renamed
    with pytest.raises(RuntimeError), io.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"a": 1}
    assert leftovers(tmp_path) == []


def test_atomic_dir_swaps_whole_directories(tmp_path):
    out = tmp_path / "data"
    with io.atomic_dir(out) as tmp:
        (tmp / "a.bin").write_bytes(b"1")
    with pytest.raises(RuntimeError), io.atomic_dir(out) as tmp:
        (tmp / "a.bin").write_bytes(b"2")
        raise RuntimeError("interrupted")
    assert (out / "a.bin").read_bytes() == b"1"  # the interrupted rebuild left the old directory intact
    with io.atomic_dir(out, on_swap=lambda d: (d / "manifest").write_text("last")) as tmp:
        (tmp / "b.bin").write_bytes(b"3")
    assert sorted(p.name for p in out.iterdir()) == ["b.bin", "manifest"]
    assert leftovers(tmp_path) == []


def test_sha256_and_read_json(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 3_000_000)
    assert io.sha256_file(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    with pytest.raises(LmlabError, match="meta.json not found .* prepare it again"):
        io.read_json(tmp_path / "nope.json", what="meta.json", fix="prepare it again")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(LmlabError, match="bad.json is damaged"):
        io.read_json(tmp_path / "bad.json")


def test_symlink_is_replaced(tmp_path):
    (tmp_path / "step-1").mkdir()
    (tmp_path / "step-2").mkdir()
    io.symlink(tmp_path / "latest", tmp_path / "step-1")
    io.symlink(tmp_path / "latest", tmp_path / "step-2")
    assert (tmp_path / "latest").resolve().name == "step-2"
