"""Documents in, chunks out: the sources a RAG index reads, and how they are cut.

Sources: a text file (``.txt``, ``.md``, anything else that is text), a directory (every such file under it), a
glob, a JSONL file of ``{"id", "text", ...metadata}`` records, or a SQuAD-format JSON file (each paragraph a
document, titled by its article). A document is cut into chunks of at most ``chunk_tokens`` words on paragraph,
then sentence boundaries (a sentence longer than the budget is cut between words), each chunk starting with the
last ``overlap`` words' worth of whole sentences of the one before, so a fact that straddles a cut is whole in one
of them. Every chunk keeps its document's id, source file, title and metadata, and its character offsets in the
document's text.

Budgets are counted in words (runs of non-space characters), not in a model's tokens: an index serves any reader,
and for English a word is about 1.3 BPE tokens, which the reader's prompt budget allows for.
"""

from __future__ import annotations

import glob as globlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.data.formats.jsonl import jsonl_records
from lmlab.errors import LmlabError

_WORD = re.compile(r"\S+")
_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


@dataclass
class Document:
    id: str
    text: str
    source: str
    title: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chunk:
    id: str  # DOC_ID#N
    doc_id: str
    text: str
    source: str
    title: str
    start: int  # character offsets of the chunk in its document's text
    end: int
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "doc_id": self.doc_id, "text": self.text, "source": self.source, "title": self.title,
                "start": self.start, "end": self.end, "meta": self.meta}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Chunk:
        return cls(d["id"], d["doc_id"], d["text"], d["source"], d.get("title", ""), d["start"], d["end"],
                   d.get("meta", {}))  # fmt: skip


# -- reading -----------------------------------------------------------------------------------------------------
def source_files(spec: str) -> list[Path]:
    """The files a source names: a file, every file under a directory, or a glob's matches (sorted)."""
    p = Path(spec).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    elif any(c in spec for c in "*?["):
        files = sorted(Path(f) for f in globlib.glob(spec, recursive=True) if Path(f).is_file())
    else:
        raise LmlabError(f"source {spec} not found (give a file, a directory or a glob)")
    if not files:
        raise LmlabError(f"source {spec} has no files")
    return files


def read_documents(specs: list[str]) -> Iterator[Document]:
    """Every document of the sources, in order. JSONL and SQuAD JSON are recognized by their content."""
    for spec in specs:
        for path in source_files(spec):
            yield from _read_file(path)


def _read_file(path: Path) -> Iterator[Document]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise LmlabError(f"cannot read {path}: {e.strerror}") from None
    if b"\x00" in raw[:8192]:
        raise LmlabError(f"{path} is not a text file (it contains NUL bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LmlabError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl(path, text)
    elif suffix == ".json":
        yield from _squad(path, text)
    else:
        yield Document(id=path.stem if path.stem else str(path), text=text, source=str(path), title=path.stem)


def _jsonl(path: Path, text: str) -> Iterator[Document]:
    for n, rec in jsonl_records(text, str(path)):
        if not isinstance(rec.get("text"), str):
            raise LmlabError(f'{path}:{n}: each line must be an object with a "text" string (and an "id")')
        rid = rec.get("id", f"{path.stem}:{n}")
        meta = {k: v for k, v in rec.items() if k not in ("id", "text", "title")}
        yield Document(str(rid), rec["text"], str(path), str(rec.get("title", "")), meta)


def _squad(path: Path, text: str) -> Iterator[Document]:
    try:
        data = json.loads(text)
        articles = data["data"]
        for a, article in enumerate(articles):
            for p, para in enumerate(article["paragraphs"]):
                yield Document(f"{article.get('title', a)}#{p}", para["context"], str(path), article.get("title", ""))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise LmlabError(f"{path} is not a SQuAD-format JSON file ({type(e).__name__}: {e}); give .txt, .jsonl or "
                         "SQuAD JSON") from None  # fmt: skip


# -- cutting -----------------------------------------------------------------------------------------------------
def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence, paragraphs kept apart, whitespace between them left out."""
    spans = []
    pos = 0
    for para in [*_PARAGRAPH.split(text)]:
        start = text.find(para, pos) if para else pos
        pos = start + len(para)
        s = 0
        for m in _SENTENCE_END.finditer(para):
            spans.append((start + s, start + m.start() + len(m.group(0).rstrip())))
            s = m.end()
        if para[s:].strip():
            spans.append((start + s, start + len(para.rstrip())))
    return [(a + (len(text[a:b]) - len(text[a:b].lstrip())), b) for a, b in spans if text[a:b].strip()]


def _words(text: str, a: int, b: int) -> list[tuple[int, int]]:
    return [(a + m.start(), a + m.end()) for m in _WORD.finditer(text[a:b])]


def chunk_document(doc: Document, chunk_tokens: int = 200, overlap: int = 40) -> list[Chunk]:
    """The document's chunks (see the module docstring)."""
    # units: whole sentences, or word runs of a sentence too long for one chunk
    units: list[tuple[int, int, int]] = []  # (start, end, words)
    for a, b in sentence_spans(doc.text):
        words = _words(doc.text, a, b)
        if len(words) <= chunk_tokens:
            units.append((a, b, len(words)))
        else:
            for i in range(0, len(words), chunk_tokens - overlap if chunk_tokens > overlap else chunk_tokens):
                part = words[i : i + chunk_tokens]
                units.append((part[0][0], part[-1][1], len(part)))
    chunks: list[Chunk] = []
    i = 0
    while i < len(units):
        j, n = i, 0
        while j < len(units) and (n + units[j][2] <= chunk_tokens or j == i):
            n += units[j][2]
            j += 1
        start, end = units[i][0], units[j - 1][1]
        chunks.append(Chunk(f"{doc.id}#{len(chunks)}", doc.id, doc.text[start:end], doc.source, doc.title, start,
                            end, doc.meta))  # fmt: skip
        if j >= len(units):
            break
        # the next chunk starts with the trailing sentences of this one that fit in the overlap
        back, k = 0, j
        while k - 1 > i and back + units[k - 1][2] <= overlap:
            k -= 1
            back += units[k][2]
        i = k
    return chunks
