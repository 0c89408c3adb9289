"""`lmlab prepare SOURCE [--tokenizer char|bpe|word] [--out DIR]`: tokenize a corpus into a dataset directory."""

from __future__ import annotations

from lmlab.cli import parse


def main(argv: list[str]) -> None:
    from lmlab.api import prepare
    from lmlab.data.prepare import PrepareConfig

    cfg = parse(PrepareConfig, args=argv, prog="lmlab prepare", description=PrepareConfig.__doc__)
    prepare(cfg)
