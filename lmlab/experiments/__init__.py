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
    "sft-skills": Experiment(
        "lmlab.experiments.sft_skills",
        "SFT a books-pretrained base on 5 generated skills: exact match of base, full SFT and LoRA",
    ),
}
