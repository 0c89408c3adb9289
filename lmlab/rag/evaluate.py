"""Retrieval quality (recall@k and MRR of an index) and answer quality (exact match and F1 of a reader, closed-book,
with retrieval and with the gold passage) on questions with known answers.

A question counts as found at rank r when the r-th retrieved chunk is its gold passage (the question's
``doc_id``, or for SQuAD the paragraph it was asked about) or, without one, contains one of its answer strings
(case-insensitive). Questions: a SQuAD-format JSON file (its answerable questions) or JSONL
``{"question", "answers": [...], "doc_id"?, "context"?}``.

Answers are scored as SQuAD's official script does: lowercase, punctuation and the articles a/an/the removed,
whitespace collapsed; exact match is any gold answer equal to the reply, F1 the best token-overlap F1 over them.
The oracle row gives the reader the gold passage (the SQuAD paragraph, the record's ``context``, or the chunk of
the gold document that holds an answer): the ceiling retrieval can reach with this reader.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.data.formats.jsonl import jsonl_records
from lmlab.errors import LmlabError
from lmlab.rag.index import Index

KS = (1, 5, 20)


@dataclass
class Question:
    question: str
    answers: list[str]
    doc_id: str | None = None
    context: str | None = None  # the gold passage, where the file gives it


def read_questions(path: str | Path) -> list[Question]:
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"question file {path} not found")
    text = path.read_text(encoding="utf-8")
    out: list[Question] = []
    if path.suffix.lower() == ".json":
        try:
            for a, article in enumerate(json.loads(text)["data"]):
                for p, para in enumerate(article["paragraphs"]):
                    for qa in para["qas"]:
                        if qa.get("is_impossible") or not qa.get("answers"):
                            continue
                        out.append(Question(qa["question"], [x["text"] for x in qa["answers"]],
                                            f"{article.get('title', a)}#{p}", para.get("context")))  # fmt: skip
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise LmlabError(f"{path} is not a SQuAD-format JSON file ({type(e).__name__}: {e})") from None
    else:
        for n, rec in jsonl_records(text, str(path)):
            if not isinstance(rec.get("question"), str):
                raise LmlabError(f'{path}:{n}: a question needs a "question" string and "answers" (a list of strings)')
            answers = rec.get("answers", [])
            if isinstance(answers, str):
                answers = [answers]
            if not isinstance(answers, list) or not all(isinstance(x, str) for x in answers):
                raise LmlabError(f'{path}:{n}: "answers" must be a list of strings')
            if not answers and rec.get("doc_id") is None:
                raise LmlabError(f'{path}:{n}: give "answers" or a gold "doc_id", or retrieval cannot be scored')
            context = rec.get("context")
            if context is not None and not isinstance(context, str):
                raise LmlabError(f'{path}:{n}: "context" must be a string (the gold passage)')
            out.append(Question(rec["question"], answers, rec.get("doc_id"), context))
    if not out:
        raise LmlabError(f"{path} has no answerable questions")
    return out


def retrieval_scores(index: Index, questions: list[Question], ks=KS, mode: str = "bm25") -> dict[str, float]:
    """recall@k for each k and MRR (over the max k retrieved) of ``index`` on ``questions``."""
    depth = max(ks)
    hits_per_q = index.search_many([q.question for q in questions], k=depth, mode=mode)
    found = {k: 0 for k in ks}
    rr = 0.0
    for q, hits in zip(questions, hits_per_q):
        rank = None
        for h in hits:
            if q.doc_id is not None and h.chunk.doc_id == q.doc_id:
                rank = h.rank
            elif q.doc_id is None and any(a.lower() in h.chunk.text.lower() for a in q.answers):
                rank = h.rank
            if rank is not None:
                break
        if rank is not None:
            rr += 1 / rank
            for k in ks:
                found[k] += rank <= k
    n = len(questions)
    return {**{f"recall@{k}": found[k] / n for k in ks}, "mrr": rr / n, "questions": n}


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


_PUNCT = set(string.punctuation)


def exact_match(reply: str, answers: list[str]) -> bool:
    r = normalize_answer(reply)
    return any(r == normalize_answer(a) for a in answers)


def f1_score(reply: str, answers: list[str]) -> float:
    """The best token-overlap F1 of ``reply`` against any of ``answers``."""
    r = normalize_answer(reply).split()
    best = 0.0
    for a in answers:
        g = normalize_answer(a).split()
        common = sum((Counter(r) & Counter(g)).values())
        if not r or not g:
            best = max(best, float(r == g))
        elif common:
            p, c = common / len(r), common / len(g)
            best = max(best, 2 * p * c / (p + c))
    return best


CONDITIONS = ("closed-book", "retrieval", "oracle")


def oracle_passage(by_doc: dict[str, list], q: Question) -> tuple[str, str] | None:
    """(text, title) of the gold passage of ``q``: its context, else the chunk of its gold document (``by_doc``: an
    index's chunks by document id) that holds an answer."""
    if q.context:
        return q.context, ""
    chunks = by_doc.get(q.doc_id, []) if q.doc_id is not None else []
    with_answer = [c for c in chunks if any(a.lower() in c.text.lower() for a in q.answers)]
    c = (with_answer or chunks or [None])[0]
    return (c.text, c.title) if c is not None else None


def reader_scores(index: Index, questions: list[Question], run: str | Path, *, k: int = 3, mode: str = "bm25",
                  max_new_tokens: int = 32, checkpoint: str | None = None, device: str = "auto",
                  batch_size: int = 32, examples: int = 5) -> dict[str, Any]:  # fmt: skip
    """Exact match and F1 (in %) of reader ``run``'s greedy answers closed-book, with the top ``k`` passages
    retrieved from ``index`` and with the gold passage (questions without one are left out of that row), and a
    few example answers per condition."""
    from lmlab.rag.ask import _Reader
    from lmlab.rag.index import Hit

    if not any(q.answers for q in questions):
        raise LmlabError("no question has an answer string: exact match needs them")
    questions = [q for q in questions if q.answers]
    reader = _Reader(run, checkpoint, device)
    retrieved = index.search_many([q.question for q in questions], k=k, mode=mode)
    by_doc: dict[str, list] = {}
    for c in index.chunks:
        by_doc.setdefault(c.doc_id, []).append(c)
    out: dict[str, Any] = {}
    for cond in CONDITIONS:
        rows, prompts = [], []
        for q, hits in zip(questions, retrieved):
            if cond == "closed-book":
                hits = []
            elif cond == "oracle":
                gold = oracle_passage(by_doc, q)
                if gold is None:
                    continue
                hits = [Hit(1, 0.0, _passage_chunk(gold))]
            prompts.append(reader.fit(q.question, hits, max_new_tokens)[0])
            rows.append(q)
        if not rows:
            out[cond] = None
            continue
        replies = reader.answer_many(prompts, max_new_tokens, batch_size)
        em = [exact_match(r, q.answers) for r, q in zip(replies, rows)]
        f1 = [f1_score(r, q.answers) for r, q in zip(replies, rows)]
        out[cond] = {
            "exact_match": 100 * sum(em) / len(rows),
            "f1": 100 * sum(f1) / len(rows),
            "questions": len(rows),
            "examples": [
                {"question": q.question, "answers": q.answers, "reply": r}
                for q, r in zip(rows[:examples], replies[:examples])
            ],  # fmt: skip
        }
    return out


def _passage_chunk(gold: tuple[str, str]):
    from lmlab.rag.chunks import Chunk

    text, title = gold
    return Chunk(id="gold", doc_id="gold", text=text, source="", start=0, end=len(text), title=title)
