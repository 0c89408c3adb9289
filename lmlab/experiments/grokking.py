"""Grokking (Power et al. 2022): a small Transformer memorizes modular addition long before it generalizes.

Every problem ``a + b =`` → ``(a + b) mod p`` for a, b in 0 … p−1 is written as a conversation (the numbers are
words of a word tokenizer, one token each), a seeded ``train_fraction`` of them is the training set and the rest
is held out (``lmlab prepare FILE --task sft``). A one-layer Transformer is trained from random weights on the
answer tokens only (``lmlab train DATA tiny --model.* --train.*``) with AdamW and strong weight decay on every
matrix, the embeddings included (``--train.embedding-decay``: without it grokking came several times later), and
once more with weight decay 0, the ablation the paper is known for. The sft objective logs the share of training
batches answered exactly (``train_exact``) and, at each evaluation, of every held-out problem (``val_exact``);
the figure plots both against the step on a log axis. Writes ``grokking.{md,json,png}`` in the workspace.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmlab.experiments.common import Workspace, command_line, metric_rows, pick_size, records_file, train_seconds

NAME = "grokking"


@dataclass(frozen=True)
class Size:
    p: int  # the modulus: p² problems in all
    train_fraction: float  # share of the problems trained on
    steps: int
    batch_size: int
    eval_every: int
    weight_decay: float = 1.5  # AdamW's decoupled decay, on every matrix including the embeddings
    lr: float = 1e-3
    n_layer: int = 1  # one block, as in Nanda et al. (2023): two grokked later and less reliably across seeds
    n_embd: int = 128
    n_head: int = 4


SIZES = {
    "full": Size(p=97, train_fraction=0.3, steps=3000, batch_size=256, eval_every=50),
    "quick": Size(p=47, train_fraction=0.4, steps=600, batch_size=128, eval_every=25, n_embd=64),
    "test": Size(p=11, train_fraction=0.5, steps=6, batch_size=16, eval_every=3, n_embd=16),
}
# "train accuracy near 100% long before validation accuracy rises, and validation >= 99% in the end"
MEMORIZED = 0.95  # train accuracy "near 100%" (a training batch's accuracy is noisy: it rarely stays at 100%)
RISEN = 0.5  # held-out accuracy has "risen" (chance is 1/p)
REACHED = 0.99  # held-out accuracy at the end


def problems(p: int) -> list[dict[str, str]]:
    """Every ``a + b =`` → ``(a + b) mod p``, in a fixed shuffled order (the split is chosen by prepare's seed)."""
    rows = [{"prompt": f"{a} + {b} =", "completion": str((a + b) % p)} for a in range(p) for b in range(p)]
    random.Random(p).shuffle(rows)
    return rows


def first_step(points: list[tuple[int, float]], level: float) -> int | None:
    """The first step at which a curve reaches ``level`` (None if it never does)."""
    return next((s for s, v in points if v >= level), None)


def curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, accuracy) of the training batches (each log window's mean) and of the held-out problems."""
    rows = metric_rows(run)
    return {
        "train": [(r["step"], r["train_exact"]) for r in rows if "train_exact" in r],
        "val": [(r["step"], r["val_exact"]) for r in rows if "val_exact" in r],
    }


def run(
    out: str | Path = f"experiments/{NAME}",
    *,
    quick: bool = False,
    size: str | None = None,
    seed: int = 0,
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, Any]:
    """Grokking on modular addition: train and validation accuracy vs steps, with weight decay and without.
    Writes grokking.md, .json and .png in the workspace.

    Args:
        out: the workspace: datasets, runs, commands.txt and the results (reused when run again).
        quick: the small size instead of the full one.
        size: full, quick or test (a few steps, for the tests); overrides --quick.
        seed: the seed of the train/held-out split and of training.
        device: where to train: auto, cpu, cuda or mps.
        quiet: do not show the steps' own output.
    """
    name, sz = pick_size(SIZES, size, quick)
    with Workspace(out, device=device, quiet=quiet) as ws:
        source = records_file(ws, f"modadd-{sz.p}", problems(sz.p))
        data = ws.prepared(f"modadd-{sz.p}", [source.resolve(), "--task", "sft", "--tokenizer", "word",
                                              "--vocab-size", sz.p + 16, "--min-frequency", 1, "--val-fraction",
                                              round(1 - sz.train_fraction, 6), "--seed", seed, "--quiet"])  # fmt: skip
        rows = []
        for wd in (sz.weight_decay, 0.0):
            argv = [
                "train", data, "tiny", "--model.n-layer", sz.n_layer, "--model.n-head", sz.n_head,
                "--model.n-embd", sz.n_embd, "--model.block-size", 16, "--model.no-tie-embeddings",
                "--train.batch-size", sz.batch_size, "--train.max-steps", sz.steps, "--train.lr", sz.lr,
                "--train.min-lr", sz.lr, "--train.schedule", "constant", "--train.warmup-steps", 10,
                "--train.weight-decay", wd, "--train.embedding-decay", "--train.beta2", 0.98,
                "--train.eval-every", sz.eval_every, "--train.eval-steps", 1_000_000,
                "--train.log-every", sz.eval_every, "--train.sample-tokens", 0,
                "--train.save-every", max(sz.steps // 4, 1), "--train.seed", seed,
            ]  # fmt: skip
            step = ws.trained(f"runs/wd{wd:g}", argv)
            c = curves(step.path)
            rows.append({
                "weight_decay": wd, "run": str(step.path), "seconds": train_seconds(step.path),
                "train_memorized_step": first_step(c["train"], MEMORIZED),
                "val_risen_step": first_step(c["val"], RISEN), "val_reached_step": first_step(c["val"], REACHED),
                "final_train": c["train"][-1][1], "final_val": c["val"][-1][1], "max_val": max(v for _, v in c["val"]),
                "curves": c,
            })  # fmt: skip
        with_wd, without = rows
        delay = (with_wd["val_risen_step"] / with_wd["train_memorized_step"]
                 if with_wd["val_risen_step"] and with_wd["train_memorized_step"] else None)  # fmt: skip
        results = {
            "experiment": NAME,
            "size": name,
            "settings": asdict(sz),
            "seed": seed,
            "problems": sz.p * sz.p,
            "rows": rows,
            "delay": delay,
            "claims": {
                "memorized_first": bool(delay and delay >= 2),
                "val_at_least_99": with_wd["final_val"] >= REACHED,
                "no_rise_without_decay": without["max_val"] < RISEN,
            },
        }
        png = _figure(ws.root / f"{NAME}.png", results)
        command = command_line(NAME, out=out, size=name, seed=seed)
        return ws.finish(NAME, results, _markdown(results), [png], command)


def _figure(path: Path, r: dict[str, Any]) -> Path:
    from lmlab.figures import pyplot, save_png

    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    for row, style in zip(r["rows"], ("-", "--")):
        wd = f"weight decay {row['weight_decay']:g}"
        for split, color in (("train", "#c44e52"), ("val", "#4c72b0")):
            pts = row["curves"][split]
            ax.plot([s for s, _ in pts], [100 * v for _, v in pts], style, color=color,
                    label=f"{'train' if split == 'train' else 'held-out'}, {wd}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("optimizer step (log scale)")
    ax.set_ylabel("exact answers (%)")
    s = r["settings"]
    ax.set_title(f"Grokking: a + b mod {s['p']}, {100 * s['train_fraction']:.0f}% of pairs trained on")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left")
    fig.tight_layout()
    return save_png(fig, path)


def _markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [
        f"Grokking on a + b mod {s['p']} ({r['size']} size, seed {r['seed']}; {r['problems']:,} problems, "
        f"{100 * s['train_fraction']:.0f}% trained on; {s['n_layer']} layer{'s' if s['n_layer'] > 1 else ''}, "
        f"width {s['n_embd']}, AdamW lr {s['lr']:g}, batch {s['batch_size']}, {s['steps']:,} steps)",
        "",
        f"| weight decay | train ≥ {MEMORIZED:.0%} at step | held-out ≥ {RISEN:.0%} at step | held-out ≥ "
        f"{REACHED:.0%} at step | final train | final held-out | best held-out | seconds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        secs = f"{row['seconds']:.0f}" if row["seconds"] is not None else ""
        lines.append(
            f"| {row['weight_decay']:g} | {row['train_memorized_step'] or 'never'} | "
            f"{row['val_risen_step'] or 'never'} | {row['val_reached_step'] or 'never'} | "
            f"{100 * row['final_train']:.1f}% | {100 * row['final_val']:.1f}% | {100 * row['max_val']:.1f}% | {secs} |"
        )
    c = r["claims"]
    delay = f"{r['delay']:.1f}× the steps" if r["delay"] else "n/a"
    lines += [
        "",
        f"- Train accuracy near 100% long before held-out accuracy rises: {'yes' if c['memorized_first'] else 'no'} "
        f"(held-out passed {RISEN:.0%} after {delay} train passed {MEMORIZED:.0%}).",
        f"- Held-out accuracy ≥ 99% at the end: {'yes' if c['val_at_least_99'] else 'no'}.",
        f"- Without weight decay held-out accuracy does not rise in the same budget: "
        f"{'yes' if c['no_rise_without_decay'] else 'no'} (best {100 * r['rows'][1]['max_val']:.1f}%).",
    ]
    return "\n".join(lines) + "\n"
