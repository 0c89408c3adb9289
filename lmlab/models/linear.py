"""``Linear``: ``nn.Linear`` whose training GEMMs take oneDNN's fp32 kernels on CPU.

Why our own layer: on x86 CPUs PyTorch sends fp32 matmuls to MKL. On AMD CPUs MKL runs its AVX2
kernels even where the CPU has AVX-512, while oneDNN, shipped in the same PyTorch wheel, picks its
kernels from what the CPU reports. On the 2-core AMD EPYC of BENCHMARKS.md that is 150-190 GFLOP/s
(MKL) against 190-215 (oneDNN) at our layers' shapes, and the ``shakespeare-char`` training step
6% faster. The math is the same fp32 GEMM (only the order of the additions differs, like any two
BLAS libraries), so it is on by default; ``LMLAB_ONEDNN=0`` in the environment turns it off.

Only the training path changes, and only for GEMMs of at least ``MIN_MACS`` multiply-adds: below
that the default path won (a 768×128 by 128×65 output head took 0.80× the time through F.linear;
from about 768×128 by 128×384 on, oneDNN was as fast or faster: benchmarks in BENCHMARKS.md).
Forward and the input gradient go through oneDNN, the weight gradient through ``torch.mm`` (it was
faster there). Inference (no autograd), autocast, other dtypes and devices, and code being
compiled by ``torch.compile``, ``torch.func`` transforms and forward-mode AD use ``F.linear`` as
before. The oneDNN path has a first derivative only (no double backward); a gradient-of-gradient
computation needs ``LMLAB_ONEDNN=0``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _onednn_linear_op():
    """PyTorch's oneDNN linear (the one Inductor uses on CPU), or None where this build lacks it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


_LINEAR = _onednn_linear_op()
ENABLED = _LINEAR is not None and os.environ.get("LMLAB_ONEDNN", "1") != "0"
MIN_MACS = 1 << 25  # rows × in_features × out_features below which F.linear is faster


def _use_onednn(x: Tensor, weight: Tensor) -> bool:
    if not ENABLED or torch.compiler.is_compiling():  # first: compiled code must not guard on the size test
        return False
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and torch.is_grad_enabled()
        and (x.requires_grad or weight.requires_grad)
        and x.numel() * weight.size(0) >= MIN_MACS
        and not torch.is_autocast_enabled("cpu")
        and not _transformed(x)
        and not _transformed(weight)
    )


def _transformed(t: Tensor) -> bool:
    """Whether ``t`` is under a torch.func transform (grad, vmap, jacrev...) or carries a forward-mode
    tangent: the custom function below defines only a backward, so those keep ``F.linear``."""
    if torch._C._functorch.is_functorch_wrapped_tensor(t):
        return True
    return torch.autograd.forward_ad.unpack_dual(t).tangent is not None


class _OneDNNLinear(torch.autograd.Function):
    """y = x Wᵀ + b with oneDNN GEMMs; backward: dx = g W (oneDNN), dW = gᵀ x (torch.mm), db = Σ g."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _LINEAR(x, weight, bias, "none", [], "")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _LINEAR(grad, weight.t(), None, "none", [], "")  # (…, in): g · W
        g2 = grad.reshape(-1, grad.size(-1))  # (N, out)
        if ctx.needs_input_grad[1]:
            grad_w = g2.t() @ x.reshape(-1, x.size(-1))  # (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear``, through oneDNN when training in fp32 on CPU (see the module docstring)."""
    if _use_onednn(x, weight):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, state dict and init) computed by :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        # without autograd oneDNN is never chosen; one test here instead of the whole size test keeps the
        # decode step (17 of these calls per token at baby) as fast as F.linear
        if not torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        return linear(x, self.weight, self.bias)
