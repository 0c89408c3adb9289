from __future__ import annotations

import json

import pytest

from lmlab.api import plot
from tests.helpers import assert_one_line_error, run_cli


def fake_run(path, slope):
    path.mkdir()
    rows = [
        {
            "step": s,
            "tokens": s * 100,
            "train_loss": 4 - slope * s,
            **({"val_loss": 4.1 - slope * s} if s % 5 == 0 else {}),
        }
        for s in range(1, 21)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 21, "train_lo')


def test_plot_writes_a_png_of_several_runs(tmp_path, capsys):
    fake_run(tmp_path / "a", 0.1)
    fake_run(tmp_path / "b", 0.05)
    out = tmp_path / "cmp.png"
    code, _, _ = run_cli(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--x", "tokens"], capsys)
    assert code == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_plot_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli(["plot", str(tmp_path / "empty")], capsys), "has no metrics.jsonl")
    fake_run(tmp_path / "a", 0.1)
    assert_one_line_error(
        run_cli(["plot", str(tmp_path / "a"), "--metrics", "accuracy"], capsys), "none of the runs logged accuracy"
    )
    with pytest.raises(Exception, match="--x must be step or tokens"):
        plot([tmp_path / "a"], tmp_path / "x.png", x="epoch")
