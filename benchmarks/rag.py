"""BM25 index build and query speed: ``lmlab rag`` vs ``bm25s`` called directly vs ``rank_bm25``, on the same chunks.

    python -m benchmarks.rag [--chunk-tokens 20] [--queries 200] [--no-rank-bm25]

The chunks are the 14 Gutenberg books and WikiText-2's test split of ../shared/data, cut by lmlab's chunker at
``--chunk-tokens`` words with no overlap (20 words gives about 100k chunks from these 2.2M words). Each library
gets the same chunk texts:

  lmlab       ``Index(chunks, ...)`` (bm25s's tokenizer and index inside) and ``index.search_many``
  bm25s       ``bm25s.tokenize`` + ``BM25().index``, then ``retrieve`` on ``bm25s.tokenize``d queries
  rank_bm25   ``BM25Okapi`` on whitespace-split lowercase chunks, ``get_top_n`` (what many tutorials use)

Build: chunks per second of the index build (cutting the sources into chunks is timed apart, and not part of the
comparison). Queries: sentences drawn from the same text (seeded), top 10, one at a time: p50 latency and
queries/s. One thread. Results also go to benchmarks/results/rag.json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import machine_line, print_table, update_section, write_result

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def corpus_chunks(chunk_tokens: int):
    from lmlab.rag.chunks import chunk_document, read_documents

    sources = [str(DATA / "gutenberg" / "*.txt"), str(DATA / "wikitext-2" / "wiki.test.raw")]
    t = time.perf_counter()
    chunks = [c for d in read_documents(sources) for c in chunk_document(d, chunk_tokens, 0)]
    return chunks, time.perf_counter() - t


def queries(chunks, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        words = rng.choice(chunks).text.split()
        if len(words) >= 6:
            i = rng.randrange(0, len(words) - 5)
            out.append(" ".join(words[i : i + rng.randint(4, 8)]))
    return out


def timed_queries(fn, qs: list[str]) -> dict[str, float]:
    fn(qs[0])
    times = []
    for q in qs:
        t = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t)
    return {"p50_ms": 1000 * statistics.median(times), "qps": len(qs) / sum(times)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chunk-tokens", type=int, default=20)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--rank-bm25-queries", type=int, default=20, help="rank_bm25 scores every chunk per query")
    p.add_argument("--no-rank-bm25", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args(argv)

    import bm25s
    import torch

    torch.set_num_threads(1)
    from lmlab.rag.index import Index

    chunks, cut_s = corpus_chunks(args.chunk_tokens)
    texts = [c.text for c in chunks]
    qs = queries(chunks, args.queries, args.seed)
    print(f"{len(chunks):,} chunks (cut in {cut_s:.1f}s)", file=sys.stderr)
    rows = []
    settings = {"chunk_tokens": args.chunk_tokens, "overlap": 0, "k1": 1.5, "b": 0.75, "method": "lucene"}

    t = time.perf_counter()
    index = Index(chunks, settings, ["benchmark"])
    build = time.perf_counter() - t
    rows.append({"library": "lmlab", "build_s": build, **timed_queries(lambda q: index.search(q, k=10), qs)})

    t = time.perf_counter()
    model = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    model.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    build = time.perf_counter() - t

    def direct(q):
        return model.retrieve(bm25s.tokenize([q], stopwords="en", show_progress=False, return_ids=False), k=10,
                              show_progress=False, n_threads=1)  # fmt: skip

    rows.append({"library": "bm25s", "build_s": build, **timed_queries(direct, qs)})

    if not args.no_rank_bm25:
        from rank_bm25 import BM25Okapi

        t = time.perf_counter()
        okapi = BM25Okapi([s.lower().split() for s in texts])
        build = time.perf_counter() - t
        rows.append({"library": "rank_bm25", "build_s": build,
                     **timed_queries(lambda q: okapi.get_top_n(q.lower().split(), texts, n=10),
                                     qs[: args.rank_bm25_queries])})  # fmt: skip
    base = next(r for r in rows if r["library"] == "bm25s")
    table_rows = [{
        "library": r["library"], "chunks/s (build)": f"{len(chunks) / r['build_s']:,.0f}",
        "build vs bm25s": f"{r['build_s'] / base['build_s']:.2f}x time", "query p50 (ms)": f"{r['p50_ms']:.2f}",
        "queries/s": f"{r['qps']:,.0f}", "query vs bm25s": f"{base['qps'] / r['qps']:.2f}x time",
    } for r in rows]  # fmt: skip
    table = print_table(table_rows, list(table_rows[0]))
    cmd = "python -m benchmarks.rag " + " ".join(argv if argv is not None else sys.argv[1:])
    write_result("rag", {"rows": rows, "chunks": len(chunks), "command": cmd})
    if not args.no_doc:
        head = (f"Command: `{cmd.strip()}`; {len(chunks):,} chunks of {args.chunk_tokens} words, {args.queries} "
                f"queries (rank_bm25: {args.rank_bm25_queries})")  # fmt: skip
        update_section("rag", f"{head}\n\n{machine_line()}\n\n{table}\n")


if __name__ == "__main__":
    main()
