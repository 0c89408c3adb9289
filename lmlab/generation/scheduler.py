"""Continuous batching: requests join the running decode batch at the next step and leave it when they finish.

``stream_ids`` (``lmlab.generation.engine``) runs one batch from start to end: right for a CLI call or an RL
rollout, where every prompt is known up front. A server gets requests one at a time, at any moment, and a long
generation must not hold up a short one that arrives later. ``Scheduler`` owns a model and one thread that loops:

1. take waiting requests into free slots (at most ``max_batch`` run at once; ``max_queue`` more may wait);
2. prefill one chunk (``prefill_chunk`` tokens) of one joining prompt, alone, into its own small cache; so a long
   prompt delays the running streams by one chunk's time per step, never by its whole length. When its prompt is
   done, the request's first token is sampled (its time to first token) and its keys and values are copied into
   the batch's cache;
3. decode one token for every running request, as one batch;
4. drop the requests that finished or were cancelled (a client that went away); their slots are free at once.

The batch's cache has one row per slot, preallocated at start for ``max_batch`` slots (``memory_bytes``). All rows
share the write index, as in ``stream_ids``'s left-padded batches: a joining prompt of L tokens is written at the
L positions before it, a padding mask hides the positions before a row's start, and per-row positions make each
row's model see what it would see alone. When the write index reaches the end, every row is moved left by the
oldest row's start (each row spans at most ``block_size`` tokens, so room appears); so they are as soon as an
eighth of the shared length is padding before every row, since each step reads the shared length.

The parts are the engine's own: the decode step (``_GPTStep``, checked once against ``model.forward``), the
samplers (``_sample_plain``, ``sample_next``), one ``torch.Generator`` per request (so a seeded request returns the
same tokens alone or among 63 others), the text layer's ``Detokenizer`` for stop strings and for text deltas that
never split a character. GPT runs only: a recurrent model's state has no positions to pad (``lmlab sample``
serves those).
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmlab.errors import LmlabError
from lmlab.generation.engine import (
    _VERIFIED,
    TokenEvent,
    _check_ids,
    _GPTStep,
    _nth_seed,
    _plain,
    _sample_plain,
    take_token,
)
from lmlab.generation.engine import _structure as _model_structure
from lmlab.generation.request import GenerationRequest, as_request
from lmlab.generation.sampling import make_generator, sample_next, token_counts
from lmlab.generation.sampling import top_logprobs as _top_logprobs
from lmlab.models.layers import KVCache

__all__ = ["Handle", "QueueFull", "Scheduler"]


class QueueFull(LmlabError):
    """``max_batch`` requests run and ``max_queue`` wait: try again later (HTTP 429)."""


class _View(KVCache):
    """The first ``n`` rows of the batch cache, without a copy: what one decode step reads and writes."""

    def __init__(self, k: Tensor, v: Tensor, length: int) -> None:  # noqa: D107 - no allocation, unlike KVCache
        self.k, self.v, self.length = k, v, length


class Handle:
    """One submitted request: its events as they come, and ``cancel()``.

    Events arrive from the scheduler's thread. Read them with ``events()`` (blocking) or, in asyncio code,
    ``async for ev in handle`` (the handle was made with the event loop). The last event of a request has a
    ``finish_reason`` ("stop", "length", or "cancelled" for a request cancelled before it finished); an error in
    the scheduler ends the stream with that exception raised to the reader.
    """

    def __init__(self, rid: int, prompt: list[int], loop: asyncio.AbstractEventLoop | None,
                 sink: asyncio.Queue | None = None, tag: int = 0) -> None:  # fmt: skip
        self.id = rid
        self.prompt = prompt
        self.submitted = time.perf_counter()
        self.cancelled = False
        self._loop = loop
        # a sink is shared by the handles of one HTTP request (its n choices): items arrive as (tag, item)
        self._sink, self._tag = sink, tag
        self._async: asyncio.Queue | None = asyncio.Queue() if loop is not None and sink is None else None
        self._sync: queue.SimpleQueue | None = None if loop is not None else queue.SimpleQueue()

    def cancel(self) -> None:
        """Stop generating for this request; its slot is freed at the scheduler's next step."""
        self.cancelled = True

    def _receive(self, item: TokenEvent | BaseException) -> None:
        """Take an item (in the event loop's thread for an asyncio handle)."""
        if self._sink is not None:
            self._sink.put_nowait((self._tag, item))
        elif self._async is not None:
            self._async.put_nowait(item)
        else:
            self._sync.put(item)

    def _put(self, item: TokenEvent | BaseException) -> None:
        _post([(self, item)])

    def events(self, timeout: float | None = None) -> Iterator[TokenEvent]:
        """The request's events until its last one (blocking; for a handle made without an event loop)."""
        if self._sync is None:
            raise LmlabError("this handle delivers to an event loop: use `async for event in handle`")
        while True:
            item = self._sync.get(timeout=timeout)
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return

    def __aiter__(self):
        return self._aiter()

    async def _aiter(self):
        while True:
            item = await self._async.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return


def _post(items: list[tuple[Handle, TokenEvent | BaseException]]) -> None:
    """Hand items to their handles: one wake-up per event loop for a whole step's events (waking a loop costs a
    system call; one per token per request was most of a busy server's overhead), directly to blocking readers."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for h, item in items:
        if h._loop is None:
            h._receive(item)
        else:
            by_loop.setdefault(h._loop, []).append((h, item))
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_receive_all, batch)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            for h, _ in batch:
                h.cancelled = True


def _receive_all(batch: list) -> None:
    for h, item in batch:
        h._receive(item)


@dataclass
class _Live:
    """A request in the scheduler: waiting, joining (being prefilled), or running (``Scheduler.running[i]``)."""

    handle: Handle
    request: GenerationRequest
    stop_ids: set[int]
    detok: object | None
    gen: torch.Generator
    ids: list[int]  # prompt + generated (the penalties count them)
    n_new: int = 0
    done: bool = False
    cache: KVCache | None = None  # the prompt's own cache while it is prefilled
    prefilled: int = 0
    next_token: int = 0
    counts: Tensor | None = None  # (V,) tokens seen, when the request has a penalty


class Scheduler:
    """Continuous batching over one GPT (see the module's docstring). ``start()`` runs its thread; ``submit`` is
    safe from any thread; ``close()`` stops it (running requests end with ``finish_reason`` "cancelled")."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_batch: int = 16,
        max_queue: int = 64,
        prefill_chunk: int = 256,
        eos_id: int | None = None,
        detokenizer: Callable | None = None,
        banned_ids: Sequence[int] = (),
    ) -> None:
        cfg = getattr(model, "config", None)
        if cfg is None or getattr(cfg, "arch", None) != "gpt":
            arch = getattr(cfg, "arch", type(model).__name__)
            raise LmlabError(f"continuous batching serves GPT runs; this is a {arch!r} run (lmlab sample serves it)")
        for name, value, low in (("max_batch", max_batch, 1), ("max_queue", max_queue, 0), ("prefill_chunk",
                                 prefill_chunk, 1)):  # fmt: skip
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise LmlabError(f"{name} must be an integer >= {low}, got {value!r}")
        self.model = model.eval()
        self.cfg = cfg
        self.device = next(model.parameters()).device
        self.vocab_size = cfg.vocab_size
        self.block_size = cfg.block_size
        self.max_batch, self.max_queue, self.chunk = max_batch, max_queue, prefill_chunk
        self.eos_id = eos_id
        self.detokenizer = detokenizer
        self.banned = sorted(set(_check_ids("banned_ids", banned_ids, self.vocab_size)))
        # the shared cache: block_size positions a row may span, plus room to move rows left a quarter at a time
        self.max_len = self.block_size + max(16, self.block_size // 4)
        w = model.wte.weight if hasattr(model, "wte") else next(model.parameters())
        self.cache = KVCache(cfg.n_layer, max_batch, cfg.kv_heads, self.max_len, cfg.head_dim, device=self.device,
                             dtype=w.dtype)  # fmt: skip
        self.mask = torch.zeros(max_batch, self.max_len, dtype=torch.bool, device=self.device)
        self.pos = torch.zeros(max_batch, 1, dtype=torch.long, device=self.device)
        self.tokens = torch.zeros(max_batch, dtype=torch.long, device=self.device)
        self.start_of = [0] * max_batch  # where each slot's row begins in the cache
        self.running: list[_Live] = []  # slot i holds running[i]
        self.joining: deque[_Live] = deque()
        self.waiting: deque[_Live] = deque()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stop = False
        self.failure: BaseException | None = None
        self._outbox: list = []  # (handle, event) of this step, handed over together at its end
        self.fast: _GPTStep | None = None
        self._verify = False
        structure = _model_structure(model)
        known = _VERIFIED.get(model)
        if (known is None or known[0] != structure or known[1]) and _GPTStep.supports(model):
            try:
                self.fast = _GPTStep(model)
            except AttributeError:
                self.fast = None
            self._verify = self.fast is not None and (known is None or known[0] != structure)
        self._structure = structure
        self.stats = {"steps": 0, "prefill_chunks": 0, "tokens_out": 0, "tokens_in": 0}

    # -- the public side ---------------------------------------------------------------------------------------
    @property
    def memory_bytes(self) -> int:
        """Bytes of the preallocated KV cache (keys and values of every slot)."""
        return 2 * self.cache.k.numel() * self.cache.k.element_size()

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def batch_size(self) -> int:
        return len(self.running)

    def start(self) -> Scheduler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lmlab-scheduler", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def check_prompt(self, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
        """The prompt's ids, checked: not empty, in the vocabulary, and with ``max_new_tokens`` within the
        context (the error gives both numbers)."""
        ids = _check_ids("prompt", list(prompt), self.vocab_size)
        if not ids:
            raise LmlabError("the prompt is empty: give at least one token")
        if len(ids) + max_new_tokens > self.block_size:
            raise LmlabError(
                f"this model's maximum context length is {self.block_size} tokens, but {len(ids) + max_new_tokens} "
                f"were requested ({len(ids)} in the prompt, {max_new_tokens} for the completion); shorten the "
                "prompt or ask for fewer tokens"
            )
        return ids

    def submit(
        self,
        prompt: Sequence[int],
        request: GenerationRequest | None = None,
        *,
        stop_token_ids: Sequence[int] = (),
        loop: asyncio.AbstractEventLoop | None = None,
        sink: asyncio.Queue | None = None,
        tag: int = 0,
        ignore_eos: bool = False,
    ) -> Handle:
        """Queue one prompt (token ids). Raises ``LmlabError`` for a bad prompt and ``QueueFull`` when
        ``max_queue`` requests already wait. ``loop``: deliver the events to this asyncio loop. ``ignore_eos``:
        do not stop at end-of-text (for load tests that need exact output lengths). ``sink``: an asyncio queue that
        gets ``(tag, event)`` instead of the handle's own queue (the n choices of one request share one)."""
        request = as_request(request)
        ids = self.check_prompt(prompt, request.max_new_tokens)
        stops = set(_check_ids("stop_token_ids", [*request.stop_token_ids, *stop_token_ids], self.vocab_size))
        if self.eos_id is not None and not ignore_eos:
            stops.add(self.eos_id)
        if request.stop and self.detokenizer is None:
            raise LmlabError("stop strings need a detokenizer")
        seed = request.sampling.seed
        live = _Live(
            handle=Handle(next(self._ids), ids, loop, sink, tag),
            request=request,
            stop_ids=stops,
            detok=self.detokenizer(request.stop, ids) if self.detokenizer is not None else None,
            gen=make_generator(None if seed is None else _nth_seed(seed, 0), self.device),
            ids=list(ids),
        )
        with self._wake:
            if self.failure is not None:
                raise LmlabError(f"the scheduler stopped: {self.failure}")
            free = self.max_batch - len(self.running) - len(self.joining)
            if len(self.waiting) >= self.max_queue + max(0, free):
                raise QueueFull(
                    f"{self.max_batch} requests are running and {len(self.waiting)} are waiting; try again shortly"
                )
            self.waiting.append(live)
            self.stats["tokens_in"] += len(ids)
            self._wake.notify()
        return live.handle

    # -- the thread -------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._wake:
                        while not self._stop and not (self.running or self.joining or self.waiting):
                            self._wake.wait()
                        if self._stop:
                            break
                        while self.waiting and len(self.running) + len(self.joining) < self.max_batch:
                            self.joining.append(self.waiting.popleft())
                        cancelled_waiting = [r for r in self.waiting if r.handle.cancelled]
                        for r in cancelled_waiting:
                            self.waiting.remove(r)
                    for r in cancelled_waiting:
                        self._finish(r, TokenEvent(r.handle.id, -1, finish_reason="cancelled"))
                    self._drop_cancelled()
                    budget = self.chunk  # prompt tokens per step: the most a running stream waits for them
                    while self.joining and budget > 0 and len(self.running) < self.max_batch:
                        budget -= self._prefill_chunk(budget)
                    if self.running:
                        self._decode()
                    self._flush()
        except BaseException as e:  # noqa: BLE001 - every reader must hear of it, then the thread ends
            self._flush()
            self.failure = e
            for r in [*self.running, *self.joining, *self.waiting]:
                r.handle._put(e)
            return
        for r in [*self.running, *self.joining, *self.waiting]:
            self._finish(r, TokenEvent(r.handle.id, -1, finish_reason="cancelled"))
        self._flush()

    def _finish(self, r: _Live, ev: TokenEvent) -> None:
        r.done = True
        self._outbox.append((r.handle, ev))

    def _flush(self) -> None:
        if self._outbox:
            out, self._outbox = self._outbox, []
            _post(out)

    def _drop_cancelled(self) -> None:
        for r in [r for r in self.joining if r.handle.cancelled]:
            self.joining.remove(r)
            self._finish(r, TokenEvent(r.handle.id, -1, finish_reason="cancelled"))
        gone = [i for i, r in enumerate(self.running) if r.handle.cancelled]
        for r in (self.running[i] for i in gone):
            self._finish(r, TokenEvent(r.handle.id, -1, finish_reason="cancelled"))
        if gone:
            self._remove_slots(gone)

    def _remove_slots(self, slots: list[int]) -> None:
        """Free the slots: the last running rows move into the holes, so running rows stay at 0..n-1."""
        for s in sorted(slots, reverse=True):
            last = len(self.running) - 1
            if s != last:
                self.cache.k[:, s].copy_(self.cache.k[:, last])
                self.cache.v[:, s].copy_(self.cache.v[:, last])
                self.mask[s] = self.mask[last]
                self.pos[s] = self.pos[last]
                self.tokens[s] = self.tokens[last]
                self.start_of[s] = self.start_of[last]
                self.running[s] = self.running[last]
            self.running.pop()
        if not self.running:
            self.cache.length = 0

    # prefill ----------------------------------------------------------------------------------------------
    def _prefill_chunk(self, budget: int) -> int:
        """Prefill up to ``budget`` tokens of the first joining prompt; returns how many."""
        r = self.joining[0]
        n = len(r.ids)
        if r.cache is None:
            r.cache = KVCache(self.cfg.n_layer, 1, self.cfg.kv_heads, n, self.cfg.head_dim, device=self.device,
                              dtype=self.cache.k.dtype)  # fmt: skip
        start = r.prefilled
        end = min(n, start + budget)
        x = torch.tensor([r.ids[start:end]], dtype=torch.long, device=self.device)
        logits = self.model(x, cache=r.cache).logits[:, -1]  # (1, V)
        r.prefilled = end
        self.stats["prefill_chunks"] += 1
        if end < n:
            return end - start
        self.joining.popleft()
        if (
            r.request.sampling.repetition_penalty != 1
            or r.request.sampling.frequency_penalty != 0
            or (r.request.sampling.presence_penalty != 0)
        ):
            r.counts = token_counts([r.ids], self.vocab_size, self.device)[0]
        token, ev = self._choose([r], logits)[0]
        if ev.finish_reason is not None:
            r.cache = None
        else:
            self._insert(r, token)
        return end - start

    def _insert(self, r: _Live, token: int) -> None:
        """Copy a prefilled prompt's keys and values into a free slot, ending at the shared write index."""
        n = r.cache.length  # the prompt; the token just sampled is fed at the next step
        t = self.cache.length
        if not self.running:
            t = self.cache.length = n
        elif n > t:  # the new prompt is longer than the write index: move every row right to make room before it
            self._shift(-(n - t))
            t = self.cache.length
        if t + 1 > self.max_len:
            self._compact()
            t = self.cache.length
        s = len(self.running)
        self.cache.k[:, s, :, t - n : t].copy_(r.cache.k[:, 0, :, :n])
        self.cache.v[:, s, :, t - n : t].copy_(r.cache.v[:, 0, :, :n])
        self.mask[s].zero_()
        self.mask[s, t - n : t] = True
        self.pos[s, 0] = n
        self.tokens[s] = token
        self.start_of[s] = t - n
        r.cache = None
        self.running.append(r)

    def _shift(self, by: int) -> None:
        """Move every running row ``by`` positions left (negative: right) in the shared cache."""
        t, n = self.cache.length, len(self.running)
        k, v, m = self.cache.k, self.cache.v, self.mask
        if by > 0:
            k[:, :n, :, : t - by] = k[:, :n, :, by:t].clone()
            v[:, :n, :, : t - by] = v[:, :n, :, by:t].clone()
            m[:n, : t - by] = m[:n, by:t].clone()
            m[:n, t - by :] = False
        else:
            d = -by
            k[:, :n, :, d : t + d] = k[:, :n, :, :t].clone()
            v[:, :n, :, d : t + d] = v[:, :n, :, :t].clone()
            m[:n, d : t + d] = m[:n, :t].clone()
            m[:n, :d] = False
        self.start_of[:n] = [s - by for s in self.start_of[:n]]
        self.cache.length = t - by

    def _compact(self) -> None:
        oldest = min(self.start_of[: len(self.running)])
        if oldest <= 0:
            raise LmlabError("internal: the batch cache is full and no row can move (a row outgrew block_size)")
        self._shift(oldest)

    # decode -----------------------------------------------------------------------------------------------
    def _decode(self) -> None:
        n = len(self.running)
        oldest = min(self.start_of[:n])
        if self.cache.length + 1 > self.max_len or (oldest >= 16 and 8 * oldest >= self.cache.length):
            # every row attends over the shared length, padding included, and reading the cache is most of a big
            # batch's step: move the rows left as soon as an eighth of it is padding before every row (the copy
            # costs about two steps' reads and pays for itself within sixteen)
            self._compact()
        t = self.cache.length
        self.mask[:n, t] = True
        view = _View(self.cache.k[:, :n], self.cache.v[:, :n], t)
        x = self.tokens[:n].view(n, 1)
        pos, key_mask = self.pos[:n], self.mask[:n, : t + 1]
        if not any(self.start_of[:n]):  # no row is padded (one stream, say): every row is at position t, unmasked
            pos = key_mask = None
        if self._verify:
            logits = self._checked_step(x, view, pos, key_mask)
        elif self.fast is not None:
            logits = self.fast(x, view, pos, key_mask)
        else:
            logits = self.model(x, cache=view, padding_mask=key_mask, positions=pos).logits[:, -1]
        self.cache.length = t + 1
        self.pos[:n] += 1
        self.stats["steps"] += 1
        rows = list(self.running)
        chosen = self._choose(rows, logits)
        finished = []
        for i, (token, ev) in enumerate(chosen):
            if ev.finish_reason is not None:
                finished.append(i)
            else:
                self.tokens[i] = token
        if finished:
            self._remove_slots(finished)

    def _checked_step(self, x: Tensor, view: _View, pos: Tensor, key_mask: Tensor) -> Tensor:
        """The first decode step both ways: keep the fast step only if it agrees with model.forward."""
        self._verify = False
        length = view.length
        try:
            fast = self.fast(x, view, pos, key_mask)
        except Exception:  # noqa: BLE001 - any failure means: do not use the fast step for this model
            fast = None
        view.length = length
        ref = self.model(x, cache=view, padding_mask=key_mask, positions=pos).logits[:, -1]
        ok = fast is not None and fast.shape == ref.shape
        ok = ok and torch.allclose(fast.float(), ref.float(), rtol=1e-3, atol=1e-3 * float(ref.abs().max()) + 1e-6)
        _VERIFIED[self.model] = (self._structure, ok)
        if not ok:
            self.fast = None
            warnings.warn("lmlab's fast decode step does not match this model's forward; using model.forward",
                          RuntimeWarning, stacklevel=2)  # fmt: skip
        view.length = length  # the caller advances it
        return ref

    def _choose(self, rows: list[_Live], logits: Tensor) -> list[tuple[int, TokenEvent]]:
        """Sample each row's next token with its own parameters and generator; emit its event."""
        raw = logits.float()
        logits = raw
        if self.banned:
            logits = raw.index_fill(1, torch.tensor(self.banned, device=self.device), float("-inf"))
            for b, r in enumerate(rows):  # a row's own stop tokens (a chat model's <|end|>) stay writable
                allowed = [i for i in r.stop_ids if i in self.banned]
                if allowed:
                    logits[b, allowed] = raw[b, allowed]
        params = [r.request.sampling for r in rows]
        gens = [r.gen for r in rows]
        tokens = None
        first = params[0]
        if all(_plain(p) and (p.temperature, p.top_k) == (first.temperature, first.top_k) for p in params):
            tokens = _sample_plain(logits, first.temperature, first.top_k, gens)
        if tokens is None:
            counts = None
            if any(r.counts is not None for r in rows):
                counts = torch.stack([r.counts if r.counts is not None else torch.zeros_like(logits[0]) for r in rows])
            tokens, _ = sample_next(logits, params, gens, counts=counts)
        ids = tokens.tolist()
        want_lp = any(r.request.logprobs for r in rows)
        n_top = max(r.request.top_logprobs for r in rows)
        lp = tops = None
        if want_lp:
            lp = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None]).squeeze(1).tolist()
        if n_top:
            top_ids, top_vals = _top_logprobs(logits, n_top)
            tops = [list(zip(i, v)) for i, v in zip(top_ids.tolist(), top_vals.tolist())]
        out = []
        for b, r in enumerate(rows):
            t = ids[b]
            r.n_new += 1
            self.stats["tokens_out"] += 1
            req = r.request
            ev = TokenEvent(
                r.handle.id,
                t,
                logprob=lp[b] if lp is not None and req.logprobs else None,
                top_logprobs=tops[b][: req.top_logprobs] if tops is not None and req.top_logprobs else None,
            )
            take_token(ev, r.stop_ids, r.ids, r.detok, r.n_new, req.max_new_tokens)
            if r.counts is not None and ev.stop != t:
                r.counts[t] += 1
            if ev.finish_reason is not None:
                r.done = True
            self._outbox.append((r.handle, ev))
            out.append((t, ev))
        return out
