"""Translation with an encoder–decoder run: load it, encode sources, greedy or beam search, decode
(``lmlab translate``, ``lmlab.translate``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmlab.errors import LmlabError


@dataclass
class TranslationRun:
    """A loaded seq2seq run: the model in eval mode and its source and target tokenizers (one object if joint)."""

    path: Path
    model: torch.nn.Module
    src_tokenizer: Any
    tgt_tokenizer: Any
    config: dict[str, Any]
    checkpoint: Path


def load_translation_run(
    run: str | Path, checkpoint: str | None = None, device: str | torch.device = "cpu"
) -> TranslationRun:
    """Load a seq2seq run; a language-model run is refused with the command that fits it."""
    from lmlab.data.tokenizer import load_tokenizer
    from lmlab.runs import load, read_config

    run = Path(run)
    arch = read_config(run)["model"].get("arch", "gpt")
    if arch != "seq2seq":
        raise LmlabError(
            f"{run} is a {arch} language model, not a translation run; generate text from it with lmlab sample {run}"
        )
    loaded = load(run, checkpoint=checkpoint, device=device)
    if loaded.tokenizer is None:
        raise LmlabError(f"run {run} has no tokenizer.json; copy the dataset's tokenizer files into it")
    src_file = run / "tokenizer.src.json"
    src_tok = load_tokenizer(src_file) if src_file.is_file() else loaded.tokenizer
    if loaded.model.config.src_vocab_size and src_tok.vocab_size != loaded.model.config.src_vocab_size:
        raise LmlabError(
            f"run {run}: the source tokenizer has {src_tok.vocab_size} tokens but the model's source vocabulary is "
            f"{loaded.model.config.src_vocab_size}; copy the dataset's tokenizer.src.json into the run"
        )
    return TranslationRun(run, loaded.model, src_tok, loaded.tokenizer, loaded.config, loaded.checkpoint)


@torch.no_grad()
def translate_ids(
    model: torch.nn.Module,
    sources: Sequence[Sequence[int]],
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    beam: int = 4,
    length_penalty: float = 1.0,
    max_new_tokens: int = 0,
    batch_size: int = 64,
) -> list[list[int]]:
    """Translations (ids without BOS/EOS) of source id lists, each at most block_size - 1 tokens long.

    Sources are decoded in batches of similar length (sorted, then restored to the input order).
    """
    from lmlab.data.loader import collate
    from lmlab.generation.beam import beam_search, greedy_search

    if beam < 1:
        raise LmlabError(f"--beam must be at least 1, got {beam}")
    if batch_size < 1:
        raise LmlabError(f"--batch-size must be at least 1, got {batch_size}")
    block = model.config.block_size
    device = next(model.parameters()).device
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: list[list[int]] = [[] for _ in sources]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        srcs = [sources[i] for i in chunk]
        batch = collate(
            srcs, [[]] * len(srcs), bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, max_len=block, device=device
        )
        # a bound per sentence, so that its translation does not depend on the batch it lands in
        limit = [min(max_new_tokens or 2 * len(x) + 10, block) for x in srcs]
        if beam == 1:
            hyps = greedy_search(model, batch.src, batch.src_mask, bos_id=bos_id, eos_id=eos_id, max_new_tokens=limit)
        else:
            hyps = beam_search(
                model, batch.src, batch.src_mask, beam=beam, bos_id=bos_id, eos_id=eos_id, max_new_tokens=limit,
                length_penalty=length_penalty,
            )  # fmt: skip
        for i, h in zip(chunk, hyps):
            out[i] = h
    return out


def translate_texts(
    model: torch.nn.Module,
    src_tokenizer: Any,
    tgt_tokenizer: Any,
    texts: Sequence[str],
    *,
    beam: int = 4,
    length_penalty: float = 1.0,
    max_new_tokens: int = 0,
    batch_size: int = 64,
    long: str = "truncate",
    names: Sequence[str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[str]:
    """Translate ``texts`` with a loaded model. A source longer than block_size - 1 tokens (room for EOS) is
    cut with a warning (``long="truncate"``) or refused (``"error"``); ``names`` says where each text came
    from in those messages. Empty texts translate to empty strings."""
    if long not in ("truncate", "error"):
        raise LmlabError(f"--long must be truncate or error, got {long!r}")
    limit = model.config.block_size - 1
    ids = src_tokenizer.encode_batch(list(texts)) if texts else []
    for i, x in enumerate(ids):
        if len(x) > limit:
            where = names[i] if names is not None else f"source {i + 1}"
            msg = f"{where} is {len(x)} tokens, longer than the model's limit of {limit} (block_size - 1)"
            if long == "error":
                raise LmlabError(f"{msg}; shorten it, or pass --long truncate to cut it")
            (warn or _stderr)(f"warning: {msg}; translating its first {limit} tokens only")
            ids[i] = x[:limit]
    keep = [i for i, x in enumerate(ids) if x]
    hyps = translate_ids(
        model,
        [ids[i] for i in keep],
        bos_id=tgt_tokenizer.bos_id,
        eos_id=tgt_tokenizer.eos_id,
        pad_id=tgt_tokenizer.pad_id,
        beam=beam,
        length_penalty=length_penalty,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    out = [""] * len(ids)
    for i, h in zip(keep, hyps):
        out[i] = tgt_tokenizer.decode(h, skip_special_tokens=True).strip()
    return out


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def read_lines(file: str | Path) -> tuple[list[str], list[str]]:
    if str(file) == "-":
        lines = [line.rstrip("\r\n") for line in sys.stdin]
        return lines, [f"stdin:{i + 1}" for i in range(len(lines))]
    path = Path(file)
    if not path.is_file():
        raise LmlabError(f"--file {path} not found")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise LmlabError(f"--file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line, it does not start another
    return [line.removesuffix("\r") for line in lines], [f"{path.name}:{i + 1}" for i in range(len(lines))]
