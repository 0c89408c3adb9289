"""End-to-end `lmlab prepare` throughput and peak memory, against HF `tokenizers` encode_batch.

    python -m benchmarks.prepare [--big-mb 200] [--vocab-size 8192]

Cases, each in a fresh process so its peak RSS is its own:
  hf-encode_batch     one process reads the Gutenberg folder and calls Tokenizer.encode_batch on the
                      file texts with the same tokenizer (the library's own rate; no writing)
  hf pieces           the same, on the text cut into the 16 KiB line-aligned pieces lmlab uses
                      (the library's best case: its rate with lmlab's batching and no I/O)
  lmlab (tokenizer)   `lmlab prepare` with that tokenizer.json: read, split, encode, write shards
  lmlab (train bpe)   `lmlab prepare --tokenizer bpe --vocab-size 8192`: BPE training included
  lmlab 200 MB        the tokenizer.json case on a generated corpus 20x larger, to show memory stays flat
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUTENBERG = ROOT.parent / "shared" / "data" / "gutenberg"
RESULTS = ROOT / "benchmarks" / "results"

# Run inside a child process: time the body and report the child's own peak RSS.
CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
{body}
dt = time.perf_counter() - t0
print(json.dumps({{"seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

HF_BODY = """
from pathlib import Path
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
texts = [p.read_text(encoding="utf-8") for p in sorted(Path(sys.argv[2]).iterdir()) if p.is_file()]
ids = tok.encode_batch(texts, add_special_tokens=False)
"""

# the library's best case: the same text cut into the ~16 KiB line-aligned pieces lmlab feeds it
HF_PIECES_BODY = """
from pathlib import Path
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
pieces = []
for p in sorted(Path(sys.argv[2]).iterdir()):
    if p.is_file():
        text, piece = p.read_text(encoding="utf-8"), []
        size = 0
        for line in text.splitlines(True):
            piece.append(line)
            size += len(line)
            if size >= 16384:
                pieces.append("".join(piece))
                piece, size = [], 0
        pieces.append("".join(piece))
ids = tok.encode_batch_fast(pieces, add_special_tokens=False)
"""

LMLAB_BODY = """
from lmlab.api import prepare
prepare(sys.argv[2], out=sys.argv[3], tokenizer=sys.argv[1], vocab_size=int(sys.argv[4]), quiet=True, overwrite=True)
"""


def child(body: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(body=body), *args], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def corpus_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def make_big_corpus(folder: Path, target_mb: float, seed: int = 0) -> None:
    """A corpus of ``target_mb`` made from Gutenberg lines reshuffled per file (new text, same statistics)."""
    lines = [ln for p in sorted(GUTENBERG.iterdir()) for ln in p.read_text(encoding="utf-8").splitlines(True)]
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written, i = 0, 0
    while written < target_mb * 1e6:
        rng.shuffle(lines)
        text = "".join(lines)
        (folder / f"part{i:03d}.txt").write_text(text, encoding="utf-8")
        written += len(text.encode())
        i += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-mb", type=float, default=200.0, help="size of the generated corpus (0 to skip)")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3, help="runs per case; the best is reported")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the tokenizer every case shares: BPE 8192 trained on Gutenberg
        ref = tmp / "ref"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "lmlab",
                "prepare",
                str(GUTENBERG),
                "--tokenizer",
                "bpe",
                "--vocab-size",
                str(args.vocab_size),
                "--out",
                str(ref),
                "--quiet",
            ],
            check=True,
        )
        tok = str(ref / "tokenizer.json")
        mb = corpus_mb(GUTENBERG)
        cases = {
            "hf encode_batch (1 process, in memory)": (HF_BODY, [tok, str(GUTENBERG)], mb),
            "hf encode_batch_fast on 16 KiB pieces (in memory)": (HF_PIECES_BODY, [tok, str(GUTENBERG)], mb),
            "lmlab prepare, given tokenizer.json": (LMLAB_BODY, [tok, str(GUTENBERG), str(tmp / "a"), "0"], mb),
            "lmlab prepare, training BPE 8192": (
                LMLAB_BODY,
                ["bpe", str(GUTENBERG), str(tmp / "b"), str(args.vocab_size)],
                mb,
            ),
        }
        results: dict[str, dict] = {name: {"mb": m, "runs": []} for name, (_, _, m) in cases.items()}
        for _ in range(args.repeats):  # alternate the cases so machine drift hits them alike
            for name, (body, cargs, _) in cases.items():
                results[name]["runs"].append(child(body, *cargs))
        if args.big_mb > 0:
            big = tmp / "big"
            make_big_corpus(big, args.big_mb)
            bmb = corpus_mb(big)
            name = f"lmlab prepare, given tokenizer.json, {bmb:.0f} MB"
            results[name] = {"mb": bmb, "runs": [child(LMLAB_BODY, tok, str(big), str(tmp / "c"), "0")]}

    rows = []
    base = None
    for name, r in results.items():
        best = min(r["runs"], key=lambda x: x["seconds"])
        rate = r["mb"] / best["seconds"]
        base = base or rate
        peak = max(x["peak_rss_mb"] for x in r["runs"])
        rows.append(
            {
                "case": name,
                "mb": round(r["mb"], 1),
                "seconds": round(best["seconds"], 2),
                "mb_per_s": round(rate, 2),
                "vs_hf": round(rate / base, 2),
                "peak_rss_mb": round(peak),
            }
        )
    print(f"\nprepare throughput, {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"{'case':<48} {'MB':>7} {'s':>7} {'MB/s':>7} {'x HF':>6} {'peak MB':>8}")
    for r in rows:
        print(
            f"{r['case']:<48} {r['mb']:>7} {r['seconds']:>7} {r['mb_per_s']:>7} {r['vs_hf']:>6} {r['peak_rss_mb']:>8}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "prepare.json").write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
