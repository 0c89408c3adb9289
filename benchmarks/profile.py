"""Where the time goes: torch.profiler tables of the `baby` training step and the batch-1 decode step.

    python -m benchmarks.profile [--steps 20] [--rows 12]

Prints the top operators by self CPU time and writes them to benchmarks/results/profile_*.txt, so a
speed change can show its before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from lmlab.config import get_preset
from lmlab.generate.engine import generate_ids
from lmlab.generate.sampling import SamplingParams
from lmlab.models import build_model
from lmlab.train.optim import make_adamw

RESULTS = Path(__file__).resolve().parent / "results"


def train_step_table(steps: int, rows: int) -> str:
    cfg = dataclasses.replace(get_preset("baby").model, vocab_size=65)
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = make_adamw(model, 1e-3, 0.1, (0.9, 0.99), 1e-8, torch.device("cpu"))
    x = torch.randint(0, 65, (12, cfg.block_size))
    y = torch.randint(0, 65, (12, cfg.block_size))

    def step() -> None:
        model(x, y).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def decode_table(new_tokens: int, rows: int) -> str:
    cfg = dataclasses.replace(get_preset("baby").model, vocab_size=72, block_size=1024)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    prompt = [torch.randint(7, 72, (16,)).tolist()]
    params = SamplingParams(top_k=50, seed=0)
    generate_ids(model, prompt, params, max_new_tokens=16)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate_ids(model, prompt, params, max_new_tokens=new_tokens)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="training steps profiled")
    ap.add_argument("--new-tokens", type=int, default=256, help="tokens decoded at batch 1")
    ap.add_argument("--rows", type=int, default=12)
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, table in (
        ("train_step_baby", train_step_table(args.steps, args.rows)),
        ("decode_batch1_baby", decode_table(args.new_tokens, args.rows)),
    ):
        print(f"\n== {name} (torch {torch.__version__}, {torch.get_num_threads()} threads)\n{table}")
        (RESULTS / f"profile_{name}.txt").write_text(table + "\n")


if __name__ == "__main__":
    main()
