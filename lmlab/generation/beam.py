"""Greedy and beam-search decoding for encoder–decoder models, batched, on token ids.

Both encode the sources once (``model.start``: encoder output and every decoder layer's
cross-attention keys/values) and then feed one target token per step through the decoder's KV
cache (``model.step``). Rows whose sentence is finished leave the batch, so a long sentence does not
keep the short ones' rows busy. ``model`` is any module with ``start(src, src_mask, max_len)`` →
cache with ``select(index)``, and ``step(tokens, cache)`` → logits: ``lmlab.models.seq2seq.Seq2Seq``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


@torch.no_grad()
def greedy_search(
    model: torch.nn.Module,
    src: Tensor,
    src_mask: Tensor | None = None,
    *,
    bos_id: int,
    eos_id: int,
    max_new_tokens: int | Sequence[int],
    use_cache: bool = True,
) -> list[list[int]]:
    """The most likely next token at every step, for each source row of ``src`` (B, S); EOS ends a row.

    ``max_new_tokens`` bounds every row, or each row by its own entry (so that a sentence's translation
    does not depend on the batch it is decoded in). Returns the generated ids without BOS/EOS, one list
    per source. ``use_cache=False`` re-runs the decoder over the whole prefix at every step (the
    reference that the cached path must equal).
    """
    B = src.size(0)
    limits = _limits(max_new_tokens, B)
    out: list[list[int]] = [[] for _ in range(B)]
    if max(limits, default=0) < 1:
        return out
    if not use_cache:
        return _greedy_uncached(model, src, src_mask, bos_id, eos_id, limits)
    cache = model.start(src, src_mask, max_len=max(limits))
    rows = torch.arange(B)  # source index of every live row
    tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)
    for t in range(max(limits)):
        nxt = model.step(tokens, cache).argmax(dim=-1)  # (b,)
        ended = nxt == eos_id
        for i, (r, tok, end) in enumerate(zip(rows.tolist(), nxt.tolist(), ended.tolist())):
            if not end:
                out[r].append(tok)
            if t + 1 >= limits[r]:
                ended[i] = True
        if bool(ended.any()):
            keep = (~ended).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            cache.select(keep)
            rows, nxt = rows[keep.cpu()], nxt[keep]
        tokens = nxt[:, None]
    return out


def _limits(max_new_tokens: int | Sequence[int], n: int) -> list[int]:
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * n
    limits = [int(m) for m in max_new_tokens]
    if len(limits) != n:
        raise ValueError(f"max_new_tokens has {len(limits)} entries for {n} sources")
    return limits


def _greedy_uncached(model, src, src_mask, bos_id, eos_id, limits) -> list[list[int]]:
    memory = model.encode(src, src_mask)
    prefix = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    for _ in range(max(limits)):
        hidden, _, _ = model.decode(prefix, memory, src_mask)
        nxt = model.lm_head(hidden[:, -1]).argmax(dim=-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        prefix = torch.cat([prefix, nxt[:, None]], dim=1)
        done |= nxt == eos_id
        if bool(done.all()):
            break
    out = []
    for row, limit in zip(prefix[:, 1:].tolist(), limits):
        out.append((row[: row.index(eos_id)] if eos_id in row else row)[:limit])
    return out


@torch.no_grad()
def beam_search(
    model: torch.nn.Module,
    src: Tensor,
    src_mask: Tensor | None = None,
    *,
    beam: int,
    bos_id: int,
    eos_id: int,
    max_new_tokens: int | Sequence[int],
    length_penalty: float = 1.0,
) -> list[list[int]]:
    """The best of ``beam`` hypotheses per source row of ``src`` (B, S), ranked by log p / length^length_penalty.

    Each step extends every live hypothesis by every token and keeps the 2·beam best candidates per
    sentence: those ending in EOS among the top ``beam`` become finished hypotheses (length counts the
    EOS), the best ``beam`` others live on. A sentence stops once it has ``beam`` finished hypotheses
    (early stopping), or at its ``max_new_tokens`` (one bound, or one per source), where its live
    hypotheses are finished as they are. ``beam=1`` is greedy search. Returns ids without BOS/EOS, one
    list per source.
    """
    if beam < 1:
        raise ValueError(f"beam must be at least 1, got {beam}")
    B, K = src.size(0), beam
    limits = _limits(max_new_tokens, B)
    if max(limits, default=0) < 1:
        return [[] for _ in range(B)]
    device = src.device
    cache = model.start(src, src_mask, max_len=max(limits))
    cache.select(torch.arange(B, device=device).repeat_interleave(K))  # K rows per sentence
    # all K beams start as the same empty hypothesis: only the first may be extended at step 0
    scores = torch.full((B, K), -math.inf, device=device)
    scores[:, 0] = 0.0
    history = torch.empty((B * K, 0), dtype=torch.long, device=device)
    tokens = torch.full((B * K, 1), bos_id, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    active = list(range(B))  # sentence of each live group of K rows

    for t in range(max(limits)):
        logp = torch.log_softmax(model.step(tokens, cache).float(), dim=-1)  # (b·K, V)
        V = logp.size(-1)
        cand = (scores[:, :, None] + logp.view(len(active), K, V)).view(len(active), K * V)  # (b, K·V)
        top_scores, top_idx = cand.topk(min(2 * K, K * V), dim=-1)  # (b, 2K), best first
        top_beam, top_tok = (top_idx // V).tolist(), (top_idx % V).tolist()
        top_scores_l = top_scores.tolist()
        keep_rows: list[int] = []
        keep_tok: list[int] = []
        keep_score: list[float] = []
        still: list[int] = []
        for g, sent in enumerate(active):
            last = t >= limits[sent] - 1
            alive: list[tuple[float, int, int]] = []
            for j, (s, b, tok) in enumerate(zip(top_scores_l[g], top_beam[g], top_tok[g])):
                if s == -math.inf:
                    break
                ended = tok == eos_id
                if (ended and j < K) or (last and not ended):
                    seq = history[g * K + b].tolist() + ([] if ended else [tok])
                    length = len(seq) + (1 if ended else 0)
                    finished[sent].append((s / max(length, 1) ** length_penalty, seq))
                elif not ended and len(alive) < K:
                    alive.append((s, g * K + b, tok))
            if last or len(finished[sent]) >= K or not alive:
                continue
            while len(alive) < K:  # fewer live candidates than beams (a tiny vocabulary): pad with dead rows
                alive.append((-math.inf, alive[0][1], alive[0][2]))
            still.append(sent)
            for s, row, tok in alive:
                keep_rows.append(row)
                keep_tok.append(tok)
                keep_score.append(s)
        if not still:
            break
        index = torch.tensor(keep_rows, dtype=torch.long, device=device)
        cache.select(index)
        tokens = torch.tensor(keep_tok, dtype=torch.long, device=device)[:, None]
        history = torch.cat([history.index_select(0, index), tokens], dim=1)
        scores = torch.tensor(keep_score, device=device).view(len(still), K)
        active = still

    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]
