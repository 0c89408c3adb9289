"""Decoding methods on one trained model: greedy, temperature, top-k, top-p and min-p, quality against diversity.

A character-level ``baby`` Transformer is trained on tiny Shakespeare (``lmlab train DATA baby``); from the same
prompts (openings of validation lines) every method continues with the same seeds through lmlab's engine. Per
method: distinct-1 and distinct-2 (unique word uni/bigrams over all of its samples, Li et al. 2016), the
repetition rate (the share of a sample's word trigrams that repeat an earlier one of the same sample), and the
generations' negative log-likelihood per character under the model's own, unfiltered distribution (how likely
the model finds what was written: low is "safe", high is "surprising"). To answer the lecture's question about
top-p vs top-k from data, the size of the nucleus (the fewest characters holding p of the probability) is measured
at every position of held-out text. Writes ``sampling.{md,json,png}`` in the workspace.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lmlab.experiments.common import SHAKESPEARE, Workspace, command_line, pick_size, text_source, val_windows

NAME = "sampling"
# (label, request options): the methods compared; each filter samples at temperature 1
METHODS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("greedy", {"temperature": 0.0}),
    ("temperature 0.5", {"temperature": 0.5}),
    ("temperature 0.8", {"temperature": 0.8}),
    ("temperature 1.0", {"temperature": 1.0}),
    ("temperature 1.3", {"temperature": 1.3}),
    ("top-k 5", {"top_k": 5}),
    ("top-k 20", {"top_k": 20}),
    ("top-k 50", {"top_k": 50}),
    ("top-p 0.5", {"top_p": 0.5}),
    ("top-p 0.9", {"top_p": 0.9}),
    ("top-p 0.95", {"top_p": 0.95}),
    ("min-p 0.05", {"min_p": 0.05}),
    ("min-p 0.1", {"min_p": 0.1}),
    ("min-p 0.2", {"min_p": 0.2}),
)


@dataclass(frozen=True)
class Size:
    steps: int  # of the model's training
    prompts: int
    samples: int  # per prompt
    new_tokens: int
    windows: int = 64  # held-out windows the nucleus sizes are measured on


SIZES = {
    "full": Size(steps=2000, prompts=16, samples=2, new_tokens=300),
    "quick": Size(steps=300, prompts=8, samples=1, new_tokens=120, windows=16),
    "test": Size(steps=3, prompts=2, samples=1, new_tokens=12, windows=2),
}


def words(text: str) -> list[str]:
    return text.lower().split()


def distinct(texts: list[str], n: int) -> float:
    """Unique word n-grams over all ``texts`` divided by their number (0 when there are none)."""
    grams = [tuple(w[i : i + n]) for t in texts for w in [words(t)] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition(text: str, n: int = 3) -> float:
    """The share of ``text``'s word n-grams that already appeared earlier in it."""
    w = words(text)
    seen, repeated, total = set(), 0, 0
    for i in range(len(w) - n + 1):
        g = tuple(w[i : i + n])
        repeated += g in seen
        total += 1
        seen.add(g)
    return repeated / total if total else 0.0


def prompts_from(text: str, count: int, seed: int, length: int = 48) -> list[str]:
    """``count`` openings of lines from the last tenth of ``text`` (its validation part), ``length`` characters."""
    tail = text[int(len(text) * 0.9) :]
    starts = [i + 1 for i, ch in enumerate(tail[:-length]) if ch == "\n" and tail[i + 1].isalpha()]
    return [tail[s : s + length] for s in random.Random(seed).sample(starts, count)]


@torch.no_grad()
def nucleus_sizes(model: torch.nn.Module, windows: torch.Tensor, ps: tuple[float, ...]) -> dict[float, list[int]]:
    """For each p, the size of the nucleus (fewest tokens whose probability sums to p) at every position."""
    model.eval()
    probs = model(windows[:, :-1]).logits.float().softmax(-1).flatten(0, 1)  # (N·T, V)
    cum = probs.sort(dim=-1, descending=True).values.cumsum(-1)
    return {p: ((cum < p).sum(-1) + 1).tolist() for p in ps}


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
    """Greedy, temperature, top-k, top-p and min-p on one trained model: distinct-1/2, repetition and the model's
    NLL of each method's text, a quality-diversity scatter, samples, and top-p vs top-k answered from the data.
    Writes sampling.md, .json and .png in the workspace.

    Args:
        out: the workspace: datasets, runs, commands.txt and the results (reused when run again).
        quick: the small size instead of the full one.
        size: full, quick or test (a few steps, for the tests); overrides --quick.
        seed: the seed of training, of the prompts and of sampling.
        text: the text the model is trained on (tiny Shakespeare), character-level.
        device: where to train: auto, cpu, cuda or mps.
        quiet: do not show the steps' own output.
    """
    from lmlab.generation.engine import generate_ids
    from lmlab.generation.request import GenerationRequest
    from lmlab.generation.text import detokenizer_for, encode_prompt
    from lmlab.runs import load

    name, sz = pick_size(SIZES, size, quick)
    text = text_source(text)
    with Workspace(out, device=device, quiet=quiet) as ws:
        data = ws.char_dataset(text)
        step = ws.trained("runs/baby", ["train", data, "baby", "--train.max-steps", sz.steps, "--train.seed", seed])
        loaded = load(step.path, device="cpu")
        model, tok = loaded.model, loaded.tokenizer
        prompts = prompts_from(Path(text).read_text(encoding="utf-8"), sz.prompts, seed)
        ids = [encode_prompt(tok, p) for p in prompts for _ in range(sz.samples)]
        rows = []
        for label, options in METHODS:
            request = GenerationRequest(max_new_tokens=sz.new_tokens, seed=seed, logprobs=True, **options)
            done = generate_ids(model, ids, request, detokenizer=detokenizer_for(tok), on_notice=lambda m: None)
            texts = [c.text for c in done]
            logps = [lp for c in done for lp in c.logprobs]
            rows.append({
                "method": label, "options": options, "distinct_1": distinct(texts, 1), "distinct_2": distinct(texts, 2),
                "repetition": sum(map(repetition, texts)) / len(texts), "nll": -sum(logps) / len(logps),
                "sample": texts[0],
            })  # fmt: skip
            ws.say(f"{label}: distinct-2 {rows[-1]['distinct_2']:.3f}, NLL {rows[-1]['nll']:.3f}")
        sizes = nucleus_sizes(model, val_windows(data, model.config.block_size, sz.windows, seed), (0.5, 0.9, 0.95))
        nucleus = {str(p): _summary(v) for p, v in sizes.items()}
        results = {"experiment": NAME, "size": name, "settings": asdict(sz), "seed": seed, "run": str(step.path),
                   "prompts": prompts, "rows": rows, "nucleus": nucleus, "vocab_size": tok.vocab_size}  # fmt: skip
        results["answer"] = answer(results)
        png = _figure(ws.root / f"{NAME}.png", results)
        return ws.finish(NAME, results, _markdown(results), [png], command_line(NAME, out=out, size=name, seed=seed))


def _summary(v: list[int]) -> dict[str, float]:
    s = sorted(v)
    return {"min": s[0], "median": s[len(s) // 2], "p90": s[int(0.9 * (len(s) - 1))], "max": s[-1],
            "share_1": sum(x == 1 for x in s) / len(s), "share_over_5": sum(x > 5 for x in s) / len(s),
            "share_over_20": sum(x > 20 for x in s) / len(s)}  # fmt: skip


def answer(r: dict[str, Any]) -> str:
    """The lecture's question (how is top-p different from top-k; when is it better, when worse) answered from the
    measured nucleus sizes and the methods' rows; every comparison is read off the data, not assumed."""
    by = {row["method"]: row for row in r["rows"]}
    n9 = r["nucleus"]["0.9"]
    p, k20, k5, greedy = by["top-p 0.9"], by["top-k 20"], by["top-k 5"], by["greedy"]

    def vs(a: dict[str, Any], b: dict[str, Any]) -> str:
        return (f"NLL {a['nll']:.2f} vs {b['nll']:.2f} nats per character, distinct-2 {a['distinct_2']:.2f} vs "
                f"{b['distinct_2']:.2f}")  # fmt: skip

    fixed = (f"Top-k keeps a fixed number of candidates; top-p keeps the fewest whose probability reaches p, so how "
             f"many it keeps follows the model's confidence. On held-out text this model's 0.9-nucleus held one "
             f"character at {100 * n9['share_1']:.0f}% of positions and more than 5 at "
             f"{100 * n9['share_over_5']:.0f}% (median {n9['median']}, 90th percentile {n9['p90']}, at most "
             f"{n9['max']} of {r['vocab_size']}): where it is sure, top-k 20 still lets 19 unlikely characters in; "
             f"where it is unsure, top-k 5 cuts off characters it finds plausible.")  # fmt: skip
    if p["nll"] < k20["nll"] and p["distinct_2"] >= k20["distinct_2"] - 0.02:
        better = (
            f"Top-p 0.9 was better than top-k 20 here: more likely text at about the same diversity ({vs(p, k20)})."
        )
    elif p["nll"] < k20["nll"]:
        better = f"Top-p 0.9 wrote more likely but less varied text than top-k 20 ({vs(p, k20)}): a trade, not a win."
    else:
        better = (f"Top-k 20 did as well or better than top-p 0.9 here ({vs(k20, p)}): with a {r['vocab_size']}-"
                  "character vocabulary the tail that top-p trims is short.")  # fmt: skip
    low = min((row for row in r["rows"] if row["method"] != "greedy"), key=lambda row: row["nll"])
    worse = (f"Neither fixes a wrong model: truncating hard (top-k 5: {vs(k5, p)}) or with a small p trades "
             f"diversity for likelihood, and the most likely text is repetitive — greedy decoding repeats "
             f"{100 * greedy['repetition']:.0f}% of its word trigrams, {low['method']} (the lowest NLL of the sampled "
             f"methods) {100 * low['repetition']:.0f}%, top-p 0.9 {100 * p['repetition']:.0f}%.")  # fmt: skip
    return " ".join((fixed, better, worse))


def _figure(path: Path, r: dict[str, Any]) -> Path:
    from lmlab.figures import pyplot, save_png

    fig, ax = pyplot().subplots(figsize=(7, 4.6))
    colors = {"greedy": "black", "temperature": "#c44e52", "top-k": "#4c72b0", "top-p": "#55a868", "min-p": "#8172b2"}
    for row in r["rows"]:
        family = row["method"].split(" ")[0]
        ax.scatter(row["distinct_2"], row["nll"], color=colors[family], s=40)
        ax.annotate(row["method"], (row["distinct_2"], row["nll"]), fontsize=7, xytext=(4, 2),
                    textcoords="offset points")  # fmt: skip
    for family, color in colors.items():
        ax.scatter([], [], color=color, label=family)
    ax.set_xlabel("diversity: distinct-2 (unique word bigrams / all)")
    ax.set_ylabel("NLL under the model (nats/char; lower = likelier)")
    ax.set_title("Quality vs diversity of decoding methods")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def _markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [
        f"Decoding methods on one character-level `baby` ({r['size']} size, seed {r['seed']}; {s['prompts']} prompts "
        f"× {s['samples']} samples × {s['new_tokens']} characters per method)",
        "",
        "| method | distinct-1 | distinct-2 | repetition | NLL (nats/char) | sample |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in r["rows"]:
        sample = row["sample"][:110].replace("\n", " / ").replace("|", "\\|")
        lines.append(f"| {row['method']} | {row['distinct_1']:.3f} | {row['distinct_2']:.3f} | {row['repetition']:.3f} "
                     f"| {row['nll']:.3f} | {sample} |")  # fmt: skip
    lines += ["", "**Top-p vs top-k, from the data.** " + r["answer"]]
    return "\n".join(lines) + "\n"
