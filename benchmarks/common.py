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
DOC = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


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


def _best_seconds(fn: Callable[[], Any], seconds: float) -> float:
    """Fastest of repeated calls of ``fn`` over about ``seconds`` (after 3 untimed ones)."""
    for _ in range(3):
        fn()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peaks(n: int = 2048, seconds: float = 1.0, device: str = "cpu") -> dict[str, float]:
    """Measured GEMM throughput (FLOP/s) of an n×n @ n×n product on every path this machine offers.

    On CPU: fp32 through ``torch.mm`` (PyTorch's default BLAS, MKL on x86), fp32 through oneDNN
    (the kernel lmlab's ``Linear`` uses for training), and bf16 through ``torch.mm`` (oneDNN, with
    AVX512-BF16 where the CPU has it). On CUDA: fp32 (TF32 off) and bf16 ``torch.mm``. MFU is
    reported against the highest of these, and the table says which path that was.
    """
    from lmlab.models.linear import _LINEAR

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn: Callable[[], Any]) -> float:
        def call() -> None:
            fn()
            sync()

        return 2 * n**3 / _best_seconds(call, seconds)

    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    peaks = {"fp32 torch.mm": timed(lambda: torch.mm(a, b))}
    if dev.type == "cpu" and _LINEAR is not None:
        peaks["fp32 oneDNN"] = timed(lambda: _LINEAR(a, b, None, "none", [], ""))
    bf16_ok = dev.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if bf16_ok:
        ab, bb = a.bfloat16(), b.bfloat16()
        peaks["bf16 torch.mm"] = timed(lambda: torch.mm(ab, bb))
    return peaks


def best_peak(peaks: dict[str, float]) -> tuple[str, float]:
    """(path, FLOP/s) of the fastest measured path: the MFU denominator."""
    name = max(peaks, key=peaks.__getitem__)
    return name, peaks[name]


def machine_line(peaks: dict[str, float] | None = None) -> str:
    """One line saying what a table was measured on, for BENCHMARKS.md."""
    m = machine()
    line = (
        f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), torch {m['torch']}, "
        f"Python {m['python']}, {m['platform']}"
    )
    if torch.cuda.is_available():
        line += f", GPU {torch.cuda.get_device_name()}"
    if peaks:
        line += "; measured GEMM peaks: " + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in peaks.items())
    return line


def update_section(name: str, body: str, path: Path = DOC) -> bool:
    """Replace the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in BENCHMARKS.md
    (atomically). Returns False, and changes nothing, when the file has no such markers."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        print(f"{path.name} has no {start} … {end} markers; table not written there")
        return False
    new = text[: i + len(start)] + "\n" + body.strip("\n") + "\n" + text[j:]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)
    print(f"updated the {name!r} table in {path.name}")
    return True


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


def print_table(rows: list[dict[str, Any]], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    """Print (and return) a Markdown table of ``rows`` restricted to ``columns`` (titled ``headers``)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10_000:
            return f"{v:,}"
        return str(v)

    cells = [[fmt(row.get(c, "")) for c in columns] for row in rows]
    titles = list(headers or columns)
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(titles)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(titles, widths)) + " |",
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
        "command": " ".join([Path(sys.executable).name, "-m", f"benchmarks.{Path(sys.argv[0]).stem}", *sys.argv[1:]]),
        "machine": machine(),
        **data,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
