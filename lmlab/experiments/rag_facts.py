"""Retrieval against made-up answers: a reader answers questions about people it never saw, closed-book, with
retrieval and with the gold passage.

The knowledge base is ``lmlab.experiments.factbase``: fictional people, five facts each, one indexed document per
fact (a sentence naming its person: a proposition-sized chunk, so that the top 3 fit a small reader's context).
A small Transformer (``baby``'s shape with RoPE and a 192-token context) is pretrained on the passages of many
training people, each followed by its questions and answers and each seen about once, so that looking an answer
up in the text above beats memorizing it. It is then fine-tuned (``lmlab finetune BASE sft``) to answer a
question from the facts BM25 retrieves for it among the fine-tuning people (in a shuffled order, so the reader
must find the right one), and, for a share of the questions, from memory (no passages): that is what makes its
closed-book answer an answer rather than silence. It is scored by ``lmlab rag eval INDEX --questions FILE
--reader RUN`` on the held-out people (whose passages are in the index but were never trained on) and,
closed-book, on people whose passage and answers were in its pretraining text (facts it saw once). Writes
``rag-facts.{md,json,png}``.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmlab import io
from lmlab.experiments.common import Workspace, bar_chart, pick_size
from lmlab.experiments.factbase import FACTS, Person, chance, make_people


@dataclass(frozen=True)
class Size:
    people: int  # in the knowledge base
    held_out: int  # people never trained on: the test questions are about them
    sft_people: int  # training people whose questions the reader is fine-tuned on
    pretrain_steps: int
    epochs: float  # SFT passes over the training questions
    closed_book: float = 0.2  # share of training questions asked without passages
    batch_size: int = 24
    block_size: int = 192
    sft_batch: int = 32
    lr: float = 2e-3
    k: int = 3  # passages per question


SIZES = {
    "full": Size(people=24200, held_out=200, sft_people=8000, pretrain_steps=1000, epochs=1.5),
    "quick": Size(people=12100, held_out=100, sft_people=3000, pretrain_steps=500, epochs=1.0),
    "test": Size(people=150, held_out=8, sft_people=20, pretrain_steps=3, epochs=0.2, batch_size=4, sft_batch=4),
}


def _records(people: list[Person]) -> list[dict[str, Any]]:
    """The knowledge base: one document per fact (a sentence that names its person), titled by the person."""
    return [{"id": f"{p.id}-{a}", "title": p.name, "text": p.fact(a)} for p in people for a in FACTS]


def _questions(people: list[Person]) -> list[dict[str, Any]]:
    return [{"question": p.question(a), "answers": [p.facts[a]], "doc_id": f"{p.id}-{a}", "attribute": a}
            for p in people for a in FACTS]  # fmt: skip


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    if not path.is_file():
        io.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _sft_rows(index, questions: list[dict[str, Any]], sz: Size, seed: int) -> list[dict[str, str]]:
    """Prompt-completion rows in the reader's format: the retrieved passages in a shuffled order, or none."""
    from lmlab.rag import reader_prompt

    rng = random.Random(seed)
    hits = index.search_many([q["question"] for q in questions], k=sz.k)
    rows = []
    for q, h in zip(questions, hits):
        h = [] if rng.random() < sz.closed_book else list(h)
        rng.shuffle(h)
        prompt = reader_prompt(q["question"], [x.chunk.text for x in h], [x.chunk.title for x in h])
        rows.append({"prompt": prompt, "completion": q["answers"][0]})
    return rows


def run(
    out: str | Path = "runs/experiments",
    *,
    quick: bool = False,
    size: str | None = None,
    seed: int = 0,
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, Any]:
    """Retrieval against made-up answers: exact match of a small SFT'd reader on questions about fictional people
    it never saw, closed-book vs with BM25 retrieval vs with the gold passage. Writes rag-facts.md, .json and .png
    in the workspace.

    Args:
        out: the workspace: datasets, runs, the index, commands.txt and the results (reused when run again).
        quick: the small size instead of the full one.
        size: full, quick or test (a few steps, for the tests); overrides --quick.
        seed: the seed of the knowledge base, the training data and the runs.
        device: where to train: auto, cpu, cuda or mps.
        quiet: do not show the steps' own output.
    """
    from lmlab.rag import Index

    name, sz = pick_size(SIZES, size, quick)
    with Workspace(out, device=device, quiet=quiet) as ws:
        people = make_people(sz.people, seed)
        train_people, test_people = people[: -sz.held_out], people[-sz.held_out :]
        tag = f"{sz.people}-{sz.held_out}-seed{seed}"
        d = ws.root / "data" / f"rag-facts-{tag}"
        d.mkdir(parents=True, exist_ok=True)
        kb = _write_jsonl(d / "kb.jsonl", _records(people))
        corpus = d / "train-qa.txt"
        if not corpus.is_file():
            io.write_text(corpus, "\n\n".join(p.qa_text() for p in train_people) + "\n")
        index_dir = d / "index"
        if not (index_dir / "manifest.json").is_file():
            ws.lmlab(["rag", "index", kb, "--out", index_dir])
        Index.load(index_dir)  # a damaged index fails here, before any training

        data = ws.prepared("factbase", [corpus.resolve(), "--tokenizer", "bpe", "--vocab-size", 1024, "--quiet"])
        base = ws.trained("train/factbase-base", [
            "train", data, "baby", "--model.block-size", sz.block_size, "--model.pos", "rope",
            "--train.max-steps", sz.pretrain_steps,
            "--train.batch-size", sz.batch_size, "--train.lr", 2e-3, "--train.seed", seed,
            "--train.eval-every", max(1, sz.pretrain_steps // 2), "--train.sample-tokens", 0,
        ]).path  # fmt: skip

        train_q = _questions(train_people[: sz.sft_people])
        random.Random(seed).shuffle(train_q)
        n_val = max(2, len(train_q) // 50)
        # the training prompts' passages are retrieved among the training people only: a held-out person's text is
        # never trained on, not even as a distractor
        sft, val = d / "reader-train.jsonl", d / "reader-val.jsonl"
        if not (sft.is_file() and val.is_file()):  # retrieving for every training question takes minutes: once
            train_kb = _write_jsonl(d / "kb-train.jsonl", _records(train_people[: sz.sft_people]))
            train_index = Index.build([str(train_kb)])
            _write_jsonl(val, _sft_rows(train_index, train_q[:n_val], sz, seed + 1))
            _write_jsonl(sft, _sft_rows(train_index, train_q[n_val:], sz, seed))
        reader = ws.trained("finetune/factbase-reader", [
            "finetune", base, "sft", sft.resolve(), "--val", val.resolve(), "--epochs", sz.epochs,
            "--train.batch-size", sz.sft_batch, "--train.lr", sz.lr, "--train.seed", seed,
            "--train.eval-steps", 5, "--train.sample-tokens", 0,
        ])  # fmt: skip

        test_file = _write_jsonl(d / "questions-held-out.jsonl", _questions(test_people))
        seen_file = _write_jsonl(
            d / "questions-seen.jsonl", _questions(train_people[sz.sft_people : sz.sft_people + sz.held_out])
        )
        scores = {}
        for key, qfile in (("held_out", test_file), ("seen", seen_file)):
            res = reader.path / f"rag-eval-{key}.json"
            if not res.is_file():
                ws.lmlab(["rag", "eval", index_dir, "--questions", qfile, "--reader", reader.path, "-k", sz.k,
                          "--max-new-tokens", 16, "--device", device, "--out", res])  # fmt: skip
            scores[key] = io.read_json(res)
        ans = scores["held_out"]["answers"]
        guess = 100 * sum(chance(a) for a in FACTS) / len(FACTS)
        results = {
            "experiment": "rag-facts",
            "size": name,
            "settings": asdict(sz),
            "seed": seed,
            "index": str(index_dir),
            "reader": str(reader.path),
            "held_out_questions": len(test_people) * len(FACTS),
            "chance_exact_match": guess,
            "retrieval": scores["held_out"]["retrieval"],
            "answers": ans,
            "seen_closed_book": scores["seen"]["answers"]["closed-book"],
            "goal_met": ans["retrieval"]["exact_match"] >= 90 and ans["closed-book"]["exact_match"] <= guess + 5,
        }
        md = _markdown(results)
        js, mdp = ws.write_results("rag-facts", results, md)
        labels = ["closed-book", f"retrieval (BM25 top {sz.k})", "oracle (gold passage)", "closed-book, pretrained on"]
        ems = [ans["closed-book"]["exact_match"], ans["retrieval"]["exact_match"], ans["oracle"]["exact_match"],
               results["seen_closed_book"]["exact_match"]]  # fmt: skip
        png = bar_chart(ws.root / "rag-facts.png", labels, ems, [0.0] * len(ems),
                        ylabel="exact match (%)", title=f"Questions about unseen people ({name}, seed {seed})",
                        reference=[guess, None, None, None],
                        legend=(f"measured (seed {seed})", "chance (a uniform guess)"))  # fmt: skip
        ws.say(f"wrote {mdp}, {js} and {png}")
        print(md)
        return results


def _markdown(r: dict[str, Any]) -> str:
    a, s = r["answers"], r["settings"]
    rows = [
        ("closed-book (the question alone)", a["closed-book"]),
        (f"with retrieval (BM25, top {s['k']})", a["retrieval"]),
        ("oracle (the gold passage)", a["oracle"]),
    ]
    lines = [
        f"Questions about {r['held_out_questions'] // len(FACTS)} fictional people the reader never saw "
        f"({r['held_out_questions']} questions, {r['size']} size, seed {r['seed']}; greedy answers)",
        "",
        "| reader gets | exact match % | F1 % |",
        "| --- | ---: | ---: |",
        *(f"| {label} | **{x['exact_match']:.1f}** | {x['f1']:.1f} |" for label, x in rows),
        f"| chance (a uniform guess per attribute) | {r['chance_exact_match']:.1f} | |",
        f"| closed-book, people in its pretraining text (seen once) | {r['seen_closed_book']['exact_match']:.1f} | "
        f"{r['seen_closed_book']['f1']:.1f} |",
        "",
        f"Retrieval: recall@1 {r['retrieval']['recall@1']:.3f}, recall@5 {r['retrieval']['recall@5']:.3f}. "
        f"Goal (with retrieval ≥ 90%, closed-book near chance): {'met' if r['goal_met'] else 'missed'}.",
        "",
        "Closed-book answers to held-out questions (made up):",
        "",
        *(f"- {e['question']} → {e['reply']!r} (true: {e['answers'][0]})" for e in a["closed-book"]["examples"][:3]),
    ]
    return "\n".join(lines) + "\n"
