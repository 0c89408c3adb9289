"""Building blocks against their definitions, written out as plainly as possible."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.models.layers import (
    Block,
    FeedForward,
    KVCache,
    LayerNorm,
    MultiHeadAttention,
    RMSNorm,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    apply_rotary,
    attention_mask,
    build_norm,
    scaled_dot_product_attention,
    sinusoidal_encoding,
)


def naive_attention(q, k, v, mask=None):
    """softmax(q·k/√d) v, one query, one head at a time, with Python loops (the definition)."""
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            hk = h // (H // Hkv)
            for i in range(Tq):
                scores = []
                for j in range(Tk):
                    allowed = True if mask is None else bool(mask.expand(B, H, Tq, Tk)[b, h, i, j])
                    scores.append(float(q[b, h, i] @ k[b, hk, j]) / math.sqrt(D) if allowed else -math.inf)
                m = max(scores)
                e = [math.exp(s - m) for s in scores]
                z = sum(e)
                for j in range(Tk):
                    out[b, h, i] += e[j] / z * v[b, hk, j]
    return out


def causal(T):
    return torch.ones(T, T, dtype=torch.bool).tril()


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_attention_matches_naive_loop(n_kv):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, n_kv, 5, 8), torch.randn(2, n_kv, 5, 8)
    expected = naive_attention(q, k, v, causal(5))
    for fast in (True, False):
        out, w = scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=not fast)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, 5))
    assert (w.triu(1) == 0).all(), "causal weights must vanish above the diagonal"


def test_sdpa_path_equals_explicit_path_with_masks():
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 4, 6, 16), torch.randn(3, 2, 9, 16), torch.randn(3, 2, 9, 16)
    pad = torch.ones(3, 9, dtype=torch.bool)
    pad[0, :3] = False
    pad[2, 7:] = False
    mask = attention_mask(6, 9, offset=3, causal=True, padding_mask=pad)
    fast, _ = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    slow, w = scaled_dot_product_attention(q, k, v, attn_mask=mask, return_weights=True)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(slow, naive_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)
    assert (w[0, :, :, :3] == 0).all(), "pad keys get no weight"


@pytest.mark.parametrize("causal", [True, False])
def test_bf16_attention_on_cpu_takes_the_explicit_path_and_agrees_with_fp32(causal, monkeypatch):
    """In bf16 on CPU the fused kernel is bypassed for speed; the result (and its gradients) must still
    be attention, within bf16's precision of the fp32 answer."""
    calls = []
    fused = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or fused(*a, **k)
    )
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 4, 8, 16, requires_grad=True) for _ in range(3))
    ref, _ = scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert len(calls) == 1, "fp32 uses the fused kernel"
    qb, kb, vb = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    out, _ = scaled_dot_product_attention(qb, kb, vb, is_causal=causal)
    assert len(calls) == 1 and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    g = torch.randn_like(ref)
    ref.backward(g)
    out.backward(g.bfloat16())
    for low, high in ((qb, q), (kb, k), (vb, v)):
        torch.testing.assert_close(low.grad.float(), high.grad, atol=6e-2, rtol=6e-2)


def test_a_query_that_sees_no_key_gets_zeros_on_both_paths():
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 4, 5, 16) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[1, :, 2, :] = False  # e.g. a caller's all-False padding row
    fused, _ = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    explicit, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask, return_weights=True)
    assert not explicit.isnan().any() and (explicit[1, :, 2] == 0).all() and (weights[1, :, 2] == 0).all()
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)


def test_attention_mask_causal_offset_and_pads():
    m = attention_mask(2, 5, offset=3, causal=True)  # queries at key slots 3 and 4
    assert m.tolist() == [[True, True, True, True, False], [True] * 5]
    pad = torch.tensor([[False, False, True, True, True]])
    m = attention_mask(5, 5, causal=True, padding_mask=pad)[0, 0]
    assert m[0].tolist() == [True, False, False, False, False]  # an all-pad row still sees itself (no NaN)
    assert m[4].tolist() == [False, False, True, True, True]
    assert attention_mask(3, 3, causal=False) is None


def _heads_by_hand(mha, x, ctx=None, mask=None):
    """Per-head projections W_qⁱ, W_kⁱ, W_vⁱ cut from the fused matrix, attention per head, concat, W_o."""
    ctx = x if ctx is None else ctx
    W, b = mha.qkv.weight, mha.qkv.bias
    D, H, Hkv = mha.head_dim, mha.n_head, mha.n_kv_head
    heads = []
    for i in range(H):
        g = i // (H // Hkv)
        rows_q = slice(i * D, (i + 1) * D)
        rows_k = slice(H * D + g * D, H * D + (g + 1) * D)
        rows_v = slice((H + Hkv) * D + g * D, (H + Hkv) * D + (g + 1) * D)
        qi = x @ W[rows_q].T + b[rows_q]
        ki = ctx @ W[rows_k].T + b[rows_k]
        vi = ctx @ W[rows_v].T + b[rows_v]
        scores = qi @ ki.transpose(-1, -2) / math.sqrt(D)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        heads.append(scores.softmax(-1) @ vi)
    return mha.proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("n_kv", [4, 2])
def test_multi_head_self_attention_equals_per_head_definition(n_kv):
    torch.manual_seed(2)
    mha = MultiHeadAttention(32, 4, n_kv)
    nn_init = torch.nn.init
    nn_init.normal_(mha.qkv.bias)
    x = torch.randn(2, 7, 32)
    expected = _heads_by_hand(mha, x, mask=causal(7))
    out, _ = mha(x, is_causal=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out2, w = mha(x, is_causal=True, return_weights=True)
    torch.testing.assert_close(out2, expected, atol=1e-5, rtol=1e-5)
    assert w.shape == (2, 4, 7, 7)


def test_cross_attention_and_padding_mask():
    torch.manual_seed(3)
    mha = MultiHeadAttention(16, 2)
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 6, 16)
    pad = torch.tensor([[True] * 6, [True, True, True, True, False, False]])
    mask = attention_mask(3, 6, causal=False, padding_mask=pad)
    out, _ = mha(x, ctx, attn_mask=mask)
    torch.testing.assert_close(out, _heads_by_hand(mha, x, ctx, mask[:, 0]), atol=1e-5, rtol=1e-5)
    kv = mha.project_kv(ctx)  # what a decoder computes once per source sentence
    torch.testing.assert_close(mha(x, context_kv=kv, attn_mask=mask)[0], out)
    ctx2 = ctx.clone()
    ctx2[1, 4:] = 100 * torch.randn(2, 16)  # change only the padding
    out2, _ = mha(x, ctx2, attn_mask=mask)
    torch.testing.assert_close(out2[1], out[1])
    ctx2[1, 3] += 1.0  # a real context token does matter
    assert not torch.allclose(mha(x, ctx2, attn_mask=mask)[0][1], out[1])


def test_grouped_query_attention_equals_mha_with_shared_kv_heads():
    torch.manual_seed(4)
    gqa = MultiHeadAttention(24, 6, 2, bias=False)
    mha = MultiHeadAttention(24, 6, 6, bias=False)
    D = 4
    wq, wk, wv = gqa.qkv.weight.split((24, 8, 8))
    # key/value head g serves query heads 3g, 3g+1, 3g+2
    wk6 = wk.view(2, D, 24).repeat_interleave(3, dim=0).reshape(24, 24)
    wv6 = wv.view(2, D, 24).repeat_interleave(3, dim=0).reshape(24, 24)
    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([wq, wk6, wv6]))
        mha.proj.weight.copy_(gqa.proj.weight)
    x = torch.randn(2, 5, 24)
    torch.testing.assert_close(gqa(x, is_causal=True)[0], mha(x, is_causal=True)[0], atol=1e-6, rtol=1e-5)


def test_mha_rejects_bad_shapes():
    with pytest.raises(LmlabError, match="model.n_embd"):
        MultiHeadAttention(30, 4)
    with pytest.raises(LmlabError, match="model.n_kv_head"):
        MultiHeadAttention(32, 4, 3)


# ---------------------------------------------------------------------------------------------
# positions


def test_sinusoidal_values_follow_the_paper():
    d = 8
    pe = sinusoidal_encoding(torch.arange(50), d)
    for pos in (0, 1, 7, 49):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


@pytest.mark.parametrize("k", [1, 5, 37])
def test_sinusoidal_shift_is_a_rotation(k):
    """PE(pos + k) = A_k · PE(pos), A_k block-diagonal with blocks [[cos kω, sin kω], [−sin kω, cos kω]]."""
    d = 16
    omegas = [1 / 10000 ** (2 * i / d) for i in range(d // 2)]
    A = torch.zeros(d, d, dtype=torch.float64)
    for i, w in enumerate(omegas):
        c, s = math.cos(k * w), math.sin(k * w)
        A[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)
    pe = sinusoidal_encoding(torch.arange(100 + k), d).double()
    for pos in (0, 3, 64, 99):
        torch.testing.assert_close(A @ pe[pos], pe[pos + k], atol=1e-6, rtol=0)


def test_sinusoidal_module_table_and_beyond():
    enc = SinusoidalPositionalEncoding(8, 6)
    torch.testing.assert_close(enc.range(2, 4), sinusoidal_encoding(torch.arange(2, 6), 6))
    torch.testing.assert_close(enc.range(6, 5), sinusoidal_encoding(torch.arange(6, 11), 6))  # past the table
    assert len(enc.state_dict()) == 0, "fixed encodings are not weights"


def test_rope_rotates_pairs_and_depends_on_relative_position():
    torch.manual_seed(5)
    D = 8
    rope = RotaryEmbedding(D, 64, theta=10000.0)
    x = torch.randn(1, 1, 1, D)
    pos = 11
    cos, sin = rope(start=pos, length=1)
    y = apply_rotary(x, cos, sin)
    for i in range(D // 2):  # pair (i, i + D/2) turned by pos·θ^(−2i/D)
        a = pos * 10000 ** (-2 * i / D)
        x1, x2 = x[..., i].item(), x[..., i + D // 2].item()
        assert y[..., i].item() == pytest.approx(x1 * math.cos(a) - x2 * math.sin(a), abs=1e-5)
        assert y[..., i + D // 2].item() == pytest.approx(x2 * math.cos(a) + x1 * math.sin(a), abs=1e-5)
    q, k = torch.randn(1, 1, 1, D), torch.randn(1, 1, 1, D)

    def score(m, n):
        return (apply_rotary(q, *rope(start=m, length=1)) * apply_rotary(k, *rope(start=n, length=1))).sum()

    torch.testing.assert_close(score(3, 1), score(40, 38), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(score(70, 5), score(65, 0), atol=1e-5, rtol=1e-5)  # beyond the table too
    positions = torch.tensor([[4, 9]])
    c2, s2 = rope(positions)
    torch.testing.assert_close(c2[0, 0], rope.cos[[4, 9]])
    torch.testing.assert_close(s2[0, 0], rope.sin[[4, 9]])


def test_rope_needs_even_head_size():
    with pytest.raises(LmlabError, match="model.pos"):
        RotaryEmbedding(7, 16)


# ---------------------------------------------------------------------------------------------
# norms, feed-forward, blocks, cache


def test_layernorm_and_rmsnorm_formulas():
    torch.manual_seed(6)
    x = torch.randn(3, 4, 10)
    ln = LayerNorm(10, eps=1e-5)
    torch.nn.init.normal_(ln.weight)
    torch.nn.init.normal_(ln.bias)
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(ln(x), (x - mu) / torch.sqrt(var + 1e-5) * ln.weight + ln.bias)
    assert LayerNorm(10, bias=False).bias is None
    rms = RMSNorm(10, eps=1e-6)
    torch.nn.init.normal_(rms.weight)
    torch.testing.assert_close(rms(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * rms.weight)
    with pytest.raises(LmlabError, match="model.norm: unknown value 'groupnorm'"):
        build_norm("groupnorm", 10)


def test_feed_forward_activations():
    torch.manual_seed(7)
    x = torch.randn(2, 3, 8)
    ff = FeedForward(8, 12, "swiglu", bias=False)
    a, b = (x @ ff.up.weight.T).split(12, dim=-1)
    torch.testing.assert_close(ff(x), (a * torch.sigmoid(a) * b) @ ff.down.weight.T)
    ff = FeedForward(8, 12, "relu2")
    h = x @ ff.up.weight.T + ff.up.bias
    torch.testing.assert_close(ff(x), torch.relu(h) ** 2 @ ff.down.weight.T + ff.down.bias)
    ff = FeedForward(8, 12, "gelu")
    h = x @ ff.up.weight.T + ff.up.bias
    gelu_gpt2 = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    torch.testing.assert_close(ff(x), gelu_gpt2 @ ff.down.weight.T + ff.down.bias)
    with pytest.raises(LmlabError, match="model.activation: unknown value 'gleu' \\(did you mean 'gelu'\\?\\)"):
        FeedForward(8, 12, "gleu")


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_block_residual_wiring(norm_position):
    torch.manual_seed(8)
    blk = Block(16, 2, ffn_hidden=32, norm_position=norm_position)
    torch.nn.init.normal_(blk.norm1.weight)
    torch.nn.init.normal_(blk.norm2.bias)
    x = torch.randn(2, 5, 16)
    attn = lambda h: blk.attn(h, is_causal=True)[0]  # noqa: E731
    if norm_position == "pre":
        h = x + attn(blk.norm1(x))
        expected = h + blk.mlp(blk.norm2(h))
    else:
        h = blk.norm1(x + attn(x))
        expected = blk.norm2(h + blk.mlp(h))
    torch.testing.assert_close(blk(x, is_causal=True)[0], expected)


def test_block_with_cross_attention_reads_the_context():
    torch.manual_seed(9)
    blk = Block(16, 2, ffn_hidden=32, cross_attention=True)
    x, ctx = torch.randn(1, 4, 16), torch.randn(1, 3, 16)
    a = blk(x, is_causal=True, context=ctx)[0]
    b = blk(x, is_causal=True, context=ctx + 1)[0]
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="context"):
        blk(x)


def test_dropout_only_in_training():
    torch.manual_seed(10)
    blk = Block(16, 2, ffn_hidden=32, dropout=0.5)
    x = torch.randn(2, 5, 16)
    blk.train()
    assert not torch.allclose(blk(x, is_causal=True)[0], blk(x, is_causal=True)[0])
    blk.eval()
    torch.testing.assert_close(blk(x, is_causal=True)[0], blk(x, is_causal=True)[0])


def test_kv_cache_writes_in_place_and_refuses_overflow():
    cache = KVCache(2, 1, 2, 4, 3)
    k_buf = cache.k
    k, v = torch.ones(1, 2, 3, 3), torch.full((1, 2, 3, 3), 2.0)
    ks, vs = cache.update(1, k, v)
    assert ks.shape == (1, 2, 3, 3) and ks.data_ptr() == k_buf[1].data_ptr(), "a view of the preallocated buffer"
    assert cache.k[0].abs().sum() == 0 and (cache.v[1, :, :, :3] == 2).all()
    cache.advance(3)
    cache.check_room(1)
    with pytest.raises(LmlabError, match="KV cache full: 3 cached \\+ 2 new tokens > its max_len 4"):
        cache.check_room(2)
    cache.crop(1)
    assert cache.length == 1
    cache.reorder_(torch.tensor([0, 0]))
    assert cache.batch_size == 2
