"""Positional encodings: the sinusoidal table, its rotation identity, and learned vs sinusoidal vs RoPE (vs none)
trained on the same text and evaluated at and beyond the trained length.

1. The sinusoidal encoding of "Attention Is All You Need", PE(pos, 2i) = sin(pos·ω_i), PE(pos, 2i+1) =
   cos(pos·ω_i), ω_i = 10000^(−2i/d), drawn as a matrix (lmlab's own ``sinusoidal_encoding``).
2. The lecture's identity PE(pos + k) = A_k·PE(pos): A_k is block-diagonal with one 2×2 rotation by k·ω_i per
   (sin, cos) pair, the same matrix for every pos. Checked on lmlab's table for many pos and k; the largest
   difference is printed (float32 rounding, nothing more).
3. The same character-level Transformer trained on tiny Shakespeare with ``--model.pos learned | sinusoidal |
   rope | none``, then its loss at every position of validation windows up to ``extend`` times the trained
   length: a learned table has no vectors past its block size; the others run, and the figure shows how each
   degrades past the length it was trained on. Writes ``positional-encoding.{md,json}``,
   ``positional-encoding.png`` (loss vs position) and ``positional-encoding-matrix.png`` in the workspace.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lmlab.experiments.common import (
    SHAKESPEARE,
    Workspace,
    command_line,
    per_position_loss,
    pick_size,
    text_source,
    train_seconds,
    val_windows,
)

NAME = "positional-encoding"
POSITIONS = ("learned", "sinusoidal", "rope", "none")


@dataclass(frozen=True)
class Size:
    steps: int
    block_size: int = 64
    extend: int = 4  # evaluate up to this many times the trained length
    windows: int = 256
    n_layer: int = 4
    n_embd: int = 128
    batch_size: int = 16
    pe_dim: int = 128  # the width of the drawn and checked sinusoidal table
    pe_positions: int = 2048


SIZES = {
    "full": Size(steps=2000),
    "quick": Size(steps=200, n_layer=2, windows=64),
    "test": Size(steps=3, block_size=16, n_layer=1, n_embd=16, windows=4, batch_size=4, pe_dim=16, pe_positions=64),
}


def rotation(k: int, d: int) -> torch.Tensor:
    """A_k (d, d): block-diagonal, rotating each (sin, cos) pair of the encoding by k·ω_i."""
    omega = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    c, s = torch.cos(k * omega), torch.sin(k * omega)
    a = torch.zeros(d, d, dtype=torch.float64)
    i = torch.arange(0, d, 2)
    a[i, i], a[i, i + 1], a[i + 1, i], a[i + 1, i + 1] = c, s, -s, c
    return a


def check_identity(d: int, positions: int, ks: tuple[int, ...]) -> dict[int, float]:
    """Max |PE(pos + k) − A_k·PE(pos)| over pos < ``positions`` for each k, on lmlab's (float32) encoding."""
    from lmlab.models.layers import sinusoidal_encoding

    errors = {}
    for k in ks:
        pos = torch.arange(positions)
        pe, shifted = sinusoidal_encoding(pos, d).double(), sinusoidal_encoding(pos + k, d).double()
        errors[k] = float((shifted - pe @ rotation(k, d).T).abs().max())
    return errors


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
    """The sinusoidal table and its rotation identity; learned vs sinusoidal vs RoPE vs no positions trained alike
    and evaluated at and beyond the trained length. Writes positional-encoding.md, .json and two PNGs.

    Args:
        out: the workspace: datasets, runs, commands.txt and the results (reused when run again).
        quick: the small size instead of the full one.
        size: full, quick or test (a few steps, for the tests); overrides --quick.
        seed: the seed of training and of the evaluation windows.
        text: the text the models are trained on (tiny Shakespeare), character-level.
        device: where to train: auto, cpu, cuda or mps.
        quiet: do not show the steps' own output.
    """
    from lmlab.runs import load

    name, sz = pick_size(SIZES, size, quick)
    text = text_source(text)
    ks = (1, 2, 3, 5, 10, 50, 100, 500, 1000)
    with Workspace(out, device=device, quiet=quiet) as ws:
        identity = check_identity(sz.pe_dim, sz.pe_positions, ks)
        ws.say("max |PE(pos+k) - A_k PE(pos)|: " + ", ".join(f"k={k}: {e:.1e}" for k, e in identity.items()))
        data = ws.char_dataset(text)
        length = sz.block_size * sz.extend
        windows = val_windows(data, length, sz.windows, seed)
        rows = []
        for pos in POSITIONS:
            argv = [
                "train", data, "baby", "--model.pos", pos, "--model.n-layer", sz.n_layer, "--model.n-embd", sz.n_embd,
                "--model.block-size", sz.block_size, "--train.batch-size", sz.batch_size, "--train.max-steps",
                sz.steps, "--train.eval-every", max(1, sz.steps // 4), "--train.sample-tokens", 0, "--train.seed", seed,
            ]  # fmt: skip
            step = ws.trained(f"runs/{pos}", argv)
            model = load(step.path, device="cpu").model
            upto = sz.block_size if pos == "learned" else length  # a learned table ends at the block size
            losses = per_position_loss(model, windows[:, : upto + 1])
            spans = {f"{a}-{b}": _mean(losses, a, b) for a, b in _spans(sz)}
            rows.append({"pos": pos, "run": str(step.path), "seconds": train_seconds(step.path),
                         "loss_by_position": losses, "spans": spans})  # fmt: skip
        results = {"experiment": NAME, "size": name, "settings": asdict(sz), "seed": seed,
                   "identity_max_error": identity, "rows": rows}  # fmt: skip
        figs = [_loss_figure(ws.root / f"{NAME}.png", results), _matrix_figure(ws.root / f"{NAME}-matrix.png", sz)]
        return ws.finish(NAME, results, _markdown(results), figs, command_line(NAME, out=out, size=name, seed=seed))


def _spans(sz: Size) -> list[tuple[int, int]]:
    """Position ranges of the table: within the trained length, then each further block size."""
    return [(0, sz.block_size)] + [(sz.block_size * i, sz.block_size * (i + 1)) for i in range(1, sz.extend)]


def _mean(values: list[float], a: int, b: int) -> float | None:
    part = values[a:b]
    return sum(part) / len(part) if part else None


def _loss_figure(path: Path, r: dict[str, Any]) -> Path:
    from lmlab.figures import pyplot, save_png

    s = r["settings"]
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    colors = dict(zip(POSITIONS, ("#c44e52", "#4c72b0", "#55a868", "#8c8c8c")))
    bin_ = max(1, s["block_size"] // 16)
    for row in r["rows"]:
        v = row["loss_by_position"]
        xs = list(range(0, len(v), bin_))
        ax.plot(xs, [sum(v[i : i + bin_]) / len(v[i : i + bin_]) for i in xs], color=colors[row["pos"]],
                label=row["pos"])  # fmt: skip
    ax.axvline(s["block_size"], color="black", ls="--", lw=0.8, label="trained length")
    ax.set_xlabel("position in the window (characters)")
    ax.set_ylabel("validation loss (nats per character)")
    ax.set_title("Loss by position, within and beyond the trained length")
    top = max(max(row["loss_by_position"][: s["block_size"]]) for row in r["rows"])
    ax.set_ylim(top=max(top + 1.0, 4.0), bottom=min(min(row["loss_by_position"]) for row in r["rows"]) - 0.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def _matrix_figure(path: Path, sz: Size) -> Path:
    from lmlab.figures import pyplot, save_png
    from lmlab.models.layers import sinusoidal_encoding

    pe = sinusoidal_encoding(torch.arange(min(sz.pe_positions, 256)), sz.pe_dim)
    fig, ax = pyplot().subplots(figsize=(6.4, 4))
    im = ax.imshow(pe.numpy(), aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
    ax.set_xlabel("dimension (even: sin, odd: cos)")
    ax.set_ylabel("position")
    ax.set_title(f"Sinusoidal positional encoding, d = {sz.pe_dim}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return save_png(fig, path)


def _markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    spans = [f"{a}-{b}" for a, b in _spans(Size(**{**s}))]
    worst = max(r["identity_max_error"].values())
    lines = [
        f"PE(pos + k) = A_k·PE(pos) on lmlab's sinusoidal table (d = {s['pe_dim']}, pos < {s['pe_positions']}, "
        f"k in {', '.join(map(str, r['identity_max_error']))}): largest difference {worst:.1e}.",
        "",
        f"Validation loss by position ({r['size']} size, seed {r['seed']}; {s['n_layer']} layers, width {s['n_embd']}, "
        f"trained on {s['block_size']}-character windows for {s['steps']:,} steps; {s['windows']} windows of "
        f"{s['block_size'] * s['extend']})",
        "",
        "| positions | " + " | ".join(f"{sp}" + (" (trained)" if i == 0 else "") for i, sp in enumerate(spans)) + " |",
        "| --- | " + " | ".join("---:" for _ in spans) + " |",
    ]
    for row in r["rows"]:
        cells = [f"{row['spans'][sp]:.3f}" if row["spans"].get(sp) is not None else "n/a" for sp in spans]
        lines.append(f"| {row['pos']} | " + " | ".join(cells) + " |")
    lines += ["", "n/a: a learned table has no vector for a position past its block size."]
    return "\n".join(lines) + "\n"
