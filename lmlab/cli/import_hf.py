"""`lmlab import-hf DIR OUT`: a GPT-2 checkpoint saved by transformers → an lmlab run directory."""

from __future__ import annotations

from dataclasses import dataclass

import tyro

from lmlab.cli import parse


@dataclass
class ImportHFConfig:
    """Read a GPT-2 checkpoint directory saved by transformers (config.json + model.safetensors) into an lmlab
    run directory (config.json, checkpoints/, and tokenizer.json when the source has one)."""

    src: tyro.conf.Positional[str]  # GPT-2 directory written by transformers' save_pretrained
    out: tyro.conf.Positional[str]  # new run directory to create


def main(argv: list[str]) -> None:
    from lmlab.api import import_hf

    cfg = parse(ImportHFConfig, args=argv, prog="lmlab import-hf", config=(tyro.conf.PositionalMetavarFromFieldName,))
    out = import_hf(cfg.src, cfg.out)
    print(f"imported {cfg.src} -> {out}")
