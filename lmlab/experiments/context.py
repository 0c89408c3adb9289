"""How much context does a model use? (The lecture: an LSTM with n = 13 is as good as one with unbounded context.)

An LSTM and a Transformer are trained on the same characters of tiny Shakespeare (``lmlab train DATA lstm`` and
``lmlab train DATA baby``, the same steps and batch). Each is then scored on the same held-out positions with its
context cut to the last c characters, c = 1, 2, 4, …: the loss of the next character given only those (the
LSTM starts from a zero state, the Transformer sees a c-token window). The LSTM can also read past its training
length, since it carries a state; the Transformer stops at its block size. A model "uses" c characters of context
when cutting to c costs it little: the table gives the shortest c within 1% and within 0.05 nats of the longest
context's loss. Writes ``context.{md,json,png}`` in the workspace.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmlab.experiments.common import (
    SHAKESPEARE,
    Workspace,
    command_line,
    pick_size,
    text_source,
    train_seconds,
    val_windows,
)

NAME = "context"


@dataclass(frozen=True)
class Size:
    steps: int
    block_size: int = 64
    lstm_extra: int = 4  # the LSTM is also scored with up to this many times the block size of context
    positions: int = 1024  # held-out positions scored at every context length
    batch_size: int = 12


SIZES = {
    "full": Size(steps=2000),
    "quick": Size(steps=300, positions=256),
    "test": Size(steps=3, block_size=16, positions=8, batch_size=4, lstm_extra=2),
}


def context_lengths(longest: int) -> list[int]:
    """1, 2, 4, … up to ``longest`` (which is included)."""
    out, c = [], 1
    while c < longest:
        out.append(c)
        c *= 2
    return [*out, longest]


@torch.no_grad()
def loss_with_context(model: torch.nn.Module, windows: torch.Tensor, c: int, batch_size: int = 64) -> float:
    """Mean loss of each window's last token given only the ``c`` tokens before it. windows: (N, L + 1), L ≥ c."""
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch_size):
        w = windows[i : i + batch_size, -(c + 1) :]  # (B, c + 1): c tokens of context, then the target
        logits = model(w[:, :-1]).logits[:, -1]  # (B, V): the prediction after the c-th token
        total += float(F.cross_entropy(logits.float(), w[:, -1], reduction="sum"))
    return total / len(windows)


def used_context(curve: dict[int, float], rel: float = 0.01, absolute: float = 0.05) -> dict[str, int]:
    """The shortest context within ``rel`` (relative) and within ``absolute`` nats of the longest one's loss."""
    best = curve[max(curve)]
    return {
        "within_1pct": min(c for c, v in curve.items() if v <= best * (1 + rel)),
        "within_0.05": min(c for c, v in curve.items() if v <= best + absolute),
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
    """An LSTM and a Transformer trained alike, scored with their context cut to 1, 2, 4, … characters: loss vs
    usable context. Writes context.md, .json and .png in the workspace.

    Args:
        out: the workspace: datasets, runs, commands.txt and the results (reused when run again).
        quick: the small size instead of the full one.
        size: full, quick or test (a few steps, for the tests); overrides --quick.
        seed: the seed of training and of the scored positions.
        text: the text the models are trained on (tiny Shakespeare), character-level.
        device: where to train: auto, cpu, cuda or mps.
        quiet: do not show the steps' own output.
    """
    from lmlab.runs import load

    name, sz = pick_size(SIZES, size, quick)
    text = text_source(text)
    with Workspace(out, device=device, quiet=quiet) as ws:
        data = ws.char_dataset(text)
        longest = {"transformer": sz.block_size, "lstm": sz.block_size * sz.lstm_extra}
        windows = val_windows(data, max(longest.values()), sz.positions, seed)
        common = ["--model.block-size", sz.block_size, "--train.max-steps", sz.steps, "--train.batch-size",
                  sz.batch_size, "--train.seed", seed]  # fmt: skip
        rows = []
        for kind, preset in (("transformer", "baby"), ("lstm", "lstm")):
            step = ws.trained(f"runs/{kind}", ["train", data, preset, *common])
            model = load(step.path, device="cpu").model
            curve = {c: loss_with_context(model, windows, c) for c in context_lengths(longest[kind])}
            ws.say(f"{kind}: " + ", ".join(f"c={c}: {v:.3f}" for c, v in curve.items()))
            rows.append({"model": kind, "run": str(step.path), "seconds": train_seconds(step.path),
                         "params": model.num_params(), "curve": curve, "used": used_context(curve)})  # fmt: skip
        results = {"experiment": NAME, "size": name, "settings": asdict(sz), "seed": seed, "rows": rows}
        png = _figure(ws.root / f"{NAME}.png", results)
        return ws.finish(NAME, results, _markdown(results), [png], command_line(NAME, out=out, size=name, seed=seed))


def _figure(path: Path, r: dict[str, Any]) -> Path:
    from lmlab.figures import pyplot, save_png

    fig, ax = pyplot().subplots(figsize=(6.4, 4.2))
    for row, color in zip(r["rows"], ("#c44e52", "#4c72b0")):
        cs = [int(c) for c in row["curve"]]
        ax.plot(cs, list(row["curve"].values()), "o-", color=color, label=f"{row['model']} ({row['params']:,} params)")
        ax.axvline(row["used"]["within_1pct"], color=color, ls=":", lw=1)
    ax.axvline(r["settings"]["block_size"], color="black", ls="--", lw=0.8, label="training length")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context given (characters; dotted: within 1% of the longest)")
    ax.set_ylabel("next-character loss (nats)")
    ax.set_title("Loss vs usable context")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def _markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    cs = sorted({int(c) for row in r["rows"] for c in row["curve"]})
    lines = [
        f"Loss with the context cut to c characters ({r['size']} size, seed {r['seed']}; both trained {s['steps']:,} "
        f"steps on {s['block_size']}-character windows, batch {s['batch_size']}; {s['positions']:,} held-out "
        "positions)",
        "",
        "| model | " + " | ".join(f"c = {c}" for c in cs) + " | within 1% at | within 0.05 nats at |",
        "| --- | " + " | ".join("---:" for _ in cs) + " | ---: | ---: |",
    ]
    for row in r["rows"]:
        curve = {int(c): v for c, v in row["curve"].items()}
        cells = [f"{curve[c]:.3f}" if c in curve else "" for c in cs]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {row['used']['within_1pct']} | "
                     f"{row['used']['within_0.05']} |")  # fmt: skip
    return "\n".join(lines) + "\n"
