"""The verb table: ``lmlab VERB [options]``. Each verb is a module with a ``cli(argv)`` function
that parses its config (with tyro, from the config dataclass) and calls the Python API."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

from lmlab import __version__
from lmlab.errors import LmlabError, did_you_mean


@dataclass(frozen=True)
class Verb:
    module: str  # module with a cli(argv: list[str]) -> None function
    summary: str  # one line for `lmlab --help`


VERBS: dict[str, Verb] = {
    "prepare": Verb("lmlab.data.prepare", "tokenize a corpus (char | bpe | word) into train/val token shards"),
    "train": Verb("lmlab.train.trainer", "train a model (gpt | rnn | lstm) on a prepared dataset, or resume a run"),
    "plot": Verb("lmlab.train.plot", "draw the train/val curves of several runs in one PNG"),
    "sample": Verb("lmlab.generate.cli_sample", "sample text from a trained run, streaming it to the terminal"),
    "chat": Verb("lmlab.generate.cli_chat", "talk to a trained run in the terminal (a base model continues your text)"),
    "presets": Verb("lmlab.cli_presets", "list the named presets and their shapes"),
    "import-hf": Verb("lmlab.models.hf_import", "read a Hugging Face GPT-2 checkpoint directory into a run"),
    "export-hf": Verb("lmlab.models.hf_export", "write a GPT-2-shaped run as a Hugging Face checkpoint"),
    "attention": Verb("lmlab.models.attention_map", "draw every head's attention weights on a text as a PNG"),
    "translate": Verb("lmlab.translation", "translate sentences or a file with a seq2seq run (greedy or beam search)"),
    "eval": Verb("lmlab.evaluation", "score a run on a split: BLEU, chrF and loss (translation) or loss (LM)"),
}


def _usage() -> str:
    width = max(map(len, VERBS))
    lines = [
        f"lmlab {__version__}: build language models from scratch.",
        "",
        "usage: lmlab VERB [options]      (lmlab VERB --help for a verb's options)",
        "",
        "verbs:",
    ]
    lines += [f"  {name:<{width}}  {verb.summary}" for name, verb in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    if argv[0] in ("-V", "--version"):
        print(f"lmlab {__version__}")
        return
    name = argv[0]
    verb = VERBS.get(name)
    try:
        if verb is None:
            raise LmlabError(f"unknown verb {name!r}{did_you_mean(name, VERBS)}; `lmlab --help` lists the verbs")
        importlib.import_module(verb.module).cli(argv[1:])
    except LmlabError as e:
        print(f"lmlab {name}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"lmlab {name}: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
