"""Answering from retrieved passages: retrieve, put the passages and the question in one prompt, generate.

The prompt is one user message (``reader_prompt``): the passages, numbered, each with its title, then the
question; a chat run (an SFT reader) sees it through the chat template, a base run continues it after
"Answer:". Passages that do not fit the reader's context (``block_size`` minus the answer's tokens) are left out,
lowest-ranked first, and the last one kept is cut at the end. ``no_retrieval`` asks the question alone: the
closed-book answer to compare with.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.rag.dense import known_text
from lmlab.rag.index import Hit, Index


def reader_prompt(question: str, passages: list[str], titles: list[str] | None = None) -> str:
    """The reader's prompt: numbered passages (with titles), then the question. The one format the reader of
    ``lmlab experiment rag-facts`` is fine-tuned on."""
    titles = titles or [""] * len(passages)
    parts = [f"[{i}] {t + ': ' if t else ''}{' '.join(p.split())}" for i, (p, t) in enumerate(zip(passages, titles), 1)]
    head = "Answer the question from the passages.\n" + "\n".join(parts) + "\n\n" if parts else ""
    return f"{head}Question: {question}\nAnswer:"


@dataclass
class Answer:
    text: str
    hits: list[Hit] = field(default_factory=list)  # the passages the prompt held, best first


class _Reader:
    def __init__(self, run: str | Path, checkpoint: str | None, device: str) -> None:
        from lmlab.generation.chat import uses_template
        from lmlab.runs import check_generates_text, load, read_config
        from lmlab.runtime import pick_device

        check_generates_text(run, read_config(run), "rag ask")
        self.run = load(run, checkpoint=checkpoint, device=pick_device(device, "--device"))
        if self.run.tokenizer is None:
            raise LmlabError(f"{run} has no tokenizer.json: the reader must read text")
        self.template = uses_template(self.run.config)

    def fit(self, question: str, hits: list[Hit], max_new_tokens: int) -> tuple[str, list[Hit]]:
        """The longest prompt with the best passages that leaves room for the answer."""
        budget = self.run.model.config.block_size - max_new_tokens - (8 if self.template else 0)
        tok = self.run.tokenizer
        if budget < 8:
            raise LmlabError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the reader's "
                             f"context of {self.run.model.config.block_size} tokens")  # fmt: skip
        kept = list(hits)
        while True:
            prompt = reader_prompt(question, [h.chunk.text for h in kept], [h.chunk.title for h in kept])
            n = len(tok.encode(known_text(tok, prompt)))
            if n <= budget or not kept:
                break
            if len(kept) > 1:
                kept.pop()
                continue
            words = kept[0].chunk.text.split()  # one passage still too long: cut its end
            over = max(1, (n - budget) // 2)
            if len(words) <= over:
                kept = []
                continue
            c = kept[0].chunk
            kept = [Hit(kept[0].rank, kept[0].score, type(c)(**{**c.__dict__, "text": " ".join(words[:-over])}))]
        if n > budget:
            raise LmlabError(f"the question alone ({n} tokens) does not fit the reader's context with "
                             f"--max-new-tokens {max_new_tokens}")  # fmt: skip
        return known_text(tok, prompt), kept

    def answer_many(self, prompts: list[str], max_new_tokens: int, batch_size: int = 32) -> list[str]:
        """Greedy answers to many prompts (from ``fit``), batched through the engine. A chat reader's reply ends at
        <|end|>, a base reader's at the end of its line."""
        from lmlab.data.tokenizer import END
        from lmlab.generation.chat import chat_prompt, text_prompt
        from lmlab.generation.engine import generate_ids
        from lmlab.generation.request import GenerationRequest
        from lmlab.generation.text import detokenizer_for

        tok, model = self.run.tokenizer, self.run.model
        budget = model.config.block_size - max_new_tokens
        if self.template:
            ids = [chat_prompt(tok, [{"role": "user", "content": p}], budget)[0] for p in prompts]
            request = GenerationRequest(temperature=0.0, max_new_tokens=max_new_tokens,
                                        stop_token_ids=(tok.token_to_id(END),))  # fmt: skip
        else:
            ids = [text_prompt(tok, [{"role": "user", "content": p}], budget) for p in prompts]
            request = GenerationRequest(temperature=0.0, max_new_tokens=max_new_tokens, stop=("\n",))
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
        out = [""] * len(ids)
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            done = generate_ids(model, [ids[i] for i in rows], request, detokenizer=detokenizer_for(tok))
            for i, c in zip(rows, done):
                out[i] = c.text.strip()
        return out

    def stream(self, prompt: str, request) -> Iterator[str]:
        from lmlab.generation.chat import stream_reply

        return stream_reply(self.run.model, self.run.tokenizer, [{"role": "user", "content": prompt}], request,
                            template=self.template)  # fmt: skip


def ask(index: str | Path | Index | None, run: str | Path, question: str, *, k: int = 3, mode: str = "bm25",
        no_retrieval: bool = False, max_new_tokens: int = 32, checkpoint: str | None = None, device: str = "auto",
        on_text=None, **options) -> Answer:  # fmt: skip
    """Retrieve ``k`` passages for ``question`` from ``index``, answer with the reader ``run`` (greedy unless
    ``options`` say otherwise: ``GenerationRequest`` fields). ``on_text`` receives the answer as it is written."""
    from lmlab.generation.request import GenerationRequest

    if not isinstance(question, str) or not question.strip():
        raise LmlabError("the question must be a non-empty string")
    request = GenerationRequest(max_new_tokens=max_new_tokens, **{"temperature": 0.0, **options})
    hits: list[Hit] = []
    if not no_retrieval:
        if index is None:
            raise LmlabError("give an index, or no_retrieval for the closed-book answer")
        idx = index if isinstance(index, Index) else Index.load(index)
        hits = idx.search(question, k=k, mode=mode)
    reader = _Reader(run, checkpoint, device)
    prompt, hits = reader.fit(question, hits, max_new_tokens)
    pieces = []
    for piece in reader.stream(prompt, request):
        pieces.append(piece)
        if on_text is not None:
            on_text(piece)
    return Answer("".join(pieces).strip(), hits)
