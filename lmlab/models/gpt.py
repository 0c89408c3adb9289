"""Decoder-only Transformer language model.

GPT-2 (learned positions, LayerNorm, GELU, biases, tied embeddings) and a Llama-style model
(RoPE, RMSNorm, SwiGLU, no biases, grouped-query attention) are the same class with different
``ModelConfig`` values.
"""

from __future__ import annotations

import dataclasses
import math

import torch
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


class GPT(nn.Module):
    """token embedding (+ positions) → n_layer blocks → final norm → output head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        if config.arch != "gpt":
            raise LmlabError(f"model.arch is {config.arch!r}; GPT builds only 'gpt' (use lmlab.models.build_model)")
        if config.vocab_size < 1:
            raise LmlabError("model.vocab_size is 0: set it to the tokenizer's vocabulary size before building a model")
        self.config = cfg = dataclasses.replace(config)
        C = cfg.n_embd
        self.wte = nn.Embedding(cfg.vocab_size, C)
        self.wpe = LearnedPositionalEmbedding(cfg.block_size, C) if cfg.pos == "learned" else None
        self.sinusoidal = SinusoidalPositionalEncoding(cfg.block_size, C) if cfg.pos == "sinusoidal" else None
        # the paper's √d on the token embeddings: the fixed encodings (entries ±1) would otherwise swamp embeddings
        # initialized at init_std (lmlab experiment positional-encoding: validation loss 2.28 without it, 1.90 with it,
        # 1.86 with learned positions)
        self.embed_scale = math.sqrt(C) if cfg.pos == "sinusoidal" else 1.0
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.block_size, cfg.rope_theta) if cfg.pos == "rope" else None
        self.blocks = nn.ModuleList(Block.from_config(cfg) for _ in range(cfg.n_layer))
        # post-norm blocks already end in a norm; pre-norm ones need one before the head
        self.norm_f = build_norm(cfg.norm, C, cfg.norm_eps, cfg.bias) if cfg.norm_position == "pre" else nn.Identity()
        self.lm_head = Linear(C, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialization: N(0, init_std) weights, zero biases, unit norm gains, and residual
        output projections scaled by 1/√(2·n_layer) so the residual stream's variance does not grow
        with depth (each block adds two sublayer outputs to it)."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding | LearnedPositionalEmbedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, LayerNorm | RMSNorm):
                nn.init.ones_(module.weight)  # γ
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)  # β
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.down.weight, mean=0.0, std=residual_std)

    # ------------------------------------------------------------------------------------------
    def new_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty preallocated KV cache: (n_layer, B, n_kv_head, max_len, head_dim) keys and values."""
        cfg = self.config
        max_len = max_len or cfg.block_size
        if self.wpe is not None and max_len > cfg.block_size:
            raise LmlabError(
                f"cache max_len {max_len} exceeds model.block_size ({cfg.block_size}) of a learned-position model"
            )
        w = self.wte.weight if isinstance(self.wte, nn.Embedding) else self.wte.scales  # a quantized table: its scales
        device, dtype = device or w.device, dtype or w.dtype
        return KVCache(cfg.n_layer, batch_size, cfg.kv_heads, max_len, cfg.head_dim, device=device, dtype=dtype)

    def _positions(self, offset: int, T: int, positions: Tensor | None) -> tuple[Tensor | None, tuple | None]:
        """(additive position encoding (…, T, C) or None, rotary (cos, sin) or None)."""
        cfg = self.config
        if self.wpe is not None:
            if positions is None:
                if offset + T > cfg.block_size:
                    raise LmlabError(
                        f"sequence of {offset + T} tokens is longer than model.block_size ({cfg.block_size}) "
                        f"of this learned-position model; crop the input to its last {cfg.block_size} tokens"
                    )
                return self.wpe.weight[offset : offset + T], None  # (T, C)
            if int(positions.max()) >= cfg.block_size:
                raise LmlabError(
                    f"position {int(positions.max())} is beyond model.block_size ({cfg.block_size}) "
                    "of this learned-position model; crop the input"
                )
            return self.wpe(positions), None  # (B, T, C)
        if self.sinusoidal is not None:
            pe = self.sinusoidal.range(offset, T) if positions is None else self.sinusoidal(positions)
            return pe, None
        if self.rope is not None:
            return None, self.rope(positions, start=offset, length=T)
        return None, None

    def forward(
        self,
        tokens: Tensor,
        targets: Tensor | None = None,
        cache: KVCache | None = None,
        *,
        padding_mask: Tensor | None = None,
        positions: Tensor | None = None,
        return_attention: bool = False,
        segments: Tensor | None = None,
    ) -> ModelOutput:
        """tokens (B, T) → logits (B, T, V), loss when targets (B, T) are given (−100 = ignore).

        With ``cache``, only the new tokens are processed; their keys/values are appended and the
        cache is returned. ``padding_mask`` (B, T_keys), True = real token, covers every key the
        tokens attend to (cached ones included). ``positions`` (B, T) overrides the default
        positions (cache length + arange(T)), e.g. for left-padded batches. ``return_attention``
        takes the explicit attention path and returns every layer's weights. ``segments`` (B, T) packs several
        sequences in a row: a token attends only to earlier tokens with the same segment id, and positions
        restart at each segment, so every sequence is computed as if it were alone (no cache).
        """
        B, T = tokens.shape
        offset = 0
        seg_mask = None
        if segments is not None:
            if cache is not None:
                raise ValueError("segments (packed sequences) cannot be combined with a KV cache")
            idx = torch.arange(T, device=tokens.device)
            starts = torch.ones_like(segments, dtype=torch.bool)
            starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
            if positions is None:  # each segment from position 0
                positions = idx - torch.where(starts, idx, 0).cummax(dim=1).values  # (B, T)
            causal = idx[None, :] <= idx[:, None]  # (T, T)
            seg_mask = ((segments[:, :, None] == segments[:, None, :]) & causal)[:, None]  # (B, 1, T, T)
        if cache is not None:
            cache.check_room(T)
            offset = cache.length
        pos_emb, rope = self._positions(offset, T, positions)

        x = self.wte(tokens)  # (B, T, C)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        if pos_emb is not None:
            x = x + pos_emb.to(x.dtype)  # the sinusoidal table is float32 whatever the model's dtype
        if self.training and self.config.dropout > 0:
            x = nn.functional.dropout(x, self.config.dropout)

        # The fused kernel's own causal flag is cheapest; build a mask only when it cannot express the pattern.
        k_len = offset + T
        mask, is_causal = None, False
        if seg_mask is not None:
            mask = seg_mask if padding_mask is None else seg_mask & padding_mask.to(torch.bool)[:, None, None, :]
        elif padding_mask is not None or (offset > 0 and T > 1):
            mask = attention_mask(T, k_len, offset=offset, causal=True, padding_mask=padding_mask, device=x.device)
        elif offset == 0:
            is_causal = T > 1

        attentions = []
        for i, block in enumerate(self.blocks):
            x, w = block(
                x, attn_mask=mask, is_causal=is_causal, rope=rope, cache=cache, layer_idx=i,
                return_weights=return_attention,
            )  # fmt: skip
            if return_attention:
                attentions.append(w)
        if cache is not None:
            cache.advance(T)

        x = self.norm_f(x)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None if targets is None else lm_loss(logits, targets, self.config.label_smoothing)
        return ModelOutput(
            logits=logits,
            loss=loss,
            cache=cache,
            hidden_states=x,
            attentions=tuple(attentions) if return_attention else None,
        )

    # ------------------------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, each shared tensor counted once. ``non_embedding`` leaves out the token and
        learned-position tables (with tied embeddings that includes the output head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel()
            if self.wpe is not None:
                n -= self.wpe.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs (forward + backward) per token at full context:

        6·N + 12·n_layer·block_size·n_embd, where N counts the parameters used in matmuls (all but
        the input embedding and position tables; the output head counts once, tied or not), and the
        second term is QKᵀ and A·V (2·T·C multiply-adds each per layer, ×3 for the backward pass).
        Causal attention really needs about half of that term; like PaLM's MFU we count it whole.
        """
        cfg = self.config
        n_matmul = self.num_params(non_embedding=True) + cfg.vocab_size * cfg.n_embd * cfg.tie_embeddings
        return 6 * n_matmul + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd
