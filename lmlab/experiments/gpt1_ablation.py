"""GPT-1's ablation (Radford et al. 2018, Table 5) on SST-2, at the size of two CPU cores.

Pretrain a small Transformer LM and an LSTM LM of about its size on the Gutenberg books (GPT-1 used BooksCorpus),
fine-tune each with the classification head for the four rows of Table 5, for several seeds, and score on the SST-2
dev set: the Transformer with the auxiliary LM loss (the full method), the same Transformer from random weights
(no pre-training), the pretrained Transformer without the auxiliary loss, and the LSTM with it. Every step is an
ordinary ``lmlab prepare`` / ``train`` / ``finetune`` command (see ``common``), so the pretrained runs are reused
when the experiment runs again. Writes ``gpt1-ablation.{md,json,png}`` in the workspace.

Two deviations from GPT-1 are forced by the compute and are printed in the table's notes: the models are ~1.3M
parameters pretrained on ~3M tokens (GPT-1: 117M on ~1B), and the fine-tuning set is a fixed random subset of
SST-2's training sentences (the full 67k for 3 epochs is ~6,300 steps per run); a small set is also where
pre-training matters most. The learning rate is raised from
GPT-1's 6.25e-5, which barely moves a model this small in that many steps. The checkpoint scored is chosen on
other SST-2 training sentences, never on dev.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError
from lmlab.experiments.common import (
    Step,
    Workspace,
    bar_chart,
    best_metrics,
    mean_std,
    pick_size,
    require,
    step_seconds,
)


@dataclass(frozen=True)
class Size:
    pretrain_steps: int  # Transformer LM steps on the books
    lstm_steps: int  # LSTM LM steps (it is slower per step on CPU)
    pretrain_batch: int
    train_examples: int  # SST-2 training sentences fine-tuned on (a fixed random subset)
    select_examples: int  # other SST-2 training sentences that choose the best checkpoint
    epochs: float
    lr: float
    vocab_size: int
    seeds: int  # the default number of fine-tuning seeds per row


SIZES = {
    "full": Size(pretrain_steps=5000, lstm_steps=2500, pretrain_batch=32, train_examples=1000, select_examples=500,
                 epochs=6, lr=2e-3, vocab_size=4096, seeds=3),
    "quick": Size(pretrain_steps=600, lstm_steps=300, pretrain_batch=32, train_examples=1000, select_examples=300,
                  epochs=3, lr=2e-3, vocab_size=4096, seeds=2),
    "test": Size(pretrain_steps=4, lstm_steps=2, pretrain_batch=4, train_examples=32, select_examples=16, epochs=1,
                 lr=2e-3, vocab_size=300, seeds=1),
}  # fmt: skip

# GPT-1 Table 5, SST-2 column (accuracy, %)
ROWS: list[tuple[str, str, float]] = [
    ("full", "Transformer w/ aux LM (full)", 91.3),
    ("scratch", "Transformer w/o pre-training", 84.0),
    ("no-aux", "Transformer w/o aux LM", 92.0),
    ("lstm", "LSTM w/ aux LM", 90.5),
]


def subsets_tsv(src: Path, sizes: tuple[int, int], out: Path) -> tuple[Path, Path]:
    """Two disjoint random subsets of the data lines of ``src`` (a fixed seed), each with the header:
    ``out/NAME-train-N.tsv`` and ``out/NAME-select-M.tsv``."""
    from lmlab import io

    lines = src.read_text(encoding="utf-8").splitlines()
    n, m = sizes
    if len(lines) - 1 < n + m:
        raise LmlabError(f"{src} has {len(lines) - 1} data lines; this size needs {n + m} ({n} to train on, {m} "
                         "to choose the best checkpoint)")  # fmt: skip
    picked = random.Random(0).sample(lines[1:], n + m)
    paths = (out / f"{src.stem}-train-{n}.tsv", out / f"{src.stem}-select-{m}.tsv")
    for path, part in zip(paths, (picked[:n], picked[n:])):
        if not path.is_file():
            io.write_text(path, "\n".join([lines[0], *part]) + "\n")
    return paths


def pretrain(ws: Workspace, books: Path, sz: Size, archs: tuple[str, ...] = ("gpt", "lstm")) -> dict[str, Step]:
    """The books dataset and the language models pretrained on it (reused when already there): the Transformer
    (``baby``) and the LSTM (``lstm``, about its size)."""
    data = ws.prepared("books", [books.resolve(), "--tokenizer", "bpe", "--vocab-size", sz.vocab_size])
    steps = {"gpt": ("baby", sz.pretrain_steps), "lstm": ("lstm", sz.lstm_steps)}
    return {
        arch: ws.trained(f"pretrain/{arch}", ["train", data, steps[arch][0], "--train.max-steps", steps[arch][1],
                                              "--train.batch-size", sz.pretrain_batch])
        for arch in archs
    }  # fmt: skip


def run(
    out: str | Path = "runs/experiments",
    *,
    quick: bool = False,
    size: str | None = None,
    seeds: int | None = None,
    books: str | Path = "../shared/data/gutenberg",
    train: str | Path = "../shared/data/sentiment/sst2/train.tsv",
    dev: str | Path = "../shared/data/sentiment/sst2/dev.tsv",
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, Any]:
    """GPT-1 Table 5 on SST-2: pretrain a Transformer and an LSTM on the books, fine-tune each row for every
    seed, and write gpt1-ablation.md, .json and .png in the workspace.

    Args:
        out: the workspace: datasets, runs, commands.txt and the results (reused when run again).
        quick: the small size (about 10 minutes on 2 CPU cores) instead of the full one (about 41).
        size: full, quick or test (a few steps, for the tests); overrides --quick.
        seeds: fine-tuning seeds per row (0, 1, ...); default 3 (quick: 2).
        books: the directory of books to pretrain on (.txt files).
        train: SST-2's train.tsv: a fixed random subset is fine-tuned on, another chooses the best checkpoint.
        dev: SST-2's dev.tsv: the scores (it plays no part in training or in choosing a checkpoint).
        device: where to train: auto, cpu, cuda or mps.
        quiet: do not show the steps' own output.
    """
    name, sz = pick_size(SIZES, size, quick)
    seeds = sz.seeds if seeds is None else seeds
    if seeds < 1:
        raise LmlabError(f"--seeds must be 1 or more, got {seeds}")
    books = require(books, "the Gutenberg books directory (../shared/data/gutenberg)", "--books")
    train = require(train, "SST-2's train.tsv", "--train")
    dev = require(dev, "SST-2's dev.tsv", "--dev")
    with Workspace(out, device=device, quiet=quiet) as ws:
        bases = pretrain(ws, books, sz)
        train_sub, select = subsets_tsv(train, (sz.train_examples, sz.select_examples), ws.root / "data")
        runs: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in ROWS}
        for seed in range(seeds):
            for key, _, _ in ROWS:
                base = bases["lstm" if key == "lstm" else "gpt"].path
                argv = ["finetune", base, "classify", train_sub.resolve(), "--val", select.resolve(),
                        "--epochs", sz.epochs, "--train.lr", sz.lr, "--train.seed", seed]  # fmt: skip
                if key == "scratch":
                    argv.append("--scratch")
                if key == "no-aux":
                    argv += ["--aux-lm", "0"]
                step = ws.trained(f"finetune/{key}-seed{seed}", argv)
                m = ws.scored(step.path, dev.resolve())
                runs[key].append({
                    "seed": seed, "run": str(step.path), "accuracy": 100 * m["accuracy"], "f1": 100 * m["f1"],
                    "mcc": m["mcc"], "select_accuracy": 100 * best_metrics(step.path)["val_accuracy"],
                    "seconds": step.seconds, "step_s": step_seconds(step.path),
                })  # fmt: skip
        table = []
        for key, label, published in ROWS:
            acc = list(mean_std([r["accuracy"] for r in runs[key]]))
            f1 = list(mean_std([r["f1"] for r in runs[key]]))
            mcc = list(mean_std([r["mcc"] for r in runs[key]]))
            table.append({"row": key, "label": label, "published": published, "accuracy": acc, "f1": f1,
                          "mcc": mcc, "seeds": [r["accuracy"] for r in runs[key]]})  # fmt: skip
        full, scratch = table[0]["accuracy"], table[1]["accuracy"]
        gap = full[0] - scratch[0]
        spread = max(full[1], scratch[1])
        results = {
            "experiment": "gpt1-ablation",
            "size": name,
            "settings": asdict(sz),
            "seeds": seeds,
            "books": str(books.resolve()),
            "train": str(train.resolve()),
            "dev": str(dev.resolve()),
            "pretrained": {k: str(v.path) for k, v in bases.items()},
            "rows": table,
            "runs": runs,
            "pretraining_gain": gap,
            "goal_met": gap > 2 * spread,
        }
        md = _markdown(results)
        js, mdp = ws.write_results("gpt1-ablation", results, md)
        png = bar_chart(
            ws.root / "gpt1-ablation.png", [r["label"] for r in table], [r["accuracy"][0] for r in table],
            [r["accuracy"][1] for r in table], ylabel="SST-2 dev accuracy (%)",
            title=f"GPT-1 Table 5 on SST-2 ({seeds} seed{'s' * (seeds > 1)}, {name})",
            reference=[r["published"] for r in table],
        )  # fmt: skip
        ws.say(f"wrote {mdp}, {js} and {png}")
        print(md)
        return results


def _markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [
        f"GPT-1 ablation on SST-2 dev ({r['size']} size, seeds 0-{r['seeds'] - 1}; mean ± std over seeds)",
        "",
        "| row | accuracy (%) | macro-F1 (%) | MCC | GPT-1 (%) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        (a, sa), (f, sf), (m, sm) = row["accuracy"], row["f1"], row["mcc"]
        lines.append(f"| {row['label']} | {a:.1f} ± {sa:.1f} | {f:.1f} ± {sf:.1f} | {m:.3f} ± {sm:.3f} | "
                     f"{row['published']:.1f} |")  # fmt: skip
    lines += [
        "",
        f"Pre-training gain (full − no pre-training): {r['pretraining_gain']:+.1f} points; goal (more than twice the "
        f"larger seed spread): {'met' if r['goal_met'] else 'missed'}.",
        f"Pretraining: {s['pretrain_steps']} steps (Transformer, `baby`) and {s['lstm_steps']} steps (LSTM, `lstm`) "
        f"of {s['pretrain_batch']} sequences on the books, BPE {s['vocab_size']}; fine-tuning: {s['train_examples']} "
        f"SST-2 training sentences, {s['epochs']:g} epochs, lr {s['lr']:g}, batch 32, λ = 0.5 (0 for w/o aux LM); "
        f"the checkpoint scored is the best on {s['select_examples']} other training sentences; dev.tsv is used only "
        "for the scores.",
    ]
    return "\n".join(lines) + "\n"
