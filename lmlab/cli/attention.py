"""`lmlab attention RUN --text "..."`: every head's attention weights on a text, as a PNG grid (or, for a
translation run, the cross-attention of a sentence's translation)."""

from __future__ import annotations

from dataclasses import dataclass

import tyro

from lmlab.cli import parse


@dataclass
class AttentionConfig:
    """Draw every head's attention weights in chosen layers of a GPT run on a text, as a PNG grid
    (rows = layers, columns = heads, tokens labelled on both axes)."""

    run: tyro.conf.Positional[str]  # run directory
    text: str = ""  # the text to feed the model
    source: str | None = None  # translation (seq2seq) runs: draw the cross-attention of this sentence's translation
    layers: tuple[int, ...] = ()  # layers to draw, 0-based (negative counts from the end); default all
    out: str | None = None  # PNG to write; default RUN/attention.png
    checkpoint: str | None = None  # best, latest or step-N; default best, else latest


def main(argv: list[str]) -> None:
    from lmlab.api import attention

    cfg = parse(AttentionConfig, args=argv, prog="lmlab attention", config=(tyro.conf.PositionalMetavarFromFieldName,))
    path = attention(cfg.run, cfg.text, source=cfg.source, layers=cfg.layers, out=cfg.out, checkpoint=cfg.checkpoint)
    print(f"wrote {path}")
