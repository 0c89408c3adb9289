"""Training and validation curves of several runs in one PNG (``lmlab plot``, ``lmlab.plot``)."""

from __future__ import annotations

from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.figures import pyplot, save_png
from lmlab.training.tracking import read_metrics


def plot_curves(
    runs: list[str | Path],
    out: str | Path = "runs/compare.png",
    *,
    x: str = "step",
    metrics: list[str] | None = None,
    log_y: bool = False,
) -> Path:
    """Draw ``metrics`` of each run against steps or tokens; returns the PNG path."""
    plt = pyplot()

    metrics = metrics or ["train_loss", "val_loss"]
    if x not in ("step", "tokens"):
        raise LmlabError(f"--x must be step or tokens, got {x!r}")
    if not runs:
        raise LmlabError("give at least one run directory to plot")
    series: dict[str, list[dict]] = {}
    for run in map(Path, runs):
        path = run / "metrics.jsonl"
        if not path.is_file():
            raise LmlabError(f"{run} has no metrics.jsonl; is it a run directory written by lmlab train?")
        series[str(run)] = read_metrics(path)
    found = [m for m in metrics if any(m in row for rows in series.values() for row in rows)]
    if not found:
        raise LmlabError(f"none of the runs logged {', '.join(metrics)}; metrics are e.g. train_loss, val_loss, lr")
    fig, axes = plt.subplots(1, len(found), figsize=(6 * len(found), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], found):
        for name, rows in series.items():
            pts = [(r.get(x, r["step"]), r[metric]) for r in rows if isinstance(r.get(metric), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=Path(name).name, marker="o" if len(pts) < 30 else None, markersize=3)
        ax.set_title(metric)
        ax.set_xlabel("tokens seen" if x == "tokens" else "step")
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_png(fig, out, dpi=110)
