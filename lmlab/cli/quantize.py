"""`lmlab quantize RUN --scheme int8|int4 --out RUN_Q`: weight-only int8 / int4 quantization into a child run."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated

import tyro

from lmlab.cli import parse


@dataclass
class QuantizeConfig:
    """Quantize every linear layer of a run to int8 (per output channel) or int4 (groups of --group-size inputs)
    weights, by round-to-nearest or GPTQ, into a new run that sample, chat, eval, serve and translate use as they
    are. Prints the file size, validation perplexity, KL divergence and top-1 agreement against the original."""

    run: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="RUN")]  # the run to quantize
    out: str  # the new (quantized) run directory
    scheme: str = "int8"  # int8 (w8a16, per output channel) | int4 (w4a16, per group)
    group_size: int = 0  # int4: inputs sharing a scale, 32 | 64 | 128 | 256 (0 = 128); int8: per channel
    method: str = "rtn"  # rtn (round to nearest, no data) | gptq (calibrated on --calib)
    symmetric: bool = True  # --no-symmetric: a zero point per channel/group as well as a scale
    keep: str = "embeddings,head"  # float tensors kept: embeddings, head, both, or none
    calib: str | None = None  # gptq: a dataset directory of the run's tokenizer (default: the run's dataset)
    calib_tokens: int = 32768  # gptq: calibration tokens from the train split
    eval_tokens: int = 65536  # validation tokens the comparison uses (0 = the whole split)
    batch_size: int = 16  # windows per batch (calibration and comparison)
    checkpoint: str | None = None  # best, latest or step-N; default best, else latest
    seed: int = 0  # gptq: which calibration windows


def main(argv: list[str]) -> None:
    from lmlab.api import quantize

    cfg = parse(QuantizeConfig, args=argv, prog="lmlab quantize", description=QuantizeConfig.__doc__)
    quantize(
        cfg.run, cfg.out, scheme=cfg.scheme, group_size=cfg.group_size, method=cfg.method, symmetric=cfg.symmetric,
        keep=cfg.keep, calib=cfg.calib, calib_tokens=cfg.calib_tokens, eval_tokens=cfg.eval_tokens,
        batch_size=cfg.batch_size, checkpoint=cfg.checkpoint, seed=cfg.seed,
        report=lambda line: print(line, file=sys.stderr if line.startswith("GPTQ") else sys.stdout, flush=True),
    )  # fmt: skip
