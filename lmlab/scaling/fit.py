"""Power laws for loss: L(N) = E + A·N^(−α) (Kaplan et al. 2020, with an irreducible loss) and
L(N, D) = E + A·N^(−α) + B·D^(−β) (Hoffmann et al. 2022, "Chinchilla", approach 3).

Both are fitted the Chinchilla way: parameters in log space (E = e^e, A = e^a, B = e^b, so every term stays
positive), the Huber loss (δ = 1e-3) between log L̂ and log L, minimized with L-BFGS from a grid of starting points
(the best result kept). Confidence intervals come from the bootstrap: the points are resampled with replacement
and refitted (from the full fit's optimum) ``bootstrap`` times; each parameter's and each prediction's interval is
the middle ``level`` of those refits. That interval is the law's: where the mean loss of a size lies. One training
run scatters around it (seed, data order, the learning-rate rule fitting some sizes better than others), so a
prediction also gets the interval for one run, a residual bootstrap: each refit's prediction with each of the full
fit's log residuals added, the residuals scaled by √(n / (n − p)) for the p parameters fitted (Davison & Hinkley
1997, ch. 6). A held-out run is checked against that one.

Written here rather than taken from SciPy: SciPy is not otherwise a dependency, the fit is a few lines of
PyTorch, and the same code runs the bootstrap's hundreds of small refits.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmlab.errors import LmlabError

HUBER_DELTA = 1e-3


@dataclass
class PowerLaw:
    """A fitted law: ``params`` (E, A, alpha, and B, beta with tokens), their bootstrap ``intervals``."""

    kind: str  # "N" (L(N)) or "ND" (L(N, D))
    params: dict[str, float]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    level: float = 0.95
    samples: list[dict[str, float]] = field(default_factory=list)  # the bootstrap refits
    residual: float = 0.0  # root mean square of log L̂ − log L over the points
    residuals: list[float] = field(default_factory=list)  # log L − log L̂ per point, scaled by √(n / (n − p))

    def loss(self, n: float, d: float | None = None, params: dict[str, float] | None = None) -> float:
        p = params or self.params
        out = p["E"] + p["A"] * n ** -p["alpha"]
        if self.kind == "ND":
            if d is None:
                raise LmlabError("this law was fitted on parameters and tokens: give --tokens too")
            out += p["B"] * d ** -p["beta"]
        return out

    def predict(self, n: float, d: float | None = None) -> dict[str, float]:
        """The predicted loss, the law's bootstrap interval (``low``, ``high``) and the interval for the loss of
        one training run (``run_low``, ``run_high``: the law's spread and the points' scatter about it)."""
        value = self.loss(n, d)
        if not self.samples:
            return {"loss": value, "low": value, "high": value, "run_low": value, "run_high": value}
        means = [self.loss(n, d, s) for s in self.samples]
        lo, hi = _quantiles(sorted(means), self.level)
        runs = sorted(m * math.exp(r) for m in means for r in self.residuals or [0.0])
        run_lo, run_hi = _quantiles(runs, self.level)
        return {"loss": value, "low": lo, "high": hi, "run_low": min(run_lo, lo), "run_high": max(run_hi, hi)}

    def compute_optimal(self, flops: float) -> dict[str, float] | None:
        """With L(N, D) and C ≈ 6·N·D: the N and D that minimize the loss at ``flops``, and tokens per parameter."""
        if self.kind != "ND":
            return None
        p = self.params
        a, b = p["alpha"], p["beta"]
        g = (a * p["A"] / (b * p["B"])) ** (1 / (a + b))
        n = g * (flops / 6) ** (b / (a + b))
        d = flops / (6 * n)
        return {"params": n, "tokens": d, "tokens_per_param": d / n, "loss": self.loss(n, d)}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": self.params, "intervals": {k: list(v) for k, v in self.intervals.items()},
                "level": self.level, "residual": self.residual, "residuals": self.residuals}  # fmt: skip


def _quantiles(sorted_values: Sequence[float], level: float) -> tuple[float, float]:
    k = len(sorted_values) - 1
    lo = sorted_values[round(k * (1 - level) / 2)]
    hi = sorted_values[round(k * (1 + level) / 2)]
    return lo, hi


def _objective(theta: torch.Tensor, log_n: torch.Tensor, log_d: torch.Tensor | None, log_l: torch.Tensor,
               w: torch.Tensor) -> torch.Tensor:  # fmt: skip
    # theta: e, a, alpha (, b, beta); log L̂ = logsumexp(e, a − α log N (, b − β log D))
    terms = [theta[0].expand_as(log_n), theta[1] - theta[2] * log_n]
    if log_d is not None:
        terms.append(theta[3] - theta[4] * log_d)
    pred = torch.logsumexp(torch.stack(terms), dim=0)
    return (w * torch.nn.functional.huber_loss(pred, log_l, reduction="none", delta=HUBER_DELTA)).sum()


def _minimize(start: Sequence[float], log_n, log_d, log_l, w) -> tuple[float, list[float]]:
    theta = torch.tensor(list(start), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        opt.zero_grad()
        value = _objective(theta, log_n, log_d, log_l, w)
        value.backward()
        return value

    opt.step(closure)
    with torch.no_grad():
        value = float(_objective(theta, log_n, log_d, log_l, w))
    return (value if math.isfinite(value) else math.inf), theta.detach().tolist()


def _params(theta: Sequence[float], kind: str) -> dict[str, float]:
    out = {"E": math.exp(theta[0]), "A": math.exp(theta[1]), "alpha": theta[2]}
    if kind == "ND":
        out.update(B=math.exp(theta[3]), beta=theta[4])
    return out


def fit_power_law(n: Sequence[float], loss: Sequence[float], d: Sequence[float] | None = None, *,
                  bootstrap: int = 200, level: float = 0.95, seed: int = 0) -> PowerLaw:  # fmt: skip
    """Fit L(N) (or L(N, D) with ``d``) to the points; see the module docstring."""
    kind = "N" if d is None else "ND"
    need = 4 if kind == "N" else 6
    if len(n) < need:
        raise LmlabError(f"fitting L({'N' if kind == 'N' else 'N, D'}) needs at least {need} points, got {len(n)}")
    if any(x <= 0 for x in (*n, *loss, *(d or ()))):
        raise LmlabError("parameters, tokens and losses must all be positive to fit a power law")
    if kind == "ND" and len(set(d)) < 2:
        raise LmlabError("fitting L(N, D) needs runs with at least two token budgets; give the sweep several --tokens")
    log_n = torch.tensor([math.log(x) for x in n], dtype=torch.float64)
    log_d = None if d is None else torch.tensor([math.log(x) for x in d], dtype=torch.float64)
    log_l = torch.tensor([math.log(x) for x in loss], dtype=torch.float64)
    ones = torch.ones_like(log_l)
    if kind == "N":
        grid = {"e": (-1.0, 0.0, 0.5, 1.0), "a": (0.0, 5.0, 10.0, 20.0), "alpha": (0.1, 0.5, 1.0)}
    else:  # five dimensions: a coarser grid keeps it to seconds
        grid = {"e": (-1.0, 0.5), "a": (0.0, 10.0), "alpha": (0.2, 0.6), "b": (0.0, 10.0), "beta": (0.2, 0.6)}
    best = min((_minimize(start, log_n, log_d, log_l, ones) for start in itertools.product(*grid.values())),
               key=lambda r: r[0])  # fmt: skip
    theta = best[1]
    law = PowerLaw(kind, _params(theta, kind), level=level)
    with torch.no_grad():
        terms = [torch.full_like(log_n, theta[0]), theta[1] - theta[2] * log_n]
        if log_d is not None:
            terms.append(theta[3] - theta[4] * log_d)
        misfit = torch.logsumexp(torch.stack(terms), 0) - log_l
        law.residual = float(misfit.pow(2).mean().sqrt())
        scale = math.sqrt(len(n) / max(len(n) - len(theta), 1))
        law.residuals = [float(-x) * scale for x in misfit]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(bootstrap):
        idx = torch.randint(0, len(n), (len(n),), generator=gen)
        weights = torch.bincount(idx, minlength=len(n)).to(torch.float64)  # resampling = integer weights
        value, refit = _minimize(theta, log_n, log_d, log_l, weights)
        if math.isfinite(value):
            law.samples.append(_params(refit, kind))
    if law.samples:
        for key in law.params:
            law.intervals[key] = _quantiles(sorted(s[key] for s in law.samples), level)
    return law
