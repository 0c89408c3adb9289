"""lmlab.models.linear: the oneDNN training path computes what F.linear computes, and steps aside
wherever it does not apply."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lmlab.config import get_preset
from lmlab.models import build_model
from lmlab.models import linear as linear_mod
from lmlab.models.linear import Linear, linear

needs_onednn = pytest.mark.skipif(linear_mod._LINEAR is None, reason="this PyTorch build has no oneDNN linear")


@pytest.fixture(autouse=True)
def any_size(monkeypatch):
    """Small test shapes would stay on F.linear (MIN_MACS); take the oneDNN path at every size here."""
    monkeypatch.setattr(linear_mod, "MIN_MACS", 0)


def _grads(fn, x, w, b, g):
    for t in (x, w, b):
        if t is not None:
            t.grad = None
    y = fn(x, w, b)
    y.backward(g)
    return y.detach(), x.grad.clone(), w.grad.clone(), None if b is None else b.grad.clone()


@needs_onednn
@pytest.mark.parametrize(
    "shape,bias,transposed",
    [((5, 7, 16), True, False), ((9, 16), False, False), ((2, 3, 4, 16), True, False), ((16, 9), True, True)],
)
def test_onednn_path_matches_f_linear(shape, bias, transposed):
    torch.manual_seed(0)
    x = torch.randn(*shape).requires_grad_()
    inp = x.t() if transposed else x  # a non-contiguous input
    w = torch.randn(8, 16, requires_grad=True)
    b = torch.randn(8, requires_grad=True) if bias else None
    y = linear(inp, w, b)
    assert type(y.grad_fn).__name__ == "_OneDNNLinearBackward"
    g = torch.randn_like(y)
    ours = _grads(lambda a, c, d: linear(a.t() if transposed else a, c, d), x, w, b, g)
    ref = _grads(lambda a, c, d: F.linear(a.t() if transposed else a, c, d), x, w, b, g)
    for got, want in zip(ours, ref):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_only_the_weight_needs_a_gradient():
    x = torch.randn(4, 16)  # e.g. a frozen embedding's output
    w = torch.randn(8, 16, requires_grad=True)
    linear(x, w).sum().backward()
    torch.testing.assert_close(w.grad, torch.ones(4, 8).t() @ x)


@pytest.mark.parametrize(
    "case", ["no_grad", "autocast", "float64", "disabled", "no_input_grad"], ids=lambda c: c.replace("_", "-")
)
def test_steps_aside_where_it_does_not_apply(case, monkeypatch):
    x = torch.randn(4, 16, requires_grad=case != "no_input_grad")
    w = torch.randn(8, 16, requires_grad=case != "no_input_grad")
    if case == "disabled":
        monkeypatch.setattr(linear_mod, "ENABLED", False)
    if case == "float64":
        x, w = x.double(), w.double()
    if case == "no_grad":
        with torch.no_grad():
            y = linear(x, w)
    elif case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = linear(x, w)
        assert y.dtype == torch.bfloat16  # autocast still sees an ordinary linear
    else:
        y = linear(x, w)
    assert y.grad_fn is None or type(y.grad_fn).__name__ != "_OneDNNLinearBackward"
    torch.testing.assert_close(y, F.linear(x, w).to(y.dtype), rtol=2e-2, atol=2e-2)


@needs_onednn
def test_small_gemms_stay_on_f_linear(monkeypatch):
    monkeypatch.setattr(linear_mod, "MIN_MACS", 1 << 25)
    w = torch.randn(65, 128, requires_grad=True)
    small = linear(torch.randn(768, 128, requires_grad=True), w)  # an output head: 6.4M multiply-adds
    assert type(small.grad_fn).__name__ != "_OneDNNLinearBackward"
    big = linear(torch.randn(768, 128, requires_grad=True), torch.randn(512, 128, requires_grad=True))
    assert type(big.grad_fn).__name__ == "_OneDNNLinearBackward"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's forward-AD import scripts decompositions
@pytest.mark.parametrize("transform", ["func.grad", "forward-ad"])
def test_torch_func_and_forward_ad_get_f_linear(transform):
    """The custom function defines only a backward; transforms that need more take F.linear."""
    layer, x = Linear(16, 8), torch.randn(4, 16)
    if transform == "func.grad":
        params = dict(layer.named_parameters())
        g = torch.func.grad(lambda p: torch.func.functional_call(layer, p, (x,)).sum())(params)
        torch.testing.assert_close(g["weight"], torch.ones(4, 8).t() @ x)
    else:
        import torch.autograd.forward_ad as fwad

        tangent = torch.randn_like(x)
        with fwad.dual_level():
            y = layer(fwad.make_dual(x.requires_grad_(), tangent))
            torch.testing.assert_close(fwad.unpack_dual(y).tangent, tangent @ layer.weight.t())


def test_linear_is_an_nn_linear_with_the_same_state_dict():
    layer = Linear(16, 8)
    assert isinstance(layer, torch.nn.Linear)
    assert set(layer.state_dict()) == {"weight", "bias"}
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


@needs_onednn
def test_a_training_step_is_the_same_with_and_without_onednn(monkeypatch):
    cfg = dataclasses.replace(get_preset("tiny").model, vocab_size=50, dropout=0.0)
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randint(0, 50, (3, cfg.block_size))
    losses, grads = [], []
    for enabled in (True, False):
        monkeypatch.setattr(linear_mod, "ENABLED", enabled)
        model.zero_grad(set_to_none=True)
        loss = model(x, x).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-6)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
