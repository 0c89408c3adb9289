"""Recurrent language models: Elman RNN and LSTM.

embedding → dropout → stacked recurrent layers (PyTorch's fused cuDNN/oneDNN kernels, dropout
between layers) → dropout → output head. The recurrent state plays the role of the KV cache: pass
``model.new_cache(B)`` and the returned state carries the context into the next call.

Elman:  h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
LSTM:   i, f, g, o = σ, σ, tanh, σ of (W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), split in four
        c_t = f ⊙ c_{t-1} + i ⊙ g;   h_t = o ⊙ tanh(c_t)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.models.layers import ModelOutput, lm_loss
from lmlab.models.linear import Linear


@dataclass
class RecurrentState:
    """The recurrent model's "cache": hidden state h (and LSTM cell state c), each (n_layer, B, H)."""

    h: Tensor
    c: Tensor | None = None
    length: int = 0  # tokens consumed so far, for parity with KVCache

    @property
    def batch_size(self) -> int:
        return self.h.size(1)

    def detach_(self) -> RecurrentState:
        """Cut the autograd history (truncated backpropagation through time)."""
        self.h = self.h.detach()
        if self.c is not None:
            self.c = self.c.detach()
        return self

    def reorder_(self, index: Tensor) -> None:
        """Keep batch rows ``index`` in this order (beam search), in place."""
        self.h = self.h.index_select(1, index)
        if self.c is not None:
            self.c = self.c.index_select(1, index)

    def reset(self) -> None:
        self.h = torch.zeros_like(self.h)
        if self.c is not None:
            self.c = torch.zeros_like(self.c)
        self.length = 0


class RecurrentLM(nn.Module):
    """Elman RNN (``arch="rnn"``) or LSTM (``arch="lstm"``) language model."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        if config.arch not in ("rnn", "lstm"):
            raise LmlabError(f"model.arch is {config.arch!r}; RecurrentLM builds 'rnn' or 'lstm'")
        if config.vocab_size < 1:
            raise LmlabError("model.vocab_size is 0: set it to the tokenizer's vocabulary size before building a model")
        self.config = cfg = dataclasses.replace(config)
        E, H = cfg.n_embd, cfg.hidden
        self.wte = nn.Embedding(cfg.vocab_size, E)
        kind = nn.LSTM if cfg.arch == "lstm" else nn.RNN
        between = cfg.dropout if cfg.n_layer > 1 else 0.0  # PyTorch drops out between layers only
        self.rnn = kind(E, H, num_layers=cfg.n_layer, bias=cfg.bias, batch_first=True, dropout=between)
        # A tied head reads E-wide vectors; project the hidden state down when H != E.
        self.proj = Linear(H, E, bias=False) if cfg.tie_embeddings and H != E else None
        self.lm_head = Linear(E if cfg.tie_embeddings else H, cfg.vocab_size, bias=cfg.bias)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 1) input embeddings (unit-scale inputs, like one-hot vectors) and an N(0, init_std) head, so
        the first predictions are near uniform (a tied pair takes the head's init_std); PyTorch's U(±1/√H)
        recurrent weights; LSTM forget-gate bias 1 so the cell remembers by default (Jozefowicz et al. 2015)."""
        std = self.config.init_std
        nn.init.normal_(self.lm_head.weight, std=std)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.wte.weight, std=1.0)
        if self.lm_head.bias is not None:
            nn.init.zeros_(self.lm_head.bias)
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=std)
        self.rnn.reset_parameters()
        if self.config.arch == "lstm" and self.config.bias:
            H = self.config.hidden
            for name, p in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    with torch.no_grad():
                        p[H : 2 * H].fill_(1.0)  # gate order i, f, g, o

    def new_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> RecurrentState:
        """The zero recurrent state for a batch (``max_len`` is accepted and ignored: a state has no length limit)."""
        cfg = self.config
        w = self.wte.weight
        shape = (cfg.n_layer, batch_size, cfg.hidden)
        h = torch.zeros(shape, device=device or w.device, dtype=dtype or w.dtype)
        return RecurrentState(h=h, c=torch.zeros_like(h) if cfg.arch == "lstm" else None)

    def _run(self, x: Tensor, hx, padding_mask: Tensor | None):
        """Run the recurrent stack; with a padding mask, pad steps leave the state untouched."""
        if padding_mask is None or bool(padding_mask.all()):
            return self.rnn(x, hx)
        B, T, E = x.shape
        mask = padding_mask.to(torch.bool)
        lengths = mask.sum(1)  # (B,)
        start = mask.to(torch.uint8).argmax(1)  # first real token (0 for an all-pad row)
        ar = torch.arange(T, device=x.device)
        contiguous = (ar >= start[:, None]) & (ar < (start + lengths)[:, None])
        if not torch.equal(contiguous, mask):
            raise ValueError("a recurrent model's padding_mask must be left- or right-padding (one run of real tokens)")
        # Rotate each row so its real tokens come first, run the packed sequence, rotate back.
        idx = (ar[None, :] + start[:, None]) % T  # (B, T)
        shifted = x.gather(1, idx[..., None].expand(B, T, E))
        packed = pack_padded_sequence(shifted, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out_packed, new_hx = self.rnn(packed, hx)
        out_shifted, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=T)  # (B, T, H), zeros at pads
        out = torch.empty_like(out_shifted).scatter_(1, idx[..., None].expand_as(out_shifted), out_shifted)
        empty = lengths == 0
        if bool(empty.any()) and hx is not None:  # an all-pad row consumed nothing: keep its old state
            keep = lambda new, old: torch.where(empty[None, :, None], old, new)  # noqa: E731
            new_hx = tuple(map(keep, new_hx, hx)) if isinstance(new_hx, tuple) else keep(new_hx, hx)
        return out, new_hx

    def forward(
        self,
        tokens: Tensor,
        targets: Tensor | None = None,
        cache: RecurrentState | None = None,
        *,
        padding_mask: Tensor | None = None,
        positions: Tensor | None = None,
        return_attention: bool = False,
    ) -> ModelOutput:
        """tokens (B, T) → logits (B, T, V). ``cache`` is a RecurrentState, updated and returned.

        ``padding_mask`` (B, T) or (B, T_cached + T), True = real token: pad steps (left or right
        padding) do not change the state. ``positions`` is accepted for interface parity and
        unused: a recurrent model knows order from the recurrence.
        """
        if return_attention:
            raise LmlabError(f"a {self.config.arch} model has no attention weights to show; use a gpt run")
        T = tokens.size(1)
        p = self.config.dropout if self.training else 0.0
        x = F.dropout(self.wte(tokens), p) if p else self.wte(tokens)  # (B, T, E)
        hx = None
        if cache is not None:
            hx = (cache.h, cache.c) if cache.c is not None else cache.h
        out, new_hx = self._run(x, hx, None if padding_mask is None else padding_mask[:, -T:])  # (B, T, H)
        if self.proj is not None:
            out = self.proj(out)  # (B, T, E)
        if cache is not None:
            if isinstance(new_hx, tuple):
                cache.h, cache.c = new_hx
            else:
                cache.h = new_hx
            cache.length += T
        logits = self.lm_head(F.dropout(out, p) if p else out)  # (B, T, V)
        loss = None if targets is None else lm_loss(logits, targets, self.config.label_smoothing)
        return ModelOutput(logits=logits, loss=loss, cache=cache, hidden_states=out)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, each shared tensor counted once; ``non_embedding`` leaves out the token table
        (with tied embeddings that is also the output head's weight)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wte.weight.numel() if non_embedding else n

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6·N, N = parameters used in matmuls (recurrent weights, projection,
        output head; not the input embedding lookup). Each weight does one multiply-add per token
        forward (2 FLOPs) and two backward (4 FLOPs)."""
        cfg = self.config
        return 6 * (self.num_params(non_embedding=True) + cfg.vocab_size * cfg.n_embd * cfg.tie_embeddings)
