"""Retrieval-augmented generation: index sources, search them, answer from them, measure retrieval.

``Index.build(sources, dense=RUN).save(dir)``, ``Index.load(dir).search("query", k=5, mode="hybrid")``,
``Index.add(sources)``; ``ask(index, reader_run, "question")``; ``retrieval_scores(index, read_questions(file))``.
The CLI is ``lmlab rag index | add | search | ask | eval``.
"""

from lmlab.rag.ask import Answer, ask, reader_prompt
from lmlab.rag.chunks import Chunk, Document, chunk_document, read_documents
from lmlab.rag.evaluate import Question, read_questions, retrieval_scores
from lmlab.rag.index import Hit, Index

__all__ = [
    "Answer", "Chunk", "Document", "Hit", "Index", "Question", "ask", "chunk_document", "read_documents",
    "read_questions", "reader_prompt", "retrieval_scores",
]  # fmt: skip
