"""The lecture's experiments (issue 16): the pieces each one computes with, checked on known answers, and every
experiment run for real, end to end, at its ``test`` size (default suite) and its ``--quick`` size (slow)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import lmlab
from lmlab.experiments import (
    EXPERIMENTS,
    chain_of_thought,
    complexity,
    context,
    grokking,
    normalization,
    positional_encoding,
    sampling,
)
from tests.conftest import SHARED_DATA
from tests.helpers import assert_one_line_error, run_cli

LECTURE = ("grokking", "chain-of-thought", "complexity", "positional-encoding", "normalization", "sampling",
           "context", "memorization", "optimizers", "scaling")  # fmt: skip
SHAKESPEARE = SHARED_DATA / "shakespeare" / "input.txt"
TEXT = {"text": SHAKESPEARE}  # the experiments that train on text take it from ../shared/data by default
NEEDS_TEXT = ("positional-encoding", "normalization", "sampling", "context", "memorization", "optimizers",
              "scaling")  # fmt: skip


def test_every_lecture_experiment_is_listed():
    assert set(LECTURE) <= set(EXPERIMENTS)


def test_grokking_problems_cover_every_pair_once_with_the_right_answer():
    rows = grokking.problems(7)
    assert len(rows) == 49 and len({r["prompt"] for r in rows}) == 49
    for r in rows:
        a, _, b, _ = r["prompt"].split()
        assert int(r["completion"]) == (int(a) + int(b)) % 7
    assert grokking.first_step([(10, 0.5), (20, 0.99), (30, 1.0)], 0.99) == 20
    assert grokking.first_step([(10, 0.5)], 0.99) is None


def test_scratchpad_is_right_and_held_out_problems_are_never_trained_on():
    for a, b in ((5307, 886), (999, 1), (12345, 99999), (100, 900)):
        pad = chain_of_thought.scratchpad(a, b)
        assert chain_of_thought.final_answer(pad) == str(a + b)
        carry, digits = 0, []
        for step in pad.split(";")[:-1]:  # x+y+c=s, from the rightmost column
            lhs, s = step.split("=")
            x, y, c = map(int, lhs.split("+"))
            assert c == carry and x + y + c == int(s)
            digits.append(int(s) % 10)
            carry = int(s) // 10
        assert int(("1" if carry else "") + "".join(map(str, digits[::-1]))) == a + b
    assert chain_of_thought.final_answer("6193") == "6193"
    sz = chain_of_thought.SIZES["quick"]
    train, test = chain_of_thought.make_problems(sz, seed=0)
    assert len(train) == sz.train_problems and not set(train) & set(test)
    lengths = [max(len(str(a)), len(str(b))) for a, b in test]
    assert {d: lengths.count(d) for d in set(lengths)} == {d: sz.test_per_length for d in (3, 4, 5, 6)}
    assert max(max(len(str(a)), len(str(b))) for a, b in train) == 5
    assert chain_of_thought.make_problems(sz, seed=0) == (train, test)


def test_complexity_measures():
    ns = [64, 128, 256, 512]
    assert complexity.slope(ns, [3e-9 * n**2 for n in ns]) == pytest.approx(2.0)
    assert complexity.slope(ns, [5.0 * n for n in ns]) == pytest.approx(1.0)
    # autograd depth: constant in n for attention and convolution, growing with every position for a recurrence
    depth = {}
    for kind in ("self-attention", "lstm", "conv"):
        depth[kind] = [complexity.graph_depth(complexity.make_layer(kind, 8, stepwise=True)(torch.randn(1, n, 8)))
                       for n in (4, 8, 16)]  # fmt: skip
    assert depth["self-attention"][0] == depth["self-attention"][-1]
    assert depth["conv"][0] == depth["conv"][-1]
    assert depth["lstm"][2] - depth["lstm"][1] == 2 * (depth["lstm"][1] - depth["lstm"][0]) > 0
    # the explicit attention path keeps its n×n weights: 4× the positions, ~16× the memory at small width
    layer = complexity.make_layer("self-attention", 8)
    small, large = (complexity.saved_bytes(lambda n=n: layer(torch.randn(1, n, 8))) for n in (64, 256))
    assert large / small > 8
    lstm = complexity.make_layer("lstm", 8)
    small, large = (complexity.saved_bytes(lambda n=n: lstm(torch.randn(1, n, 8))) for n in (64, 256))
    assert large / small == pytest.approx(4, rel=0.3)


def test_sinusoidal_identity_holds_with_its_rotation_matrix():
    errors = positional_encoding.check_identity(64, 512, (1, 7, 100))
    assert max(errors.values()) < 1e-5
    a = positional_encoding.rotation(7, 64)
    assert torch.allclose(a @ a.T, torch.eye(64, dtype=torch.float64))
    assert not torch.allclose(positional_encoding.rotation(1, 64), positional_encoding.rotation(2, 64))


def test_diversity_and_repetition_measures():
    assert sampling.distinct(["a b c d"], 1) == 1.0
    assert sampling.distinct(["a a a a"], 1) == 0.25
    assert sampling.distinct(["a b a b"], 2) == pytest.approx(2 / 3)
    assert sampling.repetition("the cat sat the cat sat") == pytest.approx(1 / 4)
    assert sampling.repetition("one two three four") == 0.0
    prompts = sampling.prompts_from(SHAKESPEARE.read_text(), 4, seed=1)
    assert len(prompts) == 4 and all(len(p) == 48 and p[0].isalpha() for p in prompts)


def test_context_lengths_and_used_context():
    assert context.context_lengths(64) == [1, 2, 4, 8, 16, 32, 64]
    assert context.context_lengths(48) == [1, 2, 4, 8, 16, 32, 48]
    curve = {1: 3.0, 2: 2.5, 4: 2.1, 8: 2.02, 16: 2.0, 32: 2.0}
    assert context.used_context(curve) == {"within_1pct": 8, "within_0.05": 8}


def test_normalization_findings():
    sz = normalization.Size(batch_sizes=(1, 64), tokens=1)
    rows = [{"norm": n, "batch_size": b, "val_loss": v, "train_loss": t} for n, b, v, t in (
        ("layernorm", 1, 1.60, 1.55), ("layernorm", 64, 1.50, 1.45),
        ("batchnorm", 1, 1.90, 1.40), ("batchnorm", 64, 1.52, 1.47))]  # fmt: skip
    f = normalization.findings(rows, sz)
    assert f["batchnorm_excess_small_batch"] == pytest.approx(0.30)
    assert f["small_batch_problem_shows"]
    assert f["batchnorm_eval_minus_train_small"] == pytest.approx(0.50)


@pytest.mark.parametrize("name", LECTURE)
def test_experiment_runs_end_to_end_and_reuses_its_runs(name, tmp_path, capsys):
    out = tmp_path / name
    options = dict(out=out, size="test", quiet=True, **(TEXT if name in NEEDS_TEXT else {}))
    res = lmlab.experiment(name, **options)
    stem = name
    saved = json.loads((out / f"{stem}.json").read_text())
    assert saved["experiment"] == name and saved["size"] == "test"
    assert saved["command"].startswith(f"lmlab experiment {name} ") and "--size test" in saved["command"]
    assert {"lmlab", "torch", "python"} <= set(saved["versions"])
    assert saved["figures"]
    for fig in saved["figures"]:
        with open(fig, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    commands = (out / "commands.txt").read_text().splitlines()
    assert any(c.startswith(("lmlab train ", "lmlab scaling sweep ")) for c in commands)
    assert (out / f"{stem}.md").read_text() in capsys.readouterr().out  # the table was printed
    # a second run trains nothing again
    again = lmlab.experiment(name, **options)
    new = (out / "commands.txt").read_text().splitlines()[len(commands) :]
    assert not [c for c in new if c.startswith(("lmlab train", "lmlab prepare"))], new
    if name != "complexity":  # its timings are measured anew each time; everything else is read back
        key = "check" if name == "scaling" else "rows"
        assert json.dumps(again[key], sort_keys=True) == json.dumps(res[key], sort_keys=True)
    _check_shape(name, res)


def _check_shape(name: str, r: dict) -> None:
    """The fields the README gallery and the note read, present and in range."""
    if name == "grokking":
        assert [row["weight_decay"] for row in r["rows"]] == [grokking.SIZES["test"].weight_decay, 0.0]
        for row in r["rows"]:
            assert all(0 <= v <= 1 for _, v in row["curves"]["train"] + row["curves"]["val"])
            assert [s for s, _ in row["curves"]["val"]] == [3, 6]
        assert set(r["claims"]) == {"memorized_first", "val_at_least_99", "no_rise_without_decay"}
    elif name == "chain-of-thought":
        assert [row["format"] for row in r["rows"]] == ["direct", "scratchpad"]
        assert all(set(row["exact_match"]) == {3, 4, 5, 6} for row in r["rows"])
        assert r["gap"] == r["rows"][1]["in_distribution"] - r["rows"][0]["in_distribution"]
    elif name == "complexity":
        assert set(r["slopes"]["n"]) == set(complexity.LAYERS) and all(
            math.isfinite(v["time"]) for v in r["slopes"]["n"].values()
        )
        assert r["depth"]["self-attention"]["per_position"] == 0 and r["depth"]["lstm"]["per_position"] > 0
        assert set(r["probe"]["rows"]) == {"self-attention", "lstm"}
    elif name == "positional-encoding":
        assert [row["pos"] for row in r["rows"]] == list(positional_encoding.POSITIONS)
        learned, sinus = r["rows"][0], r["rows"][1]
        assert len(learned["loss_by_position"]) == 16 and len(sinus["loss_by_position"]) == 64
        assert max(r["identity_max_error"].values()) < 1e-5
    elif name == "normalization":
        assert {(row["norm"], row["batch_size"]) for row in r["rows"]} == {
            (n, b) for n in normalization.NORMS for b in (1, 2)
        }
        assert all(row["val_loss"] > 0 for row in r["rows"])
    elif name == "sampling":
        assert [row["method"] for row in r["rows"]] == [m for m, _ in sampling.METHODS]
        assert all(0 <= row["distinct_2"] <= 1 and row["nll"] > 0 for row in r["rows"])
        assert "top-p" in r["answer"] and "top-k" in r["answer"]
    elif name == "context":
        lstm = r["rows"][1]
        assert max(lstm["curve"]) == 32 and max(r["rows"][0]["curve"]) == 16  # the LSTM reads past its training
    elif name == "scaling":
        assert [f["n_layer"] for f in r["fitted_on"]] == [1, 2, 3, 4] and r["check"]["n_layer"] == 5
        c = r["check"]
        assert c["predicted_low"] <= c["predicted_loss"] <= c["predicted_high"]
        assert r["goal_met"] == (abs(c["error"]) <= 0.03 and c["inside"])
    elif name == "optimizers":
        assert [row["optimizer"] for row in r["rows"]] == ["adamw", "muon"]
        assert all(row["to_target"]["seconds"] <= row["seconds"] and row["final"] >= 0 for row in r["rows"])
        assert r["target"] == max(row["final"] for row in r["rows"])
        adamw = r["rows"][0]
        assert r["adamw_target"] == adamw["final"] and adamw["to_adamw"]["step"] <= adamw["curve"][-1]["step"]
    elif name == "memorization":
        assert [row["epochs"] for row in r["rows"]] == [1, 2]
        assert all(0 <= row["train_extracted"] <= 1 and 0 <= row["val_extracted"] <= 1 for row in r["rows"])


def test_optimizer_sweep_walks_past_an_end_of_the_grid():
    from lmlab.experiments.optimizers import next_rate

    def sweep(*points):
        return [{"lr": lr, "val_loss": v} for lr, v in points]

    assert next_rate(sweep((1.0, 3.0), (3.0, 2.0), (9.0, 1.0))) == pytest.approx(27.0)  # best at the top
    assert next_rate(sweep((3.0, 2.0), (1.0, 1.0), (9.0, 3.0))) == pytest.approx(1 / 3)  # at the bottom, any order
    assert next_rate(sweep((1.0, 3.0), (3.0, 1.0), (9.0, 2.0))) is None  # inside: the sweep is done
    assert next_rate(sweep((1.0, float("inf")), (3.0, float("inf")))) == pytest.approx(1 / 3)  # all diverged: go lower


def test_lecture_experiment_cli_and_errors(tmp_path, capsys):
    res = run_cli(["experiment", "--help"], capsys)
    assert res.code == 0 and all(name in res.out for name in LECTURE)
    res = run_cli(["experiment", "grokking", "--out", str(tmp_path / "g"), "--size", "test", "--quiet"], capsys)
    assert res.code == 0, res.err
    assert "| weight decay |" in res.out and (tmp_path / "g" / "grokking.png").is_file()
    for name in NEEDS_TEXT:
        res = run_cli(["experiment", name, "--out", str(tmp_path / "x"), "--text", str(tmp_path / "none.txt")], capsys)
        assert_one_line_error(res, "--text", "none.txt", "no such file or directory")
    assert_one_line_error(run_cli(["experiment", "grokking", "--size", "huge"], capsys), "unknown size 'huge'")
    res = run_cli(["experiment", "optimizers", str(tmp_path / "no-data"), "--out", str(tmp_path / "x")], capsys)
    assert_one_line_error(res, "DATA", "no-data", "no such file or directory")
    assert_one_line_error(run_cli(["experiment", "sampling", "--seed", "x"], capsys), "--seed")
    assert_one_line_error(run_cli(["experiment", "complexity", "--device", "gpu"], capsys), "unknown device 'gpu'")
    (tmp_path / "file").write_text("")
    res = run_cli(["experiment", "context", "--out", str(tmp_path / "file" / "ws"), "--text", str(SHAKESPEARE)],
                  capsys)  # fmt: skip
    assert_one_line_error(res, "cannot create the experiment directory")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", LECTURE)
def test_quick_form_runs(name, tmp_path):
    res = lmlab.experiment(name, out=tmp_path / name, quick=True, quiet=True, **(TEXT if name in NEEDS_TEXT else {}))
    assert res["size"] == "quick" and (tmp_path / name / f"{name}.md").is_file()
