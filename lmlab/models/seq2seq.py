"""Encoder–decoder Transformer ("Attention Is All You Need", Vaswani et al. 2017) for translation.

The encoder reads the whole source sentence with unmasked self-attention; the decoder writes the
target one token at a time with causal self-attention and cross-attention over the encoder output.
Every block is ``layers.Block`` (the decoder's with its cross-attention sublayer), so there is one
attention implementation in lmlab. Padding is on the right; ``src_mask`` / ``tgt_mask`` mark the
real tokens (True) and keep pads out of every attention.

Decoding encodes the source once: :meth:`Seq2Seq.start` returns an :class:`EncoderDecoderCache`
holding the encoder output, each decoder layer's cross-attention keys/values (projected once) and
a preallocated KV cache for the decoder self-attention; :meth:`Seq2Seq.step` then feeds new
target tokens. ``lmlab.generation.beam`` builds greedy and beam search on these two calls.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.models.layers import (
    Block,
    KVCache,
    LayerNorm,
    LearnedPositionalEmbedding,
    ModelOutput,
    RMSNorm,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    attention_mask,
    build_norm,
    lm_loss,
)
from lmlab.models.linear import Linear


@dataclass
class Seq2SeqOutput(ModelOutput):
    """``ModelOutput`` plus what only an encoder–decoder has."""

    cross_attentions: tuple[Tensor, ...] | None = None  # per decoder layer (B, H, T, S), with return_attention=True
    encoder_hidden_states: Tensor | None = None  # (B, S, C)


@dataclass
class EncoderDecoderCache:
    """Everything decoding reuses between steps: computed once per source batch, then only appended to."""

    memory: Tensor  # (B, S, C) encoder output
    src_mask: Tensor | None  # (B, S), True = real source token; None = no padding
    cross_kv: list[tuple[Tensor, Tensor]]  # per decoder layer: keys, values (B, H_kv, S, D) of the memory
    self_attn: KVCache  # decoder self-attention keys/values

    @property
    def length(self) -> int:
        """Target tokens decoded so far."""
        return self.self_attn.length

    @property
    def batch_size(self) -> int:
        return self.memory.size(0)

    def select(self, index: Tensor) -> None:
        """Keep rows ``index`` in this order, in place: beam search reorders beams, finished rows drop out."""
        self.memory = self.memory.index_select(0, index)
        if self.src_mask is not None:
            self.src_mask = self.src_mask.index_select(0, index)
        self.cross_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.cross_kv]
        self.self_attn.reorder_(index)


class Seq2Seq(nn.Module):
    """source → embedding (+ positions) → encoder blocks; target → embedding → decoder blocks (self + cross
    attention) → output head.

    ``config.n_encoder_layer`` encoder blocks (0 = ``n_layer``) and ``config.n_layer`` decoder blocks.
    ``config.src_vocab_size`` > 0 gives the source its own embedding table (two tokenizers, or a
    deliberate split); 0 shares the target's (one joint vocabulary). ``tie_embeddings`` ties the output
    layer to the target embedding. ``block_size`` bounds both the source and the target length.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        if config.arch != "seq2seq":
            raise LmlabError(
                f"model.arch is {config.arch!r}; Seq2Seq builds only 'seq2seq' (use lmlab.models.build_model)"
            )
        if config.vocab_size < 1:
            raise LmlabError("model.vocab_size is 0: set it to the tokenizer's vocabulary size before building a model")
        self.config = cfg = dataclasses.replace(config)
        C = cfg.n_embd
        self.n_encoder_layer = cfg.n_encoder_layer or cfg.n_layer
        self.tgt_embed = nn.Embedding(cfg.vocab_size, C)
        self.src_embed = nn.Embedding(cfg.src_vocab_size, C) if cfg.src_vocab_size else self.tgt_embed
        # √d scaling (as in the paper) puts token embeddings on the scale of the sinusoidal encodings
        self.embed_scale = math.sqrt(C)
        learned = cfg.pos == "learned"
        self.src_pos = LearnedPositionalEmbedding(cfg.block_size, C) if learned else None
        self.tgt_pos = LearnedPositionalEmbedding(cfg.block_size, C) if learned else None
        self.sinusoidal = SinusoidalPositionalEncoding(cfg.block_size, C) if cfg.pos == "sinusoidal" else None
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.block_size, cfg.rope_theta) if cfg.pos == "rope" else None
        self.encoder = nn.ModuleList(Block.from_config(cfg) for _ in range(self.n_encoder_layer))
        self.decoder = nn.ModuleList(Block.from_config(cfg, cross_attention=True) for _ in range(cfg.n_layer))
        # post-norm blocks already end in a norm; pre-norm stacks need one on their output
        pre = cfg.norm_position == "pre"
        self.encoder_norm = build_norm(cfg.norm, C, cfg.norm_eps, cfg.bias) if pre else nn.Identity()
        self.decoder_norm = build_norm(cfg.norm, C, cfg.norm_eps, cfg.bias) if pre else nn.Identity()
        self.lm_head = Linear(C, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tgt_embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, init_std) linear weights, zero biases, unit norm gains; N(0, 1/√d) token embeddings, so
        that after the √d input scaling they have unit variance and, tied, give unit-scale logits;
        residual output projections scaled down by the number of sublayers adding to each stream."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, LearnedPositionalEmbedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=self.config.n_embd**-0.5)
            elif isinstance(module, LayerNorm | RMSNorm):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for blocks, sublayers in ((self.encoder, 2), (self.decoder, 3)):
            residual_std = std / math.sqrt(sublayers * len(blocks))
            for block in blocks:
                projections = [block.attn.proj, block.mlp.down]
                if block.cross_attn is not None:
                    projections.append(block.cross_attn.proj)
                for proj in projections:
                    nn.init.normal_(proj.weight, mean=0.0, std=residual_std)

    # ------------------------------------------------------------------------------------------
    def _embed(self, tokens: Tensor, side: str, offset: int) -> Tensor:
        """Token embeddings plus additive positions offset .. offset+T-1 of the source or target side: (B, T, C)."""
        T = tokens.size(1)
        table, learned = (self.src_embed, self.src_pos) if side == "source" else (self.tgt_embed, self.tgt_pos)
        if offset + T > self.config.block_size and (learned is not None or self.rope is not None):
            raise LmlabError(
                f"{side} of {offset + T} tokens is longer than model.block_size ({self.config.block_size}); truncate it"
            )
        x = table(tokens) * self.embed_scale  # (B, T, C)
        if learned is not None:
            x = x + learned.weight[offset : offset + T]
        elif self.sinusoidal is not None:
            x = x + self.sinusoidal.range(offset, T).to(x.dtype)
        if self.training and self.config.dropout > 0:
            x = F.dropout(x, self.config.dropout)
        return x

    def _rope(self, offset: int, T: int) -> tuple[Tensor, Tensor] | None:
        return None if self.rope is None else self.rope(start=offset, length=T)

    @staticmethod
    def _context_mask(src_mask: Tensor | None) -> Tensor | None:
        return None if src_mask is None else src_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, S)

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """src (B, S) → encoder output (B, S, C). ``src_mask`` (B, S): True = real token."""
        S = src.size(1)
        x = self._embed(src, "source", 0)
        mask = attention_mask(S, S, causal=False, padding_mask=src_mask, device=x.device)
        rope = self._rope(0, S)
        for block in self.encoder:
            x, _ = block(x, attn_mask=mask, rope=rope)
        return self.encoder_norm(x)

    def decode(
        self,
        tgt: Tensor,
        memory: Tensor | None = None,
        src_mask: Tensor | None = None,
        *,
        cache: EncoderDecoderCache | None = None,
        tgt_mask: Tensor | None = None,
        return_attention: bool = False,
    ) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]:
        """tgt (B, T) over ``memory`` (B, S, C) → (hidden states (B, T, C), self-attention weights,
        cross-attention weights); the weights are empty tuples unless ``return_attention``.

        With ``cache``, its memory, cross keys/values and source mask are used and the new tokens'
        self-attention keys/values are appended. ``tgt_mask`` (B, T_keys), True = real token, covers
        the cached tokens too.
        """
        B, T = tgt.shape
        offset = 0
        if cache is not None:
            cache.self_attn.check_room(T)
            offset = cache.length
            memory, src_mask = cache.memory, cache.src_mask
        if memory is None:
            raise ValueError("decode needs the encoder output: pass memory or a cache from start()")
        x = self._embed(tgt, "target", offset)
        k_len = offset + T
        mask, is_causal = None, False
        if tgt_mask is not None or (offset > 0 and T > 1):
            mask = attention_mask(T, k_len, offset=offset, causal=True, padding_mask=tgt_mask, device=x.device)
        elif offset == 0:
            is_causal = T > 1
        rope = self._rope(offset, T)
        context_mask = self._context_mask(src_mask)
        self_weights: list[Tensor] = []
        with _recording_cross_attention(self.decoder, return_attention) as cross_weights:
            for i, block in enumerate(self.decoder):
                x, w = block(
                    x, attn_mask=mask, is_causal=is_causal, rope=rope,
                    cache=None if cache is None else cache.self_attn, layer_idx=i,
                    context=None if cache is not None else memory,
                    context_kv=None if cache is None else cache.cross_kv[i],
                    context_mask=context_mask, return_weights=return_attention,
                )  # fmt: skip
                if return_attention:
                    self_weights.append(w)
        if cache is not None:
            cache.self_attn.advance(T)
        return self.decoder_norm(x), tuple(self_weights), tuple(cross_weights)

    def forward(
        self,
        src: Tensor | None,
        tgt: Tensor,
        targets: Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        *,
        src_mask: Tensor | None = None,
        tgt_mask: Tensor | None = None,
        return_attention: bool = False,
    ) -> Seq2SeqOutput:
        """src (B, S), tgt (B, T) → logits (B, T, V); loss when targets (B, T) are given (−100 = ignore).

        Training: ``tgt`` is the target shifted right (BOS first), ``targets`` the target followed by
        EOS. The loss is label-smoothed (``config.label_smoothing``) in training mode only, so
        validation and test losses are the plain cross-entropy. With ``cache`` (from :meth:`start`),
        ``src`` is not needed and only the new target tokens are processed.
        """
        memory = None
        if cache is None:
            if src is None:
                raise ValueError("forward needs src, or a cache from start()")
            memory = self.encode(src, src_mask)
        hidden, self_w, cross_w = self.decode(
            tgt, memory, src_mask, cache=cache, tgt_mask=tgt_mask, return_attention=return_attention
        )
        logits = self.lm_head(hidden)  # (B, T, V)
        loss = None
        if targets is not None:
            smoothing = self.config.label_smoothing if self.training else 0.0
            loss = lm_loss(logits, targets, smoothing)
        return Seq2SeqOutput(
            logits=logits,
            loss=loss,
            cache=cache,
            hidden_states=hidden,
            attentions=self_w if return_attention else None,
            cross_attentions=cross_w if return_attention else None,
            encoder_hidden_states=memory if cache is None else cache.memory,
        )

    # -- decoding --------------------------------------------------------------------------------
    def new_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty KV cache for the decoder self-attention: (n_layer, B, n_kv_head, max_len, head_dim)."""
        cfg = self.config
        max_len = max_len or cfg.block_size
        if (self.tgt_pos is not None or self.rope is not None) and max_len > cfg.block_size:
            raise LmlabError(f"cache max_len {max_len} exceeds model.block_size ({cfg.block_size})")
        w = self.tgt_embed.weight
        device, dtype = device or w.device, dtype or w.dtype
        return KVCache(cfg.n_layer, batch_size, cfg.kv_heads, max_len, cfg.head_dim, device=device, dtype=dtype)

    @torch.no_grad()
    def start(self, src: Tensor, src_mask: Tensor | None = None, max_len: int | None = None) -> EncoderDecoderCache:
        """Encode ``src`` (B, S) once and project every decoder layer's cross-attention keys/values once."""
        memory = self.encode(src, src_mask)  # (B, S, C)
        cross_kv = [block.cross_attn.project_kv(memory) for block in self.decoder]
        cache = self.new_cache(src.size(0), max_len, device=memory.device, dtype=memory.dtype)
        return EncoderDecoderCache(memory, None if src_mask is None else src_mask.to(torch.bool), cross_kv, cache)

    @torch.no_grad()
    def step(self, tokens: Tensor, cache: EncoderDecoderCache) -> Tensor:
        """Feed target tokens (B, T) after those already in ``cache``; logits of the last one: (B, V)."""
        hidden, _, _ = self.decode(tokens, cache=cache)
        return self.lm_head(hidden[:, -1])  # (B, V)

    # ------------------------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, each shared tensor counted once. ``non_embedding`` leaves out the token and
        learned-position tables (with tied embeddings that includes the output head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(t.weight.numel() for t in {id(e): e for e in (self.src_embed, self.tgt_embed)}.values())
            for pos in (self.src_pos, self.tgt_pos):
                if pos is not None:
                    n -= pos.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs (forward + backward) per token of a pair, source and target counted alike, at
        full length: each token runs through one stack, so 6·N/2 with N the matmul parameters (both
        stacks and the head), plus QKᵀ and A·V at block_size (12·L·C per layer per token: encoder
        self-attention for source tokens, decoder self- and cross-attention for target tokens)."""
        cfg = self.config
        n_matmul = self.num_params(non_embedding=True) + cfg.vocab_size * cfg.n_embd * cfg.tie_embeddings
        attn = 12 * cfg.block_size * cfg.n_embd * (self.n_encoder_layer + 2 * cfg.n_layer)
        return (6 * n_matmul + attn) // 2


@contextmanager
def _recording_cross_attention(blocks: nn.ModuleList, enabled: bool) -> Iterator[list[Tensor]]:
    """Collect each cross-attention sublayer's weights (B, H, T, S) during one pass.

    ``Block`` keeps only its self-attention weights, so hooks ask its cross-attention module for the
    explicit path (``return_weights=True``) and keep what it returns; the blocks stay unchanged.
    """
    weights: list[Tensor] = []
    if not enabled:
        yield weights
        return

    def ask(module, args, kwargs):
        return args, {**kwargs, "return_weights": True}

    def keep(module, args, kwargs, output):
        weights.append(output[1])

    handles = []
    for block in blocks:
        handles.append(block.cross_attn.register_forward_pre_hook(ask, with_kwargs=True))
        handles.append(block.cross_attn.register_forward_hook(keep, with_kwargs=True))
    try:
        yield weights
    finally:
        for h in handles:
            h.remove()
