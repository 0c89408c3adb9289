"""`lmlab plot RUN [RUN ...]`: training and validation curves of several runs in one PNG."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import tyro

from lmlab.cli import parse


@dataclass
class PlotConfig:
    """Compare the loss curves of runs in one PNG (one panel per metric)."""

    runs: tyro.conf.Positional[list[str]]  # run directories (each with a metrics.jsonl)
    out: str = "runs/compare.png"  # the PNG to write
    x: Literal["step", "tokens"] = "step"  # horizontal axis: optimizer steps or tokens seen
    metrics: list[str] = field(default_factory=lambda: ["train_loss", "val_loss"])  # one panel each
    log_y: bool = False  # logarithmic vertical axis


def main(argv: list[str]) -> None:
    from lmlab.api import plot

    cfg = parse(PlotConfig, args=argv, prog="lmlab plot", description=PlotConfig.__doc__)
    path = plot(cfg.runs, cfg.out, x=cfg.x, metrics=cfg.metrics, log_y=cfg.log_y)
    print(f"wrote {path}")
