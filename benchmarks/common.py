"""Shared helpers for the benchmark scripts: machine peak, alternating timing, tables, JSON results.

Benchmarks measure speed, tests measure behaviour: nothing here asserts a time. Every script
prints a table and writes ``benchmarks/results/NAME.json`` with the machine it ran on.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def matmul_peak(n: int = 1024, seconds: float = 1.0, dtype: torch.dtype = torch.float32) -> float:
    """Measured matmul throughput of this machine in FLOP/s (best of repeated n×n @ n×n products).

    The denominator of MFU: what the CPU really sustains in a large fp32 GEMM, not a datasheet figure.
    """
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    out = torch.empty(n, n, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=out)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def alternate(
    contenders: dict[str, Callable[[], Any]],
    *,
    warmup: int = 2,
    rounds: int = 5,
    steps: int = 3,
    round_seconds: float = 0.0,
) -> dict[str, list[float]]:
    """Seconds per call of each contender, measured in alternating rounds so drift (thermal, other
    processes) hits all of them alike. Each round runs ``steps`` calls of every contender (more if
    needed for a round to last ``round_seconds``, so short steps are not timed in tiny slices), the
    order rotated from round to round. Returns every round's mean seconds per call."""
    slowest = 0.0
    for fn in contenders.values():
        for _ in range(warmup):
            t = time.perf_counter()
            fn()
        slowest = max(slowest, time.perf_counter() - t)
    if round_seconds > 0 and slowest > 0:
        steps = max(steps, math.ceil(round_seconds / slowest))
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = contenders[name]
            t = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - t) / steps)
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def spread(xs: Sequence[float]) -> float:
    """Relative spread (max − min) / median of the rounds: how noisy a figure is."""
    return (max(xs) - min(xs)) / statistics.median(xs)


def print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """Print (and return) a Markdown table of ``rows`` restricted to ``columns``."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
        return str(v)

    cells = [[fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(v.rjust(w) for v, w in zip(r, widths)) + " |" for r in cells]
    text = "\n".join(lines)
    print(text)
    return text


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/NAME.json`` (with the machine and the command line), atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, "-m", f"benchmarks.{name}", *sys.argv[1:]]),
        "machine": machine(),
        **data,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
