"""The decoding loop: prompts of token ids in, generated token ids out.

The engine prefills every prompt in one forward pass, then decodes one token per step, carrying a
preallocated KV cache (Transformer) or the recurrent state (RNN/LSTM) from step to step, so each
step processes only the newest token. It is a generator (``stream_ids``) that yields the tokens of
each step as they come; ``generate_ids`` collects them. What to generate is one
``GenerationRequest`` (sampling parameters, stop conditions, limits). Text is a layer above this
one (``lmlab.generation.text``: ``generate_text``, ``stream_text``, the ``Detokenizer``); the
engine sees it only through a per-row detokenizer that it feeds tokens and that says when a stop
string appeared.

Batches: prompts of different lengths are left-padded; a padding mask hides the pads from attention
and per-row positions start each prompt at 0, so every row decodes exactly as it would alone. A
recurrent model leaves its state untouched on pad steps. Finished rows are dropped from the batch
once they are half of it (the cache rows are reindexed), so a long row is not slowed by finished ones.

Stopping: a row ends at an end-of-text or stop token id (the token is returned, its text is not),
at a stop string (found by the row's detokenizer; the text stops right before it), or after
``max_new_tokens``.

Context: a model with learned or sinusoidal positions (or none) that runs out of context slides a
window: it re-prefills the last three quarters of its context and goes on, and says so once. A RoPE
model refuses up front a prompt plus ``max_new_tokens`` longer than its ``block_size``. Recurrent
models have no context limit.

Randomness comes from one ``torch.Generator`` per row, seeded from the request's ``seed`` (with one
``SamplingParams`` for the whole batch, row i uses ``seed + i``), so a request gives the same tokens
alone or in any batch. Without a seed the batch shares one generator seeded by the OS.

Speed: at one token per step the cost is Python and op dispatch, not arithmetic. A GPT decodes
through ``_GPTStep``, the model's own arithmetic without ``model.forward``'s generality, calling the
model's own linear modules (so an adapter or a quantized linear that replaces or wraps one is
used), and checked against ``model.forward`` on the first step of each model and again whenever
one of its modules was swapped. The common sampling case (temperature and top-k only) goes through
``_sample_plain``, which draws exactly the tokens ``sample_next`` would. Everything else (prefill,
recurrent models, penalties, top-p, min-p) uses the model's forward and ``lmlab.generation.sampling``
directly.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmlab.errors import LmlabError
from lmlab.generation.request import GenerationRequest, as_request
from lmlab.generation.sampling import SamplingParams, make_generator, sample_next, token_counts
from lmlab.generation.sampling import top_logprobs as _top_logprobs
from lmlab.models.layers import BatchNorm, KVCache, LayerNorm, RMSNorm, apply_rotary

__all__ = [
    "Completion",
    "ContextWindowWarning",
    "MakeRowText",
    "RowText",
    "TokenEvent",
    "generate_ids",
    "stream_ids",
]

KEEP_FRACTION = 0.75  # share of the context a sliding window keeps: re-prefill every quarter context


class ContextWindowWarning(UserWarning):
    """Prompt plus output outgrew the model's context, so the engine slides a window over the text."""


class RowText(Protocol):
    """What the engine asks of a row's detokenizer (``lmlab.generation.text.Detokenizer`` is one)."""

    stop: str | None  # the stop string found, once one is

    def push(self, token: int) -> str:
        """Add a generated token; the text it releases (maybe "")."""

    def finish(self) -> str:
        """The text still held back, once no token follows."""


MakeRowText = Callable[[Sequence[str], Sequence[int]], RowText]  # (stop strings, prompt ids) -> a row's RowText


@dataclass
class TokenEvent:
    """One generated token of one request, as ``stream_ids`` yields it."""

    index: int  # which prompt (position in the list given)
    token: int  # the token id chosen
    text: str = ""  # text released by this token ("" while held back, or without a detokenizer)
    logprob: float | None = None  # log-probability of ``token`` under the model (see generate_ids)
    top_logprobs: list[tuple[int, float]] | None = None  # the most likely alternatives, most likely first
    finish_reason: str | None = None  # None while running; "stop" or "length" on a request's last token
    stop: int | str | None = None  # the stop token id or stop string that ended the request


@dataclass
class Completion:
    """A finished request: its tokens (a final stop token included) and, with a detokenizer, its text."""

    tokens: list[int] = field(default_factory=list)
    text: str = ""  # without the stop string or stop token
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    finish_reason: str = "length"  # "stop": a stop token or string; "length": max_new_tokens reached
    stop: int | str | None = None


# ---------------------------------------------------------------------------------------------
# The decode step of a GPT


class _GPTStep:
    """One decode step of an lmlab GPT (one new token per row), calling the model's own parts directly.

    Why not ``model.forward``: it serves training, prompts, masks and attention maps, and at one token
    per step its module calls, checks and reshapes cost more than the arithmetic of a small model
    (about 40% of a step at the ``baby`` shape). This is the same arithmetic in the same order, on
    (B, C) rows instead of (B, 1, C) sequences, writing keys and values straight into the cache's
    documented (n_layer, B, H_kv, max_len, D) buffers.

    Every weight matrix is applied by the model's own module (``qkv``, ``proj``, ``up``, ``down``,
    ``lm_head``): a LoRA adapter or a quantized linear that replaces or wraps one of them is what
    runs here too. Their ``forward`` is called without ``nn.Module.__call__`` (its hook dispatch costs
    about a microsecond per call, a few percent of a step); ``supports`` refuses a model with hooks.
    Embeddings, positions and norms are read as tensors: they are what ``supports`` checks by type.
    The first step of each model is run both ways and compared (``_Generation._verify``), and again
    after any of its modules was replaced (``_structure``); a difference switches that model back to
    ``model.forward`` with a warning.
    """

    def __init__(self, model: nn.Module) -> None:
        self.wte = model.wte.weight if type(model.wte) is nn.Embedding else None
        self.embed = model.wte.forward  # a quantized table (QuantEmbedding) dequantizes the rows it reads
        self.wpe = model.wpe.weight if model.wpe is not None else None
        self.sin_table = model.sinusoidal.table if model.sinusoidal is not None else None
        self.embed_scale = model.embed_scale
        self.rope = (model.rope.cos, model.rope.sin) if model.rope is not None else None
        self.norm_f = self._norm(model.norm_f)
        self.head = model.lm_head.forward
        self.layers = []
        for blk in model.blocks:
            attn, mlp = blk.attn, blk.mlp
            self.layers.append(
                (
                    blk.pre_norm,
                    self._norm(blk.norm1),
                    self._norm(blk.norm2),
                    (attn.qkv.forward, attn.proj.forward),
                    (attn.n_head, attn.n_kv_head, attn.head_dim, attn.q_dim),
                    (mlp.up.forward, mlp.down.forward, mlp.activation),
                )
            )

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether the model is built from exactly the parts this step knows, with no forward hooks."""
        from lmlab.models.gpt import GPT
        from lmlab.models.layers import (
            Block,
            FeedForward,
            LearnedPositionalEmbedding,
            MultiHeadAttention,
            RotaryEmbedding,
            SinusoidalPositionalEncoding,
        )

        norms = (LayerNorm, RMSNorm, BatchNorm, nn.Identity)
        if type(model) is not GPT or type(model.norm_f) not in norms:
            return False
        from lmlab.models.quant import QuantEmbedding

        if type(model.wte) not in (nn.Embedding, QuantEmbedding):
            return False
        for part, kind in (
            (model.wpe, LearnedPositionalEmbedding),
            (model.sinusoidal, SinusoidalPositionalEncoding),
            (model.rope, RotaryEmbedding),
        ):
            if part is not None and type(part) is not kind:
                return False
        from torch.nn.modules import module as torch_module

        if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
            return False  # hooks see model.forward's calls only
        if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
            return False
        for blk in model.blocks:
            if type(blk) is not Block or blk.cross_attn is not None:
                return False
            if type(blk.attn) is not MultiHeadAttention or type(blk.mlp) is not FeedForward:
                return False
            if not all(type(n) in norms for n in (blk.norm1, blk.norm2)):
                return False
            if blk.mlp.activation not in ("gelu", "swiglu", "relu2", "relu"):
                return False
        return True

    @staticmethod
    def _norm(m: nn.Module) -> Callable[[Tensor], Tensor]:
        # the torch.* entry points skip the Python wrappers of F.layer_norm / F.rms_norm, and the tensors
        # are looked up once per generation rather than through nn.Module.__getattr__ at every call
        if isinstance(m, LayerNorm):
            w, b, eps = m.weight, m.bias, m.eps
            shape = w.shape
            return lambda x: torch.layer_norm(x, shape, w, b, eps)
        if isinstance(m, RMSNorm):
            w, eps = m.weight, m.eps
            shape = w.shape
            return lambda x: torch.rms_norm(x, shape, w, eps)
        if isinstance(m, BatchNorm):  # decoding is evaluation: the running statistics, a per-channel affine map
            scale = m.weight * torch.rsqrt(m.running_var + m.eps)
            shift = m.bias - m.running_mean * scale
            return lambda x: torch.addcmul(shift, x, scale)
        return lambda x: x

    def __call__(self, tokens: Tensor, cache: KVCache, pos: Tensor | None, key_mask: Tensor | None) -> Tensor:
        """tokens (B, 1) -> logits (B, V). ``pos`` (B, 1): per-row positions of a left-padded batch, else
        None (every row at the cache length); ``key_mask`` (B, length + 1): True at real keys, or None."""
        B = tokens.size(0)
        L = cache.length
        cache.check_room(1)
        # per-layer views of this step's slot and of the keys and values so far, made for all layers at once
        # (an unbind of the (n_layer, B, H_kv, max_len, D) buffers costs less than n_layer select/narrow calls)
        k_slot, v_slot = cache.k.narrow(3, L, 1).unbind(0), cache.v.narrow(3, L, 1).unbind(0)  # (B, H_kv, 1, D)
        k_seen = cache.k.narrow(3, 0, L + 1).unbind(0)  # each (B, H_kv, L + 1, D)
        v_seen = cache.v.narrow(3, 0, L + 1).unbind(0)
        where = L if pos is None else pos.view(B)
        x = torch.embedding(self.wte, tokens.view(B)) if self.wte is not None else self.embed(tokens.view(B))  # (B, C)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        if self.wpe is not None:
            x = x + self.wpe[where]  # (C,) or (B, C)
        elif self.sin_table is not None:
            x = x + self.sin_table[where].to(x.dtype)
        rope = None
        if self.rope is not None:
            cos, sin = self.rope
            rope = (cos[L], sin[L]) if pos is None else (cos[where][:, None, None], sin[where][:, None, None])
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, L + 1)
        for i, (pre, norm1, norm2, (qkv, proj), (H, H_kv, D, q_dim), (up, down, act)) in enumerate(self.layers):
            h = norm1(x) if pre else x
            # one position per row, so the heads need no transpose: (B, H + 2 H_kv, 1, D) -> q, k, v
            q, k, v = qkv(h).view(B, H + 2 * H_kv, 1, D).split_with_sizes((H, H_kv, H_kv), 1)
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            k_slot[i].copy_(k)
            v_slot[i].copy_(v)
            a = F.scaled_dot_product_attention(q, k_seen[i], v_seen[i], attn_mask=mask, enable_gqa=H != H_kv)
            a = proj(a.view(B, q_dim))  # (B, C)
            x = x + a if pre else norm1(x + a)
            h = norm2(x) if pre else x
            u = up(h)  # (B, F), or (B, 2F) for swiglu
            if act == "gelu":
                u = F.gelu(u, approximate="tanh")
            elif act == "swiglu":
                gate, value = u.chunk(2, dim=-1)
                u = torch._C._nn.silu(gate) * value
            elif act == "relu2":
                u = torch.relu(u).square()
            else:
                u = torch.relu(u)
            m = down(u)  # (B, C)
            x = x + m if pre else norm2(x + m)
        cache.advance(1)
        return self.head(self.norm_f(x))  # (B, V)


def _structure(model: nn.Module) -> tuple:
    """What a verification of the fast step holds for: every module's identity and type, and any forward
    set on an instance. Replacing or wrapping a module (an adapter, a quantized linear) changes it."""
    return tuple((id(m), type(m), id(m.__dict__.get("forward"))) for m in model.modules())


# model -> (its _structure when the fast step was last compared with its forward, whether they matched).
# Ids, not the modules: a value must not keep its key alive. The step itself is rebuilt per generation,
# since moving a model to another device replaces its buffers.
_VERIFIED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, bool]] = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------------------------------
# Sampling: the common case


def _plain(p: SamplingParams) -> bool:
    """Only temperature and top-k change the distribution (the common case ``_sample_plain`` serves)."""
    return (
        p.top_p >= 1
        and p.min_p == 0
        and p.repetition_penalty == 1
        and p.frequency_penalty == 0
        and p.presence_penalty == 0
        and not p.logit_bias
    )


def _sample_plain(
    logits: Tensor, temperature: float, top_k: int, gens: torch.Generator | list[torch.Generator]
) -> Tensor | None:
    """``sample_next``'s tokens (B,), bit for bit, for params with only temperature and top-k, in fewer ops.

    Why: at one token per step the pipeline's generality (checks, per-row parameters, the exact tie
    rule of top-k) costs about a fifth of a small model's step. This does the same arithmetic on the
    same values and draws with the same generators. A tie at the k-th logit needs ``sample_next``'s
    rule (lower id wins): then it returns None and the caller uses ``sample_next``.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)  # the first maximum, as sampling.greedy
    x = logits
    if temperature != 1:
        x = (x - x.amax(dim=-1, keepdim=True)) / temperature
    if 0 < top_k < x.size(1):
        top = torch.topk(x, top_k + 1, dim=-1).values  # (B, k + 1), largest first
        kth, after = top[:, top_k - 1 :].unbind(1)  # (B,) each: the k-th and (k + 1)-th largest
        if bool((after == kth).any()):
            return None
        x = x.masked_fill(x < kth[:, None], float("-inf"))
    probs = torch.log_softmax(x, dim=-1).exp()  # (B, V), as sample_next computes them
    if isinstance(gens, torch.Generator):
        return torch.multinomial(probs, 1, generator=gens).squeeze(1)
    # With one generator per row, sample_next calls torch.multinomial row by row, and for one sample
    # that is argmax(p / q) with q ~ Exp(1) drawn from the row's generator. Drawing the B rows of q and
    # taking one argmax gives the same tokens (a test holds us to it) at a fifth of the cost at B = 8.
    q = torch.empty_like(probs)
    if len(gens) == 1:  # batch 1: the (1, V) buffer is the row, without iterating over it
        q.exponential_(1, generator=gens[0])
    else:
        for row, g in zip(q, gens):
            row.exponential_(1, generator=g)
    return (probs / q).argmax(dim=-1)


# ---------------------------------------------------------------------------------------------
# The engine


def _check_ids(name: str, ids: Sequence[int], vocab_size: int) -> list[int]:
    out = []
    for t in ids:
        if not (isinstance(t, int) and not isinstance(t, bool)) or not 0 <= t < vocab_size:
            raise LmlabError(f"{name}: token id {t!r} is outside the model's vocabulary of {vocab_size}")
        out.append(t)
    return out


def take_token(ev: TokenEvent, stop_ids, ids: list[int], detok: RowText | None, n_new: int, max_new: int) -> None:
    """What a row's new token ``ev.token`` means (for ``stream_ids`` and the scheduler alike): a stop token ends
    it (its text is not released), else the token joins ``ids`` and the detokenizer releases its text, which may
    complete a stop string; ``max_new`` tokens end it with "length". Sets ``ev.text`` and ``ev.finish_reason``."""
    t = ev.token
    if t in stop_ids:
        ev.finish_reason, ev.stop = "stop", t
        if detok is not None:
            ev.text = detok.finish()
        return
    ids.append(t)
    if detok is not None:
        ev.text = detok.push(t)
        if detok.stop is not None:
            ev.finish_reason, ev.stop = "stop", detok.stop
    if ev.finish_reason is None and n_new >= max_new:
        ev.finish_reason = "length"
        if detok is not None:
            ev.text += detok.finish()


@dataclass
class _Row:
    """A request's state while it runs."""

    index: int
    ids: list[int]  # prompt and generated tokens: what a sliding-window re-prefill replays
    detok: RowText | None
    start: int = 0  # ids[start:] is what the model sees: a sliding window moves it
    n_new: int = 0
    done: bool = False


class _Generation:
    """One call of stream_ids: the batch, its cache and its per-row state."""

    def __init__(
        self,
        model: torch.nn.Module,
        prompts: Sequence[Sequence[int]],
        request: GenerationRequest,
        params: SamplingParams | Sequence[SamplingParams] | None,
        *,
        eos_id: int | None,
        detokenizer: MakeRowText | None,
        banned_ids: Sequence[int],
        on_notice: Callable[[str], None] | None,
    ) -> None:
        cfg = getattr(model, "config", None)
        if cfg is None or getattr(cfg, "arch", None) not in ("gpt", "rnn", "lstm"):
            arch = getattr(cfg, "arch", type(model).__name__)
            raise LmlabError(
                f"generation needs a decoder-only lmlab model (gpt, rnn or lstm), got {arch!r} "
                "(an encoder-decoder translates: lmlab translate)"
            )
        V = cfg.vocab_size
        if isinstance(prompts, Tensor):
            prompts = prompts.tolist()
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
            raise LmlabError("prompts must be a non-empty list of token-id lists")
        if isinstance(prompts[0], int):
            raise LmlabError("prompts must be a list of token-id lists; wrap a single prompt in a list")
        # the request checked its own values when it was made; what is left needs the model
        max_new_tokens = request.max_new_tokens
        if request.stop and detokenizer is None:
            raise LmlabError(
                "stop strings need a detokenizer to see the text (lmlab.generation.text.detokenizer_for(tokenizer))"
            )
        self.model = model
        self.device = next(model.parameters()).device
        self.vocab_size = V
        self.max_new = max_new_tokens
        prompts = [
            _check_ids(f"prompt {i}", p.tolist() if isinstance(p, Tensor) else p, V) for i, p in enumerate(prompts)
        ]
        for i, p in enumerate(prompts):
            if not p:
                raise LmlabError(f"prompt {i} is empty: give at least one token (e.g. <|eos|> to start a document)")
        self.stop_ids = set(_check_ids("stop_token_ids", request.stop_token_ids, V))
        if eos_id is not None:
            self.stop_ids |= set(_check_ids("eos_id", [eos_id], V))
        banned = sorted(set(_check_ids("banned_ids", banned_ids, V)) - self.stop_ids)
        self.ban = torch.tensor(banned, dtype=torch.long, device=self.device) if banned else None
        self.min_new = request.min_new_tokens  # the stop ids are banned until a row has this many tokens
        self.stop_tensor = torch.tensor(sorted(self.stop_ids), dtype=torch.long, device=self.device)
        self.logprobs = request.logprobs
        self.n_top = request.top_logprobs
        self.on_notice = on_notice
        self.noticed = False

        B = len(prompts)
        if params is None:
            params = request.sampling
        if isinstance(params, SamplingParams):
            params.validate()
            self.params: SamplingParams | list[SamplingParams] = params
            if params.seed is None:
                self.gens: torch.Generator | list[torch.Generator] = make_generator(None, self.device)
            else:  # one generator per row, so a row's tokens do not depend on the rest of the batch
                self.gens = [make_generator(_nth_seed(params.seed, i), self.device) for i in range(B)]
            every = [params]
        else:
            params = list(params) if isinstance(params, Sequence) else [params]
            if not all(isinstance(p, SamplingParams) for p in params):
                raise LmlabError("params must be a SamplingParams or a list with one SamplingParams per prompt")
            if len(params) != B:
                raise LmlabError(f"need one SamplingParams per prompt ({B}), got {len(params)}")
            for p in params:
                p.validate()
            self.params = params
            self.gens = [make_generator(p.seed, self.device) for p in params]
            every = params
        self.penalized = any(
            p.repetition_penalty != 1 or p.frequency_penalty != 0 or p.presence_penalty != 0 for p in every
        )
        # the plain sampler serves a batch whose rows all share temperature and top-k and use nothing else
        self.plain: tuple[float, int] | None = None
        if all(_plain(p) and (p.temperature, p.top_k) == (every[0].temperature, every[0].top_k) for p in every):
            self.plain = (every[0].temperature, every[0].top_k)

        self.rows = [
            _Row(i, list(p), detokenizer(request.stop, p) if detokenizer is not None else None)
            for i, p in enumerate(prompts)
        ]
        self.n_done = 0
        self.cache = None
        self.padded = False
        self.mask: Tensor | None = None  # (B, max_len) True at real tokens, for left-padded batches
        self.pos: Tensor | None = None  # (B, 1) position of the token each row feeds next
        self.counts: Tensor | None = None  # (B, V) tokens seen, for the penalties

        self.fast: _GPTStep | None = None
        self.verify = False  # compare the fast step with model.forward on the first decode step
        self.structure: tuple = ()
        if cfg.arch == "gpt":
            self.structure = _structure(model)
            known = _VERIFIED.get(model)
            if known is None or known[0] != self.structure or known[1]:
                try:
                    self.fast = _GPTStep(model) if _GPTStep.supports(model) else None
                except AttributeError:  # a model whose parts this step does not know: use model.forward
                    self.fast = None
                self.verify = self.fast is not None and (known is None or known[0] != self.structure)

        # How much context the model has, and what happens when it runs out.
        self.window: int | None = None  # context length of a Transformer (None: recurrent, unlimited)
        self.keep = 0  # tokens a slide keeps
        self.max_len = 0
        if cfg.arch == "gpt":
            self.window = cfg.block_size
            longest = max(map(len, prompts))
            if cfg.pos == "rope":
                if longest + max_new_tokens > self.window:
                    raise LmlabError(
                        f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) = "
                        f"{longest + max_new_tokens} tokens is more than this RoPE model's context "
                        f"(block_size {self.window}); shorten the prompt or lower max_new_tokens"
                    )
            else:
                self.keep = max(1, int(self.window * KEEP_FRACTION))
                self._slide()
            longest = max(len(r.ids) - r.start for r in self.rows)
            self.max_len = min(self.window, longest + max_new_tokens)

    def _notice(self) -> None:
        if self.noticed:
            return
        self.noticed = True
        msg = (
            f"prompt + output exceed this model's context of {self.window} tokens: sliding a window "
            f"(the model sees the last {self.keep} to {self.window} tokens)"
        )
        if self.on_notice is None:
            warnings.warn(msg, ContextWindowWarning, stacklevel=2)
        else:
            self.on_notice(msg)

    def _slide(self) -> None:
        """Start the view of each row that outgrew the context at its last ``keep`` tokens.

        Each row follows its own length, the rule it would follow alone: in a left-padded batch the
        shorter rows keep all they see, so batching never changes what a row's model sees.
        """
        for r in self.rows:
            if len(r.ids) - r.start > self.window:
                r.start = len(r.ids) - self.keep
                self._notice()

    # -- forward passes --------------------------------------------------------------------
    def _prefill(self) -> Tensor:
        """Run what each row sees into a fresh cache; logits (B, V) of each row's last token."""
        seqs = [r.ids[r.start :] for r in self.rows]
        B = len(seqs)
        lens = [len(s) for s in seqs]
        P = max(lens)
        tokens = torch.tensor([[0] * (P - n) + s for s, n in zip(seqs, lens)], dtype=torch.long, device=self.device)
        if self.cache is None:
            self.cache = self.model.new_cache(B, self.max_len or None)
        else:
            self.cache.reset()
        padded = min(lens) != P
        # a recurrent model needs the mask only here: its decode steps feed real tokens to every row
        self.padded = padded and self.window is not None
        mask = positions = None
        if padded:
            n = torch.tensor(lens, device=self.device)[:, None]  # (B, 1)
            ar = torch.arange(max(self.max_len, P), device=self.device)
            self.mask = ar[None, :] >= P - n  # (B, max_len): generated tokens are all real
            self.pos = n.clone()
            mask = self.mask[:, :P]
            positions = (ar[None, :P] - (P - n)).clamp(min=0)  # (B, P), each prompt from 0; pads at 0
        out = self.model(tokens, cache=self.cache, padding_mask=mask, positions=positions)
        return out.logits[:, -1]  # (B, V)

    def _step(self, tokens: Tensor) -> Tensor:
        """Feed each row's newest token (B,); logits (B, V) of the next one."""
        cache = self.cache
        if self.window is not None and cache.length >= cache.max_len:
            # some row's newest token does not fit: re-prefill (each row's own view; see _slide)
            self._slide()
            return self._prefill()
        x = tokens.view(-1, 1)  # (B, 1)
        pos = key_mask = None
        if self.padded:
            pos, key_mask = self.pos, self.mask[:, : cache.length + 1]
        if self.verify:
            logits = self._verify(x, pos, key_mask)
        elif self.fast is not None:
            logits = self.fast(x, cache, pos, key_mask)
        else:
            logits = self.model(x, cache=cache, padding_mask=key_mask, positions=pos).logits[:, -1]
        if pos is not None:
            self.pos += 1
        return logits

    def _verify(self, x: Tensor, pos: Tensor | None, key_mask: Tensor | None) -> Tensor:
        """Run the first decode step both ways; keep the fast step only if it agrees with model.forward."""
        self.verify = False
        cache = self.cache
        length = cache.length
        try:
            fast = self.fast(x, cache, pos, key_mask)
        except Exception:  # noqa: BLE001 - any failure means: do not use the fast step for this model
            fast = None
        cache.crop(length)  # model.forward rewrites the same cache slots
        ref = self.model(x, cache=cache, padding_mask=key_mask, positions=pos).logits[:, -1]
        ok = fast is not None and fast.shape == ref.shape
        ok = ok and torch.allclose(fast.float(), ref.float(), rtol=1e-3, atol=1e-3 * float(ref.abs().max()) + 1e-6)
        _VERIFIED[self.model] = (self.structure, ok)
        if not ok:
            self.fast = None
            warnings.warn(
                "lmlab's fast decode step does not match this model's forward (unless one of its modules was "
                "replaced by one that needs (B, T, C) inputs, an lmlab bug: please report it); decoding with "
                "model.forward instead, correct but slower",
                RuntimeWarning,
                stacklevel=2,
            )
        return ref

    def _compact(self, tokens: Tensor) -> Tensor:
        """Drop finished rows from the batch; returns the tokens of the rows that stay."""
        keep = [b for b, r in enumerate(self.rows) if not r.done]
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.rows = [self.rows[b] for b in keep]
        self.cache.reorder_(idx)
        if isinstance(self.gens, list):
            self.gens = [self.gens[b] for b in keep]
        if isinstance(self.params, list):
            self.params = [self.params[b] for b in keep]
        if self.counts is not None:
            self.counts = self.counts[idx]
        if self.padded:
            self.mask, self.pos = self.mask[idx], self.pos[idx]
            # the rows that needed padding may all be gone: then the unmasked fast path is exact again
            self.padded = not bool(self.mask[:, : self.cache.length].all())
        self.n_done = 0
        return tokens[idx]

    # -- choosing tokens -------------------------------------------------------------------
    def _choose(self, logits: Tensor) -> tuple[Tensor, list[TokenEvent]]:
        logits = logits.float()
        if self.ban is not None:
            logits = logits.index_fill(1, self.ban, float("-inf"))
        if self.min_new and len(self.stop_tensor):
            early = [b for b, row in enumerate(self.rows) if row.n_new < self.min_new]
            if early:
                logits = logits.clone() if self.ban is None else logits
                logits[torch.tensor(early, device=self.device)[:, None], self.stop_tensor[None, :]] = float("-inf")
        tokens = None if self.plain is None else _sample_plain(logits, *self.plain, self.gens)
        if tokens is None:
            tokens, _ = sample_next(logits, self.params, self.gens, counts=self.counts)  # (B,)
        ids = tokens.tolist()
        lp = tops = None
        if self.logprobs:
            lp = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None]).squeeze(1).tolist()
        if self.n_top:
            top_ids, top_vals = _top_logprobs(logits, self.n_top)
            tops = [list(zip(i, v)) for i, v in zip(top_ids.tolist(), top_vals.tolist())]
        if self.counts is not None:
            self.counts.scatter_add_(1, tokens[:, None], torch.ones_like(self.counts[:, :1]))

        events = []
        for b, row in enumerate(self.rows):
            if row.done:
                continue
            t = ids[b]
            row.n_new += 1
            ev = TokenEvent(
                row.index, t, logprob=None if lp is None else lp[b], top_logprobs=None if tops is None else tops[b]
            )
            take_token(ev, self.stop_ids, row.ids, row.detok, row.n_new, self.max_new)
            if ev.finish_reason is not None:
                row.done = True
                self.n_done += 1
            events.append(ev)
        return tokens, events

    @torch.inference_mode()
    def run(self) -> Iterator[list[TokenEvent]]:
        training = self.model.training
        self.model.eval()  # no dropout while generating; the mode is restored when the generator ends
        try:
            if self.penalized:
                self.counts = token_counts([r.ids for r in self.rows], self.vocab_size, self.device)
            logits = self._prefill()
            while True:
                tokens, events = self._choose(logits)
                yield events
                if self.n_done == len(self.rows):
                    return
                if 2 * self.n_done >= len(self.rows):
                    tokens = self._compact(tokens)
                logits = self._step(tokens)
        finally:
            self.model.train(training)


def _nth_seed(seed: int, i: int) -> int:
    s = seed + i
    return s - 2**64 if s >= 2**64 else s  # stay in the range torch.Generator.manual_seed accepts


def stream_ids(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    request: GenerationRequest | None = None,
    *,
    eos_id: int | None = None,
    detokenizer: MakeRowText | None = None,
    banned_ids: Sequence[int] = (),
    on_notice: Callable[[str], None] | None = None,
    params: SamplingParams | Sequence[SamplingParams] | None = None,
) -> Iterator[list[TokenEvent]]:
    """Generate from a batch of prompts (lists of token ids), yielding each step's tokens as they come.

    Each step yields a list with one ``TokenEvent`` per request still running; a request's last event
    has ``finish_reason`` set. ``request`` (default ``GenerationRequest()``) says how to sample, when to
    stop and what to report, for every prompt; with a seed, row i uses ``seed + i``. ``params``
    replaces the request's sampling: one ``SamplingParams`` for every prompt, or a list with one per
    prompt (each with its own seed), e.g. for a server batching different requests.

    A row stops at ``eos_id`` or one of the request's ``stop_token_ids`` (returned as its last token),
    at one of its ``stop`` strings, or after ``max_new_tokens``. Stop strings and the events' text need
    ``detokenizer``: called as ``detokenizer(stop_strings, prompt_ids)`` once per row, it returns the
    row's ``RowText`` (``lmlab.generation.text.detokenizer_for(tokenizer)`` gives one). ``banned_ids``
    are never chosen (logit -inf).

    With the request's ``logprobs``, each event has the chosen token's log-probability, and with
    ``top_logprobs`` the n most likely tokens, both under the model's own distribution (softmax of the
    logits, banned tokens removed, before temperature and filters: what PPO's ratio and the OpenAI API
    use). ``on_notice`` receives the one-time sliding-window message (default: a ``ContextWindowWarning``).

    Arguments are checked before this returns; the model runs as the generator is consumed.
    """
    gen = _Generation(
        model,
        prompts,
        as_request(request),
        params,
        eos_id=eos_id,
        detokenizer=detokenizer,
        banned_ids=banned_ids,
        on_notice=on_notice,
    )
    return gen.run()


def generate_ids(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    request: GenerationRequest | None = None,
    *,
    eos_id: int | None = None,
    detokenizer: MakeRowText | None = None,
    banned_ids: Sequence[int] = (),
    on_notice: Callable[[str], None] | None = None,
    params: SamplingParams | Sequence[SamplingParams] | None = None,
) -> list[Completion]:
    """Generate from a batch of prompts; one ``Completion`` per prompt, in order. Arguments as ``stream_ids``."""
    request = as_request(request)
    events = stream_ids(
        model,
        prompts,
        request,
        eos_id=eos_id,
        detokenizer=detokenizer,
        banned_ids=banned_ids,
        on_notice=on_notice,
        params=params,
    )
    logprobs, top_logprobs = request.logprobs, request.top_logprobs
    out = [Completion(logprobs=[] if logprobs else None, top_logprobs=[] if top_logprobs else None) for _ in prompts]
    texts: list[list[str]] = [[] for _ in prompts]
    for step in events:
        for ev in step:
            c = out[ev.index]
            c.tokens.append(ev.token)
            texts[ev.index].append(ev.text)
            if c.logprobs is not None:
                c.logprobs.append(ev.logprob)
            if c.top_logprobs is not None:
                c.top_logprobs.append(ev.top_logprobs)
            if ev.finish_reason is not None:
                c.finish_reason, c.stop = ev.finish_reason, ev.stop
    for c, t in zip(out, texts):
        c.text = "".join(t)
    return out
