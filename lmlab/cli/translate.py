"""`lmlab translate RUN "I am cold."`: translate sentences with an encoder–decoder run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import tyro

from lmlab.cli import parse
from lmlab.errors import LmlabError


@dataclass
class TranslateConfig:
    """Translate sentences with a translation (seq2seq) run: lmlab translate RUN "I am cold." [--file F] [--beam N]"""

    run: tyro.conf.Positional[str]  # run directory of a seq2seq model (lmlab train DATA seq2seq-base)
    text: tyro.conf.Positional[tuple[str, ...]] = ()  # sentences to translate, one argument each
    file: str | None = None  # translate this file line by line instead ("-" = standard input)
    beam: int = 4  # beam size; 1 = greedy search
    length_penalty: float = 1.0  # beam search ranks hypotheses by log p / length^this (0 = raw log p)
    max_new_tokens: int = 0  # longest translation in tokens; 0 = twice the source + 10, at most block_size
    long: Literal["truncate", "error"] = "truncate"  # a source longer than block_size: cut it (warning), or refuse
    batch_size: int = 64  # sentences decoded together
    checkpoint: str | None = None  # best, latest or step-N; default best, else latest
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps


def main(argv: list[str]) -> None:
    from lmlab.api import translate

    cfg = parse(
        TranslateConfig,
        args=argv,
        prog="lmlab translate",
        description=TranslateConfig.__doc__,
        config=(tyro.conf.PositionalMetavarFromFieldName,),
    )
    if cfg.file is None and not cfg.text:
        raise LmlabError('nothing to translate: give sentences (lmlab translate RUN "I am cold.") or --file FILE')
    if cfg.file is not None and cfg.text:
        raise LmlabError("give either sentences or --file, not both")
    out = translate(
        cfg.run, None if cfg.file is not None else list(cfg.text), file=cfg.file, beam=cfg.beam,
        length_penalty=cfg.length_penalty, max_new_tokens=cfg.max_new_tokens, long=cfg.long,
        batch_size=cfg.batch_size, checkpoint=cfg.checkpoint, device=cfg.device,
    )  # fmt: skip
    for line in out:
        print(line)
