"""`lmlab scaling sweep | fit | predict`: scaling laws from a grid of runs (``lmlab.scaling``)."""

from __future__ import annotations

from dataclasses import dataclass

import tyro

from lmlab.cli import parse, subcommand
from lmlab.errors import LmlabError


@dataclass
class SweepArgs:
    """Train a grid of model sizes (width 32 x layers, heads of 32) and token budgets as ordinary runs under --out,
    each evaluated on the whole validation split; finished runs are reused, an interrupted one resumed."""

    data: tyro.conf.Positional[str]  # a prepared dataset directory
    out: str  # the sweep directory (runs/, sweep.json)
    sizes: tuple[int, ...] = ()  # numbers of layers, e.g. 1 2 3 4 5
    tokens: tuple[int, ...] = ()  # training tokens of every run (several: a Chinchilla-style grid)
    flops: tuple[float, ...] = ()  # or compute budgets: tokens = FLOPs / (6 x parameters) for each size
    block_size: int = 128  # context length of every run
    batch_size: int = 16  # sequences per step
    seed: int = 1337  # weights and data order of every run
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps


@dataclass
class FitArgs:
    """Fit L(N) = E + A N^-alpha (one budget) or L(N, D) = E + A N^-alpha + B D^-beta (several) to a sweep, with
    bootstrap intervals; runs above --max-params are held out and checked against the law. Draws scaling.png."""

    sweep: tyro.conf.Positional[str]  # the sweep directory
    max_params: float | None = None  # fit only runs with at most this many parameters; the others are held out
    tokens: int | None = None  # fit L(N) on the runs of this budget only
    bootstrap: int = 200  # bootstrap refits for the intervals
    level: float = 0.95  # the intervals' coverage
    out: str | None = None  # the figure; default SWEEP/scaling.png


@dataclass
class PredictArgs:
    """The loss the sweep's fit predicts for a model of --params non-embedding parameters (or --layers of the
    sweep's shape), trained on --tokens when the fit has tokens, with its interval."""

    sweep: tyro.conf.Positional[str]  # the sweep directory (after lmlab scaling fit)
    params: float | None = None  # non-embedding parameters of the model
    layers: int | None = None  # or its size in the sweep's shape rule
    tokens: float | None = None  # its training tokens (L(N, D) fits)


COMMANDS = {"sweep": SweepArgs, "fit": FitArgs, "predict": PredictArgs}
USAGE = "usage: lmlab scaling sweep|fit|predict ...   (lmlab scaling COMMAND --help for its options)"


def main(argv: list[str]) -> None:
    from lmlab import scaling

    if (cmd := subcommand(argv, COMMANDS, USAGE)) is None:
        return
    cls = COMMANDS[cmd]
    args = parse(cls, args=argv[1:], prog=f"lmlab scaling {cmd}", description=cls.__doc__)
    if cmd == "sweep":
        scaling.sweep(args.data, args.sizes, out=args.out, tokens=args.tokens, flops=args.flops,
                      block_size=args.block_size, batch_size=args.batch_size, seed=args.seed,
                      device=args.device)  # fmt: skip
    elif cmd == "fit":
        if args.bootstrap < 0 or not 0 < args.level < 1:
            raise LmlabError(f"--bootstrap must be >= 0 and --level in (0, 1); got {args.bootstrap}, {args.level}")
        res = scaling.fit(args.sweep, max_params=args.max_params, tokens=args.tokens, bootstrap=args.bootstrap,
                          level=args.level, out=args.out)  # fmt: skip
        print(describe_fit(res))
    else:
        p = scaling.predict(args.sweep, params=args.params, layers=args.layers, tokens=args.tokens)
        tokens = f", {p['tokens']:,.0f} tokens" if p["tokens"] else ""
        print(f"predicted validation loss at {p['params']:,.0f} parameters{tokens}: {p['loss']:.4f} "
              f"[{p['low']:.4f}, {p['high']:.4f}] (one run: [{p['run_low']:.4f}, {p['run_high']:.4f}])")  # fmt: skip


def describe_fit(res: dict) -> str:
    """The fit as a few printed lines: the law with intervals, its residual, held-out checks, compute optimum."""
    law = res["law"]
    p, iv = law["params"], law["intervals"]
    level = f"{100 * law['level']:.0f}%"

    def show(k: str) -> str:
        return f"{k} = {p[k]:.4g}" + (f" [{iv[k][0]:.4g}, {iv[k][1]:.4g}]" if k in iv else "")

    keys = ["E", "A", "alpha"] + (["B", "beta"] if law["kind"] == "ND" else [])
    form = "L(N) = E + A N^-alpha" if law["kind"] == "N" else "L(N, D) = E + A N^-alpha + B D^-beta"
    lines = [f"{form} on {len(res['fitted_on'])} runs ({level} bootstrap intervals; rms log residual "
             f"{law['residual']:.4f})", "  " + ";  ".join(show(k) for k in keys)]  # fmt: skip
    for c in res["held_out"]:
        lines.append(f"held out: {c['n_layer']} layers ({c['params']:,} params, {c['tokens']:,} tokens): predicted "
                     f"{c['predicted_loss']:.4f} [{c['predicted_low']:.4f}, {c['predicted_high']:.4f}] (one run: "
                     f"[{c['predicted_run_low']:.4f}, {c['predicted_run_high']:.4f}]), measured {c['measured']:.4f} "
                     f"({100 * c['error']:+.2f}%, {'inside' if c['inside'] else 'outside'} one run's interval, "
                     f"{'inside' if c['inside_law'] else 'outside'} the law's)")  # fmt: skip
    opt = res.get("compute_optimal")
    if opt:
        lines.append(f"compute-optimal at the sweep's largest budget: {opt['params']:,.0f} params, "
                     f"{opt['tokens']:,.0f} tokens ({opt['tokens_per_param']:.1f} tokens per parameter)")  # fmt: skip
    return "\n".join(lines)
