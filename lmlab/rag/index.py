"""A retrieval index: chunks of the sources and their BM25 index, in one directory written atomically.

BM25 is ``bm25s`` (Lucene's scoring by default; ``k1``, ``b`` and the variant are options), not a hand-written
scorer. The directory holds ``chunks.jsonl`` (every chunk with its source, title and offsets), ``bm25/`` (bm25s's
own files) and ``manifest.json`` (the settings, the sources, the sha256 of every file), written last; ``load``
checks the files against it, so a damaged index is refused in one line instead of answering wrongly.

``add`` reads and cuts only the new sources; BM25's statistics (document frequencies, the average length) depend
on every chunk, so its matrix is recomputed from the stored chunk texts, which takes seconds even for 100k
chunks. The new directory replaces the old one only when complete: an interrupted build or add leaves the old
index as it was.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab import io
from lmlab.errors import LmlabError
from lmlab.rag.chunks import Chunk, chunk_document, read_documents

FORMAT = "lmlab-rag-index"
VERSION = 1
METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")


@dataclass
class Hit:
    rank: int
    score: float
    chunk: Chunk

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, **self.chunk.to_dict()}


def _tokenize(texts: list[str], *, ids: bool = True):
    """bm25s's tokenizer (lowercase words of 2+ characters, English stopwords removed). Queries go as strings
    (``ids=False``), so that bm25s maps them through the index's own vocabulary."""
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", show_progress=False, return_ids=ids)


def _check_settings(chunk_tokens: int, overlap: int, k1: float, b: float, method: str) -> None:
    if not isinstance(chunk_tokens, int) or isinstance(chunk_tokens, bool) or chunk_tokens < 8:
        raise LmlabError(f"--chunk-tokens must be an integer >= 8, got {chunk_tokens!r}")
    if not isinstance(overlap, int) or isinstance(overlap, bool) or not 0 <= overlap < chunk_tokens:
        raise LmlabError(f"--overlap must be an integer from 0 to --chunk-tokens - 1 ({chunk_tokens - 1}), got "
                         f"{overlap!r}")  # fmt: skip
    if not (isinstance(k1, int | float) and k1 >= 0):
        raise LmlabError(f"--k1 must be a number >= 0, got {k1!r}")
    if not (isinstance(b, int | float) and 0 <= b <= 1):
        raise LmlabError(f"--b must be a number from 0 to 1, got {b!r}")
    if method not in METHODS:
        raise LmlabError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")


class Index:
    """Chunks and their BM25 index. ``Index.build(sources).save(dir)``; ``Index.load(dir).search("query", k=5)``."""

    def __init__(self, chunks: list[Chunk], settings: dict[str, Any], sources: list[str],
                 dense: np.ndarray | None = None) -> None:  # fmt: skip
        import bm25s

        if not chunks:
            raise LmlabError("the sources hold no text: nothing to index")
        self.chunks = chunks
        self.settings = settings
        self.sources = sources
        self.bm25 = bm25s.BM25(k1=settings["k1"], b=settings["b"], method=settings["method"])
        self.bm25.index(_tokenize([c.text for c in chunks]), show_progress=False)
        self.dense = dense  # (chunks, width) float16 unit vectors, or None
        self._embedder = None

    # -- building ------------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, sources: Sequence[str], *, chunk_tokens: int = 200, overlap: int = 40, k1: float = 1.5,
              b: float = 0.75, method: str = "lucene", dense: str | Path | None = None) -> Index:  # fmt: skip
        """Read and cut the sources (files, directories, globs, JSONL, SQuAD JSON) and index the chunks; with
        ``dense`` (a GPT run), embed them too (``lmlab.rag.dense``)."""
        if isinstance(sources, str):
            sources = [sources]
        if not sources:
            raise LmlabError("give at least one source to index")
        _check_settings(chunk_tokens, overlap, k1, b, method)
        settings = {"chunk_tokens": chunk_tokens, "overlap": overlap, "k1": float(k1), "b": float(b),
                    "method": method}  # fmt: skip
        chunks = cls._cut(list(sources), chunk_tokens, overlap, seen=set())
        matrix = None
        if dense is not None:
            from lmlab.rag.dense import Embedder

            emb = Embedder(dense)
            settings["dense"] = {"run": emb.run, "tokenizer_sha256": emb.tokenizer_sha256, "width": emb.width}
            matrix = emb.embed([c.text for c in chunks]).astype(np.float16) if chunks else None
        index = cls(chunks, settings, [str(s) for s in sources], matrix)
        index._embedder = emb if dense is not None else None
        return index

    @staticmethod
    def _cut(sources: list[str], chunk_tokens: int, overlap: int, seen: set[str]) -> list[Chunk]:
        chunks = []
        for doc in read_documents(sources):
            if doc.id in seen:
                raise LmlabError(f"document id {doc.id!r} ({doc.source}) is already in the index; ids must be unique")
            seen.add(doc.id)
            chunks.extend(chunk_document(doc, chunk_tokens, overlap))
        return chunks

    def add(self, sources: Sequence[str]) -> Index:
        """A new index with these sources' chunks after this one's (their documents' ids must be new)."""
        if isinstance(sources, str):
            sources = [sources]
        s = self.settings
        new = self._cut(list(sources), s["chunk_tokens"], s["overlap"], seen={c.doc_id for c in self.chunks})
        if not new:
            raise LmlabError("the new sources hold no text: nothing to add")
        matrix = None
        if self.dense is not None:
            matrix = np.concatenate([self.dense, self.embedder().embed([c.text for c in new]).astype(np.float16)])
        return Index([*self.chunks, *new], s, [*self.sources, *map(str, sources)], matrix)

    def embedder(self):
        """The run that embedded the chunks, checked to still have the tokenizer it had then."""
        if self._embedder is None:
            from lmlab.rag.dense import Embedder

            d = self.settings.get("dense")
            if not d:
                raise LmlabError("this index has no dense embeddings; build it with lmlab rag index --dense RUN")
            emb = Embedder(d["run"])
            if d.get("tokenizer_sha256") and emb.tokenizer_sha256 != d["tokenizer_sha256"]:
                raise LmlabError(f"the run {d['run']} has another tokenizer than the one that embedded this index; "
                                 "rebuild the index with --dense RUN")  # fmt: skip
            self._embedder = emb
        return self._embedder

    # -- files ---------------------------------------------------------------------------------------------------
    def save(self, path: str | Path, *, inputs: Sequence[str] = ()) -> Path:
        """Write the index directory at ``path`` atomically (replacing an index there); never over an input."""
        path = Path(path)
        io.check_disjoint(path, [*self.sources, *inputs])
        if path.exists() and path.is_dir() and any(path.iterdir()) and not (path / "manifest.json").is_file():
            raise LmlabError(f"{path} exists and is not an lmlab index; choose another --out")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise io.write_error(path.parent, e) from None
        with io.DirLock(path, "index", beside=True), io.atomic_dir(path, on_swap=self._manifest) as tmp:
            with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as f:
                for c in self.chunks:
                    f.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")
            self.bm25.save(str(tmp / "bm25"), show_progress=False)
            if self.dense is not None:
                np.save(tmp / "dense.npy", self.dense)
        return path

    def _manifest(self, tmp: Path) -> None:
        files = {str(p.relative_to(tmp)): io.sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        io.write_json(tmp / "manifest.json", {
            "format": FORMAT, "version": VERSION, "chunks": len(self.chunks), "settings": self.settings,
            "sources": self.sources, "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> Index:
        """Read an index directory, checking every file against its manifest."""
        import bm25s

        path = Path(path)
        if not path.is_dir():
            raise LmlabError(f"index {path} not found (make one with lmlab rag index SOURCES --out {path})")
        manifest = io.read_json(path / "manifest.json", what="index manifest",
                                fix=f"rebuild it with lmlab rag index --out {path}")  # fmt: skip
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise LmlabError(f"{path} is not an lmlab index (its manifest.json is not one)")
        for name, digest in manifest.get("files", {}).items():
            f = path / name
            if not f.is_file() or io.sha256_file(f) != digest:
                raise LmlabError(f"index {path} is damaged: {name} is missing or changed since it was built; rebuild "
                                 "it with lmlab rag index")  # fmt: skip
        chunks = [Chunk.from_dict(json.loads(line)) for line in (path / "chunks.jsonl").read_text("utf-8").splitlines()]
        self = cls.__new__(cls)
        self.chunks, self.settings, self.sources = chunks, manifest["settings"], manifest.get("sources", [])
        self.bm25 = bm25s.BM25.load(str(path / "bm25"), show_progress=False)
        self.dense, self._embedder = None, None
        if self.settings.get("dense"):
            self.dense = np.load(path / "dense.npy", mmap_mode="r")
            if self.dense.shape != (len(chunks), self.settings["dense"]["width"]):
                raise LmlabError(f"index {path} is damaged: dense.npy does not match its chunks; rebuild it")
        return self

    # -- searching -----------------------------------------------------------------------------------------------
    def search(self, query: str, k: int = 5, mode: str = "bm25") -> list[Hit]:
        """The ``k`` best chunks for ``query``, best first (chunks that share no term with it are left out)."""
        return self.search_many([query], k=k, mode=mode)[0]

    def search_many(self, queries: Sequence[str], k: int = 5, mode: str = "bm25", rrf_k: int = 60) -> list[list[Hit]]:
        """``search`` for several queries at once. ``mode``: bm25, dense, or hybrid (reciprocal rank fusion)."""
        if mode not in ("bm25", "dense", "hybrid"):
            raise LmlabError(f"--mode must be bm25, dense or hybrid, got {mode!r}")
        if mode != "bm25" and self.dense is None:
            raise LmlabError(f"--mode {mode}: this index has BM25 only; build it with lmlab rag index --dense RUN")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise LmlabError(f"-k must be an integer >= 1, got {k!r}")
        if not all(isinstance(q, str) and q.strip() for q in queries):
            raise LmlabError("a query must be a non-empty string")
        k = min(k, len(self.chunks))
        if mode == "bm25":
            return [[Hit(r + 1, s, self.chunks[i]) for r, (i, s) in enumerate(row)] for row in self._bm25(queries, k)]
        from lmlab.rag.dense import dense_top, rrf

        depth = k if mode == "dense" else min(len(self.chunks), max(k, 50))
        if getattr(self, "_dense_t", None) is None:  # float32 once, for every query after
            self._dense_t = torch.tensor(np.asarray(self.dense), dtype=torch.float32)
        ids, scores = dense_top(self._dense_t, self.embedder().embed(list(queries)), depth)
        if mode == "dense":
            return [[Hit(r + 1, s, self.chunks[i]) for r, (i, s) in enumerate(zip(a, b))] for a, b in zip(ids, scores)]
        out = []
        for lexical, semantic in zip(self._bm25(queries, depth), ids):
            fused = rrf([[i for i, _ in lexical], semantic], k, rrf_k)
            out.append([Hit(r + 1, s, self.chunks[i]) for r, (i, s) in enumerate(fused)])
        return out

    def _bm25(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        """Each query's top ``k`` (chunk, BM25 score), chunks sharing no term with it left out."""
        vocab = self.bm25.vocab_dict
        tokens = [[w for w in t if w in vocab] for t in _tokenize(list(queries), ids=False)]
        known = [i for i, t in enumerate(tokens) if t]  # a query of stopwords or unseen words matches nothing
        out: list[list[tuple[int, float]]] = [[] for _ in queries]
        if not known:
            return out
        ids, scores = self.bm25.retrieve([tokens[i] for i in known], k=k, show_progress=False, n_threads=1)
        for q, row_ids, row_scores in zip(known, ids.tolist(), scores.tolist()):
            out[q] = [(i, float(s)) for i, s in zip(row_ids, row_scores) if s > 0]
        return out
