"""Optimizers and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, embeddings: bool = False) -> list[dict]:
    """Decoupled weight decay on weight matrices only: not on norms, biases, or (unless ``embeddings``) the token
    embedding tables.

    Embeddings are left out by default because decay pulls rarely seen tokens' vectors to zero, and a tied output
    layer shares the embedding's tensor (parameters are deduplicated by identity, so it is counted once). Decaying
    them too (nanoGPT's choice) matters where every token is seen often and the embedding itself must become
    simple, as in grokking.
    """
    embedding_params = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay, no_decay = [], []
    for p in {id(p): p for p in model.parameters() if p.requires_grad}.values():
        (decay if p.dim() >= 2 and (embeddings or id(p) not in embedding_params) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    device: torch.device,
    embedding_decay: bool = False,
) -> torch.optim.AdamW:
    """AdamW with the fused kernel where PyTorch has one for the device (CUDA and CPU), else foreach."""
    groups = param_groups(model, weight_decay, embedding_decay)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)


def lr_at(
    step: int,
    *,
    lr: float,
    min_lr: float,
    warmup_steps: int,
    max_steps: int,
    schedule: str = "cosine",
    decay_fraction: float = 0.2,
) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then

    cosine    half a cosine from lr down to min_lr at max_steps
    linear    a straight line from lr down to min_lr at max_steps
    constant  lr
    wsd       warmup-stable-decay: lr until the last ``decay_fraction`` of steps, then linear to min_lr
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "wsd":
        decay_start = max(warmup_steps, int(max_steps * (1 - decay_fraction)))
        if step < decay_start:
            return lr
        frac = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
        return lr + frac * (min_lr - lr)
    frac = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    if schedule == "linear":
        return lr + frac * (min_lr - lr)
    return min_lr + 0.5 * (1 + math.cos(math.pi * frac)) * (lr - min_lr)
