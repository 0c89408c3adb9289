"""`lmlab experiment NAME [options]`: run one of lmlab's experiments end to end (``lmlab.experiments``)."""

from __future__ import annotations

import functools
import importlib

from lmlab.cli import parse
from lmlab.errors import LmlabError, did_you_mean
from lmlab.experiments import EXPERIMENTS


def _usage() -> str:
    width = max(map(len, EXPERIMENTS))
    lines = [
        "usage: lmlab experiment NAME [options]   (lmlab experiment NAME --help for its options)",
        "",
        "experiments:",
    ]
    return "\n".join(lines + [f"  {n:<{width}}  {e.summary}" for n, e in EXPERIMENTS.items()])


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    name = argv[0]
    if name not in EXPERIMENTS:
        raise LmlabError(f"unknown experiment {name!r}{did_you_mean(name, EXPERIMENTS)}; experiments are "
                         f"{', '.join(EXPERIMENTS)}")  # fmt: skip
    run = importlib.import_module(EXPERIMENTS[name].module).run

    # parse() reads the options with the output held back (so that a bad option is one line): it must return the
    # call, not make it, or the experiment's progress and table would be held back too
    @functools.wraps(run)
    def later(*args, **kwargs):
        return functools.partial(run, *args, **kwargs)

    parse(later, args=argv[1:], prog=f"lmlab experiment {name}", description=EXPERIMENTS[name].summary)()
