"""Retrieval-augmented generation: index sources, search them, answer from them, measure retrieval.

``Index.build(sources, dense=RUN).save(dir)``, ``Index.load(dir).search("query", k=5, mode="hybrid")``,
``Index.add(sources)``; ``ask(index, reader_run, "question")``; ``retrieval_scores(index, read_questions(file))``,
``reader_scores(index, questions, reader_run)`` (exact match / F1 closed-book, with retrieval, with the gold passage).
``ict_pairs(sources)`` and ``train_encoder(run, pairs)`` make a dense encoder. The CLI is ``lmlab rag index | add |
search | ask | eval | pairs | train-encoder``.
"""

from lmlab.rag.ask import Answer, ask, reader_prompt
from lmlab.rag.chunks import Chunk, Document, chunk_document, read_documents
from lmlab.rag.dense import train_encoder
from lmlab.rag.evaluate import Question, exact_match, f1_score, read_questions, reader_scores, retrieval_scores
from lmlab.rag.index import Hit, Index
from lmlab.rag.pairs import ict_pairs, write_pairs

__all__ = [
    "Answer", "Chunk", "Document", "Hit", "Index", "Question", "ask", "chunk_document", "exact_match", "f1_score",
    "ict_pairs", "read_documents", "read_questions", "reader_prompt", "reader_scores", "retrieval_scores",
    "train_encoder", "write_pairs",
]  # fmt: skip
