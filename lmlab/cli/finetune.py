"""`lmlab finetune RUN METHOD DATA [options] [--train.X ...]`: fine-tune a trained run into a child run.

Methods: ``classify`` (GPT-1: a linear head on the last token, classification + auxiliary LM loss) and ``sft``
(next-token loss on the assistant replies of conversations rendered by the chat template).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import tyro

from lmlab.cli import parse
from lmlab.config import TrainConfig
from lmlab.errors import LmlabError, did_you_mean
from lmlab.models.lora import LoRAConfig
from lmlab.objectives.base import FINETUNE_METHODS, finetune_method
from lmlab.training.rl import METHODS as RL_METHODS
from lmlab.training.rl import RECIPE as RL_RECIPE

# method -> its options (one dataclass each; their fields are the method's --options)
METHODS: dict[str, type] = {m: finetune_method(m).Options for m in FINETUNE_METHODS} | RL_METHODS
USAGE = (
    "usage: lmlab finetune RUN METHOD DATA [options]   (methods: " + ", ".join(METHODS) + "; ppo and grpo take "
    "--reward REWARD --prompts FILE instead of DATA)"
)
DATA_HELP = {
    "classify": "labeled .tsv (with a header) or .jsonl",
    "sft": "conversations (.jsonl or a .json array)",
    "reward": "preference pairs or rankings (.jsonl)",
    "dpo": "preference pairs or rankings (.jsonl)",
    "encoder": "question-passage pairs (.jsonl) or SQuAD .json",
    "distill": "a dataset directory prepared with RUN's tokenizer (lmlab prepare)",
}


def _args_class(method: str) -> type:
    """The arguments of one method: RUN and DATA, the method's options (flat: --aux-lm), --train.*, --out."""
    # built with make_dataclass since the options type differs per method (string annotations could not name it)
    data = (
        ("data", Annotated[str, tyro.conf.arg(name="prompts", help="prompts: .txt (one a line) or .jsonl")])
        if method in RL_METHODS
        else ("data", Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="DATA", help=DATA_HELP[method])])
    )
    fields = [
        ("run", Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="RUN", help="the run to start from")]),
        data,
        ("options", Annotated[METHODS[method], tyro.conf.OmitArgPrefixes, tyro.conf.arg(help="the method's options")]),
        ("train", Annotated[TrainConfig, tyro.conf.arg(help="how to train; the defaults are the method's recipe")]),
        ("lora", Annotated[LoRAConfig, tyro.conf.arg(help="low-rank adapters instead of full fine-tuning")]),
        ("out", Annotated[str | None, tyro.conf.arg(help="the new run directory; default RUN-METHOD-DATA beside RUN")],
         None),
        ("checkpoint", Annotated[str | None, tyro.conf.arg(help="the parent's checkpoint: best, latest or step-N")],
         None),
        ("scratch", Annotated[bool, tyro.conf.arg(help="random weights of RUN's shape: the no-pre-training baseline")],
         False),
    ]  # fmt: skip
    cls = dataclasses.make_dataclass("FinetuneArgs", fields)
    usage = (
        f"lmlab finetune RUN {method} --reward REWARD --prompts FILE"
        if method in RL_METHODS
        else (f"lmlab finetune RUN {method} DATA")
    )
    cls.__doc__ = usage + ": " + " ".join((METHODS[method].__doc__ or "").split())
    return cls


def main(argv: list[str]) -> None:
    from lmlab.api import finetune

    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    # RUN METHOD DATA come first, in that order (option values elsewhere could look like a method)
    got = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None
    if got not in METHODS:
        hint = f"unknown method {got!r}{did_you_mean(got, METHODS)}" if got else "give the method"
        raise LmlabError(f"{hint}; {USAGE.removeprefix('usage: ')}")
    method = got
    _refuse_other_methods_options(method, argv)
    rest = argv[:1] + argv[2:]
    recipe = RL_RECIPE if method in RL_METHODS else finetune_method(method).RECIPE
    default_train = TrainConfig(**{**TrainConfig().to_dict(), **recipe})
    cls = _args_class(method)
    args = parse(
        cls,
        args=rest,
        prog=f"lmlab finetune RUN {method}",
        description=cls.__doc__,
        default=cls(run="", data="", options=METHODS[method](), train=default_train, lora=LoRAConfig()),
    )
    if method in RL_METHODS and not args.data:
        raise LmlabError(f"give the prompts: lmlab finetune RUN {method} --reward REWARD --prompts FILE")
    changed_train = _changed(args.train, default_train)
    options = {**dataclasses.asdict(args.options), **changed_train}
    lora = dataclasses.asdict(args.lora) if args.lora.r else None
    finetune(
        args.run, method, args.data, out=args.out, checkpoint=args.checkpoint, lora=lora, scratch=args.scratch,
        **options,
    )  # fmt: skip


def _changed(value: Any, default: Any) -> dict[str, Any]:
    return {
        f.name: getattr(value, f.name)
        for f in dataclasses.fields(value)
        if getattr(value, f.name) != getattr(default, f.name)
    }


def _refuse_other_methods_options(method: str, argv: list[str]) -> None:
    """An option of another method is a one-line error naming its method (not tyro's unknown-option box)."""
    mine = {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(METHODS[method])}
    for other, options in METHODS.items():
        for f in dataclasses.fields(options):
            flag = f"--{f.name.replace('_', '-')}"
            if other != method and flag not in mine and any(a == flag or a.startswith(flag + "=") for a in argv):
                raise LmlabError(f"{flag} is an option of lmlab finetune RUN {other}, not of {method}")
