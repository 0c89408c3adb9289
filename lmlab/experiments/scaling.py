"""Can a bigger model's loss be predicted before it is trained? (The lecture: "we can predict how well a model
will do just from extrapolating".)

The whole procedure, with ``lmlab.scaling``: sweep five sizes of the shape rule on tiny Shakespeare (char) with one
token budget, fit L(N) = E + A·N^(−α) with bootstrap intervals, predict the loss of a model about four times
larger than the largest one fitted, train that model the same way, and compare: the error of the prediction and
whether the measured loss falls inside the interval for one run (goal: within 3%, inside; the law's own, narrower
interval is reported beside it). Writes ``scaling.{md,json}`` and
``scaling.png`` (the law, its band, and the held-out point) in the workspace; the sweep is ``OUT/sweep``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmlab.experiments.common import SHAKESPEARE, Workspace, command_line, pick_size, text_source

NAME = "scaling"


@dataclass(frozen=True)
class Size:
    sizes: tuple[int, ...]  # layers of the fitted sizes (width 32 x layers)
    bigger: int  # layers of the predicted model
    tokens: int
    block_size: int = 128
    batch_size: int = 16
    bootstrap: int = 200


SIZES = {
    "full": Size(sizes=(1, 2, 3, 4, 5), bigger=8, tokens=3_000_000),
    "quick": Size(sizes=(1, 2, 3, 4), bigger=6, tokens=200_000, block_size=64),
    "test": Size(sizes=(1, 2, 3, 4), bigger=5, tokens=2048, block_size=16, batch_size=8, bootstrap=10),
}


def run(
    out: str | Path = f"experiments/{NAME}",
    *,
    quick: bool = False,
    size: str | None = None,
    seed: int = 1337,
    text: str | Path = SHAKESPEARE,
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, Any]:
    """Sweep five sizes, fit L(N), predict a 4x larger model's loss, train it, and compare. Writes scaling.md,
    .json and .png in the workspace.

    Args:
        out: the workspace: the dataset, the sweep (OUT/sweep) and the results (reused when run again).
        quick: the small size instead of the full one.
        size: full, quick or test (a few steps, for the tests); overrides --quick.
        seed: the seed of every run.
        text: the text the models are trained on (tiny Shakespeare), character-level.
        device: where to train: auto, cpu, cuda or mps.
        quiet: print less (the sweep's progress lines stay).
    """
    from lmlab import scaling

    name, sz = pick_size(SIZES, size, quick)
    text = text_source(text)
    t0 = time.perf_counter()
    with Workspace(out, device=device, quiet=quiet) as ws:
        data = ws.char_dataset(text)
        sweep = ws.root / "sweep"
        common = ["--tokens", sz.tokens, "--block-size", sz.block_size, "--batch-size", sz.batch_size, "--seed", seed,
                  "--device", device, "--out", sweep]  # fmt: skip
        ws.lmlab(["scaling", "sweep", data, "--sizes", *sz.sizes, *common])  # finished runs are reused
        runs = scaling.read_sweep(sweep)["runs"]
        largest = max(r["params"] for r in runs if r["n_layer"] in sz.sizes)
        scaling.fit(sweep, max_params=largest, bootstrap=sz.bootstrap)
        predicted = scaling.predict(sweep, layers=sz.bigger)
        ws.say(f"predicted {predicted['loss']:.4f} [{predicted['low']:.4f}, {predicted['high']:.4f}] (one run: "
               f"[{predicted['run_low']:.4f}, {predicted['run_high']:.4f}]) for "
               f"{predicted['params']:,} parameters ({predicted['params'] / largest:.1f}x the largest "
               "fitted)")  # fmt: skip
        ws.lmlab(["scaling", "sweep", data, "--sizes", sz.bigger, *common])
        runs = scaling.read_sweep(sweep)["runs"]
        fit = scaling.fit(sweep, max_params=largest, bootstrap=sz.bootstrap, out=ws.root / f"{NAME}.png")
        check = next(c for c in fit["held_out"] if c["n_layer"] == sz.bigger)
        results = {
            "experiment": NAME, "size": name, "settings": asdict(sz), "seed": seed, "law": fit["law"],
            "fitted_on": fit["fitted_on"], "check": check, "ratio": check["params"] / largest,
            "goal_met": abs(check["error"]) <= 0.03 and check["inside"], "minutes": (time.perf_counter() - t0) / 60,
            "energy_kwh": sum(r.get("energy_kwh") or 0 for r in runs),
        }  # fmt: skip
        command = command_line(NAME, out=out, size=name, seed=seed)
        return ws.finish(NAME, results, _markdown(results), [ws.root / f"{NAME}.png"], command)


def _markdown(r: dict[str, Any]) -> str:
    s, c, law = r["settings"], r["check"], r["law"]
    p, iv = law["params"], law["intervals"]

    def show(k: str) -> str:
        return f"{k} = {p[k]:.4g}" + (f" [{iv[k][0]:.4g}, {iv[k][1]:.4g}]" if k in iv else "")

    lines = [
        f"Predicting a bigger model's loss ({r['size']} size, seed {r['seed']}; sizes "
        f"{', '.join(map(str, s['sizes']))} layers (width 32 x layers), {s['tokens']:,} tokens each, block "
        f"{s['block_size']}; {r['minutes']:.1f} min and {r['energy_kwh']:.4f} kWh in all)",
        "",
        f"L(N) = E + A N^-alpha fitted on {len(r['fitted_on'])} sizes: "
        + ";  ".join(show(k) for k in ("E", "A", "alpha")),
        "",
        "| model | parameters | predicted | one run's interval | the law's interval | measured | error | inside |",
        "| --- | ---: | ---: | --- | --- | ---: | ---: | --- |",
        f"| {c['n_layer']} layers ({r['ratio']:.1f}x the largest fitted) | {c['params']:,} | "
        f"{c['predicted_loss']:.4f} | [{c['predicted_run_low']:.4f}, {c['predicted_run_high']:.4f}] | "
        f"[{c['predicted_low']:.4f}, {c['predicted_high']:.4f}] | {c['measured']:.4f} | {100 * c['error']:+.2f}% | "
        f"{'yes' if c['inside'] else 'no'} (the law's: {'yes' if c['inside_law'] else 'no'}) |",
        "",
        f"Goal (within 3% of the prediction, inside one run's {100 * law['level']:.0f}% interval): "
        f"{'met' if r['goal_met'] else 'missed'}.",
    ]
    return "\n".join(lines) + "\n"
