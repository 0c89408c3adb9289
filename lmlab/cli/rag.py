"""`lmlab rag index | add | search | eval`: retrieval over your own documents (``lmlab.rag``)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

from lmlab.cli import parse
from lmlab.errors import LmlabError, did_you_mean


@dataclass
class IndexArgs:
    """Cut text files, folders, globs, JSONL ({"id", "text", ...}) or SQuAD JSON into chunks and build a BM25 index
    (bm25s) in the directory --out, written atomically with a manifest."""

    sources: tyro.conf.Positional[tuple[str, ...]]  # files, directories or globs
    out: str  # the index directory (replaced whole if it is an index already)
    chunk_tokens: int = 200  # most words per chunk (cut on paragraph, then sentence boundaries)
    overlap: int = 40  # words of whole sentences each chunk repeats from the one before
    k1: float = 1.5  # BM25 term-frequency saturation
    b: float = 0.75  # BM25 length normalization
    method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = "lucene"  # BM25 variant (bm25s)
    dense: str | None = None  # also embed the chunks with this GPT run (mean-pooled hidden states), for --mode dense


@dataclass
class AddArgs:
    """Add sources to an index (their documents' ids must be new); the old index stays until the new one is whole."""

    index: tyro.conf.Positional[str]  # the index directory
    sources: tyro.conf.Positional[tuple[str, ...]]  # files, directories or globs to add


@dataclass
class SearchArgs:
    """Print the chunks that best match a query, with scores, sources and offsets."""

    index: tyro.conf.Positional[str]  # the index directory
    query: tyro.conf.Positional[str]  # what to look for
    k: Annotated[int, tyro.conf.arg(aliases=("-k",))] = 5  # how many chunks
    mode: Literal["bm25", "dense", "hybrid"] = "bm25"  # ranking; dense and hybrid need an index built with --dense
    json: bool = False  # one JSON object per hit


@dataclass
class AskArgs:
    """Retrieve passages for a question, answer it with a reader run (streaming), and cite the sources."""

    index: tyro.conf.Positional[str]  # the index directory (ignored with --no-retrieval)
    run: tyro.conf.Positional[str]  # the reader: a chat (SFT) run, or a base run that continues "Answer:"
    question: tyro.conf.Positional[str]  # the question
    k: Annotated[int, tyro.conf.arg(aliases=("-k",))] = 3  # passages in the prompt (fewer if they do not fit)
    mode: Literal["bm25", "dense", "hybrid"] = "bm25"  # ranking
    no_retrieval: bool = False  # the closed-book answer: the question alone
    max_new_tokens: int = 32  # longest answer
    checkpoint: str | None = None  # the reader's checkpoint: best, latest or step-N
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps


@dataclass
class EvalArgs:
    """recall@1/5/20 and MRR of retrieval on questions (SQuAD JSON, or JSONL {"question", "answers", "doc_id"?})."""

    index: tyro.conf.Positional[str]  # the index directory
    questions: str  # the question file
    mode: Literal["bm25", "dense", "hybrid"] = "bm25"  # ranking
    out: str | None = None  # also write the scores to this JSON file


COMMANDS = {"index": IndexArgs, "add": AddArgs, "search": SearchArgs, "ask": AskArgs, "eval": EvalArgs}
USAGE = "usage: lmlab rag index|add|search|ask|eval ...   (lmlab rag COMMAND --help for its options)"


def main(argv: list[str]) -> None:
    from lmlab import io
    from lmlab.rag import Index, ask, read_questions, retrieval_scores

    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + "\n".join(f"  {n:<7} {(c.__doc__ or '').split('.')[0]}" for n, c in COMMANDS.items()))
        return
    cmd = argv[0]
    if cmd not in COMMANDS:
        raise LmlabError(f"unknown command {cmd!r}{did_you_mean(cmd, COMMANDS)}; {USAGE.removeprefix('usage: ')}")
    cls = COMMANDS[cmd]
    args = parse(cls, args=argv[1:], prog=f"lmlab rag {cmd}", description=cls.__doc__)
    if cmd == "index":
        if not args.sources:
            raise LmlabError("give the sources to index: lmlab rag index SOURCES --out INDEX")
        t0 = time.perf_counter()
        index = Index.build(list(args.sources), chunk_tokens=args.chunk_tokens, overlap=args.overlap, k1=args.k1,
                            b=args.b, method=args.method, dense=args.dense)  # fmt: skip
        index.save(args.out)
        dt = time.perf_counter() - t0
        print(f"indexed {len(index.chunks):,} chunks from {len(index.sources)} source(s) into {args.out} in "
              f"{dt:.1f}s ({len(index.chunks) / dt:,.0f} chunks/s)", file=sys.stderr)  # fmt: skip
    elif cmd == "add":
        if not args.sources:
            raise LmlabError("give the sources to add: lmlab rag add INDEX SOURCES")
        old = Index.load(args.index)
        new = old.add(list(args.sources))
        new.save(args.index)
        print(f"added {len(new.chunks) - len(old.chunks):,} chunks to {args.index} ({len(new.chunks):,} in all)",
              file=sys.stderr)  # fmt: skip
    elif cmd == "search":
        hits = Index.load(args.index).search(args.query, k=args.k, mode=args.mode)
        if not hits:
            print("no chunk shares a term with the query", file=sys.stderr)
        for h in hits:
            if args.json:
                print(json.dumps(h.to_dict(), ensure_ascii=False))
                continue
            c = h.chunk
            print(f"{h.rank}. {h.score:.3f}  {c.source} [{c.start}:{c.end}]" + (f"  {c.title}" if c.title else ""))
            print("   " + " ".join(c.text.split())[:300])
    elif cmd == "ask":
        answer = ask(
            None if args.no_retrieval else args.index, args.run, args.question, k=args.k, mode=args.mode,
            no_retrieval=args.no_retrieval, max_new_tokens=args.max_new_tokens, checkpoint=args.checkpoint,
            device=args.device, on_text=lambda piece: print(piece, end="", flush=True),
        )  # fmt: skip
        print()
        if not args.no_retrieval and not answer.hits:
            print("lmlab: warning: no passage fit the reader's context with the question; this answer is "
                  "closed-book", file=sys.stderr)  # fmt: skip
        for i, h in enumerate(answer.hits, 1):
            c = h.chunk
            print(f"[{i}] {c.source} [{c.start}:{c.end}]" + (f" {c.title}" if c.title else ""), file=sys.stderr)
    else:
        scores = retrieval_scores(Index.load(args.index), read_questions(args.questions), mode=args.mode)
        print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items()))
        if args.out:
            io.write_json(args.out, scores)
