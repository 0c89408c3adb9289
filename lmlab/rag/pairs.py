"""Training pairs for a retrieval encoder when no one wrote questions: the inverse cloze task (Lee et al. 2019).

Every chunk of the sources with at least three sentences gives one pair: a sentence drawn at random is the
"question", and the chunk is the passage it must find, with that sentence removed (90% of the time, as in the
paper, so the encoder learns what a passage is about rather than only word overlap; 10% it stays in). The pairs
are JSONL ``{"question", "passage", "doc_id"}`` for ``lmlab rag train-encoder``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from lmlab import io
from lmlab.errors import LmlabError
from lmlab.rag.chunks import chunk_document, read_documents, sentence_spans

REMOVE = 0.9  # the share of pairs whose passage loses its query sentence


def ict_pairs(
    sources: Sequence[str], *, chunk_tokens: int = 200, seed: int = 0, limit: int | None = None
) -> list[dict]:
    """Inverse-cloze (question, passage) pairs of the chunks of ``sources``; at most ``limit`` (a seeded sample)."""
    rng = random.Random(seed)
    pairs = []
    for doc in read_documents(list(sources)):
        for chunk in chunk_document(doc, chunk_tokens, overlap=0):
            spans = [(a, b) for a, b in sentence_spans(chunk.text) if len(chunk.text[a:b].split()) >= 4]
            if len(spans) < 3:
                continue
            a, b = rng.choice(spans)
            query = " ".join(chunk.text[a:b].split())
            passage = chunk.text[:a] + chunk.text[b:] if rng.random() < REMOVE else chunk.text
            pairs.append({"question": query, "passage": " ".join(passage.split()), "doc_id": chunk.doc_id})
    if not pairs:
        raise LmlabError("the sources have no chunk of three sentences or more: no inverse-cloze pair to make")
    if limit is not None and len(pairs) > limit:
        pairs = rng.sample(pairs, limit)
    return pairs


def write_pairs(path: str | Path, pairs: Sequence[dict], inputs: Sequence[str] = ()) -> Path:
    io.check_disjoint(Path(path), [Path(s) for s in inputs if Path(s).exists()])
    io.write_text(path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    return Path(path)
