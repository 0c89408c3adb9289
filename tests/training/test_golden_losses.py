"""Golden first losses: the `tiny` presets' first five training losses on CPU, pinned through the real CLI.

A refactor that changes no behaviour leaves these numbers alone; one that changes the initialization, the data
order, the loss or the optimizer moves them. "Loss went down" would miss all of that.

The numbers come from commit 45d3bac (before the issue-11 restructuring), on CPU in fp32. One thread or two agree to
about 1e-7 (relative), so the tolerance below leaves plenty of room for other CPUs and kernels while still catching a
real change. To regenerate them, only when a change is meant to move them (and say why in its note):

    lmlab prepare ../shared/data/shakespeare/input.txt --out /tmp/g/lm-data --quiet
    lmlab train /tmp/g/lm-data tiny --out /tmp/g/lm OPTIONS
    # the en-fr slice is every 25th line of eng-fra.tsv (see the pairs_file fixture in tests/conftest.py)
    lmlab prepare /tmp/g/en-fr.tsv --task translation --tokenizer bpe --vocab-size 600 --out /tmp/g/mt-data --quiet
    lmlab train /tmp/g/mt-data seq2seq-tiny --out /tmp/g/mt OPTIONS
    grep -o '"train_loss": [0-9.]*' /tmp/g/lm/metrics.jsonl /tmp/g/mt/metrics.jsonl

with OPTIONS the GOLDEN_OPTIONS below (--train.device cpu --train.max-steps 5 --train.log-every 1 ...). A failing
test also prints the new values, ready to paste.
"""

from __future__ import annotations

import pytest

from tests.helpers import run_cli
from tests.training.conftest import read_rows

GOLDEN_OPTIONS = [
    "--train.device", "cpu",
    "--train.max-steps", "5",
    "--train.log-every", "1",
    "--train.eval-steps", "1",  # the one evaluation comes after step 5, so it cannot touch the training losses
    "--train.no-progress",
    "--train.track", "none",
    "--train.sample-tokens", "0",
]  # fmt: skip

# preset -> (tokens seen after each step, train_loss of steps 1..5)
GOLDEN = {
    "tiny": (
        [256, 512, 768, 1024, 1280],
        [4.27676248550415, 4.24908971786499, 4.1726765632629395, 4.0781731605529785, 4.041574001312256],
    ),
    "seq2seq-tiny": (
        [416, 832, 1248, 1664, 2080],
        [6.462359428405762, 6.468300819396973, 6.447454452514648, 6.413204193115234, 6.355571746826172],
    ),
}
REL = 1e-5


def first_losses(data, preset, run, capsys) -> tuple[list[int], list[float]]:
    code, _, err = run_cli(["train", str(data), preset, "--out", str(run), *GOLDEN_OPTIONS], capsys)
    assert code == 0, err
    rows = [r for r in read_rows(run) if "train_loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    return [r["tokens"] for r in rows], [r["train_loss"] for r in rows]


def check(preset, tokens, losses):
    want_tokens, want_losses = GOLDEN[preset]
    assert tokens == want_tokens
    assert losses == pytest.approx(want_losses, rel=REL), f"{preset}: new first losses {losses}"


def test_tiny_first_losses_on_shakespeare_char(shakespeare_char, tmp_path, capsys):
    check("tiny", *first_losses(shakespeare_char, "tiny", tmp_path / "run", capsys))


def test_seq2seq_tiny_first_losses_on_en_fr(en_fr, tmp_path, capsys):
    check("seq2seq-tiny", *first_losses(en_fr, "seq2seq-tiny", tmp_path / "run", capsys))
