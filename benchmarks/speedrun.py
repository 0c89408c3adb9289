"""Time to a validation loss on tiny Shakespeare (char), from start to exit: lmlab's `speedrun` preset vs
nanoGPT's README CPU command, side by side, alternated round by round.

    python -m benchmarks.speedrun [--rounds 3] [--nanogpt DIR] [--write-doc]

nanoGPT  `python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
         --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
         --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0` in a checkout of karpathy/nanoGPT (--nanogpt;
         the data prepared by its own prepare.py from the local tiny Shakespeare, untimed); its loss is its
         own 20-batch estimate at step 2000
lmlab    `lmlab train data/shakespeare-char speedrun` (the data prepared by lmlab prepare, untimed); its loss
         is the last evaluation, over the whole validation split

Both as child processes with the same environment; wall time from start to exit. The goal (issue 19):
lmlab's validation loss ≤ 1.88 in ≤ 0.4× nanoGPT's time, with at most 1M parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, machine_line, print_table, update_section, write_result

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "shakespeare" / "input.txt"
NANOGPT_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]  # fmt: skip


def timed(argv: list[str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout + proc.stderr


def nanogpt_round(repo: Path) -> dict:
    seconds, out = timed([sys.executable, "train.py", *NANOGPT_ARGS], repo)
    losses = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", out)
    return {"seconds": seconds, "val_loss": float(losses[-1][2]), "params_m": _nanogpt_params(out)}


def _nanogpt_params(out: str) -> float | None:
    m = re.search(r"number of parameters: ([\d.]+)M", out)
    return float(m.group(1)) if m else None


def lmlab_round(data: Path, work: Path, preset: str) -> dict:
    run = work / f"run-{time.monotonic_ns()}"
    seconds, _ = timed([sys.executable, "-m", "lmlab", "train", str(data), preset, "--out", str(run)], ROOT)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((run / "config.json").read_text())
    import lmlab

    params = lmlab.load(run).model.num_params()
    shutil.rmtree(run)
    return {"seconds": seconds, "val_loss": [r["val_loss"] for r in rows if "val_loss" in r][-1],
            "params_m": params / 1e6, "steps": cfg["train"]["max_steps"]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speedrun", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--preset", default="speedrun")
    p.add_argument("--nanogpt", type=Path, help="a checkout of karpathy/nanoGPT (omit: lmlab alone)")
    p.add_argument("--write-doc", action="store_true")
    a = p.parse_args()
    cmd = "python -m benchmarks.speedrun " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "shakespeare-char"
        subprocess.run([sys.executable, "-m", "lmlab", "prepare", str(SHAKESPEARE), "--tokenizer", "char", "--out",
                        str(data), "--quiet"], check=True, cwd=ROOT)  # fmt: skip
        repo = None
        if a.nanogpt is not None:
            repo = work / "nanoGPT"
            shutil.copytree(a.nanogpt, repo, ignore=shutil.ignore_patterns(".git"))
            shutil.copy(SHAKESPEARE, repo / "data" / "shakespeare_char" / "input.txt")
            subprocess.run([sys.executable, "data/shakespeare_char/prepare.py"], cwd=repo, check=True,
                           capture_output=True)  # fmt: skip
        results: dict[str, list[dict]] = {"nanoGPT": [], "lmlab": []}
        for r in range(a.rounds):
            if repo is not None:
                results["nanoGPT"].append(nanogpt_round(repo))
                print(f"round {r + 1}: nanoGPT {results['nanoGPT'][-1]}", file=sys.stderr)
            results["lmlab"].append(lmlab_round(data, work, a.preset))
            print(f"round {r + 1}: lmlab {results['lmlab'][-1]}", file=sys.stderr)
    rows = []
    base = statistics.median(x["seconds"] for x in results["nanoGPT"]) if results["nanoGPT"] else None
    for name, runs in results.items():
        if not runs:
            continue
        secs = [x["seconds"] for x in runs]
        med = statistics.median(secs)
        rows.append({
            "command": name if name == "nanoGPT" else f"lmlab train … {a.preset}",
            "params (M)": round(runs[0]["params_m"], 3) if runs[0]["params_m"] else "",
            "wall s (median)": round(med, 1), "wall s (range)": f"{min(secs):.1f}–{max(secs):.1f}",
            "val loss": " / ".join(f"{x['val_loss']:.3f}" for x in runs),
            "x nanoGPT time": f"{med / base:.2f}x" if base else "",
        })  # fmt: skip
    table = print_table(rows, list(rows[0]))
    write_result("speedrun", {"command": cmd, "machine": machine(), "results": results, "rows": rows})
    if a.write_doc:
        update_section("speedrun", f"`{cmd.strip()}` on {machine_line()}.\n\n{table}\n")


if __name__ == "__main__":
    main()
