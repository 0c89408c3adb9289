"""Dense retrieval: each chunk as the mean of an lmlab run's final hidden states over its tokens, L2-normalized.
The run is any GPT run, or one trained for it with ``lmlab rag train-encoder`` (``lmlab finetune RUN encoder``:
contrastive, on question-passage pairs).

Stored as a float16 matrix (``dense.npy``, chunks × width) beside the BM25 index; a query is embedded the same way
and scored against every chunk by one matrix product (torch, no FAISS: at 100k chunks × 768 the product takes
milliseconds on a CPU, and an exact search needs no training or tuning). The run that embedded the chunks, and
its tokenizer's sha256, are in the manifest: queries must be embedded by the same run.

Hybrid search fuses the BM25 and dense rankings by reciprocal rank fusion (Cormack et al. 2009): a chunk's score
is the sum over the rankings of 1 / (rrf_k + rank), rrf_k = 60 by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lmlab.errors import LmlabError


def known_text(tokenizer, text: str) -> str:
    """``text`` without the characters a char vocabulary cannot write (any other tokenizer writes them all)."""
    unknown = set(tokenizer.unknown_chars(text))
    return "".join(ch for ch in text if ch not in unknown) if unknown else text


def text_ids(tokenizer, text: str, block: int | None) -> list[int]:
    """A text's token ids for embedding, at most ``block``; an empty text is one end-of-text token."""
    text = known_text(tokenizer, text)
    ids = tokenizer.encode(text) if text else []
    return ids[:block] or [tokenizer.eos_id or 0]


def pool(model: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C) unit vectors: the mean of the model's final hidden states over each row's real tokens (``mask``).
    The one embedding of texts, used to index, to search and to train an encoder (``lmlab finetune RUN encoder``)."""
    h = model(tokens, padding_mask=mask).hidden_states.float()  # (B, T, C)
    m = mask[..., None].float()
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)


class Embedder:
    """Mean-pooled final hidden states of a GPT run, as unit vectors."""

    def __init__(self, run: str | Path, checkpoint: str | None = None, device: str = "cpu") -> None:
        from lmlab import runs

        cfg = runs.read_config(run)
        if cfg["model"].get("arch") != "gpt":
            raise LmlabError(f"--dense {run}: dense retrieval embeds with a GPT run, this one is "
                             f"{cfg['model'].get('arch')!r}")  # fmt: skip
        loaded = runs.load(run, checkpoint=checkpoint, device=device)
        if loaded.tokenizer is None:
            raise LmlabError(f"--dense {run}: the run has no tokenizer.json")
        self.run, self.model, self.tokenizer = str(Path(run).resolve()), loaded.model.eval(), loaded.tokenizer
        self.tokenizer_sha256 = cfg.get("tokenizer_sha256", "")
        self.block = self.model.config.block_size
        self.width = self.model.config.n_embd

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(len(texts), width) float32 unit vectors."""
        out = np.zeros((len(texts), self.width), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: less padding
        dev = next(self.model.parameters()).device
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            seqs = [text_ids(self.tokenizer, texts[i], self.block) for i in idx]
            T = max(map(len, seqs))
            tokens = torch.tensor([q + [0] * (T - len(q)) for q in seqs], device=dev)
            mask = torch.tensor([[1] * len(q) + [0] * (T - len(q)) for q in seqs], device=dev, dtype=torch.bool)
            out[idx] = pool(self.model, tokens, mask).cpu().numpy()
        return out


def dense_top(m: torch.Tensor, query: np.ndarray, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """The top-k rows of ``m`` (chunks × width, float32) by inner product with each query (q × width)."""
    scores = torch.from_numpy(query).float() @ m.T  # (q, chunks)
    vals, ids = scores.topk(min(k, m.size(0)), dim=1)
    return ids.tolist(), vals.tolist()


def rrf(rankings: Sequence[Sequence[int]], k: int, rrf_k: int = 60) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of several rankings (lists of ids, best first): the top ``k`` (id, score)."""
    score: dict[int, float] = {}
    for ranking in rankings:
        for rank, i in enumerate(ranking, 1):
            score[i] = score.get(i, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(score.items(), key=lambda x: (-x[1], x[0]))[:k]


def train_encoder(run: str | Path, pairs: str | Path, *, out: str | Path | None = None, **options):
    """Train a retrieval encoder from the GPT run ``run`` on the (question, passage) pairs in ``pairs`` (JSONL or
    SQuAD JSON): ``lmlab.finetune(run, "encoder", pairs, ...)``, the contrastive objective of the one trainer;
    ``options`` are its options (``temperature``, ``epochs``, ``val``, ``lr``, ``batch_size`` ...). Index with
    ``Index.build(sources, dense=out)``."""
    from lmlab.api import finetune

    return finetune(run, "encoder", pairs, out=out, **options)
