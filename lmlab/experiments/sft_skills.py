"""SFT on generated skills: what supervised fine-tuning teaches a small base model, measured by exact match.

The base is the Transformer pretrained on the Gutenberg books (the same command as the GPT-1 ablation's, so one
workspace pretrains it once for both). The data are the generated problems of ``lmlab.experiments.skills``
(copy a span from a passage, reverse a list, sort digits, add two numbers, repeat a word n times), written as
prompt-completion JSONL and fine-tuned with ``lmlab finetune BASE sft`` (full, and LoRA). Held-out problems are
answered greedily: the base model sees ``INSTRUCTION\\nAnswer:`` and its first line is its answer (its fairest
zero-shot reading); a chat model sees the chat template and its reply ends at ``<|end|>``. Writes
``sft-skills.{md,json,png}`` in the workspace.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmlab import io
from lmlab.experiments import gpt1_ablation
from lmlab.experiments.common import (
    Workspace,
    bar_chart,
    best_metrics,
    greedy_answers,
    pick_size,
    require,
    step_seconds,
)
from lmlab.experiments.skills import SKILLS, Problem, make_split


@dataclass(frozen=True)
class Size:
    base: str  # the gpt1-ablation size whose pretrained Transformer is the base
    per_skill: int  # training problems per skill
    test_per_skill: int
    epochs: float
    lr: float
    lora_r: int
    lora_lr: float
    batch_size: int = 32
    harder: int = 1  # the skills a small model finds hardest (span, add) get this many times more problems


SIZES = {
    "full": Size(base="full", per_skill=1500, test_per_skill=100, epochs=6, lr=1e-3, lora_r=16, lora_lr=3e-3,
                 harder=3),
    "quick": Size(base="quick", per_skill=600, test_per_skill=40, epochs=4, lr=1e-3, lora_r=16, lora_lr=3e-3),
    "test": Size(base="test", per_skill=12, test_per_skill=3, epochs=1, lr=1e-3, lora_r=2, lora_lr=3e-3,
                 batch_size=4),
}  # fmt: skip
HARDER = ("span", "add")


def train_counts(sz: Size) -> dict[str, int]:
    return {s: sz.per_skill * (sz.harder if s in HARDER else 1) for s in SKILLS}


def write_jsonl(path: Path, problems: Sequence[Problem]) -> Path:
    """Prompt-completion records (with their skill, which the SFT reader ignores), written atomically."""
    if not path.is_file():
        rows = (json.dumps({"prompt": p.prompt, "completion": p.answer, "skill": p.skill}) for p in problems)
        io.write_text(path, "\n".join(rows) + "\n")
    return path


def answers(run: str | Path, problems: Sequence[Problem], *, batch_size: int = 64) -> list[tuple[str, bool]]:
    """(answer, ended properly) of run ``run`` for each problem, greedy (``common.greedy_answers``)."""
    return greedy_answers(run, [p.prompt for p in problems], max_new_tokens=24, batch_size=batch_size)


def score(run: str | Path, problems: Sequence[Problem]) -> dict[str, Any]:
    """Exact match per skill and overall, and how often the reply ended properly, in %."""
    got = answers(run, problems)
    per: dict[str, list[bool]] = {s: [] for s in SKILLS}
    for p, (text, _) in zip(problems, got):
        per[p.skill].append(text == p.answer)
    em = {s: 100 * sum(v) / len(v) for s, v in per.items() if v}
    examples = [{"skill": p.skill, "prompt": p.prompt, "answer": p.answer, "got": t} for p, (t, _) in
                zip(problems[:10], got[:10])]  # fmt: skip
    return {
        "exact_match": em,
        "mean_exact_match": sum(em.values()) / len(em),
        "ended": 100 * sum(e for _, e in got) / len(got),
        "examples": examples,
    }


def run(
    out: str | Path = "runs/experiments",
    *,
    quick: bool = False,
    size: str | None = None,
    seed: int = 0,
    books: str | Path = "../shared/data/gutenberg",
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, Any]:
    """SFT on generated skills: the books-pretrained Transformer (shared with gpt1-ablation), fine-tuned fully and
    with LoRA; exact match per skill on held-out problems. Writes sft-skills.md, .json and .png in the workspace.

    Args:
        out: the workspace: datasets, runs, commands.txt and the results (reused when run again).
        quick: the small size instead of the full one.
        size: full, quick or test (a few steps, for the tests); overrides --quick.
        seed: the seed of the generated data and of fine-tuning.
        books: the directory of books the base model is pretrained on (.txt files).
        device: where to train: auto, cpu, cuda or mps.
        quiet: do not show the steps' own output.
    """
    name, sz = pick_size(SIZES, size, quick)
    books = require(books, "the Gutenberg books directory (../shared/data/gutenberg)", "--books")
    with Workspace(out, device=device, quiet=quiet) as ws:
        base = gpt1_ablation.pretrain(ws, books, gpt1_ablation.SIZES[sz.base], ("gpt",))["gpt"].path
        counts = train_counts(sz)
        tag = f"{sum(counts.values())}-seed{seed}"
        train = write_jsonl(ws.root / "data" / f"skills-train-{tag}.jsonl", make_split(counts, test=False, seed=seed))
        val = write_jsonl(ws.root / "data" / f"skills-val-{tag}.jsonl",
                          make_split(max(2, sz.test_per_skill // 2), test=False, seed=seed + 1000))  # fmt: skip
        test = make_split(sz.test_per_skill, test=True, seed=seed)
        common = ["finetune", base, "sft", train.resolve(), "--val", val.resolve(), "--epochs", sz.epochs,
                  "--train.seed", seed, "--train.batch-size", sz.batch_size]  # fmt: skip
        fits = {
            "full": ws.trained("finetune/skills-full", [*common, "--train.lr", sz.lr]),
            "lora": ws.trained("finetune/skills-lora", [*common, "--train.lr", sz.lora_lr, "--lora.r", sz.lora_r,
                                                        "--lora.alpha", 2 * sz.lora_r,
                                                        "--lora.targets", "attention", "mlp"]),
        }  # fmt: skip
        rows = [{"row": "base", "label": "base (no SFT)", "run": str(base), **score(base, test)}]
        for key, label in (("full", "SFT (full)"), ("lora", f"SFT (LoRA r={sz.lora_r})")):
            step = fits[key]
            cfg = io.read_json(step.path / "config.json")
            rows.append({
                "row": key, "label": label, "run": str(step.path), **score(step.path, test),
                "val_loss": best_metrics(step.path).get("val_loss"), "trainable_params": _trainable(step.path),
                "steps": cfg["train"]["max_steps"], "step_s": step_seconds(step.path), "seconds": step.seconds,
                "peak_rss_mb": step.peak_rss_mb,
            })  # fmt: skip
        results = {
            "experiment": "sft-skills",
            "size": name,
            "settings": asdict(sz),
            "seed": seed,
            "base": str(base),
            "skills": list(SKILLS),
            "test_problems": len(test),
            "rows": rows,
            "goal_met": rows[1]["mean_exact_match"] >= 90 and rows[1]["ended"] >= 99,
        }
        md = _markdown(results)
        js, mdp = ws.write_results("sft-skills", results, md)
        png = bar_chart(
            ws.root / "sft-skills.png", [f"{r['label']}" for r in rows], [r["mean_exact_match"] for r in rows],
            [0.0] * len(rows), ylabel="mean exact match on held-out problems (%)",
            title=f"SFT on {len(SKILLS)} generated skills ({name}, seed {seed})",
        )  # fmt: skip
        ws.say(f"wrote {mdp}, {js} and {png}")
        print(md)
        return results


def _trainable(run: Path) -> int:
    """Trainable parameters of a fine-tuned run: all of them, or a LoRA run's adapters."""
    from lmlab.models.lora import trainable_parameters
    from lmlab.runs import load

    model = load(run).model
    if io.read_json(run / "config.json").get("lora"):
        return trainable_parameters(model)
    return sum(p.numel() for p in model.parameters())


def _markdown(r: dict[str, Any]) -> str:
    skills = r["skills"]
    lines = [
        f"SFT on generated skills ({r['size']} size, seed {r['seed']}; {r['test_problems']} held-out problems, "
        "exact match %, greedy)",
        "",
        "| model | " + " | ".join(skills) + " | mean | ends with <\\|end\\|> | trainable params | step (s) |",
        "| --- | " + " | ".join("---:" for _ in skills) + " | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        cells = [f"{row['exact_match'].get(s, 0):.0f}" for s in skills]
        params = f"{row['trainable_params']:,}" if "trainable_params" in row else ""
        step = f"{row['step_s']:.3f}" if row.get("step_s") else ""
        ended = f"{row['ended']:.1f}%" if row["row"] != "base" else "n/a"
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | **{row['mean_exact_match']:.1f}** | {ended} | "
                     f"{params} | {step} |")  # fmt: skip
    s = r["settings"]
    lines += [
        "",
        f"Goal (SFT ≥ 90% mean exact match, ≥ 99% of replies ending with <|end|>): "
        f"{'met' if r['goal_met'] else 'missed'}. Training: {s['per_skill']} problems per skill ({s['harder']}× "
        f"for {' and '.join(HARDER)}), {s['epochs']:g} epochs, batch {s['batch_size']}, lr {s['lr']:g} (LoRA: "
        f"r={s['lora_r']} on attention and MLP, lr {s['lora_lr']:g}).",
    ]
    return "\n".join(lines) + "\n"
