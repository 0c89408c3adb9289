"""The model interface, checked on every architecture: causality, cached decoding, padding, loss, counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lmlab.config import ModelConfig, get_preset, preset_names
from lmlab.errors import LmlabError
from lmlab.models import KVCache, ModelOutput, build_model

V = 37

CONFIGS = {
    "gpt2": ModelConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16),
    "modern": ModelConfig(
        vocab_size=V, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, pos="rope", norm="rmsnorm",
        activation="swiglu", bias=False, tie_embeddings=False,
    ),
    "sinusoidal-post": ModelConfig(
        vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16, pos="sinusoidal", norm_position="post",
        activation="relu",
    ),
    "nopos-relu2": ModelConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16, pos="none",
                               activation="relu2"),
    "batchnorm": ModelConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16, norm="batchnorm"),
    "nonorm": ModelConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16, norm="none"),
    "rnn": ModelConfig(arch="rnn", vocab_size=V, block_size=16, n_layer=2, n_embd=16, n_hidden=24,
                       tie_embeddings=False),
    "lstm": ModelConfig(arch="lstm", vocab_size=V, block_size=16, n_layer=2, n_embd=16, n_hidden=24,
                        tie_embeddings=False),
    "lstm-tied": ModelConfig(arch="lstm", vocab_size=V, block_size=16, n_layer=1, n_embd=16, n_hidden=24,
                             tie_embeddings=True),
}  # fmt: skip
GPTS = ["gpt2", "modern", "sinusoidal-post", "nopos-relu2", "batchnorm", "nonorm"]


def make(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(CONFIGS[name]).eval()
    with torch.no_grad():  # non-trivial biases, gains and heads, so that every test sees them
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
        if model.config.arch != "gpt":
            model.lm_head.weight.normal_(std=0.3)
    return model


@pytest.mark.parametrize("name", CONFIGS)
def test_interface(name):
    model = make(name)
    x = torch.randint(0, V, (2, 9))
    out = model(x)
    assert isinstance(out, ModelOutput) and out.loss is None and out.cache is None
    assert out.logits.shape == (2, 9, V)
    hidden = out.hidden_states
    assert hidden.shape[:2] == (2, 9)
    torch.testing.assert_close(model.lm_head(hidden), out.logits)
    assert model.config == CONFIGS[name] and model.config is not CONFIGS[name]


@pytest.mark.parametrize("name", CONFIGS)
def test_causality(name):
    """Changing token t+1 leaves the logits at positions <= t unchanged, and does change position t+1."""
    model = make(name)
    x = torch.randint(0, V, (2, 10))
    base = model(x).logits
    for t in range(9):
        x2 = x.clone()
        x2[:, t + 1] = (x[:, t + 1] + 1) % V
        logits = model(x2).logits
        torch.testing.assert_close(logits[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=0)
        assert not torch.allclose(logits[:, t + 1], base[:, t + 1], atol=1e-4)


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_decoding_equals_full_forward(name):
    model = make(name)
    x = torch.randint(0, V, (3, 12))
    full = model(x).logits
    cache = model.new_cache(3)
    pieces = []
    for lo, hi in [(0, 5), (5, 6), (6, 7), (7, 10), (10, 11), (11, 12)]:  # prefill, steps, a chunk after a prefix
        out = model(x[:, lo:hi], cache=cache)
        assert out.cache is cache
        pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 12


def test_gpt_cache_is_preallocated_with_the_contract_shape():
    model = make("modern")
    cache = model.new_cache(2, max_len=10)
    assert isinstance(cache, KVCache)
    assert cache.k.shape == (2, 2, 2, 10, 8)  # (n_layer, B, n_kv_head, max_len, head_dim)
    buf = cache.k.data_ptr()
    model(torch.randint(0, V, (2, 4)), cache=cache)
    model(torch.randint(0, V, (2, 1)), cache=cache)
    assert cache.k.data_ptr() == buf and cache.length == 5
    model(torch.randint(0, V, (2, 5)), cache=cache)
    with pytest.raises(LmlabError, match="KV cache full"):
        model(torch.randint(0, V, (2, 1)), cache=cache)


@pytest.mark.parametrize("name", CONFIGS)
def test_padding_mask_ignores_pad_tokens(name):
    """A left-padded batch gives each row the logits it gets alone, whatever the pad ids, also while decoding."""
    model = make(name)
    torch.manual_seed(1)
    a, b = torch.randint(0, V, (5,)), torch.randint(0, V, (8,))
    batch = torch.stack([torch.cat([torch.full((3,), 7), a]), b])
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, :3] = False
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    alone_a = model(a[None]).logits[0]
    alone_b = model(b[None]).logits[0]
    for pad_id in (7, 11):
        batch[0, :3] = pad_id
        cache = model.new_cache(2)
        out = model(batch, cache=cache, padding_mask=mask, positions=positions)
        torch.testing.assert_close(out.logits[0, 3:], alone_a, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.logits[1], alone_b, atol=1e-5, rtol=1e-5)
        # one decoding step for both rows, the mask now covering the cached keys and the new one
        nxt = torch.tensor([[3], [4]])
        mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.bool)], dim=1)
        step = model(nxt, cache=cache, padding_mask=mask2, positions=positions[:, -1:] + 1).logits[:, 0]
        torch.testing.assert_close(step[0], model(torch.cat([a, nxt[0]])[None]).logits[0, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step[1], model(torch.cat([b, nxt[1]])[None]).logits[0, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", CONFIGS)
def test_loss_is_mean_cross_entropy_over_kept_targets(name):
    model = make(name)
    x, y = torch.randint(0, V, (2, 6)), torch.randint(0, V, (2, 6))
    y[0, :2] = -100
    out = model(x, y)
    logits = out.logits
    kept = [(b, t) for b in range(2) for t in range(6) if y[b, t] != -100]
    expected = sum(-F.log_softmax(logits[b, t], -1)[y[b, t]] for b, t in kept) / len(kept)
    torch.testing.assert_close(out.loss, expected)
    smooth = build_model(dataclasses.replace(CONFIGS[name], label_smoothing=0.1))
    smooth.load_state_dict(model.state_dict())
    expected = F.cross_entropy(logits.view(-1, V), y.view(-1), ignore_index=-100, label_smoothing=0.1)
    torch.testing.assert_close(smooth.eval()(x, y).loss, expected)


@pytest.mark.parametrize("name", GPTS)
def test_return_attention_uses_the_explicit_path(name):
    model = make(name)
    x = torch.randint(0, V, (2, 7))
    out = model(x, return_attention=True)
    torch.testing.assert_close(out.logits, model(x).logits, atol=1e-5, rtol=1e-5)
    cfg = model.config
    assert len(out.attentions) == cfg.n_layer
    for w in out.attentions:
        assert w.shape == (2, cfg.n_head, 7, 7)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, cfg.n_head, 7))
        assert (w.triu(1) == 0).all()


# ---------------------------------------------------------------------------------------------
# parameter counts and FLOPs against closed forms


def test_gpt2_param_count_closed_form():
    cfg = CONFIGS["gpt2"]
    Vv, T, L, C = cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_embd
    per_block = 12 * C * C + 13 * C  # qkv 3C²+3C, proj C²+C, fc 4C²+4C, proj 4C²+C, two LayerNorms 4C
    expected = Vv * C + T * C + L * per_block + 2 * C
    model = build_model(cfg)
    assert model.num_params() == expected
    assert model.num_params(non_embedding=True) == expected - Vv * C - T * C
    assert model.flops_per_token() == 6 * (expected - T * C) + 12 * L * T * C


def test_modern_param_count_closed_form():
    cfg = CONFIGS["modern"]
    Vv, L, C, H, Hkv = cfg.vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.kv_heads
    D, Fh = C // H, cfg.ffn_dim
    assert Fh == 128  # 8/3·32 = 85 rounded up to a multiple of 64
    per_block = C * (H * D + 2 * Hkv * D) + C * C + 3 * C * Fh + 2 * C  # GQA qkv, W_o, SwiGLU (3 matrices), 2 RMSNorm γ
    expected = 2 * Vv * C + L * per_block + C
    model = build_model(cfg)
    assert model.num_params() == expected
    assert model.flops_per_token() == 6 * (expected - Vv * C) + 12 * L * cfg.block_size * C


def test_post_norm_and_sinusoidal_have_no_extra_params():
    cfg = CONFIGS["sinusoidal-post"]
    C, L = cfg.n_embd, cfg.n_layer
    assert build_model(cfg).num_params() == cfg.vocab_size * C + L * (12 * C * C + 13 * C)  # no table, no final norm


def test_gpt2_124m_has_the_published_parameter_count():
    cfg = dataclasses.replace(get_preset("gpt2-124m").model, vocab_size=50257)
    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialized
        model = build_model(cfg)
    assert model.num_params() == 124_439_808


@pytest.mark.parametrize("arch", ["rnn", "lstm"])
@pytest.mark.parametrize("tied", [False, True])
def test_recurrent_param_count_closed_form(arch, tied):
    E, H, L = 16, 24, 3
    cfg = ModelConfig(arch=arch, vocab_size=V, n_layer=L, n_embd=E, n_hidden=H, tie_embeddings=tied)
    gates = 4 if arch == "lstm" else 1
    rec = gates * (H * E + H * H + 2 * H) + (L - 1) * gates * (H * H + H * H + 2 * H)
    head = (H * E if tied else H * V) + V  # tied: a projection H→E and the shared E→V weight; plus the head bias
    expected = V * E + rec + head
    model = build_model(cfg)
    assert model.num_params() == expected
    assert model.flops_per_token() == 6 * (expected - (0 if tied else V * E))


# ---------------------------------------------------------------------------------------------
# initialization, presets, learning


def test_gpt2_initialization_scales_residual_projections():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, block_size=16, n_layer=8, n_head=4, n_embd=128)
    model = build_model(cfg)
    resid = 0.02 / (2 * 8) ** 0.5
    for blk in model.blocks:
        assert blk.attn.proj.weight.std().item() == pytest.approx(resid, rel=0.05)
        assert blk.mlp.down.weight.std().item() == pytest.approx(resid, rel=0.05)
        assert blk.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert (blk.attn.qkv.bias == 0).all() and (blk.norm1.weight == 1).all()
    assert model.lm_head.weight is model.wte.weight


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_builds(name):
    cfg = dataclasses.replace(get_preset(name).model, vocab_size=65)
    if cfg.arch == "seq2seq":  # a different forward (source and target); tests/translation/test_model.py runs it
        assert build_model(cfg).num_params() > 0
        return
    torch.manual_seed(0)
    with torch.device("meta") if cfg.n_embd >= 768 else torch.device("cpu"):
        model = build_model(cfg)
    assert model.num_params() > 0 and model.flops_per_token() >= 6 * model.num_params(non_embedding=True)
    if cfg.n_embd < 768:
        out = model.eval()(torch.randint(0, 65, (1, 8)))
        assert out.logits.shape == (1, 8, 65) and torch.isfinite(out.logits).all()


def test_tiny_model_overfits_a_small_batch():
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("tiny").model, vocab_size=32)
    model = build_model(cfg).train()
    x = torch.randint(0, 32, (4, 33))
    inputs, targets = x[:, :-1], x[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(300):
        loss = model(inputs, targets).loss
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.1:
            break
    assert first > 3.0 and loss.item() < 0.1


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"n_embd": 30, "n_head": 4}, "model.n_embd"),
        ({"pos": "rope", "n_embd": 12, "n_head": 4}, "model.pos"),
        ({"pos": "alibi"}, "model.pos"),
        ({"norm": "groupnorm"}, "model.norm"),
        ({"activation": "gleu"}, "model.activation"),
        ({"n_kv_head": 3, "n_head": 4}, "model.n_kv_head"),
    ],
)
def test_inconsistent_configs_fail_at_construction(changes, field):
    with pytest.raises(LmlabError) as e:
        ModelConfig(vocab_size=V, **changes)
    assert field in str(e.value) and "\n" not in str(e.value)
    cfg = ModelConfig(vocab_size=V)
    for k, v in changes.items():  # edited after validation: build_model checks again
        setattr(cfg, k, v)
    with pytest.raises(LmlabError, match=field.replace(".", r"\.")):
        build_model(cfg)


def test_vocab_size_must_be_set():
    with pytest.raises(LmlabError, match="model.vocab_size is 0"):
        build_model(ModelConfig())


def test_too_long_sequence_for_learned_positions():
    model = make("gpt2")
    with pytest.raises(LmlabError) as e:
        model(torch.zeros(1, 17, dtype=torch.long))
    assert "model.block_size (16)" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(LmlabError, match="model.block_size"):
        model(torch.zeros(1, 3, dtype=torch.long), positions=torch.tensor([[14, 15, 16]]))
    with pytest.raises(LmlabError, match="model.block_size"):
        model.new_cache(1, max_len=32)
    make("modern")(torch.zeros(1, 20, dtype=torch.long))  # RoPE extrapolates past block_size


def test_rnn_has_no_attention_to_return():
    with pytest.raises(LmlabError, match="no attention"):
        make("lstm")(torch.zeros(1, 3, dtype=torch.long), return_attention=True)
