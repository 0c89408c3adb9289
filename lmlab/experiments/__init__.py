"""Experiments: one command that reproduces a result of the lecture end to end (``lmlab experiment NAME``).

Each experiment is a module with a ``run(out, *, quick=False, size=None, ..., device, quiet) -> dict`` function
that drives ordinary lmlab commands in a workspace directory (``common.Workspace``: reuse, resume, one writer)
and writes ``NAME.md``, ``NAME.json`` and ``NAME.png`` there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Experiment:
    module: str  # a module with run(out, **options) -> dict
    summary: str  # one line for `lmlab experiment --help`


EXPERIMENTS: dict[str, Experiment] = {
    "gpt1-ablation": Experiment(
        "lmlab.experiments.gpt1_ablation",
        "GPT-1 Table 5 on SST-2: pretrained Transformer with/without aux LM, no pre-training, LSTM; 3 seeds",
    ),
    "sentiment-rlhf": Experiment(
        "lmlab.experiments.sentiment_rlhf",
        "the DPO paper's controlled sentiment: PPO, GRPO and DPO toward a sentiment classifier's reward",
    ),
    "rag-facts": Experiment(
        "lmlab.experiments.rag_facts",
        "retrieval vs made-up answers: a reader on fictional people it never saw, closed-book, with BM25, oracle",
    ),
    "grokking": Experiment(
        "lmlab.experiments.grokking",
        "a + b mod 97: train accuracy near 100% long before held-out accuracy rises; none without weight decay",
    ),
    "chain-of-thought": Experiment(
        "lmlab.experiments.chain_of_thought",
        "3-5 digit addition from scratch: a written-out scratchpad vs direct answers at equal training compute",
    ),
    "complexity": Experiment(
        "lmlab.experiments.complexity",
        "Table 1 measured: attention vs LSTM/RNN/conv time and memory vs n and d, sequential ops, path length",
    ),
    "normalization": Experiment(
        "lmlab.experiments.normalization",
        "LayerNorm vs RMSNorm vs BatchNorm vs none in one Transformer at several batch sizes: validation loss",
    ),
    "positional-encoding": Experiment(
        "lmlab.experiments.positional_encoding",
        "the sinusoidal table, PE(pos+k) = A_k PE(pos); learned vs sinusoidal vs RoPE vs none past the trained length",
    ),
    "sampling": Experiment(
        "lmlab.experiments.sampling",
        "greedy, temperature, top-k, top-p, min-p on one model: distinct-n, repetition, NLL; top-p vs top-k answered",
    ),
    "context": Experiment(
        "lmlab.experiments.context",
        "an LSTM and a Transformer scored with their context cut to 1, 2, 4, ... characters: loss vs usable context",
    ),
    "memorization": Experiment(
        "lmlab.experiments.memorization",
        "models of 3 sizes, more and more epochs: exact extraction of training vs held-out text, beside val loss",
    ),
    "optimizers": Experiment(
        "lmlab.experiments.optimizers",
        "AdamW vs Muon vs SGD vs Adafactor on one model, each at its swept best lr: loss vs wall clock and tokens",
    ),
    "scaling": Experiment(
        "lmlab.experiments.scaling",
        "fit L(N) on 5 sizes, predict a 4x larger model's loss, train it, and check the prediction",
    ),
    "sft-skills": Experiment(
        "lmlab.experiments.sft_skills",
        "SFT a books-pretrained base on 5 generated skills: exact match of base, full SFT and LoRA",
    ),
}
