"""Do language models just memorize their training data? (The lecture's question, and why it matters for fair use.)

Models of a few sizes are trained on the same small corpus (the first part of tiny Shakespeare, byte-level BPE)
for more and more epochs: one run per size, resumed to each epoch count in turn (``lmlab train --resume RUN
--train.max-steps N``, constant learning rate after warmup, so stopping and going on changes nothing). After
each, extraction is measured as in Carlini et al. (2021/2023): from a ``prefix``-token prefix of a training
sequence, does greedy decoding reproduce its next ``suffix`` tokens exactly? The same on held-out text gives the
rate a model reaches without having seen the text (predictable continuations), and the validation loss shows
generalization beside it: memorization is the gap between the two extraction rates, and it grows with epochs
and size while the validation loss stops improving and then worsens. Writes ``memorization.{md,json,png}``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmlab import io
from lmlab.experiments.common import SHAKESPEARE, Workspace, command_line, pick_size, text_file, text_source

NAME = "memorization"


@dataclass(frozen=True)
class Size:
    chars: int  # characters of the corpus (its last quarter is held out: enough windows to test)
    models: tuple[tuple[int, int], ...]  # (n_layer, n_embd) of each size
    epochs: tuple[int, ...]
    vocab_size: int = 1024
    block_size: int = 64
    batch_size: int = 16
    prefix: int = 32
    suffix: int = 32
    samples: int = 256  # sequences tested per split
    lr: float = 1e-3


SIZES = {
    "full": Size(chars=40_000, models=((2, 64), (4, 128), (6, 192)), epochs=(1, 4, 16, 64, 256)),
    "quick": Size(chars=20_000, models=((2, 64), (2, 128)), epochs=(1, 8, 32), samples=64, vocab_size=512),
    "test": Size(chars=20_000, models=((1, 16),), epochs=(1, 2), vocab_size=300, block_size=16, batch_size=4,
                 prefix=4, suffix=4, samples=4),
}  # fmt: skip


def extraction_rate(model: Any, tokens: np.ndarray, sz: Size, seed: int) -> float:
    """The share of ``samples`` random sequences of ``tokens`` whose ``suffix`` tokens greedy decoding reproduces
    exactly from their ``prefix`` tokens."""
    from lmlab.generation.engine import generate_ids
    from lmlab.generation.request import GenerationRequest

    n = sz.prefix + sz.suffix
    starts = np.random.default_rng(seed).integers(0, len(tokens) - n, size=sz.samples)
    seqs = [tokens[s : s + n].astype(np.int64).tolist() for s in starts]
    request = GenerationRequest(temperature=0.0, max_new_tokens=sz.suffix)
    done = generate_ids(model, [s[: sz.prefix] for s in seqs], request, on_notice=lambda m: None)
    return sum(c.tokens == s[sz.prefix :] for c, s in zip(done, seqs)) / len(seqs)


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
    """Models of several sizes trained for increasing epochs on one corpus: the share of training sequences they
    reproduce exactly from a prefix, against held-out text, beside the validation loss. Writes memorization.md,
    .json and .png in the workspace.

    Args:
        out: the workspace: datasets, runs, commands.txt and the results (reused when run again).
        quick: the small size instead of the full one.
        size: full, quick or test (a few steps, for the tests); overrides --quick.
        seed: the seed of training and of the tested sequences.
        text: the text whose beginning the models are trained on (tiny Shakespeare).
        device: where to train: auto, cpu, cuda or mps.
        quiet: do not show the steps' own output.
    """
    from lmlab.data.dataset import load_dataset
    from lmlab.runs import load

    name, sz = pick_size(SIZES, size, quick)
    text = text_source(text)
    with Workspace(out, device=device, quiet=quiet) as ws:
        corpus = text_file(ws, "corpus", Path(text).read_text(encoding="utf-8")[: sz.chars], ".txt")
        data = ws.prepared("corpus-bpe", [corpus.resolve(), "--tokenizer", "bpe", "--vocab-size", sz.vocab_size,
                                          "--val-fraction", 0.25, "--min-val-tokens", sz.prefix + sz.suffix + 1,
                                          "--quiet"])  # fmt: skip
        ds = load_dataset(data)
        train_tokens, val_tokens = np.asarray(ds.tokens("train")), np.asarray(ds.tokens("val"))
        per_epoch = max(1, len(train_tokens) // (sz.batch_size * sz.block_size))
        rows = []
        for n_layer, n_embd in sz.models:
            argv = [
                "train", data, "baby", "--model.n-layer", n_layer, "--model.n-embd", n_embd, "--model.n-head",
                max(1, n_embd // 32), "--model.block-size", sz.block_size, "--train.batch-size", sz.batch_size,
                "--train.lr", sz.lr, "--train.min-lr", sz.lr, "--train.schedule", "constant", "--train.warmup-steps",
                min(100, per_epoch), "--train.eval-every", 16 * per_epoch, "--train.eval-steps", 8,
                "--train.sample-tokens", 0, "--train.seed", seed, "--train.max-steps", per_epoch * sz.epochs[0],
            ]  # fmt: skip
            run_dir = ws.trained(f"runs/l{n_layer}-d{n_embd}", argv).path
            for epochs in sz.epochs:
                steps = per_epoch * epochs
                cached = run_dir / f"memorization-step{steps}-seed{seed}.json"
                if not cached.is_file():
                    if io.read_json(run_dir / "config.json")["train"]["max_steps"] < steps:
                        ws.lmlab(["train", "--resume", run_dir, "--train.max-steps", steps])
                    loaded = load(run_dir, checkpoint="latest", device="cpu")
                    row = {
                        "n_layer": n_layer, "n_embd": n_embd, "params": loaded.model.num_params(), "epochs": epochs,
                        "steps": steps, "run": str(run_dir),
                        "train_extracted": extraction_rate(loaded.model, train_tokens, sz, seed),
                        "val_extracted": extraction_rate(loaded.model, val_tokens, sz, seed + 1),
                        "val_loss": ws.evaluated(run_dir, "latest", batch_size=16)["loss"],
                    }  # fmt: skip
                    io.write_json(cached, row)
                row = io.read_json(cached)
                ws.say(f"{n_layer}x{n_embd}, {epochs} epochs: extracted {100 * row['train_extracted']:.1f}% of "
                       f"training, {100 * row['val_extracted']:.1f}% of held-out")  # fmt: skip
                rows.append(row)
        results = {"experiment": NAME, "size": name, "settings": asdict(sz), "seed": seed, "rows": rows,
                   "train_tokens": int(len(train_tokens)), "val_tokens": int(len(val_tokens))}  # fmt: skip
        png = _figure(ws.root / f"{NAME}.png", results)
        return ws.finish(NAME, results, _markdown(results), [png], command_line(NAME, out=out, size=name, seed=seed))


def _figure(path: Path, r: dict[str, Any]) -> Path:
    from lmlab.figures import pyplot, save_png

    fig, (a1, a2) = pyplot().subplots(1, 2, figsize=(11, 4.2))
    colors = ("#8c8c8c", "#4c72b0", "#c44e52", "#55a868")
    for (n_layer, n_embd), color in zip(r["settings"]["models"], colors):
        rows = [x for x in r["rows"] if (x["n_layer"], x["n_embd"]) == (n_layer, n_embd)]
        ep = [x["epochs"] for x in rows]
        label = f"{n_layer}×{n_embd} ({rows[0]['params'] / 1e6:.2f}M)"
        a1.plot(ep, [100 * x["train_extracted"] for x in rows], "o-", color=color, label=f"{label}: training")
        a1.plot(ep, [100 * x["val_extracted"] for x in rows], "x:", color=color, label=f"{label}: held-out")
        a2.plot(ep, [x["val_loss"] for x in rows], "o-", color=color, label=label)
    s = r["settings"]
    a1.set_ylabel(f"sequences reproduced exactly (%): {s['suffix']} tokens from {s['prefix']}")
    a2.set_ylabel("validation loss (nats per token)")
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("epochs over the training text")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    a1.set_title("Memorization: extraction from training vs held-out text", fontsize=10)
    a2.set_title("Generalization: validation loss", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def _markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    epochs = s["epochs"]
    lines = [
        f"Extraction: % of {s['samples']} sequences whose next {s['suffix']} tokens greedy decoding reproduces from "
        f"a {s['prefix']}-token prefix, training / held-out text; validation loss in brackets ({r['size']} size, "
        f"seed {r['seed']}; {r['train_tokens']:,} training tokens, BPE {s['vocab_size']})",
        "",
        "| model | " + " | ".join(f"{e} epoch{'s' if e > 1 else ''}" for e in epochs) + " |",
        "| --- | " + " | ".join("---:" for _ in epochs) + " |",
    ]
    for n_layer, n_embd in s["models"]:
        rows = {x["epochs"]: x for x in r["rows"] if (x["n_layer"], x["n_embd"]) == (n_layer, n_embd)}
        first = next(iter(rows.values()))
        cells = [f"{100 * rows[e]['train_extracted']:.1f} / {100 * rows[e]['val_extracted']:.1f} "
                 f"({rows[e]['val_loss']:.2f})" for e in epochs]  # fmt: skip
        lines.append(f"| {n_layer}×{n_embd} ({first['params'] / 1e6:.2f}M) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
