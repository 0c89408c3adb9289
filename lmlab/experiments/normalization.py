"""LayerNorm vs BatchNorm in a Transformer (the lecture's argument for LayerNorm), measured.

The same character-level Transformer is trained on tiny Shakespeare with each normalization (``--model.norm
layernorm | rmsnorm | batchnorm | none``) at several batch sizes, every run on the same number of tokens (so a
small batch takes more, noisier steps). Each run's validation loss over the whole validation split (``lmlab
eval``) is plotted against the batch size, beside its last training loss: BatchNorm normalizes each channel by
statistics of the batch (and, in a causal model, of positions the model should not see yet) while training, and
by running averages at evaluation, so its training loss can look better than what it delivers. Writes
``normalization.{md,json,png}`` in the workspace.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmlab.experiments.common import (
    SHAKESPEARE,
    Workspace,
    command_line,
    metric_rows,
    pick_size,
    text_source,
    train_seconds,
)

NAME = "normalization"
NORMS = ("layernorm", "rmsnorm", "batchnorm", "none")


@dataclass(frozen=True)
class Size:
    batch_sizes: tuple[int, ...]
    tokens: int  # training tokens of every run
    n_layer: int = 4
    n_embd: int = 64
    block_size: int = 64
    lr: float = 1e-3


SIZES = {
    "full": Size(batch_sizes=(1, 4, 16, 64), tokens=500_000),
    "quick": Size(batch_sizes=(2, 16), tokens=40_000, n_layer=2),
    "test": Size(batch_sizes=(1, 2), tokens=256, n_layer=1, n_embd=16, block_size=16),
}


def run(
    out: str | Path = f"experiments/{NAME}",
    *,
    quick: bool = False,
    size: str | None = None,
    seed: int = 0,
    text: str | Path = SHAKESPEARE,
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, Any]:
    """LayerNorm, RMSNorm, BatchNorm and no norm in the same Transformer at several batch sizes (equal tokens):
    validation loss vs batch size. Writes normalization.md, .json and .png in the workspace.

    Args:
        out: the workspace: datasets, runs, commands.txt and the results (reused when run again).
        quick: the small size instead of the full one.
        size: full, quick or test (a few steps, for the tests); overrides --quick.
        seed: the seed of training.
        text: the text the models are trained on (tiny Shakespeare), character-level.
        device: where to train: auto, cpu, cuda or mps.
        quiet: do not show the steps' own output.
    """
    name, sz = pick_size(SIZES, size, quick)
    text = text_source(text)
    with Workspace(out, device=device, quiet=quiet) as ws:
        data = ws.char_dataset(text)
        rows = []
        for norm in NORMS:
            for batch in sz.batch_sizes:
                steps = max(1, sz.tokens // (batch * sz.block_size))
                argv = [
                    "train", data, "baby", "--model.norm", norm, "--model.n-layer", sz.n_layer,
                    "--model.n-embd", sz.n_embd, "--model.block-size", sz.block_size, "--train.batch-size", batch,
                    "--train.max-steps", steps, "--train.lr", sz.lr, "--train.min-lr", sz.lr / 10,
                    "--train.warmup-steps", max(1, steps // 20), "--train.eval-every", steps, "--train.eval-steps", 1,
                    "--train.log-every", max(1, steps // 10), "--train.sample-tokens", 0, "--train.seed", seed,
                    "--train.on-nan", "skip",
                ]  # fmt: skip
                step = ws.trained(f"runs/{norm}-b{batch}", argv)
                train = [r["train_loss"] for r in metric_rows(step.path) if "train_loss" in r]
                rows.append({
                    "norm": norm, "batch_size": batch, "steps": steps, "run": str(step.path),
                    "seconds": train_seconds(step.path), "val_loss": ws.evaluated(step.path, "latest")["loss"],
                    "train_loss": train[-1] if train else None,
                })  # fmt: skip
        results = {"experiment": NAME, "size": name, "settings": asdict(sz), "seed": seed, "rows": rows,
                   "findings": findings(rows, sz)}  # fmt: skip
        png = _figure(ws.root / f"{NAME}.png", results)
        return ws.finish(NAME, results, _markdown(results), [png], command_line(NAME, out=out, size=name, seed=seed))


def findings(rows: list[dict[str, Any]], sz: Size) -> dict[str, Any]:
    """BatchNorm's excess validation loss over LayerNorm at the smallest and the largest batch, and its gap
    between evaluation and training loss, against LayerNorm's."""
    val = {(r["norm"], r["batch_size"]): r["val_loss"] for r in rows}
    gap = {(r["norm"], r["batch_size"]): r["val_loss"] - r["train_loss"] for r in rows if r["train_loss"]}
    small, large = sz.batch_sizes[0], sz.batch_sizes[-1]
    excess = {b: val["batchnorm", b] - val["layernorm", b] for b in (small, large)}
    return {
        "batchnorm_excess_small_batch": excess[small],
        "batchnorm_excess_large_batch": excess[large],
        "small_batch_problem_shows": excess[small] > excess[large] and excess[small] > 0.02,
        "batchnorm_eval_minus_train_small": gap.get(("batchnorm", small)),
        "layernorm_eval_minus_train_small": gap.get(("layernorm", small)),
    }


def _figure(path: Path, r: dict[str, Any]) -> Path:
    from lmlab.figures import pyplot, save_png

    fig, ax = pyplot().subplots(figsize=(6.4, 4.2))
    colors = dict(zip(NORMS, ("#4c72b0", "#55a868", "#c44e52", "#8c8c8c")))
    ordinary = sorted(row["val_loss"] for row in r["rows"])
    top = min(ordinary[-1], 2 * ordinary[len(ordinary) // 2]) + 0.3  # a diverged run would flatten every other line
    for norm in NORMS:
        rows = [row for row in r["rows"] if row["norm"] == norm]
        xs = [row["batch_size"] for row in rows]
        ax.plot(xs, [min(row["val_loss"], top) for row in rows], "o-", color=colors[norm], label=f"{norm}: validation")
        tr = [(row["batch_size"], row["train_loss"]) for row in rows if row["train_loss"]]
        ax.plot([p[0] for p in tr], [p[1] for p in tr], ":", color=colors[norm], alpha=0.7)
        for row in rows:
            if row["val_loss"] > top:  # off the scale: drawn at the edge with its value
                ax.annotate(f"{row['val_loss']:.0f}", (row["batch_size"], top), xytext=(6, -12),
                            textcoords="offset points", color=colors[norm], fontsize=8)  # fmt: skip
    ax.set_ylim(top=top + 0.05)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"batch size (sequences of {r['settings']['block_size']}; same tokens for every run)")
    ax.set_ylabel("loss (nats per character)")
    ax.set_title("Normalization vs batch size (solid: validation, dotted: training)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def _markdown(r: dict[str, Any]) -> str:
    s, f = r["settings"], r["findings"]
    batches = s["batch_sizes"]
    lines = [
        f"Normalization vs batch size ({r['size']} size, seed {r['seed']}; {s['n_layer']} layers, width "
        f"{s['n_embd']}, block {s['block_size']}, {s['tokens']:,} training tokens per run; validation loss over the "
        "whole split, training loss of the last logged steps in brackets)",
        "",
        "| norm | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "| --- | " + " | ".join("---:" for _ in batches) + " |",
    ]
    for norm in NORMS:
        cells = []
        for b in batches:
            row = next(x for x in r["rows"] if x["norm"] == norm and x["batch_size"] == b)
            train = f" ({row['train_loss']:.3f})" if row["train_loss"] else ""
            cells.append(f"{row['val_loss']:.3f}{train}")
        lines.append(f"| {norm} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"BatchNorm minus LayerNorm validation loss: {f['batchnorm_excess_small_batch']:+.3f} at batch {batches[0]}, "
        f"{f['batchnorm_excess_large_batch']:+.3f} at batch {batches[-1]}: the small-batch problem "
        f"{'shows' if f['small_batch_problem_shows'] else 'does not show at this scale'}.",
    ]
    if f["batchnorm_eval_minus_train_small"] is not None and f["layernorm_eval_minus_train_small"] is not None:
        lines.append(
            f"Validation minus training loss at batch {batches[0]}: BatchNorm "
            f"{f['batchnorm_eval_minus_train_small']:+.3f}, LayerNorm {f['layernorm_eval_minus_train_small']:+.3f}."
        )
        if f["batchnorm_eval_minus_train_small"] > 2 * max(f["layernorm_eval_minus_train_small"], 0.05):
            lines.append(
                "BatchNorm's training loss is not what it delivers: while training, each channel is normalized by "
                "the statistics of the batch's positions, later ones included, so a small batch lets the model read "
                "what comes next through them; evaluation uses running averages instead, and the shortcut is gone."
            )
    return "\n".join(lines) + "\n"
