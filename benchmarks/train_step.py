"""Training-step throughput: lmlab's models against reference implementations of identical shape.

One step = forward + cross-entropy + backward + AdamW (fused), fp32, no dropout, on the same
random tokens for both contenders. Contenders alternate round by round to cancel drift.

    case               lmlab                      reference
    baby               GPT (GPT-2 style)          transformers.GPT2LMHeadModel
    shakespeare-char   GPT (GPT-2 style)          transformers.GPT2LMHeadModel
    modern-small       GPT (RoPE/RMSNorm/SwiGLU)  transformers.LlamaForCausalLM
    lstm               LSTM language model        Embedding → torch.nn.LSTM → Linear

Run from the repository root:  python -m benchmarks.train_step [--cases baby lstm] [--rounds 7]
MFU = flops_per_token × tokens/s ÷ the machine's measured fp32 matmul peak. ``vs_ref`` is the median over
rounds of the paired speed-up (reference step time ÷ lmlab step time in the same round); ``spread`` is
(max − min) / median of a contender's round times: large values mean the machine was busy; then
``best_tokens_per_s`` (from the fastest round) is the better estimate of an idle machine.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import tyro

from benchmarks.common import alternate, machine, matmul_peak, median, print_table, spread, write_result
from lmlab.config import ModelConfig, get_preset
from lmlab.models import build_model

COLUMNS = ("case", "model", "batch", "block", "params", "step_ms", "tokens_per_s", "best_tokens_per_s", "vs_ref",
           "mfu_pct", "spread")  # fmt: skip
VOCAB = 65  # tiny Shakespeare's character vocabulary: the shapes these presets are trained at

# case -> (preset, batch size, reference kind)
CASES: dict[str, tuple[str, int, str]] = {
    "baby": ("baby", 12, "gpt2"),
    "shakespeare-char": ("shakespeare-char", 8, "gpt2"),
    "modern-small": ("modern-small", 8, "llama"),
    "lstm": ("lstm", 12, "lstm"),
}


@dataclass
class Args:
    """Time training steps of lmlab models against transformers / torch.nn references of identical shape."""

    cases: tuple[str, ...] = tuple(CASES)  # which cases to run
    rounds: int = 7  # alternating rounds per case
    steps: int = 2  # training steps per contender per round (at least)
    round_seconds: float = 1.5  # make each contender's round last about this long (more steps for small shapes)
    warmup: int = 2  # untimed steps per contender before the rounds
    seed: int = 0  # seed for weights and tokens


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


def _step(model: torch.nn.Module, logits_of: Callable, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One training step; every contender's loss is the same flattened cross-entropy."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model.train()

    def step() -> None:
        logits = logits_of(model, x)  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run_case(name: str, args: Args) -> list[dict]:
    preset, batch, kind = CASES[name]
    cfg = dataclasses.replace(get_preset(preset).model, vocab_size=VOCAB, dropout=0.0)
    torch.manual_seed(args.seed)
    ours = build_model(cfg)
    ref = _reference(kind, cfg)
    n_ours = ours.num_params()
    n_ref = sum(p.numel() for p in ref.parameters())
    if n_ours != n_ref:
        raise SystemExit(f"{name}: shapes differ ({n_ours} vs {n_ref} parameters); the comparison would be unfair")
    x = torch.randint(0, VOCAB, (batch, cfg.block_size))
    y = torch.randint(0, VOCAB, (batch, cfg.block_size))
    ref_logits = (lambda m, t: m(t)) if kind == "lstm" else (lambda m, t: m(input_ids=t, use_cache=False).logits)
    ref_name = {"gpt2": "HF GPT2LMHeadModel", "llama": "HF LlamaForCausalLM", "lstm": "torch.nn.LSTM"}[kind]
    times = alternate(
        {"lmlab": _step(ours, lambda m, t: m(t).logits, x, y), ref_name: _step(ref, ref_logits, x, y)},
        warmup=args.warmup,
        rounds=args.rounds,
        steps=args.steps,
        round_seconds=args.round_seconds,
    )
    tokens = batch * cfg.block_size
    flops = ours.flops_per_token()
    rows = []
    for who, ts in times.items():
        tps = tokens / median(ts)
        rows.append({
            "case": name, "model": who, "batch": batch, "block": cfg.block_size, "params": n_ours,
            "step_ms": 1000 * median(ts), "tokens_per_s": tps, "best_tokens_per_s": tokens / min(ts),
            "spread": spread(ts), "flops_per_token": flops,
        })  # fmt: skip
    # speed-up from the rounds pairwise (each round ran both back to back), robust to drift between rounds
    ours_t, ref_t = times.values()
    rows[0]["vs_ref"] = median([r / o for o, r in zip(ours_t, ref_t)])
    rows[1]["vs_ref"] = 1.0
    return rows


def main(args: Args) -> None:
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    info = machine()
    before = matmul_peak()
    rows = []
    for case in args.cases:
        rows += run_case(case, args)
    peak = max(before, matmul_peak())  # best of two: a busy moment must not inflate MFU
    for row in rows:
        row["mfu_pct"] = 100 * row["flops_per_token"] * row["tokens_per_s"] / peak
    print(
        f"{info['cpu']}, {info['torch_threads']} threads, torch {info['torch']}; "
        f"measured fp32 matmul peak {peak / 1e9:.0f} GFLOP/s"
    )
    table = print_table(rows, COLUMNS)
    path = write_result(
        "train_step", {"peak_flops": peak, "args": dataclasses.asdict(args), "rows": rows, "table": table}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main(tyro.cli(Args, description=Args.__doc__))
