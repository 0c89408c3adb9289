"""The command line: ``lmlab VERB [options]``. Each verb is a module of this package with a ``main(argv)``
function that parses its config (with tyro, from a config dataclass), calls the Python API (``lmlab.api``)
and prints the result. Verb modules are imported only when their verb runs, so ``lmlab --help`` is fast."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import signal
import sys
import warnings
from dataclasses import dataclass
from typing import Any

from lmlab import __version__
from lmlab.errors import LmlabError, Terminated, did_you_mean


@dataclass(frozen=True)
class Verb:
    module: str  # module with a main(argv: list[str]) -> None function
    summary: str  # one line for `lmlab --help`


VERBS: dict[str, Verb] = {
    "prepare": Verb("lmlab.cli.prepare", "tokenize a corpus (char | bpe | word) into train/val token shards"),
    "train": Verb("lmlab.cli.train", "train a model (gpt | rnn | lstm | seq2seq) on a prepared dataset, or resume"),
    "finetune": Verb(
        "lmlab.cli.finetune",
        "fine-tune a run into a child run: classify, sft, reward, dpo, ppo, grpo, encoder, distill",
    ),
    "score": Verb("lmlab.cli.score", "print the reward of responses to a prompt under a reward-model run"),
    "classify": Verb("lmlab.cli.classify", "label texts with a fine-tuned classifier run, with class probabilities"),
    "merge": Verb("lmlab.cli.merge", "fold a LoRA run's adapters into its weights: a standalone run"),
    "quantize": Verb("lmlab.cli.quantize", "quantize a run's weights to int8 or int4 (RTN or GPTQ): a smaller run"),
    "plot": Verb("lmlab.cli.plot", "draw the train/val curves of several runs in one PNG"),
    "sample": Verb("lmlab.cli.sample", "sample text from a trained run, streaming it to the terminal"),
    "chat": Verb("lmlab.cli.chat", "talk to a trained run in the terminal (a base model continues your text)"),
    "presets": Verb("lmlab.cli.presets", "list the named presets and their shapes"),
    "import-hf": Verb("lmlab.cli.import_hf", "read a Hugging Face GPT-2 checkpoint directory into a run"),
    "export-hf": Verb("lmlab.cli.export_hf", "write a GPT-2-shaped run as a Hugging Face checkpoint"),
    "attention": Verb("lmlab.cli.attention", "draw every head's attention weights on a text as a PNG"),
    "translate": Verb("lmlab.cli.translate", "translate sentences or a file with a seq2seq run (greedy or beam)"),
    "rag": Verb("lmlab.cli.rag", "retrieval: index documents (BM25, dense), search them, measure recall"),
    "scaling": Verb("lmlab.cli.scaling", "scaling laws: sweep model sizes, fit power laws, predict a bigger model"),
    "serve": Verb("lmlab.cli.serve", "serve runs over an OpenAI-compatible HTTP API, with a chat page"),
    "experiment": Verb(
        "lmlab.cli.experiment", "run an experiment end to end: the lecture's claims (grokking, ...), GPT-1's ablation"
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


def subcommand(argv: list[str], commands: dict[str, Any], usage: str) -> str | None:
    """The COMMAND of ``lmlab VERB COMMAND ...`` (a verb with commands of its own: rag, scaling). With no
    argument or ``--help``: prints ``usage`` and each command's first clause, and returns None. An unknown command
    is a one-line error that names the closest one."""
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, commands))
        lines = []
        for name, cls in commands.items():
            doc = " ".join((cls.__doc__ or "").split())
            lines.append(f"  {name:<{width}}  {re.split(r'[.;:] ', doc + ' ', maxsplit=1)[0].rstrip('.')}")
        print(usage + "\n\n" + "\n".join(lines))
        return None
    cmd = argv[0]
    if cmd not in commands:
        raise LmlabError(f"unknown command {cmd!r}{did_you_mean(cmd, commands)}; {usage.removeprefix('usage: ')}")
    return cmd


def parse(target: Any, *, args: list[str], prog: str, **kwargs: Any) -> Any:
    """``tyro.cli(target, ...)``, with its errors as one LmlabError line ("... (did you mean --x?); see PROG --help")
    instead of a box of 6-10 lines. ``--help`` prints the full help as tyro does."""
    import tyro

    if any(a in ("-h", "--help") for a in args):
        return tyro.cli(target, args=args, prog=prog, **kwargs)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            return tyro.cli(target, args=args, prog=prog, **kwargs)
    except SystemExit as e:
        if e.code in (0, None):
            sys.stdout.write(buf.getvalue())
            raise
        raise LmlabError(_one_line(buf.getvalue(), prog)) from None


def _one_line(box: str, prog: str) -> str:
    """tyro's error box (a title, then sections between rules) as one line."""
    lines = [ln.strip(" │╭╮╰╯") for ln in box.splitlines()]
    sections: list[list[str]] = [[]]
    for ln in lines:
        if ln and set(ln) <= set("-─━═"):
            sections.append([])
        elif ln.strip():
            sections[-1].append(ln.strip())
    body = [s for s in sections[1:] if s and not any("full helptext" in x for x in s)]
    if not body:
        return f"bad arguments; see {prog} --help"
    message = " ".join(body[0]).rstrip(".")
    message = _plain(message[0].lower() + message[1:])
    suggestion = ""
    for sec in body[1:]:
        if sec[0].lower().startswith(("perhaps you meant", "similar arguments")):
            opts = [m.group(0) for x in sec[1:] if (m := re.match(r"--?[\w.-]+", x))]
            if opts:
                suggestion = f" (did you mean {' or '.join(dict.fromkeys(opts[:2]))}?)"
    return f"{message}{suggestion}; see {prog} --help"


# tyro (argparse underneath) words some errors in Python's terms; say them in the user's
_PLAIN = [
    (
        re.compile(r"error parsing (\S+): invalid literal for int\(\) with base 10: (.*)"),
        r"\1: \2 is not a whole number",
    ),
    (re.compile(r"error parsing (\S+): could not convert string to float: (.*)"), r"\1: \2 is not a number"),
    (
        re.compile(r"error parsing (\S+): could not find valid parse for arguments: \[(.*)\]", re.I),
        r"\1: cannot read \2",
    ),
    (re.compile(r"unrecognized options?: (.*)"), r"unexpected argument \1"),
    (re.compile(r"missing value for argument '(\S+)'.*"), r"\1 needs a value"),
    (
        re.compile(r"invalid choice (.*) for argument '(\S+)'. expected one of \((.*)\)", re.I),
        r"\2: \1 is not one of \3",
    ),
]


def _plain(message: str) -> str:
    for pattern, replacement in _PLAIN:
        message = pattern.sub(replacement, message)
    return message


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"lmlab: warning: {str(message).splitlines()[0] if str(message) else category.__name__}\n"


def _log_to_stderr() -> None:
    """lmlab's log (the ``lmlab`` logger: which kernels a quantized run uses, ...) as ``lmlab: ...`` lines."""
    import logging

    logger = logging.getLogger("lmlab")
    if not logger.handlers:
        handler = logging.StreamHandler()  # sys.stderr at the time of each message
        handler.setFormatter(logging.Formatter("lmlab: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _terminate(signum, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> None:
    as_process = argv is None  # the console script: this process ends when the verb does
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    if argv[0] in ("-V", "--version"):
        print(f"lmlab {__version__}")
        return
    name = argv[0]
    verb = VERBS.get(name)
    old_term = signal.getsignal(signal.SIGTERM)
    old_format = warnings.formatwarning
    try:
        with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
            signal.signal(signal.SIGTERM, _terminate)  # SIGTERM unwinds like Ctrl-C: temporaries removed, exit 143
        warnings.formatwarning = _one_line_warning  # a notice is one line, without source paths
        _log_to_stderr()
        if verb is None:
            raise LmlabError(f"unknown verb {name!r}{did_you_mean(name, VERBS)}; `lmlab --help` lists the verbs")
        importlib.import_module(verb.module).main(argv[1:])
    except LmlabError as e:
        _stop(name, f"error: {e}", 2, as_process)
    except Terminated:
        _stop(name, "terminated", 143, as_process)
    except KeyboardInterrupt:
        _stop(name, "interrupted", 130, as_process)
    except OSError as e:
        # a failure of the machine rather than of lmlab (a read error, a full disk outside lmlab's writers)
        from lmlab.io import write_error

        where = e.filename or "a file"
        _stop(name, f"error: {write_error(where, e) if e.filename else e.strerror or e}", 2, as_process)
    finally:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, old_term)
        warnings.formatwarning = old_format


def _stop(name: str, what: str, code: int, as_process: bool) -> None:
    print(f"lmlab {name}: {what}", file=sys.stderr)
    if as_process:
        # what runs at exit (tracker threads, atexit hooks) must not be cut short by a second Ctrl-C: it would print
        # a traceback of the exit itself. The work is saved; nothing is lost by ignoring it now.
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)
