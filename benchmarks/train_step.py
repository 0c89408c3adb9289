"""Training-step throughput: lmlab's models against reference implementations of identical shape.

One step = forward + cross-entropy + backward + AdamW (fused), no dropout, on the same random tokens
for every contender. Per case, lmlab and the reference run in each precision asked for (``fp32``:
plain fp32 math, the default of both; ``bf16``: the forward under bf16 autocast, lmlab's opt-in
``--train.precision bf16``, given to the reference too), optionally also under ``torch.compile``;
all of a case's contenders alternate round by round in one run, so drift hits them alike.

    case               lmlab                      reference
    baby               GPT (GPT-2 style)          transformers.GPT2LMHeadModel
    shakespeare-char   GPT (GPT-2 style)          transformers.GPT2LMHeadModel
    modern-small       GPT (RoPE/RMSNorm/SwiGLU)  transformers.LlamaForCausalLM
    lstm               LSTM language model        Embedding → torch.nn.LSTM → Linear
    gpt2-124m          GPT-2 small, block 1024    transformers.GPT2LMHeadModel   (GPU only by default)

Run from the repository root:  python -m benchmarks.train_step [--cases baby lstm] [--precisions fp32]
``× ref`` is the median over rounds of the paired speed-up against the reference in the same
precision (and compile mode); ``× ref fp32`` against the reference in plain fp32, what a user of
the reference gets by default. MFU = flops_per_token × tokens/s ÷ the fastest measured GEMM path
of the machine (``benchmarks.common.matmul_peaks``; the table names it). ``spread`` is
(max − min) / median of a contender's round times: large values mean the machine was busy; then
``best tok/s`` (from the fastest round) is the better estimate of an idle machine.
The table also replaces the one between the ``bench:train_step`` markers in BENCHMARKS.md
(``bench:train_step_compile`` with ``--compile``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import tyro

from benchmarks.common import (
    alternate,
    best_peak,
    machine_line,
    matmul_peaks,
    median,
    print_table,
    spread,
    update_section,
    write_result,
)
from lmlab.config import ModelConfig, get_preset
from lmlab.models import build_model

COLUMNS = ("case", "precision", "model", "batch", "block", "params", "step_ms", "tokens_per_s", "best_tokens_per_s",
           "vs_ref", "vs_ref_fp32", "mfu_pct", "spread")  # fmt: skip
HEADERS = ("case", "precision", "contender", "batch", "block", "params", "step ms", "tok/s", "best tok/s", "× ref",
           "× ref fp32", "MFU %", "spread")  # fmt: skip
VOCAB = 65  # tiny Shakespeare's character vocabulary: the shapes these presets are trained at

# case -> (preset, batch size, reference kind, vocabulary)
CASES: dict[str, tuple[str, int, str, int]] = {
    "baby": ("baby", 12, "gpt2", VOCAB),
    "shakespeare-char": ("shakespeare-char", 8, "gpt2", VOCAB),
    "modern-small": ("modern-small", 8, "llama", VOCAB),
    "lstm": ("lstm", 12, "lstm", VOCAB),
    "gpt2-124m": ("gpt2-124m", 16, "gpt2", 50304),
}
DEFAULT_CASES = {"cpu": ("baby", "shakespeare-char", "modern-small", "lstm"), "cuda": ("gpt2-124m", "shakespeare-char")}


@dataclass
class Args:
    """Time training steps of lmlab models against transformers / torch.nn references of identical shape."""

    cases: tuple[str, ...] = ()  # which cases to run (default: baby shakespeare-char modern-small lstm on CPU)
    precisions: tuple[str, ...] = ("fp32", "bf16")  # fp32 and/or bf16 (autocast), each for both contenders
    compile: bool = False  # also time both contenders under torch.compile
    device: str = "auto"  # cpu, cuda, or auto (cuda when there is one)
    rounds: int = 7  # alternating rounds per case
    steps: int = 2  # training steps per contender per round (at least)
    round_seconds: float = 1.5  # make each contender's round last about this long (more steps for small shapes)
    warmup: int = 2  # untimed steps per contender before the rounds
    seed: int = 0  # seed for weights and tokens
    write_doc: bool = True  # replace the table between the bench:train_step markers in BENCHMARKS.md


def _reference(kind: str, cfg: ModelConfig) -> torch.nn.Module:
    """A reference model with exactly lmlab's shape (and therefore its parameter count)."""
    if kind == "lstm":
        return PlainLSTM(cfg)
    import transformers

    logging.getLogger("transformers").setLevel(logging.ERROR)
    if kind == "gpt2":
        hf_cfg = transformers.GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
            n_head=cfg.n_head, n_inner=cfg.ffn_dim, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            layer_norm_epsilon=cfg.norm_eps, bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        return transformers.GPT2LMHeadModel(hf_cfg)  # default attention: sdpa
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps, attention_bias=False, mlp_bias=False,
        tie_word_embeddings=cfg.tie_embeddings, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(hf_cfg)


class PlainLSTM(torch.nn.Module):
    """The textbook LSTM language model in plain torch.nn, for reference."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.lstm = torch.nn.LSTM(cfg.n_embd, cfg.hidden, num_layers=cfg.n_layer, batch_first=True)
        self.head = torch.nn.Linear(cfg.hidden, cfg.vocab_size)

    def forward(self, input_ids: torch.Tensor):
        out, _ = self.lstm(self.emb(input_ids))
        return self.head(out)


def _step(
    model: torch.nn.Module, logits_of: Callable, x: torch.Tensor, y: torch.Tensor, precision: str, compiled: bool
) -> Callable[[], None]:
    """One training step; every contender's loss is the same flattened cross-entropy, in fp32."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model.train()
    fwd = torch.compile(model) if compiled else model
    dev = x.device

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = logits_of(fwd, x)  # (B, T, V)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return step


def run_case(name: str, args: Args, device: torch.device) -> list[dict]:
    preset, batch, kind, vocab = CASES[name]
    cfg = dataclasses.replace(get_preset(preset).model, vocab_size=vocab, dropout=0.0)
    ref_name = {"gpt2": "HF GPT2LMHeadModel", "llama": "HF LlamaForCausalLM", "lstm": "torch.nn.LSTM"}[kind]
    ours_logits = lambda m, t: m(t).logits  # noqa: E731
    ref_logits = (lambda m, t: m(t)) if kind == "lstm" else (lambda m, t: m(input_ids=t, use_cache=False).logits)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randint(0, vocab, (batch, cfg.block_size), generator=gen).to(device)
    y = torch.randint(0, vocab, (batch, cfg.block_size), generator=gen).to(device)
    contenders, meta = {}, {}
    n_params = 0
    for precision in args.precisions:
        for compiled in (False, True) if args.compile else (False,):
            torch.manual_seed(args.seed)
            ours, ref = build_model(cfg).to(device), _reference(kind, cfg).to(device)
            n_params, n_ref = ours.num_params(), sum(p.numel() for p in ref.parameters())
            if n_params != n_ref:
                raise SystemExit(f"{name}: shapes differ ({n_params} vs {n_ref} parameters); the comparison is unfair")
            tag = precision + (" compile" if compiled else "")
            for who, model, logits_of in (("lmlab", ours, ours_logits), (ref_name, ref, ref_logits)):
                key = f"{who} | {tag}"
                contenders[key] = _step(model, logits_of, x, y, precision, compiled)
                meta[key] = (who, tag, ours.flops_per_token())
    t0 = time.perf_counter()
    times = alternate(contenders, warmup=args.warmup, rounds=args.rounds, steps=args.steps,
                      round_seconds=args.round_seconds)  # fmt: skip
    print(f"{name}: {len(contenders)} contenders timed in {time.perf_counter() - t0:.0f} s")
    tokens = batch * cfg.block_size
    rows = []
    for key, ts in times.items():
        who, tag, flops = meta[key]
        ref_t = times[f"{ref_name} | {tag}"]
        ref_fp32 = times.get(f"{ref_name} | fp32")
        rows.append({
            "case": name, "precision": tag, "model": who, "batch": batch, "block": cfg.block_size, "params": n_params,
            "step_ms": 1000 * median(ts), "tokens_per_s": tokens / median(ts), "best_tokens_per_s": tokens / min(ts),
            "spread": spread(ts), "flops_per_token": flops,
            # paired speed-ups: each round ran every contender back to back, robust to drift between rounds
            "vs_ref": median([r / o for o, r in zip(ts, ref_t)]),
            "vs_ref_fp32": median([r / o for o, r in zip(ts, ref_fp32)]) if ref_fp32 else "",
        })  # fmt: skip
    return rows


def main(args: Args) -> None:
    if args.device not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"unknown device {args.device!r}; choose from auto, cpu, cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this machine has no CUDA GPU that PyTorch can use")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    cases = args.cases or DEFAULT_CASES[device.type]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    bad = [p for p in args.precisions if p not in ("fp32", "bf16")]
    if bad:
        raise SystemExit(f"unknown precision(s) {bad}; choose from fp32, bf16")
    peaks = matmul_peaks(device=device.type)
    rows = []
    for case in cases:
        rows += run_case(case, args, device)
    again = matmul_peaks(device=device.type)  # best of two: a busy moment must not deflate the peak
    peaks = {k: max(v, again.get(k, 0.0)) for k, v in peaks.items()}
    peak_name, peak = best_peak(peaks)
    for row in rows:
        row["mfu_pct"] = 100 * row["flops_per_token"] * row["tokens_per_s"] / peak
    line = machine_line(peaks)
    print(line)
    table = print_table(rows, COLUMNS, HEADERS)
    section = "train_step_compile" if args.compile else "train_step"
    path = write_result(
        section,
        {"peaks": peaks, "peak_path": peak_name, "peak_flops": peak, "args": dataclasses.asdict(args), "rows": rows,
         "table": table},
    )  # fmt: skip
    print(f"wrote {path}")
    if args.write_doc:
        update_section(
            section,
            f"Measured {time.strftime('%Y-%m-%d')} with `{_command(args)}` on: {line}. "
            f"MFU against the fastest path, {peak_name} ({peak / 1e9:,.0f} GFLOP/s).\n\n{table}",
        )


def _command(args: Args) -> str:
    """The command line that reproduces ``args`` (only what differs from the defaults), as tyro spells it."""
    defaults, extra = Args(), []
    for f in dataclasses.fields(Args):
        v, flag = getattr(args, f.name), f.name.replace("_", "-")
        if v == getattr(defaults, f.name) or f.name == "write_doc":
            continue
        if isinstance(v, bool):
            extra.append(f"--{flag}" if v else f"--no-{flag}")
        else:
            extra.append(f"--{flag} {' '.join(map(str, v)) if isinstance(v, tuple) else v}")
    return " ".join(["python -m benchmarks.train_step", *extra])


if __name__ == "__main__":
    main(tyro.cli(Args, description=Args.__doc__))
