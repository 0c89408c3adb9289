"""Better optimizers, better/faster results? (The lecture's figure compares optimizers by wall-clock time.)

The same model on the same data under each ``--train.optimizer``: first a small learning-rate sweep (the same
short budget and the same candidate grid around each optimizer's usual rate, for all of them), then one run of
the full budget at each optimizer's best rate. The figure plots validation loss against wall-clock seconds and
against tokens; the table gives each optimizer's final loss and its time and tokens to a target loss (the worst
final loss among them, so that every optimizer reaches it). Every run is an ordinary run. Writes
``optimizers.{md,json,png}`` in the workspace.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tyro

from lmlab.experiments.common import (
    SHAKESPEARE,
    Workspace,
    command_line,
    metric_rows,
    pick_size,
    require,
    text_source,
    train_seconds,
)

NAME = "optimizers"
# each optimizer's usual learning rate (the sweep tries it times 1/3, 1 and 3)
BASE_LR = {"adamw": 1e-3, "muon": 1e-3, "sgd": 0.3, "adafactor": 1e-2}


@dataclass(frozen=True)
class Size:
    steps: int
    sweep_steps: int
    eval_every: int
    optimizers: tuple[str, ...] = ("adamw", "muon", "sgd", "adafactor")
    factors: tuple[float, ...] = (1 / 3, 1.0, 3.0)
    extend: int = 2  # when the best rate is at an end of the grid, try up to this many more, 3x further each


SIZES = {
    "full": Size(steps=2000, sweep_steps=300, eval_every=100),
    "quick": Size(steps=300, sweep_steps=60, eval_every=50, optimizers=("adamw", "muon")),
    "test": Size(steps=4, sweep_steps=2, eval_every=2, optimizers=("adamw", "muon"), factors=(1.0,), extend=0),
}


def run(
    data: tyro.conf.Positional[str | None] = None,
    *,
    out: str | Path = f"experiments/{NAME}",
    quick: bool = False,
    size: str | None = None,
    seed: int = 0,
    text: str | Path = SHAKESPEARE,
    preset: str = "baby",
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, Any]:
    """AdamW, Muon, SGD and Adafactor on the same model and data, each at the best learning rate of a small sweep:
    validation loss vs wall clock and vs tokens, time to a target loss. Writes optimizers.md, .json and .png.

    Args:
        data: a prepared dataset to train on; default the character-level tiny Shakespeare made from --text.
        out: the workspace: datasets, runs, commands.txt and the results (reused when run again).
        quick: the small size instead of the full one.
        size: full, quick or test (a few steps, for the tests); overrides --quick.
        seed: the seed of every run.
        text: the text prepared when no DATA is given (tiny Shakespeare), character-level.
        preset: the model (and its batch and warmup) every optimizer trains.
        device: where to train: auto, cpu, cuda or mps.
        quiet: do not show the steps' own output.
    """
    name, sz = pick_size(SIZES, size, quick)
    given = data
    if data is not None:
        data = require(data, "a dataset made by lmlab prepare", "DATA")
    else:
        text = text_source(text)
    with Workspace(out, device=device, quiet=quiet) as ws:
        if data is None:
            data = ws.char_dataset(text)
        rows = []
        for opt in sz.optimizers:
            base = ["train", Path(data).resolve(), preset, "--train.optimizer", opt, "--train.seed", seed,
                    "--train.sample-tokens", 0]  # fmt: skip
            sweep: list[dict[str, float]] = []
            rates = [BASE_LR[opt] * f for f in sz.factors]
            while rates:
                lr = rates.pop(0)
                step = ws.trained(f"runs/sweep-{opt}", [*base, "--train.lr", lr, "--train.min-lr", lr / 10,
                                                        "--train.max-steps", sz.sweep_steps,
                                                        "--train.eval-every", sz.sweep_steps])  # fmt: skip
                last = [r["val_loss"] for r in metric_rows(step.path) if "val_loss" in r]
                sweep.append({"lr": lr, "val_loss": last[-1] if last else float("inf")})
                # a best rate at an end of the grid says the optimum may lie beyond it: walk on, 3x at a time
                if not rates and len(sweep) < len(sz.factors) + sz.extend and (further := next_rate(sweep)):
                    rates.append(further)
            lr = min(sweep, key=lambda s: s["val_loss"])["lr"]
            step = ws.trained(f"runs/{opt}", [*base, "--train.lr", lr, "--train.min-lr", lr / 10, "--train.max-steps",
                                              sz.steps, "--train.eval-every", sz.eval_every])  # fmt: skip
            evals = [r for r in metric_rows(step.path) if "val_loss" in r]
            rows.append({
                "optimizer": opt, "lr": lr, "sweep": sweep, "run": str(step.path), "seconds": train_seconds(step.path),
                "curve": [{"step": r["step"], "tokens": r["tokens"], "seconds": r["elapsed_s"],
                           "val_loss": r["val_loss"]} for r in evals],
                "final": evals[-1]["val_loss"],
            })  # fmt: skip
        # two targets: the worst final loss (every optimizer reaches it) and AdamW's (the default's result)
        target = max(r["final"] for r in rows)
        adamw = next((r["final"] for r in rows if r["optimizer"] == "adamw"), None)
        for r in rows:
            r["to_target"] = _first_reach(r["curve"], target)
            r["to_adamw"] = None if adamw is None else _first_reach(r["curve"], adamw)
        results = {"experiment": NAME, "size": name, "settings": asdict(sz), "seed": seed, "preset": preset,
                   "data": str(data), "rows": rows, "target": target, "adamw_target": adamw}  # fmt: skip
        png = _figure(ws.root / f"{NAME}.png", results)
        command = command_line(NAME, given, out=out, size=name, seed=seed, preset=preset)
        return ws.finish(NAME, results, _markdown(results), [png], command)


def next_rate(sweep: list[dict[str, float]]) -> float | None:
    """The next learning rate to try when the sweep's best is at an end of the rates tried (3x beyond it), or None
    when the best lies between two worse ones."""
    by_lr = sorted(sweep, key=lambda t: t["lr"])
    best = min(by_lr, key=lambda t: t["val_loss"])
    if best is by_lr[-1]:
        return best["lr"] * 3
    if best is by_lr[0]:
        return best["lr"] / 3
    return None


def _first_reach(curve: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first evaluation at or below the target loss (seconds, tokens, step), or None when none is."""
    hit = next((p for p in curve if p["val_loss"] <= target), None)
    return None if hit is None else {"seconds": hit["seconds"], "tokens": hit["tokens"], "step": hit["step"]}


def _figure(path: Path, r: dict[str, Any]) -> Path:
    from lmlab.figures import pyplot, save_png

    fig, (a1, a2) = pyplot().subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = {"adamw": "#4c72b0", "muon": "#c44e52", "sgd": "#8c8c8c", "adafactor": "#55a868"}
    for row in r["rows"]:
        c = row["curve"]
        label = f"{row['optimizer']} (lr {row['lr']:.2g})"
        a1.plot([p["seconds"] for p in c], [p["val_loss"] for p in c], "o-", ms=3, color=colors[row["optimizer"]],
                label=label)  # fmt: skip
        a2.plot([p["tokens"] for p in c], [p["val_loss"] for p in c], "o-", ms=3, color=colors[row["optimizer"]],
                label=label)  # fmt: skip
    for ax in (a1, a2):
        ax.axhline(r["target"], color="black", ls=":", lw=0.8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a1.set_xlabel("wall-clock seconds of training")
    a2.set_xlabel("tokens")
    a1.set_ylabel("validation loss")
    a1.set_title(f"{r['preset']}: validation loss vs time (dotted: the target)", fontsize=10)
    a2.set_title("vs tokens", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def _markdown(r: dict[str, Any]) -> str:
    s = r["settings"]

    def reach(t: dict[str, Any] | None) -> tuple[str, str]:
        return ("not reached", "") if t is None else (f"{t['seconds']:.1f}", f"{t['tokens']:,}")

    adamw = r.get("adamw_target")
    lines = [
        f"Optimizers on `{r['preset']}` ({r['size']} size, seed {r['seed']}; each at the best learning rate of a "
        f"sweep of {s['sweep_steps']} steps ({len(s['factors'])} rates around its usual one, and up to {s['extend']} "
        f"more when the best is at an end), then {s['steps']} steps; target A: validation loss {r['target']:.4f}, "
        "the worst final loss" + ("" if adamw is None else f"; target B: {adamw:.4f}, AdamW's final loss") + ")",
        "",
        "| optimizer | lr (rates tried) | final val loss | seconds to A | tokens to A | seconds to B | tokens to B "
        "| seconds in all |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in sorted(r["rows"], key=lambda x: x["to_target"]["seconds"]):
        a, b = reach(row["to_target"]), reach(row.get("to_adamw"))
        tried = ", ".join(f"{t['lr']:.3g}" for t in sorted(row["sweep"], key=lambda t: t["lr"]))
        lines.append(f"| {row['optimizer']} | {row['lr']:.3g} ({tried}) | {row['final']:.4f} | {a[0]} | {a[1]} | "
                     f"{b[0]} | {b[1]} | {row['seconds']:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"
