"""`lmlab score RUN --prompt P --response R [--response R2 ...]`: the reward of each response under a reward model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated

import tyro

from lmlab.cli import parse


@dataclass
class ScoreConfig:
    """Print the reward of each response to a prompt under a reward-model run (lmlab finetune RUN reward DATA), one
    line per response, or the probability of a label under a classifier run (--label)."""

    run: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="RUN")]  # a reward-model or classifier run
    response: Annotated[
        tuple[str, ...], tyro.conf.UseAppendAction
    ] = ()  # a response to score; repeat the option for more
    prompt: str = ""  # the prompt the responses answer ("" = none)
    label: str | None = None  # a classifier run: the label whose probability is the score
    transform: str = "prob"  # a classifier run: prob | logprob
    json: bool = False  # print the scores as one JSON list
    checkpoint: str | None = None  # best, latest or step-N; default best, else latest
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps


def main(argv: list[str]) -> None:
    from lmlab.api import score

    cfg = parse(ScoreConfig, args=argv, prog="lmlab score", description=ScoreConfig.__doc__)
    values = score(cfg.run, cfg.prompt, list(cfg.response), label=cfg.label, transform=cfg.transform,
                   checkpoint=cfg.checkpoint, device=cfg.device)  # fmt: skip
    if cfg.json:
        print(json.dumps(values))
        return
    for v, r in zip(values, cfg.response):
        print(f"{v:.4f}\t{r}")
