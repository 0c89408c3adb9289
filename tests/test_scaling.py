"""lmlab scaling: the fit recovers known laws from synthetic points (with intervals that cover them), a tiny sweep
trains its grid as ordinary runs, reuses and resumes them, and fit/predict read it back; every bad input is one
line."""

from __future__ import annotations

import json
import math
import random

import pytest

from lmlab import scaling
from lmlab.errors import LmlabError
from lmlab.scaling.fit import fit_power_law
from tests.helpers import assert_one_line_error, run_cli

NS = [2e4, 6e4, 2e5, 6e5, 2e6]


def test_fit_recovers_a_kaplan_law_and_its_interval_covers_it():
    law = fit_power_law(NS, [1.4 + 30.0 * n**-0.3 for n in NS], bootstrap=20)
    assert law.params["E"] == pytest.approx(1.4, rel=1e-4)
    assert law.params["A"] == pytest.approx(30.0, rel=1e-3) and law.params["alpha"] == pytest.approx(0.3, rel=1e-4)
    rng = random.Random(1)
    noisy = fit_power_law(NS * 2, [(1.4 + 30.0 * n**-0.3) * math.exp(rng.gauss(0, 0.003)) for n in NS * 2],
                          bootstrap=100, seed=1)  # fmt: skip
    lo, hi = noisy.intervals["alpha"]
    assert lo <= 0.3 <= hi and hi - lo < 0.3
    truth = 1.4 + 30.0 * 8e6**-0.3
    p = noisy.predict(8e6)  # 4x beyond the largest point
    assert p["low"] <= truth <= p["high"] and abs(p["loss"] / truth - 1) < 0.02


def test_fit_recovers_a_chinchilla_law_and_the_compute_optimum():
    pts = [(n, d) for n in NS for d in (2e5, 1e6, 5e6)]
    E, A, al, B, be = 1.7, 25.0, 0.34, 400.0, 0.28
    law = fit_power_law([n for n, _ in pts], [E + A * n**-al + B * d**-be for n, d in pts], [d for _, d in pts],
                        bootstrap=5)  # fmt: skip
    for key, want in {"E": E, "A": A, "alpha": al, "B": B, "beta": be}.items():
        assert law.params[key] == pytest.approx(want, rel=1e-2), key
    opt = law.compute_optimal(1e16)
    assert 6 * opt["params"] * opt["tokens"] == pytest.approx(1e16)
    # the optimum is where the loss is lowest along the compute budget
    for f in (0.7, 1.4):
        n = opt["params"] * f
        assert law.loss(n, 1e16 / (6 * n)) > opt["loss"]


def test_fit_refuses_too_few_points_and_non_positive_values():
    with pytest.raises(LmlabError, match="at least 4 points"):
        fit_power_law(NS[:3], [3.0, 2.5, 2.2])
    with pytest.raises(LmlabError, match="positive"):
        fit_power_law(NS[:4], [3.0, 2.5, 0.0, 2.0])
    with pytest.raises(LmlabError, match="two token budgets"):
        fit_power_law(NS + NS[:1], [3, 2.8, 2.6, 2.4, 2.2, 3], [1e5] * 6)


def test_sweep_trains_reuses_and_resumes_then_fit_and_predict(shakespeare_char, tmp_path, capsys):
    out = tmp_path / "sw"
    argv = ["scaling", "sweep", str(shakespeare_char), "--sizes", "1", "2", "3", "4", "--tokens", "2048",
            "--block-size", "16", "--batch-size", "8", "--out", str(out)]  # fmt: skip
    res = run_cli(argv, capsys)
    assert res.code == 0, res.err
    record = json.loads((out / "sweep.json").read_text())
    runs = record["runs"]
    assert [r["n_layer"] for r in runs] == [1, 2, 3, 4] and all(r["tokens"] == 2048 for r in runs)
    assert [r["n_embd"] for r in runs] == [32, 64, 96, 128]
    assert runs[0]["params"] < runs[1]["params"] < runs[2]["params"] < runs[3]["params"]
    assert all(r["val_loss"] > 0 and r["flops"] == 6 * r["params"] * 2048 for r in runs)
    assert all(json.loads((out / "runs" / f"l{r['n_layer']}-t2048" / "config.json").read_text())["model"]["n_head"]
               == r["n_embd"] // 32 for r in runs)  # fmt: skip
    assert "kWh" in res.err and "4 runs" in res.err
    # again, with one more size: the four are not retrained, the new one is
    res = run_cli([*argv[:4], "1", "2", "3", "4", "5", *argv[8:]], capsys)
    assert res.code == 0, res.err
    assert "5 runs planned, 4 done before" in res.err and res.err.count("training gpt") == 1
    # an interrupted run (a checkpoint, not finished) is resumed, not restarted
    run6 = out / "runs" / "l6-t2048"
    assert run_cli(["train", str(shakespeare_char), "baby", "--out", str(run6), "--model.n-layer", "6",
                    "--model.n-embd", "192", "--model.n-head", "6", "--model.block-size", "16", "--train.max-steps",
                    "8", "--train.batch-size", "8", "--train.no-progress", "--train.track", "none",
                    "--train.eval-every", "0"], capsys).code == 0  # fmt: skip
    cfg = json.loads((run6 / "config.json").read_text())
    cfg["train"]["max_steps"] = 16  # as if it had been stopped halfway through the sweep's 16 steps
    (run6 / "config.json").write_text(json.dumps(cfg))
    res = run_cli([*argv[:4], "6", *argv[8:]], capsys)
    assert res.code == 0, res.err
    assert "steps 8 -> 16" in res.err
    res = run_cli([*argv[:4], "2", *argv[8:10], "--block-size", "32", *argv[12:]], capsys)
    assert_one_line_error(res, "was swept with --block-size 16")
    # fit on four sizes, the fifth and sixth held out and checked against the law
    res = run_cli(["scaling", "fit", str(out), "--max-params", str(runs[3]["params"]), "--bootstrap", "20"], capsys)
    assert res.code == 0, res.err
    fit = json.loads((out / "fit.json").read_text())
    assert fit["law"]["kind"] == "N" and len(fit["fitted_on"]) == 4 and len(fit["held_out"]) == 2
    assert "held out: 5 layers" in res.out and (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    res = run_cli(["scaling", "predict", str(out), "--layers", "8"], capsys)
    assert res.code == 0 and "predicted validation loss" in res.out
    p = scaling.predict(out, params=1e6)
    assert p["low"] <= p["loss"] <= p["high"] and p["tokens"] == 2048


def test_scaling_errors(shakespeare_char, tmp_path, capsys):
    out = ["--out", str(tmp_path / "sw")]
    data = str(shakespeare_char)
    assert_one_line_error(run_cli(["scaling", "sweep", data, *out], capsys), "give the sizes")
    assert_one_line_error(run_cli(["scaling", "sweep", data, "--sizes", "1", *out], capsys), "--tokens N")
    res = run_cli(["scaling", "sweep", data, "--sizes", "1", "--tokens", "10", "--flops", "1e9", *out], capsys)
    assert_one_line_error(res, "one of the two")
    assert_one_line_error(run_cli(["scaling", "sweep", data, "--sizes", "0", "--tokens", "1000", *out], capsys),
                          "at least 1")  # fmt: skip
    assert_one_line_error(run_cli(["scaling", "sweep", data, "--sizes", "1", "--tokens", "100", *out], capsys),
                          "less than one step")  # fmt: skip
    assert_one_line_error(run_cli(["scaling", "sweep", data, "--sizes", "1", "--tokens", "9999", "--out",
                                   str(shakespeare_char / "sw")], capsys), "inside")  # fmt: skip
    assert_one_line_error(run_cli(["scaling", "fit", str(tmp_path / "none")], capsys), "not a sweep directory")
    assert_one_line_error(run_cli(["scaling", "fitt", "x"], capsys), "did you mean 'fit'")
    assert_one_line_error(run_cli(["scaling", "predict", str(tmp_path / "none"), "--params", "1e6"], capsys),
                          "no fit yet")  # fmt: skip
    assert not (tmp_path / "sw").exists()


def test_one_runs_interval_adds_the_points_scatter_and_covers_new_runs():
    rng = random.Random(3)
    law_of = lambda n: 1.4 + 30.0 * n**-0.3  # noqa: E731
    covered = {"run": 0, "law": 0}
    for trial in range(12):
        losses = [law_of(n) * math.exp(rng.gauss(0, 0.01)) for n in NS]
        law = fit_power_law(NS, losses, bootstrap=40, seed=trial)
        misfit = [math.log(law.loss(n) / y) for n, y in zip(NS, losses)]
        assert law.residuals == pytest.approx([-m * math.sqrt(5 / 2) for m in misfit])  # 5 points, 3 parameters
        p = law.predict(8e6)
        assert p["run_low"] <= p["low"] <= p["loss"] <= p["high"] <= p["run_high"]
        new_run = law_of(8e6) * math.exp(rng.gauss(0, 0.01))
        covered["run"] += p["run_low"] <= new_run <= p["run_high"]
        covered["law"] += p["low"] <= new_run <= p["high"]
    assert covered["run"] >= 10 and covered["run"] >= covered["law"], covered
    exact = fit_power_law(NS, [law_of(n) for n in NS], bootstrap=10)  # no scatter: one run's interval is the law's
    q = exact.predict(8e6)
    assert q["run_low"] == pytest.approx(q["low"], rel=1e-4) and q["run_high"] == pytest.approx(q["high"], rel=1e-4)
