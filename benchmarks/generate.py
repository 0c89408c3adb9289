"""Decoding speed of lmlab's engine against Hugging Face ``transformers`` ``generate``, on one model.

    python -m benchmarks.generate [--batch 1 8] [--prompt-tokens 16] [--new-tokens 256] [--repeats 5]

The model is the ``baby`` preset's shape (4 layers, 4 heads, width 128, GPT-2 layout) with a
tiny-Shakespeare-sized char vocabulary (72), and ``block_size`` raised to 1024 so that prompt +
output fit without a sliding window. Its random weights go to ``transformers`` through lmlab's own
GPT-2 export (``lmlab.models.hf.save_hf_model``) and load with ``GPT2LMHeadModel.from_pretrained``,
so both libraries run identical weights; a greedy run checks they pick the same tokens.

Each case samples with top-k 50 (temperature 1) from random 16-token prompts, exactly ``--new-tokens``
tokens per row (no end-of-text stop), with the KV cache on (HF: its default DynamicCache). Reported:

  TTFT        time to first token: the call to the first sampled token (prefill + one sample)
  decode      tokens per second after the first: batch x (new_tokens - 1) / (last token - first token)

Both are measured on the wall clock and on the process's CPU clock. The cases alternate (lmlab, hf,
lmlab, hf, ...) for ``--repeats`` rounds and each keeps its best round. On a shared machine the CPU
clock is the fairer of the two: it does not count time the process waited for a core, which hurts
the longer-running library more (a long run is less likely to find a quiet moment).

Threads: one by default, for both libraries. At this size an op takes microseconds and a second
thread costs more in synchronization than it saves (on a busy machine, much more); with
``--threads N`` the CPU clock counts every thread and only the wall clock is comparable.
Results also go to benchmarks/results/generate.json (``benchmarks.common.write_result``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

import torch
import transformers

from benchmarks.common import machine_line, print_table, update_section, write_result

LIBS = ("lmlab", "transformers")


def build(vocab_size: int, block_size: int, seed: int):
    """(lmlab GPT, transformers GPT2LMHeadModel) with the same weights, both in eval mode."""
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from lmlab.config import get_preset
    from lmlab.models import build_model
    from lmlab.models.hf import save_hf_model

    hf_logging.set_verbosity_error()
    cfg = dataclasses.replace(get_preset("baby").model, vocab_size=vocab_size, block_size=block_size)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        save_hf_model(model, d)
        hf = GPT2LMHeadModel.from_pretrained(d).eval()
    hf.generation_config.pad_token_id = 0  # no eos and no pad: silence transformers' warning
    return model, hf


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def spans(t0, t1, t2) -> dict[str, float]:
    """Seconds to the first token and from the first to the last, on both clocks."""
    return {"ttft": t1[0] - t0[0], "decode": t2[0] - t1[0], "ttft_cpu": t1[1] - t0[1], "decode_cpu": t2[1] - t1[1]}


def run_lmlab(model, prompts: torch.Tensor, new_tokens: int, seed: int) -> dict[str, float]:
    from lmlab.generation.engine import stream_ids
    from lmlab.generation.request import GenerationRequest

    t0 = clocks()
    steps = stream_ids(model, prompts.tolist(), GenerationRequest(max_new_tokens=new_tokens, top_k=50, seed=seed))
    next(steps)
    t1 = clocks()
    n = 1 + sum(1 for _ in steps)
    t2 = clocks()
    assert n == new_tokens, n
    return spans(t0, t1, t2)


def run_hf(hf, prompts: torch.Tensor, new_tokens: int, seed: int) -> dict[str, float]:
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        """Timestamps of generate's put() calls: the prompt first, then each new token."""

        def __init__(self) -> None:
            self.times: list[tuple[float, float]] = []

        def put(self, value) -> None:
            self.times.append(clocks())

        def end(self) -> None:
            pass

    clock = Clock()
    torch.manual_seed(seed)
    t0 = clocks()
    out = hf.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        do_sample=True,
        top_k=50,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=new_tokens,
        use_cache=True,
        streamer=clock,
    )
    assert out.shape[1] == prompts.shape[1] + new_tokens, out.shape
    return spans(t0, clock.times[1], clock.times[-1])


def check_same_tokens(model, hf, prompt: torch.Tensor, n: int = 32) -> bool:
    from lmlab.generation.engine import generate_ids
    from lmlab.generation.request import GenerationRequest

    ours = generate_ids(model, prompt.tolist(), GenerationRequest(max_new_tokens=n, temperature=0))[0].tokens
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=n)
    return ours == theirs[0, prompt.shape[1] :].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--vocab-size", type=int, default=72)
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both libraries (0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite the table in BENCHMARKS.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, hf = build(args.vocab_size, args.block_size, args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    prompts = {b: torch.randint(0, args.vocab_size, (b, args.prompt_tokens), generator=gen) for b in args.batch}
    same = check_same_tokens(model, hf, prompts[args.batch[0]][:1])

    for b in args.batch:  # warm up allocators and lazy initialization, untimed
        run_lmlab(model, prompts[b], 8, args.seed)
        run_hf(hf, prompts[b], 8, args.seed)

    best: dict[tuple[str, int], dict[str, float]] = {}
    for _ in range(args.repeats):
        for b in args.batch:
            for name, fn, m in (("lmlab", run_lmlab, model), ("transformers", run_hf, hf)):
                got = fn(m, prompts[b], args.new_tokens, args.seed)
                old = best.get((name, b), got)
                best[(name, b)] = {k: min(got[k], old[k]) for k in got}

    rows = []
    for b in args.batch:
        for name in LIBS:
            t = best[(name, b)]
            n = b * (args.new_tokens - 1)
            rows.append(
                {
                    "library": name,
                    "batch": b,
                    "TTFT ms": 1000 * t["ttft"],
                    "decode tok/s": n / t["decode"],
                    "TTFT ms (CPU)": 1000 * t["ttft_cpu"],
                    "decode tok/s (CPU)": n / t["decode_cpu"],
                }
            )
    for ours, theirs in zip(rows[::2], rows[1::2]):
        for clock in ("", " (CPU)"):
            ours["x HF" + clock] = f"{ours['decode tok/s' + clock] / theirs['decode tok/s' + clock]:.2f}x"

    load = os.getloadavg()[0]
    print(
        f"generate: baby shape, vocab {args.vocab_size}, prompt {args.prompt_tokens}, {args.new_tokens} new tokens, "
        f"top-k 50, best of {args.repeats} rounds, {torch.get_num_threads()} thread(s), "
        f"transformers {transformers.__version__}; load average {load:.2f}"
    )
    print(f"greedy tokens identical (lmlab vs transformers): {'yes' if same else 'NO'}\n")
    columns = [
        "library",
        "batch",
        "TTFT ms",
        "decode tok/s",
        "x HF",
        "TTFT ms (CPU)",
        "decode tok/s (CPU)",
        "x HF (CPU)",
    ]
    table = print_table(rows, columns)
    write_result("generate", {"args": vars(args), "load_average": load, "greedy_identical": same, "rows": rows})
    if not args.no_doc:
        command = " ".join(["python -m benchmarks.generate", *sys.argv[1:]])
        update_section(
            "generate",
            f"Measured {time.strftime('%Y-%m-%d')} with `{command}` on: {machine_line()}; "
            f"{torch.get_num_threads()} thread(s) for both libraries, transformers {transformers.__version__}, "
            f"best of {args.repeats} alternating rounds; greedy tokens identical: {'yes' if same else 'NO'}."
            f"\n\n{table}",
        )


if __name__ == "__main__":
    main()
