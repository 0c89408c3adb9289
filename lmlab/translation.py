"""`lmlab translate RUN "I am cold."`: translate sentences with an encoder–decoder run.

(The module is not called ``translate`` so that importing it never hides the function
``lmlab.translate`` behind a module of the same name.)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import tyro

from lmlab.errors import LmlabError


@dataclass
class TranslateConfig:
    """Translate sentences with a translation (seq2seq) run: lmlab translate RUN "I am cold." [--file F] [--beam N]"""

    run: tyro.conf.Positional[str]  # run directory of a seq2seq model (lmlab train DATA seq2seq-base)
    text: tyro.conf.Positional[tuple[str, ...]] = ()  # sentences to translate, one argument each
    file: str | None = None  # translate this file line by line instead ("-" = standard input)
    beam: int = 4  # beam size; 1 = greedy search
    length_penalty: float = 1.0  # beam search ranks hypotheses by log p / length^this (0 = raw log p)
    max_new_tokens: int = 0  # longest translation in tokens; 0 = twice the source + 10, at most block_size
    long: Literal["truncate", "error"] = "truncate"  # a source longer than block_size: cut it (warning), or refuse
    batch_size: int = 64  # sentences decoded together
    checkpoint: str | None = None  # best, latest or step-N; default best, else latest
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps


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
    from lmlab.data.translation import collate
    from lmlab.generate.beam import beam_search, greedy_search

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


def translate(
    run: str | Path,
    text: str | Sequence[str] | None = None,
    *,
    file: str | Path | None = None,
    beam: int = 4,
    length_penalty: float = 1.0,
    max_new_tokens: int = 0,
    long: str = "truncate",
    batch_size: int = 64,
    checkpoint: str | None = None,
    device: str = "auto",
) -> str | list[str]:
    """Translate ``text`` (a sentence → a string; a list → a list) or every line of ``file`` (→ a list) with
    the seq2seq run ``run``. ``lmlab.translate("runs/seq2seq-base-eng-fra", "I am cold.")``"""
    from lmlab.runtime import pick_device

    if (text is None) == (file is None):
        raise LmlabError('give either sentences to translate or --file, not both: lmlab translate RUN "I am cold."')
    if file is not None:
        texts, names = _read_lines(file)
    else:
        texts = [text] if isinstance(text, str) else list(text)
        names = [f"sentence {i + 1}" for i in range(len(texts))]
    tr = load_translation_run(run, checkpoint, pick_device(device))
    out = translate_texts(
        tr.model, tr.src_tokenizer, tr.tgt_tokenizer, texts, beam=beam, length_penalty=length_penalty,
        max_new_tokens=max_new_tokens, batch_size=batch_size, long=long, names=names,
    )  # fmt: skip
    return out[0] if isinstance(text, str) else out


def _read_lines(file: str | Path) -> tuple[list[str], list[str]]:
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


def cli(argv: list[str]) -> None:
    cfg = tyro.cli(
        TranslateConfig,
        args=argv,
        prog="lmlab translate",
        description=TranslateConfig.__doc__,
        config=(tyro.conf.PositionalMetavarFromFieldName,),
    )
    if cfg.file is None and not cfg.text:
        raise LmlabError('nothing to translate: give sentences (lmlab translate RUN "I am cold.") or --file FILE')
    if cfg.file is not None and cfg.text:
        raise LmlabError("give either sentences or --file, not both")
    out = translate(
        cfg.run, None if cfg.file is not None else list(cfg.text), file=cfg.file, beam=cfg.beam,
        length_penalty=cfg.length_penalty, max_new_tokens=cfg.max_new_tokens, long=cfg.long,
        batch_size=cfg.batch_size, checkpoint=cfg.checkpoint, device=cfg.device,
    )  # fmt: skip
    for line in out:
        print(line)
