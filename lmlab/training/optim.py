"""Optimizers and learning-rate schedules.

``--train.optimizer`` picks one; all take the run's learning rate and schedule, weight decay and betas:

adamw      AdamW (fused kernel), decoupled weight decay on weight matrices (``param_groups``)
muon       PyTorch's ``torch.optim.Muon`` (momentum 0.95, Nesterov, 5 Newton–Schulz steps) on the 2-D weights of the
           Transformer's blocks, AdamW on everything else (embeddings, output head, norms, biases, recurrent
           layers); Muon's learning rate is adjusted per matrix by ``match_rms_adamw`` (0.2·lr·√max(A, B), Moonshot's
           rule) so that its updates have AdamW's RMS and one --train.lr serves both
sgd        SGD with Nesterov momentum beta1
adafactor  PyTorch's ``torch.optim.Adafactor`` (factored second moments: no per-element state for matrices)

SOAP is not offered: PyTorch does not ship it, and a copy of its reference code is what we do not write again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError


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


class Optimizers:
    """Several optimizers stepped as one, for the trainer (Muon's matrices and AdamW's rest): their parameter
    groups in one list, one ``step`` and ``zero_grad``, and one state dict holding each one's."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> dict[Any, Any]:
        return {k: v for o in self.optimizers for k, v in o.state.items()}

    def step(self, closure: Any = None) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for o, s in zip(self.optimizers, state["optimizers"], strict=True):
            o.load_state_dict(s)


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The 2-D weights of the linear layers inside a Transformer's blocks (what Muon is for): not embeddings,
    positions, the output head or a task head, norms, biases, LoRA adapters or recurrent layers."""
    out = []
    for name, module in model.named_modules():
        inside = any(part in ("blocks", "encoder", "decoder") for part in name.split("."))
        if inside and isinstance(module, nn.Linear) and "lora" not in name and module.weight.requires_grad:
            out.append(module.weight)
    return out


def make_optimizer(model: nn.Module, cfg: Any, device: torch.device) -> torch.optim.Optimizer | Optimizers:
    """The optimizer ``cfg.optimizer`` names (see the module docstring) over ``model``'s trainable parameters."""
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        return make_adamw(model, cfg.lr, cfg.weight_decay, betas, cfg.eps, device, cfg.embedding_decay)
    groups = param_groups(model, cfg.weight_decay, cfg.embedding_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.beta1, nesterov=True)
    if cfg.optimizer == "adafactor":
        return torch.optim.Adafactor(groups, lr=cfg.lr)
    if cfg.optimizer != "muon":
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
    hidden = hidden_matrices(model)
    if not hidden:
        raise LmlabError(
            "--train.optimizer muon needs a Transformer's hidden matrices and this model has none (an RNN/LSTM, "
            "or only adapters train); use adamw"
        )
    muon = torch.optim.Muon(hidden, lr=cfg.lr, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw")
    taken = {id(p) for p in hidden}
    rest = [{**g, "params": [p for p in g["params"] if id(p) not in taken]} for g in groups]
    adamw = torch.optim.AdamW([g for g in rest if g["params"]], lr=cfg.lr, betas=betas, eps=cfg.eps, foreach=True)
    return Optimizers([muon, adamw])


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
