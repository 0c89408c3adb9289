"""The training loop's overhead: `Trainer.fit` against a bare forward+backward+AdamW step, same model.

    python -m benchmarks.train [--preset baby] [--steps 300] [--rounds 3]

bare   a tight loop over one pre-built batch: forward, backward, clip, fused AdamW step
loop   Trainer.fit on tiny Shakespeare (char): memory-mapped batches, LR schedule, logging to
       metrics.jsonl every 10 steps, a checkpoint every 100 steps, one final 1-batch evaluation

Both run in this process, alternated round by round so machine drift hits them alike; the best
round of each is reported. Overhead = 1 - loop tokens/s / bare tokens/s (goal: under 5%).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from lmlab import runtime
from lmlab.api import prepare
from lmlab.config import TrainConfig, get_preset, preset_train_config
from lmlab.data.dataset import load_dataset
from lmlab.models import build_model
from lmlab.objectives.lm import LanguageModeling
from lmlab.training.optim import make_adamw
from lmlab.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "shakespeare" / "input.txt"


def bare_steps(model_cfg, cfg: TrainConfig, steps: int) -> float:
    """Tokens/s of the bare step."""
    runtime.seed_everything(0)
    model = build_model(model_cfg)
    model.train()
    opt = make_adamw(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps, torch.device("cpu"))
    x = torch.randint(0, model_cfg.vocab_size, (cfg.batch_size, model_cfg.block_size))
    y = torch.randint(0, model_cfg.vocab_size, (cfg.batch_size, model_cfg.block_size))
    params = list(model.parameters())
    for i in range(steps + 5):
        if i == 5:  # warm-up steps excluded
            t0 = time.perf_counter()
        loss = model(x, y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * cfg.batch_size * model_cfg.block_size / (time.perf_counter() - t0)


def loop_steps(data: Path, model_cfg, cfg: TrainConfig, steps: int, workdir: Path) -> float:
    """Tokens/s of Trainer.fit, wall time of the whole fit (checkpoints and logging included)."""
    run_dir = workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    ds = load_dataset(data)
    runtime.seed_everything(0)
    model = build_model(model_cfg)
    cfg = dataclasses.replace(cfg, max_steps=steps + 5, warmup_steps=10)
    objective = LanguageModeling(ds, model_cfg.block_size, ds.tokenizer)
    trainer = Trainer(model, objective, cfg, run_dir, runtime.setup("cpu", "fp32"))
    runtime.peak_flops("cpu", "fp32")  # measured once per process; keep it out of the timed region
    t0 = time.perf_counter()
    trainer.fit()
    return (steps + 5) * cfg.batch_size * model_cfg.block_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="baby")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = prepare(str(SHAKESPEARE), out=str(tmp / "data"), quiet=True).path
        p = get_preset(args.preset)
        model_cfg = dataclasses.replace(p.model, vocab_size=load_dataset(data).vocab_size, dropout=0.0)
        cfg = preset_train_config(
            p, eval_every=0, eval_steps=1, sample_tokens=0, log_every=10, save_every=100, progress=False, track="none"
        )
        bare, loop = [], []
        for _ in range(args.rounds):
            bare.append(bare_steps(model_cfg, cfg, args.steps))
            loop.append(loop_steps(data, model_cfg, cfg, args.steps, tmp))
    b, l = max(bare), max(loop)
    overhead = 1 - l / b
    print(
        f"\ntraining loop overhead, {args.preset} shape (batch {cfg.batch_size}, block {model_cfg.block_size}), "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    )
    print(f"{'case':<8} {'tok/s (best)':>13} {'all rounds':>30}")
    print(f"{'bare':<8} {b:>13,.0f} {', '.join(f'{v:,.0f}' for v in bare):>30}")
    print(f"{'loop':<8} {l:>13,.0f} {', '.join(f'{v:,.0f}' for v in loop):>30}")
    print(f"overhead {overhead * 100:.1f}% (goal < 5%)")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "preset": args.preset,
                "steps": args.steps,
                "bare_tok_s": bare,
                "loop_tok_s": loop,
                "overhead": overhead,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
