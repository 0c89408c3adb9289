"""Where the time goes: torch.profiler tables of the `baby` training step and the batch-1 decode step.

    python -m benchmarks.profile [--steps 20] [--rows 12]

Prints the top operators by self CPU time for the training step in fp32 (the default) and in bf16
(the ``--train.precision bf16`` option: autocast), and for batch-1 decoding; writes the full tables
to benchmarks/results/profile_*.txt and a short Markdown table per profile between the
``bench:profile`` markers of BENCHMARKS.md, so a speed change shows its before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import machine_line, update_section
from lmlab.config import get_preset
from lmlab.generation.engine import generate_ids
from lmlab.generation.request import GenerationRequest
from lmlab.models import build_model
from lmlab.training.optim import make_adamw

RESULTS = Path(__file__).resolve().parent / "results"


def train_step_profile(steps: int, precision: str = "fp32"):
    cfg = dataclasses.replace(get_preset("baby").model, vocab_size=65)
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = make_adamw(model, 1e-3, 0.1, (0.9, 0.99), 1e-8, torch.device("cpu"))
    x = torch.randint(0, 65, (12, cfg.block_size))
    y = torch.randint(0, 65, (12, cfg.block_size))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(x, y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return prof, steps


def decode_profile(new_tokens: int):
    cfg = dataclasses.replace(get_preset("baby").model, vocab_size=72, block_size=1024)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    prompt = [torch.randint(7, 72, (16,)).tolist()]
    request = GenerationRequest(max_new_tokens=new_tokens, top_k=50, seed=0)
    generate_ids(model, prompt, request.replace(max_new_tokens=16))  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate_ids(model, prompt, request)
    return prof, new_tokens


def markdown(prof, per: int, unit: str, rows: int) -> str:
    """The top operators by self CPU time as a Markdown table, time per step (or token)."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    lines = [
        f"{total / per / 1000:.2f} ms of operator time per {unit}",
        "",
        f"| operator | self CPU % | ms per {unit} | calls per {unit} |",
        "| --- | ---: | ---: | ---: |",
    ]
    for e in events[:rows]:
        name = e.key if len(e.key) <= 60 else e.key[:57] + "..."
        lines.append(
            f"| `{name}` | {100 * e.self_cpu_time_total / total:.1f} | {e.self_cpu_time_total / per / 1000:.3f} "
            f"| {e.count / per:.3g} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="training steps profiled")
    ap.add_argument("--new-tokens", type=int, default=256, help="tokens decoded at batch 1")
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite the tables in BENCHMARKS.md")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    sections = []
    for name, title, (prof, per), unit in (
        ("train_step_baby", "`baby` training step, fp32 (default), batch 12 × 64", train_step_profile(args.steps),
         "step"),
        ("train_step_baby_bf16", "`baby` training step, `--train.precision bf16`, batch 12 × 64",
         train_step_profile(args.steps, "bf16"), "step"),
        ("decode_batch1_baby", "batch-1 decode, `baby` shape, block 1024, top-k 50", decode_profile(args.new_tokens),
         "token"),
    ):  # fmt: skip
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
        print(f"\n== {name} (torch {torch.__version__}, {torch.get_num_threads()} threads)\n{table}")
        (RESULTS / f"profile_{name}.txt").write_text(table + "\n")
        sections.append(f"**{title}**: {markdown(prof, per, unit, args.rows)}")
    if not args.no_doc:
        head = f"Measured {time.strftime('%Y-%m-%d')} with `python -m benchmarks.profile` on: {machine_line()}."
        update_section("profile", "\n\n".join([head, *sections]))


if __name__ == "__main__":
    main()
