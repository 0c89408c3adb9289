"""Retrieval quality: recall@k and MRR of an index on questions with known answers.

A question counts as found at rank r when the r-th retrieved chunk is its gold passage (the question's
``doc_id``, or for SQuAD the paragraph it was asked about) or, without one, contains one of its answer strings
(case-insensitive). Questions: a SQuAD-format JSON file (its answerable questions) or JSONL
``{"question", "answers": [...], "doc_id"?}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmlab.data.formats.jsonl import jsonl_records
from lmlab.errors import LmlabError
from lmlab.rag.index import Index

KS = (1, 5, 20)


@dataclass
class Question:
    question: str
    answers: list[str]
    doc_id: str | None = None


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
                                            f"{article.get('title', a)}#{p}"))  # fmt: skip
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
            out.append(Question(rec["question"], answers, rec.get("doc_id")))
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
