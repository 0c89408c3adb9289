"""RNN and LSTM language models against the recurrence equations written out by hand."""

from __future__ import annotations

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.models import build_model
from lmlab.models.rnn import RecurrentState

V, E, H, L = 11, 6, 5, 2


def model_for(arch: str, **kw):
    kw.setdefault("tie_embeddings", False)
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, vocab_size=V, n_layer=L, n_embd=E, n_hidden=H, **kw)).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_()
        for p in model.rnn.parameters():
            p.normal_(std=0.5)
    return model


def weights(model, layer):
    r = model.rnn
    g = lambda n: getattr(r, f"{n}_l{layer}")  # noqa: E731
    return g("weight_ih"), g("weight_hh"), g("bias_ih"), g("bias_hh")


def test_elman_rnn_follows_its_equation():
    model = model_for("rnn")
    tokens = torch.tensor([[3, 1, 4, 1, 5]])
    h = [torch.zeros(H) for _ in range(L)]
    expected = []
    for t in range(tokens.size(1)):
        x = model.wte.weight[tokens[0, t]]
        for layer in range(L):
            w_ih, w_hh, b_ih, b_hh = weights(model, layer)
            h[layer] = torch.tanh(w_ih @ x + b_ih + w_hh @ h[layer] + b_hh)  # h_t = tanh(W_ih x_t + W_hh h_{t-1} + b)
            x = h[layer]
        expected.append(model.lm_head.weight @ x + model.lm_head.bias)
    out = model(tokens, cache=model.new_cache(1))
    torch.testing.assert_close(out.logits[0], torch.stack(expected), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.cache.h[:, 0], torch.stack(h), atol=1e-5, rtol=1e-5)


def test_lstm_follows_its_equations():
    model = model_for("lstm")
    tokens = torch.tensor([[2, 7, 1, 8]])
    h = [torch.zeros(H) for _ in range(L)]
    c = [torch.zeros(H) for _ in range(L)]
    expected = []
    for t in range(tokens.size(1)):
        x = model.wte.weight[tokens[0, t]]
        for layer in range(L):
            w_ih, w_hh, b_ih, b_hh = weights(model, layer)
            z = w_ih @ x + b_ih + w_hh @ h[layer] + b_hh
            i, f, g, o = z[:H].sigmoid(), z[H : 2 * H].sigmoid(), z[2 * H : 3 * H].tanh(), z[3 * H :].sigmoid()
            c[layer] = f * c[layer] + i * g
            h[layer] = o * torch.tanh(c[layer])
            x = h[layer]
        expected.append(model.lm_head.weight @ x + model.lm_head.bias)
    out = model(tokens, cache=model.new_cache(1))
    torch.testing.assert_close(out.logits[0], torch.stack(expected), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.cache.h[:, 0], torch.stack(h), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.cache.c[:, 0], torch.stack(c), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["rnn", "lstm"])
def test_state_carries_across_calls(arch):
    model = model_for(arch)
    x = torch.randint(0, V, (2, 9))
    full = model(x).logits
    state = model.new_cache(2)
    assert isinstance(state, RecurrentState) and state.h.shape == (L, 2, H)
    assert (state.c is not None) == (arch == "lstm")
    first = model(x[:, :4], cache=state).logits
    second = model(x[:, 4:], cache=state).logits
    torch.testing.assert_close(torch.cat([first, second], 1), full, atol=1e-5, rtol=1e-5)
    assert state.length == 9


def test_dropout_between_layers_and_lstm_forget_bias():
    model = build_model(ModelConfig(arch="lstm", vocab_size=V, n_layer=2, n_embd=E, n_hidden=H, dropout=0.3))
    assert model.rnn.dropout == pytest.approx(0.3)
    assert (model.rnn.bias_ih_l0[H : 2 * H] == 1).all()
    single = build_model(ModelConfig(arch="lstm", vocab_size=V, n_layer=1, n_embd=E, dropout=0.3))
    assert single.rnn.dropout == 0  # nothing between layers with one layer (PyTorch would warn)
    model.train()
    x = torch.randint(0, V, (2, 5))
    assert not torch.allclose(model(x).logits, model(x).logits)
    model.eval()
    torch.testing.assert_close(model(x).logits, model(x).logits)


def test_weight_tying_with_a_projection():
    model = build_model(ModelConfig(arch="lstm", vocab_size=V, n_layer=1, n_embd=E, n_hidden=H, tie_embeddings=True))
    assert model.lm_head.weight is model.wte.weight and model.proj.weight.shape == (E, H)
    out = model(torch.randint(0, V, (1, 3)))
    assert out.hidden_states.shape == (1, 3, E)


def test_state_detach_and_reorder():
    model = model_for("lstm")
    state = model.new_cache(3)
    model.train()(torch.randint(0, V, (3, 4)), cache=state)
    assert state.h.requires_grad
    state.detach_()
    assert not state.h.requires_grad and not state.c.requires_grad
    before = state.h.clone()
    state.reorder_(torch.tensor([2, 2, 0]))
    torch.testing.assert_close(state.h[:, 1], before[:, 2])
    torch.testing.assert_close(state.h[:, 2], before[:, 0])


def test_padding_must_be_one_run_of_tokens():
    model = model_for("lstm")
    mask = torch.tensor([[True, False, True]])
    with pytest.raises(ValueError, match="left- or right-padding"):
        model(torch.zeros(1, 3, dtype=torch.long), padding_mask=mask)


def test_all_pad_row_keeps_its_state():
    model = model_for("lstm")
    state = model.new_cache(2)
    model(torch.randint(0, V, (2, 3)), cache=state)
    h, c = state.h.clone(), state.c.clone()
    mask = torch.tensor([[False, False], [True, True]])
    model(torch.randint(0, V, (2, 2)), cache=state, padding_mask=mask)
    torch.testing.assert_close(state.h[:, 0], h[:, 0])
    torch.testing.assert_close(state.c[:, 0], c[:, 0])
    assert not torch.allclose(state.h[:, 1], h[:, 1])
