"""`lmlab classify RUN "text" ... | --file F`: labels and class probabilities from a fine-tuned classifier."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated

import tyro

from lmlab.cli import parse
from lmlab.errors import LmlabError


@dataclass
class ClassifyConfig:
    """Classify texts with a classifier run (made by lmlab finetune RUN classify DATA): prints one line per text,
    the label then each class's probability (--json: one JSON object per line)."""

    run: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="RUN")]  # a classifier run directory
    text: tyro.conf.Positional[tuple[str, ...]] = ()  # texts to classify, one argument each
    file: str | None = None  # classify every line of this file instead ("-" = standard input)
    pair: str | None = None  # pair tasks (entailment): the second text, after every text
    json: bool = False  # one JSON object per line: {"label": ..., "probs": {...}}
    batch_size: int = 64  # texts per batch
    checkpoint: str | None = None  # best, latest or step-N; default best, else latest
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps


def main(argv: list[str]) -> None:
    from lmlab.api import classify

    cfg = parse(ClassifyConfig, args=argv, prog="lmlab classify", description=ClassifyConfig.__doc__)
    if cfg.file is None and not cfg.text:
        raise LmlabError('nothing to classify: give texts (lmlab classify RUN "a fine film") or --file FILE')
    results = classify(
        cfg.run, None if cfg.file is not None else list(cfg.text), file=cfg.file, pair=cfg.pair,
        batch_size=cfg.batch_size, checkpoint=cfg.checkpoint, device=cfg.device,
    )  # fmt: skip
    for r in results:
        if cfg.json:
            print(json.dumps(r))
        else:
            print(r["label"] + "\t" + "  ".join(f"{k} {p:.4f}" for k, p in r["probs"].items()))
