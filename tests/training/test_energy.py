"""What a run costs: the energy meter's sources (a stated figure, RAPL counters with wrap-around, the fallback
estimate), and every run's energy and CO2 in metrics.jsonl and its summary line, counted on across a resume."""

from __future__ import annotations

import pytest

from lmlab.training.energy import WATTS_PER_THREAD, EnergyMeter, kwh
from tests.helpers import assert_one_line_error, run_cli
from tests.training.conftest import FAST, read_rows


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_stated_figure_and_the_fallback_estimate(tmp_path):
    clock = Clock()
    meter = EnergyMeter("cpu", 2, 50.0, clock=clock)
    clock.t += 36.0
    assert meter.source == "estimate" and meter.joules() == pytest.approx(1800.0)
    assert kwh(meter.joules()) == pytest.approx(0.0005) and "50 W as given" in meter.describe()
    fallback = EnergyMeter("cpu", 4, clock=clock, rapl_root=tmp_path / "none")
    clock.t += 10.0
    assert fallback.source == "estimate" and fallback.joules() == pytest.approx(4 * WATTS_PER_THREAD * 10)
    assert "4 CPU threads" in fallback.describe() and "--train.power-watts" in fallback.describe()


def test_rapl_counters_are_summed_over_packages_and_wrap_around(tmp_path):
    zones = []
    for i, start in enumerate((999_000_000, 5_000_000)):
        z = tmp_path / f"intel-rapl:{i}"
        z.mkdir()
        (z / "energy_uj").write_text(f"{start}\n")
        (z / "max_energy_range_uj").write_text("999999999\n")
        zones.append(z)
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-zone (a core domain) is inside its package: not counted twice
    meter = EnergyMeter("cpu", 2, rapl_root=tmp_path)
    assert meter.source == "rapl"
    (zones[0] / "energy_uj").write_text("1000000\n")  # wrapped: 999,000,000 -> 999,999,999 -> 0 -> 1,000,000
    (zones[1] / "energy_uj").write_text("7000000\n")
    assert meter.joules() == pytest.approx((1_000_000 + 1_000_000 + 2_000_000) / 1e6)


def test_every_run_reports_its_energy_and_resumes_counting(shakespeare_char, tmp_path, capsys):
    run = tmp_path / "r"
    common = ["--train.power-watts", "360", "--train.carbon-intensity", "500", "--train.log-every", "2", *FAST]
    res = run_cli(["train", str(shakespeare_char), "tiny", "--train.max-steps", "6", "--train.eval-every", "6",
                   *common, "--out", str(run)], capsys)  # fmt: skip
    assert res.code == 0, res.err
    assert "kWh" in res.err and "g CO2" in res.err and "360 W as given" in res.err
    rows = [r for r in read_rows(run) if "energy_kwh" in r]
    assert [r["step"] for r in rows] == [2, 4, 6]
    energy = [r["energy_kwh"] for r in rows]
    assert 0 < energy[0] <= energy[1] <= energy[2]
    assert all(r["co2_kg"] == pytest.approx(r["energy_kwh"] * 0.5) for r in rows)
    assert energy[-1] == pytest.approx(360 * rows[-1]["elapsed_s"] / 3.6e6, rel=0.05)  # counted from the same moment
    res = run_cli(["train", "--resume", str(run), "--train.max-steps", "8", "--train.no-progress"], capsys)
    assert res.code == 0, res.err
    assert read_rows(run)[-1]["energy_kwh"] > energy[-1]  # the resumed process adds to the total


@pytest.mark.parametrize("flag", ["--train.power-watts", "--train.carbon-intensity"])
def test_energy_options_refuse_negative_values(flag, shakespeare_char, tmp_path, capsys):
    res = run_cli(["train", str(shakespeare_char), "tiny", flag, "-1", "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(res, "--train.power-watts and --train.carbon-intensity must be >= 0")
