"""Chain of thought, trained rather than prompted (Wei et al. 2022; Nye et al. 2021's scratchpads): the same small
Transformer learns multi-digit addition from scratch, once answering directly and once writing out the column
additions first.

Problems are ``a+b`` with a and b of 3 to 5 digits (each length equally likely). The direct model's reply is the
sum; the scratchpad model's reply adds the columns from the right, carry included, then gives the sum::

    direct       5307+886   ->  6193
    scratchpad   5307+886   ->  7+6+0=13;0+8+1=9;3+8+0=11;5+0+1=6;=6193

Both are character-level chat datasets (``lmlab prepare FILE --task sft``) trained with the same model, steps,
batch and block size, so with packing both see the same number of tokens: equal training compute (the direct
model sees more problems). Held-out problems, never trained on, are answered greedily through the chat template
(``common.greedy_answers``) at each trained length and at 6 digits, longer than any seen; the answer is what follows
the reply's last ``=``. Writes ``chain-of-thought.{md,json,png}`` in the workspace.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmlab.experiments.common import (
    Workspace,
    best_metrics,
    command_line,
    greedy_answers,
    metric_rows,
    pick_size,
    records_file,
    train_seconds,
)

NAME = "chain-of-thought"
FORMATS = ("direct", "scratchpad")


@dataclass(frozen=True)
class Size:
    train_problems: int
    test_per_length: int
    steps: int
    batch_size: int = 16
    block_size: int = 128
    n_layer: int = 4
    n_embd: int = 128
    lr: float = 1e-3
    train_digits: tuple[int, ...] = (3, 4, 5)
    longer_digits: tuple[int, ...] = (6,)


SIZES = {
    "full": Size(train_problems=30_000, test_per_length=300, steps=2500),
    "quick": Size(train_problems=4_000, test_per_length=60, steps=300, n_layer=2),
    "test": Size(train_problems=60, test_per_length=3, steps=4, batch_size=2, n_layer=1, n_embd=32, block_size=96),
}


def scratchpad(a: int, b: int) -> str:
    """The column additions of ``a + b`` from the right (digit + digit + carry = column sum), then ``=SUM``."""
    x, y = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(x), len(y))):
        dx, dy = int(x[i]) if i < len(x) else 0, int(y[i]) if i < len(y) else 0
        s = dx + dy + carry
        steps.append(f"{dx}+{dy}+{carry}={s}")
        carry = s // 10
    return ";".join(steps) + f";={a + b}"


def reply(a: int, b: int, fmt: str) -> str:
    return str(a + b) if fmt == "direct" else scratchpad(a, b)


def final_answer(text: str) -> str:
    """What a reply answers: the text after its last ``=`` (a direct reply has none: all of it)."""
    return text.rsplit("=", 1)[-1].strip()


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randrange(10 ** (digits - 1), 10**digits)


def make_problems(sz: Size, seed: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(training pairs, held-out pairs): operand lengths drawn from the trained lengths; the held-out set has
    ``test_per_length`` pairs whose longer operand has each trained length and each longer length, none trained on."""
    rng = random.Random(seed)
    test: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for digits in (*sz.train_digits, *sz.longer_digits):
        others = [d for d in (*sz.train_digits, *sz.longer_digits) if d <= digits]
        while sum(max(len(str(a)), len(str(b))) == digits for a, b in test) < sz.test_per_length:
            pair = (_operand(rng, digits), _operand(rng, rng.choice(others)))
            pair = pair if rng.random() < 0.5 else pair[::-1]
            if pair not in seen:
                seen.add(pair)
                test.append(pair)
    train: list[tuple[int, int]] = []
    while len(train) < sz.train_problems:
        pair = (_operand(rng, rng.choice(sz.train_digits)), _operand(rng, rng.choice(sz.train_digits)))
        if pair not in seen:
            train.append(pair)
    return train, test


def run(
    out: str | Path = f"experiments/{NAME}",
    *,
    quick: bool = False,
    size: str | None = None,
    seed: int = 0,
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, Any]:
    """Direct answers vs a written-out scratchpad on multi-digit addition, trained from scratch with equal compute;
    exact match on held-out problems, including longer ones. Writes chain-of-thought.md, .json and .png.

    Args:
        out: the workspace: datasets, runs, commands.txt and the results (reused when run again).
        quick: the small size instead of the full one.
        size: full, quick or test (a few steps, for the tests); overrides --quick.
        seed: the seed of the generated problems and of training.
        device: where to train: auto, cpu, cuda or mps.
        quiet: do not show the steps' own output.
    """
    name, sz = pick_size(SIZES, size, quick)
    train, test = make_problems(sz, seed)
    with Workspace(out, device=device, quiet=quiet) as ws:
        rows = []
        for fmt in FORMATS:
            records = [{"prompt": f"{a}+{b}", "completion": reply(a, b, fmt)} for a, b in train]
            source = records_file(ws, f"add-{fmt}", records)
            data = ws.prepared(f"add-{fmt}", [source.resolve(), "--task", "sft", "--tokenizer", "char",
                                              "--val-fraction", 0.02, "--seed", seed, "--quiet"])  # fmt: skip
            argv = [
                "train", data, "baby", "--model.n-layer", sz.n_layer, "--model.n-embd", sz.n_embd,
                "--model.block-size", sz.block_size, "--train.batch-size", sz.batch_size,
                "--train.max-steps", sz.steps, "--train.lr", sz.lr, "--train.min-lr", sz.lr / 10,
                "--train.warmup-steps", min(100, sz.steps // 10 + 1), "--train.eval-every", max(1, sz.steps // 5),
                "--train.eval-steps", 1_000_000, "--train.sample-tokens", 0, "--train.seed", seed,
            ]  # fmt: skip
            step = ws.trained(f"runs/{fmt}", argv)
            longest = max(len(reply(a, b, fmt)) for a, b in test) + 2
            got = greedy_answers(step.path, [f"{a}+{b}" for a, b in test], max_new_tokens=longest, batch_size=128)
            by_len: dict[int, list[bool]] = {}
            for (a, b), (text, _) in zip(test, got):
                by_len.setdefault(max(len(str(a)), len(str(b))), []).append(final_answer(text) == str(a + b))
            em = {d: 100 * sum(v) / len(v) for d, v in sorted(by_len.items())}
            trained = [em[d] for d in sz.train_digits]
            rows.append({
                "format": fmt, "run": str(step.path), "seconds": train_seconds(step.path), "exact_match": em,
                "in_distribution": sum(trained) / len(trained),
                "longer": {d: em[d] for d in sz.longer_digits},
                "val_exact": best_metrics(step.path).get("val_exact"),
                "train_tokens": next((r["tokens"] for r in reversed(metric_rows(step.path)) if "tokens" in r), None),
                "example": {"problem": f"{test[0][0]}+{test[0][1]}", "reply": got[0][0]},
            })  # fmt: skip
        gap = rows[1]["in_distribution"] - rows[0]["in_distribution"]
        results = {
            "experiment": NAME, "size": name, "settings": asdict(sz), "seed": seed, "rows": rows, "gap": gap,
            "train_problems": len(train), "test_problems": len(test), "goal_met": gap >= 20,
        }  # fmt: skip
        png = _figure(ws.root / f"{NAME}.png", results)
        return ws.finish(NAME, results, _markdown(results), [png], command_line(NAME, out=out, size=name, seed=seed))


def _figure(path: Path, r: dict[str, Any]) -> Path:
    from lmlab.figures import pyplot, save_png

    fig, ax = pyplot().subplots(figsize=(6.4, 4))
    lengths = list(r["rows"][0]["exact_match"])
    width = 0.38
    for i, (row, color) in enumerate(zip(r["rows"], ("#8c8c8c", "#4c72b0"))):
        xs = [j + (i - 0.5) * width for j in range(len(lengths))]
        ax.bar(xs, [row["exact_match"][d] for d in lengths], width, color=color, label=row["format"])
    ax.set_xticks(range(len(lengths)), [f"{d} digits" + (" (longer)" if int(d) in r["settings"]["longer_digits"]
                                                          else "") for d in lengths])  # fmt: skip
    ax.set_ylabel("exact match on held-out problems (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Addition: direct answer vs scratchpad (equal training compute)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_png(fig, path)


def _markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lengths = list(r["rows"][0]["exact_match"])
    lines = [
        f"Chain of thought on addition ({r['size']} size, seed {r['seed']}; {r['train_problems']:,} training "
        f"problems of {'–'.join(map(str, (s['train_digits'][0], s['train_digits'][-1])))} digits, "
        f"{r['test_problems']:,} held-out; {s['n_layer']} layers, width {s['n_embd']}, {s['steps']:,} steps of "
        f"{s['batch_size']} × {s['block_size']} tokens each, exact match %, greedy)",
        "",
        "| reply | " + " | ".join(f"{d} digits" for d in lengths) + " | trained lengths | tokens trained on |",
        "| --- | " + " | ".join("---:" for _ in lengths) + " | ---: | ---: |",
    ]
    for row in r["rows"]:
        tokens = f"{row['train_tokens']:,}" if row.get("train_tokens") else ""
        cells = " | ".join(f"{row['exact_match'][d]:.1f}" for d in lengths)
        lines.append(f"| {row['format']} | {cells} | **{row['in_distribution']:.1f}** | {tokens} |")
    ex = r["rows"][1]["example"]
    lines += [
        "",
        f"Scratchpad minus direct on the trained lengths: {r['gap']:+.1f} points (goal ≥ +20: "
        f"{'met' if r['goal_met'] else 'missed'}). A scratchpad reply: `{ex['problem']}` → `{ex['reply']}`.",
    ]
    return "\n".join(lines) + "\n"
