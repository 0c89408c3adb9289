"""Scaling laws: train a grid of model sizes (and token budgets) as ordinary runs, fit power laws to their
validation losses, and predict the loss of a model that was not trained (``lmlab scaling sweep | fit | predict``).

The shape rule: a sweep's size is its number of layers l; the width is ``ASPECT``·l and the heads are
width / ``HEAD_DIM``, so every size has the same aspect ratio and head size and differs only in scale (Kaplan et al.
2020 found the loss to depend on the non-embedding parameter count N = 12·l·width² + norms and biases, not on the
shape, within a wide range). The learning rate is ``LR_BASE``·√(64 / width); warmup 5% of the steps, cosine to a
tenth. Budgets are tokens per run (``--tokens``), or FLOPs (``--flops``: tokens = C / 6N for each size).

A sweep directory:

    SWEEP/sweep.json       the runs planned and their results (size, N, tokens, FLOPs, validation loss, time, energy)
    SWEEP/runs/l{L}-t{D}/  one ordinary run per size and budget (lmlab train; resumable, reusable)
    SWEEP/fit.json         the last fit: parameters, intervals, bootstrap refits (for predict)
    SWEEP/scaling.png      points, fitted law and its interval band
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmlab import io
from lmlab.errors import LmlabError
from lmlab.scaling.fit import PowerLaw, fit_power_law

ASPECT = 32  # width per layer
HEAD_DIM = 32
LR_BASE = 2e-3
__all__ = ["sweep", "fit", "predict", "read_sweep", "shape", "fit_power_law", "PowerLaw"]


def shape(n_layer: int, block_size: int) -> dict[str, Any]:
    """The model of a sweep's size ``n_layer`` (the shape rule in the module docstring)."""
    width = ASPECT * n_layer
    return {"n_layer": n_layer, "n_embd": width, "n_head": max(1, width // HEAD_DIM), "block_size": block_size,
            "dropout": 0.0}  # fmt: skip


def non_embedding_params(n_layer: int, vocab_size: int, block_size: int) -> int:
    """N of a size: the parameters of the model without its token and position tables (the head is tied)."""
    import dataclasses

    from lmlab.config import get_preset
    from lmlab.models import build_model

    cfg = dataclasses.replace(get_preset("baby").model, vocab_size=vocab_size, **shape(n_layer, block_size))
    return build_model(cfg).num_params(non_embedding=True)


def _plan(sizes: Sequence[int], tokens: Sequence[int], flops: Sequence[float], vocab: int, block: int) -> list[dict]:
    if not sizes:
        raise LmlabError("give the sizes to train: --sizes 1 2 3 4 5 (layers; width = 32 x layers)")
    if any(s < 1 for s in sizes):
        raise LmlabError(f"--sizes are numbers of layers, at least 1; got {list(sizes)}")
    if bool(tokens) == bool(flops):
        raise LmlabError("give the budget of each run as --tokens N ... or as --flops C ..., one of the two")
    if any(t <= 0 for t in (*tokens, *flops)):
        raise LmlabError("--tokens and --flops must be positive")
    plan = []
    for layers in sorted(set(sizes)):
        n = non_embedding_params(layers, vocab, block)
        for d in tokens or [round(c / (6 * n)) for c in flops]:
            plan.append({"n_layer": layers, "params": n, "tokens": int(d), "flops": 6.0 * n * int(d)})
    return plan


def sweep(
    data: str | Path,
    sizes: Sequence[int],
    *,
    out: str | Path,
    tokens: Sequence[int] = (),
    flops: Sequence[float] = (),
    block_size: int = 128,
    batch_size: int = 16,
    seed: int = 1337,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Train every size × budget not trained yet under ``out`` (resuming an interrupted one), evaluate each on the
    whole validation split, and record them in ``out/sweep.json``; returns every run of the sweep."""
    from lmlab.api import evaluate, train
    from lmlab.data.dataset import load_dataset
    from lmlab.runs import has_checkpoint, run_finished

    ds = load_dataset(data)
    out = Path(out)
    plan = _plan(sizes, tokens, flops, ds.vocab_size, block_size)
    per_step = batch_size * block_size
    for p in plan:
        if p["tokens"] < per_step:
            raise LmlabError(f"a budget of {p['tokens']:,} tokens is less than one step of {per_step:,} "
                             f"(--batch-size {batch_size} x --block-size {block_size})")  # fmt: skip
    io.check_disjoint(out, [ds.path])
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LmlabError(f"cannot create the sweep directory {out}: {e.strerror or e}") from None
    lock = io.DirLock(out, "sweep directory")
    lock.acquire()
    try:
        record = io.read_json(out / "sweep.json") if (out / "sweep.json").is_file() else {"runs": []}
        if record.get("data") not in (None, str(ds.path.resolve())):
            raise LmlabError(f"{out} is a sweep on {record['data']}; give a new --out for {ds.path}")
        for key, value in (("block_size", block_size), ("batch_size", batch_size), ("seed", seed)):
            if record.get(key, value) != value:  # runs of one sweep differ only in size and budget
                raise LmlabError(f"{out} was swept with --{key.replace('_', '-')} {record[key]}; use the same, or a "
                                 "new --out")  # fmt: skip
        record.update(data=str(ds.path.resolve()), block_size=block_size, batch_size=batch_size, seed=seed)
        done = {(r["n_layer"], r["tokens"]): r for r in record["runs"]}
        todo = [p for p in plan if (p["n_layer"], p["tokens"]) not in done]
        total_flops, t_sweep = sum(p["flops"] for p in todo), time.perf_counter()
        print(f"sweep {out}: {len(plan)} runs planned, {len(plan) - len(todo)} done before; "
              f"{total_flops:.2e} FLOPs to go", file=sys.stderr)  # fmt: skip
        spent = 0.0
        for i, p in enumerate(todo, 1):
            run = out / "runs" / f"l{p['n_layer']}-t{p['tokens']}"
            steps = max(1, round(p["tokens"] / per_step))
            width = ASPECT * p["n_layer"]
            lr = LR_BASE * math.sqrt(64 / width)
            eta = ""
            if spent:
                rate = spent / (time.perf_counter() - t_sweep)
                eta = f", about {(total_flops - spent) / rate / 60:.0f} min left"
            print(f"[{i}/{len(todo)}] {p['n_layer']} layers x {width} ({p['params']:,} params), "
                  f"{p['tokens']:,} tokens, lr {lr:.2g}{eta}", file=sys.stderr)  # fmt: skip
            t0 = time.perf_counter()
            if not run_finished(run):
                if has_checkpoint(run):
                    result = train(resume=run, progress=False)
                else:
                    result = train(
                        data, "baby", out=run, model=shape(p["n_layer"], block_size), max_steps=steps,
                        batch_size=batch_size, lr=lr, min_lr=lr / 10, warmup_steps=max(1, steps // 20),
                        eval_every=steps, eval_steps=8, sample_tokens=0, seed=seed, device=device, progress=False,
                        track="none", keep_last=1,
                    )  # fmt: skip
            else:
                result = None
            scores = evaluate(run, checkpoint="latest", device=device, out=run / "eval-val.json")
            row = {**p, "n_embd": width, "lr": lr, "steps": steps, "run": str(run), "val_loss": scores["loss"],
                   "seconds": _last(run, "elapsed_s"), "energy_kwh": _last(run, "energy_kwh"),
                   "co2_kg": _last(run, "co2_kg")}  # fmt: skip
            record["runs"] = [r for r in record["runs"] if (r["n_layer"], r["tokens"]) != (p["n_layer"], p["tokens"])]
            record["runs"].append(row)
            record["runs"].sort(key=lambda r: (r["params"], r["tokens"]))
            io.write_json(out / "sweep.json", record)
            spent += p["flops"]
            took = time.perf_counter() - t0
            print(f"      val loss {scores['loss']:.4f} ({took:.0f}s{'' if result else ', reused'})", file=sys.stderr)
        runs = record["runs"]
        total = sum(r.get("energy_kwh") or 0 for r in runs)
        co2 = sum(r.get("co2_kg") or 0 for r in runs)
        print(f"sweep {out}: {len(runs)} runs; energy {total:.4f} kWh, {1000 * co2:.1f} g CO2 in all", file=sys.stderr)
        return runs
    finally:
        lock.release()


def _last(run: Path, key: str) -> float | None:
    from lmlab.training.tracking import read_metrics

    rows = [r for r in read_metrics(run / "metrics.jsonl") if key in r] if (run / "metrics.jsonl").is_file() else []
    return rows[-1][key] if rows else None


def read_sweep(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not (path / "sweep.json").is_file():
        raise LmlabError(f"{path} is not a sweep directory (no sweep.json); make one with lmlab scaling sweep")
    record = io.read_json(path / "sweep.json")
    if not record.get("runs"):
        raise LmlabError(f"{path} has no finished runs yet; run lmlab scaling sweep first")
    return record


def fit(
    sweep_dir: str | Path,
    *,
    max_params: float | None = None,
    tokens: int | None = None,
    bootstrap: int = 200,
    level: float = 0.95,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Fit L(N) (one token budget, or ``tokens``) or L(N, D) (several) to the sweep's runs with at most
    ``max_params`` parameters; runs above it are held out and their losses compared with the law's prediction.
    Writes ``fit.json`` and ``scaling.png`` (or ``out``) in the sweep directory; returns the fit."""
    sweep_dir = Path(sweep_dir)
    record = read_sweep(sweep_dir)
    runs = record["runs"]
    if tokens is not None:
        runs = [r for r in runs if r["tokens"] == tokens]
        if not runs:
            raise LmlabError(f"--tokens {tokens}: no run of the sweep has that budget; budgets: "
                             f"{', '.join(str(b) for b in sorted({r['tokens'] for r in record['runs']}))}")  # fmt: skip
    used = [r for r in runs if max_params is None or r["params"] <= max_params]
    held = [r for r in runs if r not in used]
    budgets = sorted({r["tokens"] for r in used})
    with_tokens = len(budgets) > 1
    law = fit_power_law([r["params"] for r in used], [r["val_loss"] for r in used],
                        [r["tokens"] for r in used] if with_tokens else None, bootstrap=bootstrap,
                        level=level)  # fmt: skip
    checks = []
    for r in held:
        p = law.predict(r["params"], r["tokens"] if with_tokens else None)
        checks.append({"n_layer": r["n_layer"], "params": r["params"], "tokens": r["tokens"],
                       "measured": r["val_loss"], **{f"predicted_{k}": v for k, v in p.items()},
                       "error": r["val_loss"] / p["loss"] - 1,
                       "inside": p["run_low"] <= r["val_loss"] <= p["run_high"],
                       "inside_law": p["low"] <= r["val_loss"] <= p["high"]})  # fmt: skip
    result = {
        "law": law.to_dict(),
        "samples": law.samples,
        "fitted_on": [{"n_layer": r["n_layer"], "params": r["params"], "tokens": r["tokens"]} for r in used],
        "single_budget": None if with_tokens else budgets[0],
        "held_out": checks,
        "compute_optimal": law.compute_optimal(max(r["flops"] for r in runs)) if with_tokens else None,
    }
    io.write_json(sweep_dir / "fit.json", result)
    _plot(Path(out) if out else sweep_dir / "scaling.png", law, used, held, result)
    return result


def _load_law(sweep_dir: Path) -> tuple[PowerLaw, dict[str, Any]]:
    if not (sweep_dir / "fit.json").is_file():
        raise LmlabError(f"{sweep_dir} has no fit yet; run lmlab scaling fit {sweep_dir} first")
    saved = io.read_json(sweep_dir / "fit.json")
    d = saved["law"]
    law = PowerLaw(d["kind"], d["params"], {k: tuple(v) for k, v in d["intervals"].items()}, d["level"],
                   saved.get("samples", []), d["residual"], d.get("residuals", []))  # fmt: skip
    return law, saved


def predict(sweep_dir: str | Path, *, params: float | None = None, layers: int | None = None,
            tokens: float | None = None) -> dict[str, Any]:  # fmt: skip
    """The loss the sweep's last fit predicts for a model of ``params`` non-embedding parameters (or of the shape
    rule's ``layers``), trained on ``tokens`` (needed when the fit has tokens), with its interval."""
    sweep_dir = Path(sweep_dir)
    law, saved = _load_law(sweep_dir)
    if (params is None) == (layers is None):
        raise LmlabError("give the model as --params N or as --layers L (the sweep's shape rule), one of the two")
    if layers is not None:
        if layers < 1:
            raise LmlabError(f"--layers must be at least 1, got {layers}")
        from lmlab.data.dataset import load_dataset

        record = read_sweep(sweep_dir)
        params = non_embedding_params(layers, load_dataset(record["data"]).vocab_size, record["block_size"])
    if params <= 0 or (tokens is not None and tokens <= 0):
        raise LmlabError("--params and --tokens must be positive")
    if law.kind == "ND" and tokens is None:
        raise LmlabError("the fit is L(N, D): give the training tokens too (--tokens)")
    used_tokens = tokens if law.kind == "ND" else saved.get("single_budget")
    return {"params": params, "tokens": used_tokens, **law.predict(params, tokens if law.kind == "ND" else None)}


def _plot(path: Path, law: PowerLaw, used: list[dict], held: list[dict], result: dict[str, Any]) -> Path:
    from lmlab.figures import pyplot, save_png

    fig, ax = pyplot().subplots(figsize=(6.8, 4.4))
    budgets = sorted({r["tokens"] for r in used + held})
    colors = ["#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974", "#64b5cd"]
    n_max = max(r["params"] for r in used + held)
    n_min = min(r["params"] for r in used + held)
    xs = [n_min / 1.5 * (n_max * 1.5 / (n_min / 1.5)) ** (i / 60) for i in range(61)]
    for b, color in zip(budgets, colors * 4):
        d = b if law.kind == "ND" else None
        pts = [r for r in used if r["tokens"] == b]
        ax.scatter([r["params"] for r in pts], [r["val_loss"] for r in pts], color=color, zorder=3,
                   label=f"runs, {b:,} tokens")  # fmt: skip
        out = [r for r in held if r["tokens"] == b]
        if out:
            ax.scatter([r["params"] for r in out], [r["val_loss"] for r in out], marker="*", s=160, color=color,
                       edgecolors="black", zorder=4, label="held out of the fit")  # fmt: skip
        if law.kind == "N" and b != result["single_budget"]:
            continue
        preds = [law.predict(x, d) for x in xs]
        ax.plot(xs, [p["loss"] for p in preds], color=color, lw=1)
        ax.fill_between(xs, [p["low"] for p in preds], [p["high"] for p in preds], color=color, alpha=0.25,
                        lw=0, label="the law's interval" if b == budgets[0] else None)  # fmt: skip
        ax.fill_between(xs, [p["run_low"] for p in preds], [p["run_high"] for p in preds], color=color, alpha=0.1,
                        lw=0, label="one run's interval" if b == budgets[0] else None)  # fmt: skip
    p = law.params
    text = f"L = {p['E']:.3f} + {p['A']:.3g}·N^-{p['alpha']:.3f}"
    if law.kind == "ND":
        text += f" + {p['B']:.3g}·D^-{p['beta']:.3f}"
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("validation loss")
    ax.set_title(text, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)
