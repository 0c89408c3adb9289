"""`lmlab merge RUN --out RUN2`: fold a LoRA run's adapters into its base weights, as a standalone run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import tyro

from lmlab.cli import parse


@dataclass
class MergeConfig:
    """Fold the LoRA adapters of a run into its base weights: a new run that needs neither adapters nor parent."""

    run: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="RUN")]  # a LoRA run (lmlab finetune --lora.r N)
    out: str  # the new run directory
    checkpoint: str | None = None  # best, latest or step-N; default best, else latest


def main(argv: list[str]) -> None:
    from lmlab.api import merge

    cfg = parse(MergeConfig, args=argv, prog="lmlab merge", description=MergeConfig.__doc__)
    print(f"merged {cfg.run} -> {merge(cfg.run, cfg.out, checkpoint=cfg.checkpoint)}")
