"""`lmlab rag index | add | search | ask | eval | train-encoder`: retrieval over your own documents (``lmlab.rag``)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

from lmlab.cli import parse, subcommand
from lmlab.errors import LmlabError


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
    """recall@1/5/20 and MRR of retrieval on questions (SQuAD JSON, or JSONL {"question", "answers", "doc_id"?,
    "context"?}); with --reader, exact match and F1 of its answers closed-book, with retrieval and with the gold
    passage."""

    index: tyro.conf.Positional[str]  # the index directory
    questions: str  # the question file
    mode: Literal["bm25", "dense", "hybrid"] = "bm25"  # ranking
    reader: str | None = None  # also answer every question with this run and score the answers
    k: Annotated[int, tyro.conf.arg(aliases=("-k",))] = 3  # passages the reader gets
    max_new_tokens: int = 32  # longest answer
    limit: int | None = None  # only the first N questions
    device: str = "auto"  # the reader's device: auto | cpu | cuda | cuda:N | mps
    out: str | None = None  # also write the scores to this JSON file


@dataclass
class PairsArgs:
    """Make (question, passage) training pairs for an encoder from unlabeled text by the inverse cloze task: a
    sentence of each chunk is the question, the rest of the chunk its passage."""

    sources: tyro.conf.Positional[tuple[str, ...]]  # files, directories or globs (as for rag index)
    out: str  # the JSONL file of pairs
    chunk_tokens: int = 200  # most words per passage
    limit: int | None = None  # at most this many pairs (a seeded sample)
    seed: int = 0  # chooses the query sentences and the sample


@dataclass
class TrainEncoderArgs:
    """Train a dense retrieval encoder from a GPT run on (question, passage) pairs: lmlab finetune RUN encoder
    PAIRS, whose options (--temperature, --epochs, --val, --train.*) it takes; then index with --dense OUT."""


COMMANDS = {"index": IndexArgs, "add": AddArgs, "search": SearchArgs, "ask": AskArgs, "eval": EvalArgs,
            "pairs": PairsArgs, "train-encoder": TrainEncoderArgs}  # fmt: skip
USAGE = (
    "usage: lmlab rag index|add|search|ask|eval|pairs|train-encoder ...   (lmlab rag COMMAND --help for its options)"
)


def main(argv: list[str]) -> None:
    from lmlab import io
    from lmlab.rag import Index, ask, read_questions, reader_scores, retrieval_scores

    if (cmd := subcommand(argv, COMMANDS, USAGE)) is None:
        return
    if cmd == "train-encoder":  # the encoder objective of the one trainer: its arguments are finetune's
        from lmlab.cli import finetune

        rest = argv[1:]
        if rest and rest[0] in ("-h", "--help"):
            rest = ["RUN", "encoder", "PAIRS", "--help"]
        elif len(rest) < 2 or any(a.startswith("-") for a in rest[:2]):
            raise LmlabError("give the base run and the pairs: lmlab rag train-encoder RUN PAIRS [--out DIR] [options]")
        else:
            rest = [rest[0], "encoder", *rest[1:]]
        finetune.main(rest)
        return
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
    elif cmd == "pairs":
        from lmlab.rag.pairs import ict_pairs, write_pairs

        if not args.sources:
            raise LmlabError("give the sources: lmlab rag pairs SOURCES --out PAIRS.jsonl")
        if args.limit is not None and args.limit < 1:
            raise LmlabError(f"--limit {args.limit}: give at least one pair")
        pairs = ict_pairs(list(args.sources), chunk_tokens=args.chunk_tokens, seed=args.seed, limit=args.limit)
        write_pairs(args.out, pairs, inputs=args.sources)
        print(f"wrote {len(pairs):,} inverse-cloze pairs to {args.out}", file=sys.stderr)
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
        if args.k < 1:
            raise LmlabError(f"-k {args.k}: give at least one passage to retrieve")
        if args.limit is not None and args.limit < 1:
            raise LmlabError(f"--limit {args.limit}: give at least one question")
        if args.reader is not None:
            from lmlab.runs import read_config

            read_config(args.reader)  # a wrong reader fails before the retrieval runs
        index, questions = Index.load(args.index), read_questions(args.questions)[: args.limit]
        scores = retrieval_scores(index, questions, mode=args.mode)
        print("retrieval  " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in scores.items()))  # fmt: skip
        if args.reader is not None:
            answers = reader_scores(index, questions, args.reader, k=args.k, mode=args.mode,
                                    max_new_tokens=args.max_new_tokens, device=args.device)  # fmt: skip
            for cond, r in answers.items():
                print(f"{cond:<11}  " + (f"exact_match {r['exact_match']:.1f}  f1 {r['f1']:.1f}  questions "
                                        f"{r['questions']}" if r else "no question has a gold passage"))  # fmt: skip
            scores = {"retrieval": scores, "reader": str(args.reader), "k": args.k, "answers": answers}
        if args.out:
            io.write_json(args.out, scores)
