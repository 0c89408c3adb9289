"""The lecture's Table 1 (Vaswani et al. 2017), measured: cost per layer, sequential operations and maximum path
length of self-attention, recurrent (Elman RNN, LSTM) and convolutional layers.

1. Time of one layer's forward and backward pass, and the activation memory it keeps for the backward pass (the
   bytes of the tensors autograd saves), against the sequence length n at a fixed width d and against d at a fixed
   n; slopes fitted on log-log axes over the upper half of each range, next to the table's O(n²·d) (attention),
   O(n·d²) (recurrent) and O(k·n·d²) (convolution). The attention layer is lmlab's (projections included, the
   explicit softmax(QKᵀ/√d)V path so that its n×n weights are really kept), the recurrent layers PyTorch's fused
   ones that lmlab's RNN and LSTM models use, the convolution ``nn.Conv1d`` with kernel k.
2. Sequential operations: the depth of each layer's autograd graph (its longest chain of dependent operations)
   against n: constant for attention and convolution, growing with n for a recurrence computed step by step.
3. The crossover: the n at which attention's measured time passes the LSTM's, against the table's n ≈ d.
4. Maximum path length on a probe task: a digit hidden among letters at distance n from the end must be copied.
   A 2-layer Transformer and an LSTM are trained on the same data, from scratch, for the same steps
   (``lmlab prepare --task sft``, ``lmlab train``); accuracy per distance shows how far back each reaches.

Writes ``complexity.{md,json}`` and ``complexity.png`` (scaling) and ``complexity-probe.png`` in the workspace.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmlab.experiments.common import Workspace, command_line, greedy_answers, pick_size, records_file, train_seconds

NAME = "complexity"
LAYERS = ("self-attention", "lstm", "rnn", "conv")
TABLE = {  # the lecture's Table 1: complexity per layer, sequential operations, maximum path length
    "self-attention": ("O(n²·d)", "O(1)", "O(1)"),
    "lstm": ("O(n·d²)", "O(n)", "O(n)"),
    "rnn": ("O(n·d²)", "O(n)", "O(n)"),
    "conv": ("O(k·n·d²)", "O(1)", "O(log_k(n))"),
}
SLOPES = {"n": {"self-attention": 2, "lstm": 1, "rnn": 1, "conv": 1}, "d": {"self-attention": 1, "lstm": 2,
                                                                             "rnn": 2, "conv": 2}}  # fmt: skip
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Size:
    ns: tuple[int, ...]  # sequence lengths at width d_fixed
    d_fixed: int
    ds: tuple[int, ...]  # widths at length n_fixed
    n_fixed: int
    batch: int = 4
    kernel: int = 3
    repeats: int = 3
    depth_ns: tuple[int, ...] = (8, 16, 32, 64)
    distances: tuple[int, ...] = (2, 8, 32, 64, 128)
    probe_train: int = 20_000
    probe_test: int = 100  # per distance
    probe_steps: int = 3000
    probe_batch: int = 32


SIZES = {
    "full": Size(ns=(64, 128, 256, 512, 1024, 2048, 4096), d_fixed=256, ds=(64, 128, 256, 512, 1024), n_fixed=512),
    "quick": Size(ns=(64, 128, 256, 512, 1024), d_fixed=128, ds=(32, 64, 128, 256), n_fixed=256, repeats=1,
                  distances=(2, 8, 32), probe_train=3000, probe_test=30, probe_steps=150),
    "test": Size(ns=(8, 16, 32), d_fixed=16, ds=(8, 16), n_fixed=16, batch=1, repeats=1, depth_ns=(4, 8),
                 distances=(1, 4), probe_train=40, probe_test=2, probe_steps=3, probe_batch=4),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 1-3: the layers measured directly


class _Attention(nn.Module):
    """lmlab's multi-head self-attention layer on the explicit path, which keeps the (n × n) weights."""

    def __init__(self, d: int) -> None:
        super().__init__()
        from lmlab.models.layers import MultiHeadAttention

        self.attn = MultiHeadAttention(d, max(1, d // 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, n, d)
        return self.attn(x, is_causal=True, return_weights=True)[0]


class _Recurrent(nn.Module):
    def __init__(self, kind: str, d: int, *, stepwise: bool = False) -> None:
        super().__init__()
        self.stepwise = stepwise  # one cell call per position: the sequential chain autograd records
        self.cell = (nn.LSTMCell if kind == "lstm" else nn.RNNCell)(d, d) if stepwise else None
        self.rnn = None if stepwise else (nn.LSTM if kind == "lstm" else nn.RNN)(d, d, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, n, d)
        if self.rnn is not None:
            return self.rnn(x)[0]
        state, outs = None, []
        for t in range(x.size(1)):
            state = self.cell(x[:, t], state)
            h = state[0] if isinstance(state, tuple) else state
            outs.append(h)
        return torch.stack(outs, dim=1)


class _Conv(nn.Module):
    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d, d, k, padding=k - 1)  # padded on both sides; the causal part is kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, n, d)
        return self.conv(x.transpose(1, 2))[..., : x.size(1)].transpose(1, 2)


def make_layer(kind: str, d: int, k: int = 3, *, stepwise: bool = False) -> nn.Module:
    if kind == "self-attention":
        return _Attention(d)
    if kind in ("lstm", "rnn"):
        return _Recurrent(kind, d, stepwise=stepwise)
    return _Conv(d, k)


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of ``fn()`` (each storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def graph_depth(out: torch.Tensor) -> int:
    """The longest chain of operations in ``out``'s autograd graph: how many must run one after another."""
    depth: dict[Any, int] = {}
    order, stack = [], [(out.grad_fn, False)]
    while stack:  # iterative post-order: a recurrence of 1,000 steps is deeper than Python's recursion limit
        node, done = stack.pop()
        if node is None or (node in depth and not done):
            continue
        if done:
            depth[node] = 1 + max((depth.get(n, 0) for n, _ in node.next_functions if n is not None), default=0)
            order.append(node)
            continue
        depth.setdefault(node, 0)
        stack.append((node, True))
        stack.extend((n, False) for n, _ in node.next_functions if n is not None and depth.get(n) is None)
    return depth[out.grad_fn]


def time_layer(layer: nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, int]:
    """(median seconds of forward + backward after one warm-up, bytes saved for backward)."""

    def step() -> torch.Tensor:
        return layer(x)

    saved = saved_bytes(step)
    times = []
    for i in range(repeats + 1):
        layer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        layer(x).sum().backward()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), saved


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y on log x over the upper half of the points (where the asymptote shows)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys)][len(xs) // 2 - (len(xs) % 2 == 0) :]
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    var = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / var if var else float("nan")


def measure(sz: Size, say: Callable[[str], None]) -> dict[str, Any]:
    """Time and memory of each layer vs n and vs d, fitted slopes, graph depth vs n, and the crossover."""
    torch.manual_seed(0)
    out: dict[str, Any] = {"vs_n": {}, "vs_d": {}, "slopes": {"n": {}, "d": {}}, "depth": {}}
    for axis, values in (("n", sz.ns), ("d", sz.ds)):
        for kind in LAYERS:
            rows = []
            for v in values:
                n, d = (v, sz.d_fixed) if axis == "n" else (sz.n_fixed, v)
                layer = make_layer(kind, d, sz.kernel)
                x = torch.randn(sz.batch, n, d, requires_grad=True)
                secs, saved = time_layer(layer, x, sz.repeats)
                rows.append({axis: v, "seconds": secs, "saved_mb": saved / 2**20})
            say(f"{kind} vs {axis}: " + ", ".join(f"{r[axis]}: {1000 * r['seconds']:.1f} ms" for r in rows))
            out[f"vs_{axis}"][kind] = rows
            out["slopes"][axis][kind] = {
                "time": slope(values, [r["seconds"] for r in rows]),
                "memory": slope(values, [r["saved_mb"] for r in rows]),
            }
    d = sz.depth_ns[0]
    for kind in LAYERS:
        depths = []
        for n in sz.depth_ns:
            layer = make_layer(kind, d, sz.kernel, stepwise=True)
            depths.append(graph_depth(layer(torch.randn(1, n, d, requires_grad=True))))
        growth = (depths[-1] - depths[0]) / (sz.depth_ns[-1] - sz.depth_ns[0])
        out["depth"][kind] = {"n": list(sz.depth_ns), "depth": depths, "per_position": growth}
    attn, lstm = out["vs_n"]["self-attention"], out["vs_n"]["lstm"]
    out["crossover_n"] = next((a["n"] for a, r in zip(attn, lstm) if a["seconds"] > r["seconds"]), None)
    return out


# ---------------------------------------------------------------------------------------------
# 4: maximum path length, on a probe task


def probe_problem(rng: random.Random, distance: int, length: int) -> dict[str, str]:
    """``length`` letters with one digit ``distance`` positions from the end; the answer is that digit."""
    letters = [rng.choice(LETTERS) for _ in range(length)]
    digit = str(rng.randrange(10))
    letters[length - distance] = digit
    return {"prompt": "".join(letters), "completion": digit}


def probe(ws: Workspace, sz: Size, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    length = max(sz.distances)
    train = [probe_problem(rng, rng.randint(1, length), length) for _ in range(sz.probe_train)]
    tests = {n: [probe_problem(rng, n, length) for _ in range(sz.probe_test)] for n in sz.distances}
    source = records_file(ws, "copy", train)
    data = ws.prepared("copy", [source.resolve(), "--task", "sft", "--tokenizer", "char", "--val-fraction", 0.05,
                                "--seed", seed, "--quiet"])  # fmt: skip
    common = ["--model.block-size", length + 8, "--train.batch-size", sz.probe_batch, "--train.max-steps",
              sz.probe_steps, "--train.eval-every", max(1, sz.probe_steps // 4), "--train.eval-steps", 1_000_000,
              "--train.sample-tokens", 0, "--train.seed", seed,
              "--train.warmup-steps", min(50, sz.probe_steps)]  # fmt: skip
    models = {
        "self-attention": ["train", data, "baby", "--model.n-layer", 2, "--model.n-embd", 64, "--model.n-head", 4,
                           "--train.lr", 2e-3, *common],
        "lstm": ["train", data, "lstm", "--model.n-layer", 1, "--model.n-embd", 64, "--model.n-hidden", 128,
                 "--train.lr", 2e-3, *common],
    }  # fmt: skip
    rows = {}
    for kind, argv in models.items():
        step = ws.trained(f"runs/copy-{kind}", argv)
        accuracy = {}
        for n, problems in tests.items():
            got = greedy_answers(step.path, [p["prompt"] for p in problems], max_new_tokens=1, batch_size=128)
            accuracy[n] = 100 * sum(t[:1] == p["completion"] for (t, _), p in zip(got, problems)) / len(problems)
        rows[kind] = {"run": str(step.path), "seconds": train_seconds(step.path), "accuracy": accuracy}
    return {"length": length, "rows": rows}


# ---------------------------------------------------------------------------------------------


def run(
    out: str | Path = f"experiments/{NAME}",
    *,
    quick: bool = False,
    size: str | None = None,
    seed: int = 0,
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, Any]:
    """Table 1 measured: time and memory of attention, LSTM, RNN and convolution layers vs n and d (log-log slopes),
    sequential operations, the attention/recurrence crossover, and a copy-from-distance probe. Writes complexity.md,
    .json and .png (and complexity-probe.png) in the workspace.

    Args:
        out: the workspace: datasets, runs, commands.txt and the results (reused when run again).
        quick: the small size instead of the full one.
        size: full, quick or test (tiny shapes, for the tests); overrides --quick.
        seed: the seed of the probe task's data and training.
        device: where the probe models train: auto, cpu, cuda or mps (the layers are timed on the CPU).
        quiet: do not show the steps' own output.
    """
    name, sz = pick_size(SIZES, size, quick)
    with Workspace(out, device=device, quiet=quiet) as ws:
        threads = torch.get_num_threads()
        measured = measure(sz, ws.say)
        results = {"experiment": NAME, "size": name, "settings": asdict(sz), "seed": seed, "threads": threads,
                   **measured, "probe": probe(ws, sz, seed)}  # fmt: skip
        figs = [_figure(ws.root / f"{NAME}.png", results), _probe_figure(ws.root / f"{NAME}-probe.png", results)]
        return ws.finish(NAME, results, _markdown(results), figs, command_line(NAME, out=out, size=name, seed=seed))


def _figure(path: Path, r: dict[str, Any]) -> Path:
    from lmlab.figures import pyplot, save_png

    fig, axes = pyplot().subplots(1, 3, figsize=(13, 4))
    colors = dict(zip(LAYERS, ("#c44e52", "#4c72b0", "#55a868", "#8172b2")))
    s = r["settings"]
    for ax, axis, what, key in ((axes[0], "n", "time", "seconds"), (axes[1], "d", "time", "seconds"),
                                (axes[2], "n", "memory", "saved_mb")):  # fmt: skip
        for kind in LAYERS:
            rows = r[f"vs_{axis}"][kind]
            fitted = r["slopes"][axis][kind][what]
            ax.loglog([p[axis] for p in rows], [p[key] for p in rows], "o-", color=colors[kind],
                      label=f"{kind} (slope {fitted:.2f}; table {TABLE[kind][0]})")  # fmt: skip
        fixed = f"d = {s['d_fixed']}" if axis == "n" else f"n = {s['n_fixed']}"
        ax.set_xlabel(f"{'sequence length n' if axis == 'n' else 'width d'} ({fixed}, batch {s['batch']})")
        ax.set_ylabel("forward + backward (s)" if what == "time" else "activations kept for backward (MiB)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    if r.get("crossover_n"):
        axes[0].axvline(r["crossover_n"], color="gray", ls=":")
    axes[0].axvline(s["d_fixed"], color="black", ls="--", lw=0.8)
    axes[0].set_title("time vs n (dashed: n = d; dotted: measured crossover)", fontsize=9)
    axes[1].set_title("time vs d", fontsize=9)
    axes[2].set_title("memory vs n", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def _probe_figure(path: Path, r: dict[str, Any]) -> Path:
    from lmlab.figures import pyplot, save_png

    fig, ax = pyplot().subplots(figsize=(6, 3.8))
    for kind, color in (("self-attention", "#c44e52"), ("lstm", "#4c72b0")):
        acc = r["probe"]["rows"][kind]["accuracy"]
        ax.plot([int(n) for n in acc], list(acc.values()), "o-", color=color, label=kind)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("distance of the digit to copy (tokens)")
    ax.set_ylabel("copied correctly (%)")
    ax.axhline(10, color="gray", ls=":", label="chance (10%)")
    ax.set_ylim(0, 105)
    ax.set_title("Maximum path length: copy a token from distance n")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def _markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [
        f"Table 1 measured ({r['size']} size; CPU, {r['threads']} threads, batch {s['batch']}, kernel k = "
        f"{s['kernel']}; slopes of log-log fits over the upper half of each range)",
        "",
        "| layer | table: per layer | time slope vs n (table) | time slope vs d (table) | memory slope vs n | "
        "table: sequential ops | autograd depth per position | table: max path |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for kind in LAYERS:
        sl = r["slopes"]
        lines.append(
            f"| {kind} | {TABLE[kind][0]} | {sl['n'][kind]['time']:.2f} ({SLOPES['n'][kind]}) | "
            f"{sl['d'][kind]['time']:.2f} ({SLOPES['d'][kind]}) | {sl['n'][kind]['memory']:.2f} | {TABLE[kind][1]} | "
            f"{r['depth'][kind]['per_position']:.2f} | {TABLE[kind][2]} |"
        )
    n_max = s["ns"][-1]
    ms = {k: 1000 * r["vs_n"][k][-1]["seconds"] for k in LAYERS}
    cross = r["crossover_n"]
    lines += [
        "",
        f"At n = {n_max}, d = {s['d_fixed']}: " + ", ".join(f"{k} {ms[k]:.1f} ms" for k in LAYERS) + ".",
        f"Crossover: attention's time passes the LSTM's at n = {cross} (table: n ≈ d = {s['d_fixed']})"
        if cross
        else f"Crossover: attention stayed faster than the LSTM up to n = {n_max} (table: n ≈ d = "
        f"{s['d_fixed']}); the LSTM's n steps run one after another, each too small to use the cores",  # fmt: skip
        "",
        f"Maximum path length probe: copy a digit from distance n among {r['probe']['length']} letters "
        "(accuracy %, 10% is chance)",
        "",
        "| model | " + " | ".join(f"n = {n}" for n in s["distances"]) + " |",
        "| --- | " + " | ".join("---:" for _ in s["distances"]) + " |",
    ]
    for kind, row in r["probe"]["rows"].items():
        acc = list(row["accuracy"].values())
        lines.append(f"| {kind} | " + " | ".join(f"{a:.0f}" for a in acc) + " |")
    return "\n".join(lines) + "\n"
