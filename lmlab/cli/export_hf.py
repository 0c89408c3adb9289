"""`lmlab export-hf RUN OUT`: an lmlab GPT-2-shaped run → a directory transformers loads."""

from __future__ import annotations

from dataclasses import dataclass

import tyro

from lmlab.cli import parse


@dataclass
class ExportHFConfig:
    """Write an lmlab run (GPT-2 shape: learned positions, LayerNorm, GELU, biases) as a directory that
    transformers.GPT2LMHeadModel.from_pretrained loads (config.json, model.safetensors, tokenizer.json)."""

    run: tyro.conf.Positional[str]  # lmlab run directory
    out: tyro.conf.Positional[str]  # output directory for the Hugging Face checkpoint
    checkpoint: str | None = None  # best, latest or step-N; default best, else latest
    overwrite: bool = False  # replace an existing output directory (one that holds a model)


def main(argv: list[str]) -> None:
    from lmlab.api import export_hf

    cfg = parse(ExportHFConfig, args=argv, prog="lmlab export-hf", config=(tyro.conf.PositionalMetavarFromFieldName,))
    out = export_hf(cfg.run, cfg.out, checkpoint=cfg.checkpoint, overwrite=cfg.overwrite)
    print(f"exported {cfg.run} -> {out}")
