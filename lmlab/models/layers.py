"""Transformer building blocks, each usable on its own.

Attention (a fast path through PyTorch's fused ``scaled_dot_product_attention`` and an explicit
path that also returns the weights), multi-head / grouped-query / cross attention, positional
encodings (learned, sinusoidal, rotary), LayerNorm and RMSNorm, feed-forward layers, pre- and
post-norm blocks, and a preallocated KV cache for decoding.

Conventions: tensors are batch-first. Attention works on ``(B, H, T, D)``; masks are boolean with
True = "may attend" and broadcast to ``(B, H, T_q, T_k)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmlab.config import NORMS
from lmlab.errors import LmlabError, did_you_mean
from lmlab.models.linear import Linear


@dataclass
class ModelOutput:
    """What every lmlab model's ``forward`` returns."""

    logits: Tensor  # (B, T, V)
    loss: Tensor | None = None  # mean cross-entropy over targets != -100, or None without targets
    cache: object | None = None  # updated KVCache / RecurrentState, or None when none was passed
    hidden_states: Tensor | None = None  # (B, T, C): final hidden states, after the final norm, before the head
    attentions: tuple[Tensor, ...] | None = None  # per layer (B, H, T, T_k), only with return_attention=True


def lm_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy over targets != -100; one flattened call, no copies of the logits."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, label_smoothing=label_smoothing
    )


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention


def _fused_attention_pays(q: Tensor) -> bool:
    """Whether PyTorch's fused kernel beats the explicit matmul-softmax-matmul path below.

    It does everywhere except in bf16 on CPU, where the fused (flash) kernel ran 2-4x slower than
    the explicit path at our training shapes (forward + backward, torch 2.13 on an AVX512-BF16 CPU;
    see BENCHMARKS.md), so there the explicit path is taken: the same attention, rounded differently.
    (fp16 keeps the fused kernel: the explicit path scales after Q Kᵀ, which can overflow in fp16.)
    """
    return q.device.type != "cpu" or q.dtype != torch.bfloat16


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    return_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """softmax(Q Kᵀ / √d_k) V.

    q: (B, H, T_q, D); k, v: (B, H_kv, T_k, D) with H a multiple of H_kv (grouped-query attention:
    query head h reads key/value head h // (H / H_kv)). ``attn_mask`` is boolean, True = may attend,
    broadcastable to (B, H, T_q, T_k). ``is_causal`` lets query i see keys j <= i (top-left aligned,
    so use it only when T_q == T_k; build a mask with :func:`attention_mask` otherwise).

    Returns (output (B, H, T_q, D), weights (B, H, T_q, T_k) or None). ``return_weights=False``
    takes PyTorch's fused kernel where it is the faster (:func:`_fused_attention_pays`: not bf16 on
    CPU); ``True``, and bf16 on CPU, the explicit path below, which is the definition.
    """
    gqa = q.size(1) != k.size(1)
    if not return_weights and _fused_attention_pays(q):
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, enable_gqa=gqa
        )
        return out, None
    if gqa:  # give every query head its own copy of its group's keys and values
        rep = q.size(1) // k.size(1)
        k = k.repeat_interleave(rep, dim=1)  # (B, H, T_k, D)
        v = v.repeat_interleave(rep, dim=1)
    given_mask = attn_mask is not None  # the causal pattern alone leaves every query its own key
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, H, T_q, T_k)
    if is_causal:
        t_q, t_k = scores.shape[-2:]
        causal = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device).tril()
        attn_mask = causal if attn_mask is None else attn_mask & causal
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    if given_mask:  # a query that may see no key gets zeros (as the fused kernel gives), not NaN
        weights = weights.masked_fill(~attn_mask.any(dim=-1, keepdim=True), 0.0)
    dropped = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
    return dropped @ v, weights  # (B, H, T_q, D)


def attention_mask(
    q_len: int,
    k_len: int,
    *,
    offset: int = 0,
    causal: bool = True,
    padding_mask: Tensor | None = None,
    device: torch.device | None = None,
) -> Tensor | None:
    """A boolean mask (True = may attend) broadcastable to (B, 1, q_len, k_len), or None if nothing is masked.

    Query i sits at key index ``offset + i`` (offset = tokens already in the KV cache), so causal
    means key j is visible when j <= offset + i. ``padding_mask`` (B, k_len), True = real token,
    hides pad keys. A causal query always sees itself, so a pad query whose keys are all pads gets
    a harmless row instead of a NaN that would leak into later layers.
    """
    mask = None
    if causal:
        qpos = torch.arange(offset, offset + q_len, device=device)
        mask = torch.arange(k_len, device=device)[None, :] <= qpos[:, None]  # (T_q, T_k)
    if padding_mask is not None:
        if padding_mask.shape[-1] != k_len:
            raise ValueError(
                f"padding_mask covers {padding_mask.shape[-1]} keys but attention sees {k_len} "
                "(with a cache, the mask must cover the cached tokens too)"
            )
        pad = padding_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, T_k)
        if mask is None:
            return pad
        own = torch.arange(k_len, device=device)[None, :] == qpos[:, None]  # (T_q, T_k)
        mask = (mask & pad) | own
    return mask


# ---------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Preallocated keys and values for every layer, filled in place while decoding.

    ``k`` and ``v`` have shape (n_layer, B, n_kv_head, max_len, head_dim); ``length`` is how many
    positions are filled. A forward pass writes its new keys at ``[length, length + T)`` in each
    layer (:meth:`update`) and the model then calls :meth:`advance`.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.size(3)

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    def check_room(self, n: int) -> None:
        """Refuse, before anything is written, a step that would run past ``max_len``."""
        if self.length + n > self.max_len:
            raise LmlabError(
                f"KV cache full: {self.length} cached + {n} new tokens > its max_len {self.max_len}; "
                "create the cache with a larger max_len (at most the model's block_size for learned positions)"
            )

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write this step's keys/values (B, H_kv, T, D) for ``layer``; return all keys/values so far (views)."""
        end = self.length + k.size(2)
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, H_kv, end, D)

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        self.length = 0

    def crop(self, length: int) -> None:
        """Forget everything after the first ``length`` positions (e.g. rejected draft tokens)."""
        self.length = min(self.length, length)

    def reorder_(self, index: Tensor) -> None:
        """Keep batch rows ``index`` in this order (beam search), in place."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)


# ---------------------------------------------------------------------------------------------
# Positional encodings


class LearnedPositionalEmbedding(nn.Module):
    """One trained vector per position, as in GPT-2."""

    def __init__(self, block_size: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(block_size, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, positions: Tensor) -> Tensor:
        return F.embedding(positions, self.weight)


def sinusoidal_encoding(positions: Tensor, d_model: int) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)) ("Attention Is All You Need").

    positions: any shape (...); returns (..., d_model) in float32.
    """
    if d_model % 2:
        raise LmlabError(f"model.n_embd must be even for sinusoidal positions, got {d_model}")
    inv_freq = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64, device=positions.device) / d_model)
    angles = positions.to(torch.float64)[..., None] * inv_freq  # (..., d/2), float64 keeps large positions exact
    pe = torch.stack((angles.sin(), angles.cos()), dim=-1)  # (..., d/2, 2): sin at even, cos at odd indices
    return pe.flatten(-2).to(torch.float32)  # (..., d)


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal encodings; a table for the first ``max_len`` positions, computed beyond it."""

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.register_buffer("table", sinusoidal_encoding(torch.arange(max_len), d_model), persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        return sinusoidal_encoding(positions, self.d_model).to(self.table.dtype)

    def range(self, start: int, length: int) -> Tensor:
        """Encodings of positions start .. start+length-1, shape (length, d)."""
        if start + length <= self.table.size(0):
            return self.table[start : start + length]
        return self.forward(torch.arange(start, start + length, device=self.table.device))


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE, Su et al. 2021), in the "rotate half" layout of GPT-NeoX/Llama.

    Feature i of the first half and feature i of the second half of each head form a pair that is
    rotated by angle pos · θ^(−2i/D), so q·k depends on positions only through their difference.
    """

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise LmlabError(f"model.pos 'rope' needs an even head size, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta
        cos, sin = self._angles(torch.arange(max_len))
        self.register_buffer("cos", cos, persistent=False)  # (max_len, D)
        self.register_buffer("sin", sin, persistent=False)

    def _angles(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        inv_freq = self.theta ** (
            -torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=positions.device) / self.head_dim
        )
        angles = positions.to(torch.float64)[..., None] * inv_freq  # (..., D/2)
        angles = torch.cat((angles, angles), dim=-1)  # (..., D): both halves of a pair share an angle
        return angles.cos().float(), angles.sin().float()

    def forward(self, positions: Tensor | None = None, start: int = 0, length: int = 0) -> tuple[Tensor, Tensor]:
        """(cos, sin) to pass to :func:`apply_rotary`.

        With ``positions`` (B, T): shape (B, 1, T, D). Otherwise positions start .. start+length-1:
        shape (T, D), a view of the table when it is long enough.
        """
        if positions is None:
            if start + length <= self.cos.size(0):
                return self.cos[start : start + length], self.sin[start : start + length]
            positions = torch.arange(start, start + length, device=self.cos.device)
            return self._angles(positions)
        cos, sin = self._angles(positions)
        return cos[:, None], sin[:, None]  # (B, 1, T, D)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate feature pairs (i, i + D/2) of x (B, H, T, D) by the angles whose cos/sin are given."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)  # (B, H, T, D)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Normalization


class LayerNorm(nn.Module):
    """LayerNorm with gain γ and (optional) shift β."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # γ
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None  # β

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · γ: LayerNorm without centering and without β."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm over every token of the batch: each channel is normalized by its mean and variance across the
    batch *and the positions* while training (running averages in eval mode). Offered to show the lecture's case
    for LayerNorm: the statistics depend on the batch (noisy when it is small), differ between training and
    evaluation, and in a causal model mix in later positions, which the model can exploit while training."""

    def forward(self, x: Tensor) -> Tensor:  # (..., C)
        return super().forward(x.reshape(-1, x.size(-1))).view_as(x)


def build_norm(name: str, dim: int, eps: float = 1e-5, bias: bool = True) -> nn.Module:
    """A norm layer by name: "layernorm", "rmsnorm", "batchnorm" or "none" (the identity)."""
    if name == "layernorm":
        return LayerNorm(dim, eps, bias)
    if name == "rmsnorm":
        return RMSNorm(dim, eps)
    if name == "batchnorm":
        return BatchNorm(dim, eps)
    if name == "none":
        return nn.Identity()
    raise LmlabError(f"model.norm: unknown value {name!r}{did_you_mean(name, NORMS)}; choose one of {', '.join(NORMS)}")


# ---------------------------------------------------------------------------------------------
# Feed-forward

ACTIVATIONS = ("gelu", "swiglu", "relu2", "relu")


class FeedForward(nn.Module):
    """Position-wise MLP: up-projection, activation, down-projection.

    "gelu" is GELU with the tanh approximation, exactly GPT-2's; "swiglu" is silu(x W₁) ⊙ (x W₃) with
    W₁ and W₃ stored fused in ``up``; "relu2" is relu(x)² (Primer); "relu" the original Transformer's.
    """

    def __init__(self, d_model: int, hidden: int, activation: str = "gelu", bias: bool = True) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise LmlabError(
                f"model.activation: unknown value {activation!r}{did_you_mean(activation, ACTIVATIONS)}; "
                f"choose one of {', '.join(ACTIVATIONS)}"
            )
        self.activation = activation
        self.up = Linear(d_model, 2 * hidden if activation == "swiglu" else hidden, bias=bias)
        self.down = Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)  # (B, T, F) or (B, T, 2F) for swiglu
        if self.activation == "gelu":
            h = F.gelu(h, approximate="tanh")
        elif self.activation == "swiglu":
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value  # (B, T, F)
        elif self.activation == "relu2":
            h = F.relu(h).square()
        else:
            h = F.relu(h)
        return self.down(h)  # (B, T, C)


# ---------------------------------------------------------------------------------------------
# Multi-head attention


class MultiHeadAttention(nn.Module):
    """Multi-head attention with per-head projections stored as one fused matrix.

    ``qkv.weight`` stacks W_q (all heads), W_k and W_v (n_kv_head heads each) row-wise, so
    self-attention is one matmul; cross-attention multiplies the query rows with ``x`` and the
    key/value rows with ``context`` (same parameters, nothing copied). ``n_kv_head < n_head`` gives
    grouped-query attention. ``proj`` is the output projection W_o.
    """

    def __init__(
        self, d_model: int, n_head: int, n_kv_head: int | None = None, *, bias: bool = True, dropout: float = 0.0
    ) -> None:
        super().__init__()
        n_kv_head = n_kv_head or n_head
        if d_model % n_head:
            raise LmlabError(f"model.n_embd ({d_model}) must be divisible by model.n_head ({n_head})")
        if n_head % n_kv_head:
            raise LmlabError(f"model.n_kv_head ({n_kv_head}) must divide model.n_head ({n_head})")
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, d_model // n_head
        self.q_dim = n_head * self.head_dim
        self.kv_dim = n_kv_head * self.head_dim
        self.dropout = dropout
        self.qkv = Linear(d_model, self.q_dim + 2 * self.kv_dim, bias=bias)
        self.proj = Linear(self.q_dim, d_model, bias=bias)

    def _heads(self, t: Tensor, n: int) -> Tensor:
        return t.view(t.size(0), t.size(1), n, self.head_dim).transpose(1, 2)  # (B, T, n·D) -> (B, n, T, D)

    def project_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of a context (B, S, C), split into heads: (B, H_kv, S, D) each.

        A decoder computes these once per encoder output and passes them as ``context_kv`` at every step.
        """
        w, b = self.qkv.weight, self.qkv.bias
        kv = F.linear(context, w[self.q_dim :], None if b is None else b[self.q_dim :])  # (B, S, 2·H_kv·D)
        k, v = kv.split(self.kv_dim, dim=-1)
        return self._heads(k, self.n_kv_head), self._heads(v, self.n_kv_head)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        context_kv: tuple[Tensor, Tensor] | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
        return_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Self-attention over x (B, T, C), or cross-attention from x to ``context`` (B, S, C) (or to its
        precomputed ``context_kv``). Returns (out (B, T, C), weights (B, H, T, T_k) or None).

        ``rope`` = (cos, sin) rotates queries and keys (self-attention); ``cache`` stores this step's
        keys/values at slot ``layer_idx`` and supplies the earlier ones.
        """
        B, T, _ = x.shape
        if context is None and context_kv is None:
            q, k, v = self.qkv(x).split((self.q_dim, self.kv_dim, self.kv_dim), dim=-1)  # one fused matmul
            q, k, v = self._heads(q, self.n_head), self._heads(k, self.n_kv_head), self._heads(v, self.n_kv_head)
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        else:
            w, b = self.qkv.weight, self.qkv.bias
            q = self._heads(F.linear(x, w[: self.q_dim], None if b is None else b[: self.q_dim]), self.n_head)
            k, v = context_kv if context_kv is not None else self.project_kv(context)
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)  # (B, H_kv, T_cached + T, D)
        dropout_p = self.dropout if self.training else 0.0
        out, weights = scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p, return_weights=return_weights
        )  # (B, H, T, D)
        out = out.transpose(1, 2).reshape(B, T, self.q_dim)  # (B, T, C): concatenate the heads
        return self.proj(out), weights


# ---------------------------------------------------------------------------------------------
# Transformer block


class Block(nn.Module):
    """Attention and feed-forward sublayers with residual connections, pre-norm or post-norm.

    pre-norm (GPT-2):  x = x + attn(norm₁(x));  x = x + ffn(norm₂(x))
    post-norm (2017):  x = norm₁(x + attn(x));  x = norm₂(x + ffn(x))

    With ``cross_attention=True`` (decoder of an encoder–decoder) a cross-attention sublayer over
    ``context`` sits between the two.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        n_kv_head: int = 0,
        *,
        ffn_hidden: int,
        activation: str = "gelu",
        norm: str = "layernorm",
        norm_position: str = "pre",
        bias: bool = True,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
        cross_attention: bool = False,
    ) -> None:
        super().__init__()
        if norm_position not in ("pre", "post"):
            raise LmlabError(f"model.norm_position: unknown value {norm_position!r}; choose one of pre, post")
        self.pre_norm = norm_position == "pre"
        self.dropout = dropout
        self.norm1 = build_norm(norm, d_model, norm_eps, bias)
        self.attn = MultiHeadAttention(d_model, n_head, n_kv_head or None, bias=bias, dropout=dropout)
        self.cross_attn = None
        if cross_attention:
            self.norm_cross = build_norm(norm, d_model, norm_eps, bias)
            self.cross_attn = MultiHeadAttention(d_model, n_head, n_kv_head or None, bias=bias, dropout=dropout)
        self.norm2 = build_norm(norm, d_model, norm_eps, bias)
        self.mlp = FeedForward(d_model, ffn_hidden, activation, bias)

    @classmethod
    def from_config(cls, cfg, *, cross_attention: bool = False) -> Block:
        """A block shaped by a ModelConfig."""
        return cls(
            cfg.n_embd,
            cfg.n_head,
            cfg.kv_heads,
            ffn_hidden=cfg.ffn_dim,
            activation=cfg.activation,
            norm=cfg.norm,
            norm_position=cfg.norm_position,
            bias=cfg.bias,
            dropout=cfg.dropout,
            norm_eps=cfg.norm_eps,
            cross_attention=cross_attention,
        )

    def _add(self, x: Tensor, out: Tensor, norm: nn.Module) -> Tensor:
        """The residual connection around a sublayer; post-norm normalizes after adding."""
        if self.training and self.dropout > 0:
            out = F.dropout(out, self.dropout)
        return x + out if self.pre_norm else norm(x + out)

    def forward(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
        context: Tensor | None = None,
        context_kv: tuple[Tensor, Tensor] | None = None,
        context_mask: Tensor | None = None,
        return_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """x: (B, T, C) -> ((B, T, C), self-attention weights or None).

        ``context`` (or its precomputed ``context_kv``) and ``context_mask`` feed the cross-attention.
        """
        h = self.norm1(x) if self.pre_norm else x
        out, weights = self.attn(
            h, attn_mask=attn_mask, is_causal=is_causal, rope=rope, cache=cache, layer_idx=layer_idx,
            return_weights=return_weights,
        )  # fmt: skip
        x = self._add(x, out, self.norm1)
        if self.cross_attn is not None:
            if context is None and context_kv is None:
                raise ValueError("a block with cross-attention needs a context (the encoder output)")
            h = self.norm_cross(x) if self.pre_norm else x
            out, _ = self.cross_attn(h, context, context_kv=context_kv, attn_mask=context_mask)
            x = self._add(x, out, self.norm_cross)
        h = self.norm2(x) if self.pre_norm else x
        return self._add(x, self.mlp(h), self.norm2), weights
