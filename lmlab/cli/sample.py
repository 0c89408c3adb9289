"""`lmlab sample RUN --prompt "..."`: text from a trained run, streamed to the terminal."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import tyro

from lmlab.cli import parse
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    from lmlab.generation.request import GenerationRequest

SEPARATOR = "-" * 40


@dataclass
class SampleConfig:
    """Sample text from a trained run: continue a prompt (or start a new document) and print the result.
    One sample streams to the terminal as it is written; several are drawn as one batch."""

    run: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="RUN")]  # run directory
    prompt: str = ""  # text to continue; empty = start a new document (the <|eos|> token)
    prompt_file: str | None = None  # read the prompt from this UTF-8 file instead of --prompt
    num_samples: int = 1  # samples to draw; more than one are generated as one batch
    max_new_tokens: int = 256  # tokens to generate per sample
    temperature: float = 1.0  # divide the logits by this; 0 = greedy (always the most likely token)
    top_k: int = 0  # sample from the k most likely tokens only; 0 = off
    top_p: float = 1.0  # sample from the smallest set of tokens whose probability reaches p; 1 = off
    min_p: float = 0.0  # drop tokens less likely than min_p times the most likely one; 0 = off
    repetition_penalty: float = 1.0  # > 1 makes tokens already in the text less likely; 1 = off
    seed: int | None = None  # sample i uses seed + i, so a seed reproduces the samples; unset = new ones each run
    stop: tuple[str, ...] = ()  # end a sample at any of these strings, not printed (\n is a newline, \t a tab)
    echo: bool = True  # print the prompt before its continuation
    checkpoint: str | None = None  # best, latest or step-N; default best, else latest
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps


def _check(cfg: SampleConfig) -> tuple[str, GenerationRequest]:
    """Refuse bad options before loading anything; returns (the --prompt text, the request they make)."""
    from lmlab.generation.request import GenerationRequest

    if cfg.max_new_tokens < 1:
        raise LmlabError(f"--max-new-tokens must be at least 1, got {cfg.max_new_tokens}")
    if cfg.num_samples < 1:
        raise LmlabError(f"--num-samples must be at least 1, got {cfg.num_samples}")
    if cfg.prompt_file is not None and cfg.prompt:
        raise LmlabError("give the prompt with --prompt or with --prompt-file, not both")
    options = dict(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        min_p=cfg.min_p,
        repetition_penalty=cfg.repetition_penalty,
        seed=cfg.seed,
        stop=[unescape(s) for s in cfg.stop],
    )
    try:
        request = GenerationRequest(**options)
    except LmlabError as e:  # name the option as it is typed
        msg = str(e)
        for name in options:
            msg = msg.replace(f"{name} must", f"--{name.replace('_', '-')} must", 1)
        raise LmlabError(msg) from None
    return cfg.prompt, request


def unescape(s: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\`` typed in a shell argument as the characters they stand for."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], s)


def read_prompt_file(path: str) -> str:
    """The text of a prompt file, with a one-line error when it cannot be read."""
    p = Path(path)
    if not p.is_file():
        raise LmlabError(f"prompt file {p} not found")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LmlabError(f"prompt file {p} is not UTF-8 text") from None


def load_for_generation(run: str, checkpoint: str | None, device: str, verb: str = "sample"):
    """(model, tokenizer) of a run, or a one-line error saying what is missing."""
    from lmlab.runs import check_generates_text, load, read_config
    from lmlab.runtime import pick_device

    check_generates_text(run, read_config(run), verb)
    loaded = load(run, checkpoint=checkpoint, device=pick_device(device))
    if loaded.tokenizer is None:
        raise LmlabError(f"{run} has no tokenizer.json; copy the dataset's tokenizer.json into the run directory")
    return loaded.model, loaded.tokenizer


def sample(cfg: SampleConfig, out: TextIO | None = None) -> list[str]:
    """Run ``lmlab sample``: print the samples to ``out`` (default stdout) and return their texts
    (the continuations, without the prompt)."""
    from lmlab.generation.text import generate_text, stream_text

    out = out or sys.stdout
    prompt, request = _check(cfg)
    if cfg.prompt_file is not None:
        prompt = read_prompt_file(cfg.prompt_file)
    model, tok = load_for_generation(cfg.run, cfg.checkpoint, cfg.device)
    head = prompt if cfg.echo else ""
    if cfg.num_samples == 1:
        notes: list[str] = []  # said after the streamed text, so they do not land in the middle of it
        pieces = stream_text(model, tok, prompt, request, on_notice=notes.append)  # checks arguments first
        out.write(head)
        out.flush()
        texts = []
        for piece in pieces:
            texts.append(piece)
            out.write(piece)
            out.flush()
        out.write("\n")
        out.flush()
        for note in notes:
            _note(note)
        return ["".join(texts)]
    texts = generate_text(model, tok, [prompt] * cfg.num_samples, request, on_notice=_note)
    for i, text in enumerate(texts):
        if i:
            out.write(SEPARATOR + "\n")
        out.write(head + text + "\n")
    out.flush()
    return texts


def _note(msg: str) -> None:
    print(f"lmlab: note: {msg}", file=sys.stderr)


def main(argv: list[str]) -> None:
    cfg = parse(SampleConfig, args=argv, prog="lmlab sample", description=SampleConfig.__doc__)
    sample(cfg)
