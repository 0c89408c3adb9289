"""LoRA (Hu et al. 2021): train a low-rank update ``W + (α/r)·B·A`` of chosen linear layers, the base frozen.

``apply_lora`` swaps each targeted ``Linear`` of a model for a ``LoRALinear`` that holds the frozen layer and
two small matrices (A: r × in, Kaiming-uniform; B: out × r, zeros, so training starts from the base model
exactly). Every path that calls the module (training, the decode engine's fast step, attention maps) sees the
update. Only the adapters (and a task head) are trained; a checkpoint then stores only them
(``adapter.safetensors``) and the run refers to its parent for the base weights. ``merge_lora`` folds the
updates into plain ``Linear`` layers again.

Targets are module names: ``qkv`` and ``proj`` (attention), ``up`` and ``down`` (feed-forward), or the groups
``attention`` and ``mlp``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmlab.errors import LmlabError
from lmlab.models.linear import Linear

GROUPS = {"attention": ("qkv", "proj"), "mlp": ("up", "down")}
NAMES = ("qkv", "proj", "up", "down")


@dataclass
class LoRAConfig:
    """Low-rank adapters instead of full fine-tuning (off unless --lora.r is set)."""

    r: int = 0  # rank of the adapters; 0 = full fine-tuning (no LoRA)
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the adapters' input
    targets: tuple[str, ...] = ("attention",)  # layers to adapt: qkv proj up down, or the groups attention mlp

    def __post_init__(self) -> None:
        if self.r < 0:
            raise LmlabError(f"--lora.r must be 0 (off) or positive, got {self.r}")
        if self.r and (self.alpha <= 0 or not 0.0 <= self.dropout < 1.0):
            raise LmlabError(
                f"--lora.alpha must be positive and --lora.dropout in [0, 1), got {self.alpha}, {self.dropout}"
            )
        for t in self.targets:
            if t not in NAMES and t not in GROUPS:
                raise LmlabError(f"--lora.targets {t!r}: choose from {', '.join(NAMES + tuple(GROUPS))}")

    @property
    def names(self) -> set[str]:
        return {n for t in self.targets for n in GROUPS.get(t, (t,))}


class LoRALinear(nn.Module):
    """A frozen ``Linear`` plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.lora_a = nn.Parameter(torch.empty(r, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / r
        self.dropout = dropout
        self.enabled = True  # False: the base layer alone (adapters_off)

    @property
    def weight(self) -> Tensor:  # for code that reads a layer's weight (cross-attention keys): the base's
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return self.base(x)
        h = F.dropout(x, self.dropout, self.training) if self.dropout else x
        return self.base(x) + F.linear(F.linear(h, self.lora_a), self.lora_b) * self.scale  # (…, out)

    def merged(self) -> Linear:
        """A plain ``Linear`` computing the same function (weight W + scale·B·A)."""
        out = Linear(self.in_features, self.out_features, bias=self.base.bias is not None)
        out = out.to(self.base.weight.device, self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * (self.lora_b @ self.lora_a))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def apply_lora(model: nn.Module, cfg: LoRAConfig, trainable: tuple[str, ...] = ("head.",)) -> int:
    """Swap the targeted linear layers of ``model`` for ``LoRALinear`` and freeze everything else except
    parameters whose names start with one of ``trainable`` (a task head). Returns the number of layers adapted.
    The model then saves only its trainable tensors in checkpoints (``adapter.safetensors``)."""
    names = cfg.names
    swaps = [
        (parent, child_name, child)
        for parent in model.modules()
        for child_name, child in parent.named_children()
        if child_name in names and isinstance(child, nn.Linear)
    ]
    if not swaps:
        raise LmlabError(f"--lora.targets {' '.join(cfg.targets)}: this model has no such layers")
    for p in model.parameters():
        p.requires_grad_(False)
    for parent, child_name, child in swaps:
        setattr(parent, child_name, LoRALinear(child, cfg.r, cfg.alpha, cfg.dropout))
    for name, p in model.named_parameters():
        if name.startswith(trainable):
            p.requires_grad_(True)
    model.saves_adapter_only = True  # read by lmlab.checkpoint.write_checkpoint
    return len(swaps)


def merge_lora(model: nn.Module) -> int:
    """Fold every ``LoRALinear`` of ``model`` into a plain ``Linear``; every parameter becomes trainable again.
    Returns the number of layers merged."""
    swaps = [(p, n, c) for p in model.modules() for n, c in p.named_children() if isinstance(c, LoRALinear)]
    for parent, child_name, child in swaps:
        setattr(parent, child_name, child.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    model.saves_adapter_only = False
    return len(swaps)


@contextmanager
def adapters_off(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` computing its base function (every adapter switched off) inside the block: DPO's and RL's
    reference model, without a second copy of the weights."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m in layers:
            m.enabled = True


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
