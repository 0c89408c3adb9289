"""The command line: ``lmlab VERB [options]``. Each verb is a module of this package with a ``main(argv)``
function that parses its config (with tyro, from a config dataclass), calls the Python API (``lmlab.api``)
and prints the result. Verb modules are imported only when their verb runs, so ``lmlab --help`` is fast."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

from lmlab import __version__
from lmlab.errors import LmlabError, did_you_mean


@dataclass(frozen=True)
class Verb:
    module: str  # module with a main(argv: list[str]) -> None function
    summary: str  # one line for `lmlab --help`


VERBS: dict[str, Verb] = {
    "prepare": Verb("lmlab.cli.prepare", "tokenize a corpus (char | bpe | word) into train/val token shards"),
    "train": Verb("lmlab.cli.train", "train a model (gpt | rnn | lstm | seq2seq) on a prepared dataset, or resume"),
    "finetune": Verb("lmlab.cli.finetune", "fine-tune a run into a child run: classify, sft, reward, dpo, ppo or grpo"),
    "score": Verb("lmlab.cli.score", "print the reward of responses to a prompt under a reward-model run"),
    "classify": Verb("lmlab.cli.classify", "label texts with a fine-tuned classifier run, with class probabilities"),
    "merge": Verb("lmlab.cli.merge", "fold a LoRA run's adapters into its weights: a standalone run"),
    "plot": Verb("lmlab.cli.plot", "draw the train/val curves of several runs in one PNG"),
    "sample": Verb("lmlab.cli.sample", "sample text from a trained run, streaming it to the terminal"),
    "chat": Verb("lmlab.cli.chat", "talk to a trained run in the terminal (a base model continues your text)"),
    "presets": Verb("lmlab.cli.presets", "list the named presets and their shapes"),
    "import-hf": Verb("lmlab.cli.import_hf", "read a Hugging Face GPT-2 checkpoint directory into a run"),
    "export-hf": Verb("lmlab.cli.export_hf", "write a GPT-2-shaped run as a Hugging Face checkpoint"),
    "attention": Verb("lmlab.cli.attention", "draw every head's attention weights on a text as a PNG"),
    "translate": Verb("lmlab.cli.translate", "translate sentences or a file with a seq2seq run (greedy or beam)"),
    "experiment": Verb(
        "lmlab.cli.experiment", "run an experiment end to end: gpt1-ablation, sft-skills, sentiment-rlhf"
    ),
    "eval": Verb("lmlab.cli.eval", "score a run: BLEU/chrF (translation), loss (LM), accuracy, or a policy's reward"),
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
        importlib.import_module(verb.module).main(argv[1:])
    except LmlabError as e:
        print(f"lmlab {name}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"lmlab {name}: interrupted", file=sys.stderr)
        sys.exit(130)
