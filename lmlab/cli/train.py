"""`lmlab train DATA_DIR PRESET [--model.X ...] [--train.X ...]`: train a model, or `--resume RUN` a run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.cli import parse
from lmlab.config import ModelConfig, TrainConfig, get_preset, preset_names, preset_train_config
from lmlab.errors import LmlabError


@dataclass
class TrainArgs:
    """Train a model on a prepared dataset: lmlab train DATA_DIR PRESET [--model.X ...] [--train.X ...]"""

    model: ModelConfig  # the model shape (starts from the preset, or from the --init-from run)
    train: TrainConfig  # how to train (starts from the preset)
    out: str | None = None  # run directory; default runs/<preset>-<dataset>
    resume: str | None = None  # continue the run in this directory from its latest good checkpoint
    init_from: str | None = None  # start from this run's weights (its shape too); recorded as the new run's parent
    init_checkpoint: str | None = None  # with --init-from: best, latest or step-N; default best, else latest


def main(argv: list[str]) -> None:
    from lmlab.api import train

    positionals = []
    while argv and not argv[0].startswith("-"):
        positionals.append(argv.pop(0))
    data, preset_name = _data_and_preset(positionals)
    resume = _option_value(argv, "--resume")
    init_from = _option_value(argv, "--init-from")
    if resume is not None:
        cfg = _saved_config(Path(resume))
        default = TrainArgs(ModelConfig.from_dict(cfg["model"]), TrainConfig.from_dict(cfg["train"]), resume=resume)
    else:
        p = get_preset(preset_name or "baby")
        model = p.model
        if init_from is not None:
            from lmlab.training.launch import parent_model_config

            model = parent_model_config(init_from)
        default = TrainArgs(model, preset_train_config(p))
    description = (
        f"{TrainArgs.__doc__}\n\nPRESET is one of {', '.join(preset_names())} (default baby); its values are the "
        "defaults shown below. Resume: lmlab train --resume RUN [--train.max-steps N ...]. Start from another "
        "run's weights: lmlab train DATA_DIR PRESET --init-from RUN"
    )
    args = parse(TrainArgs, default=default, args=argv, prog="lmlab train DATA_DIR PRESET", description=description)
    model_over = _changed(args.model, default.model)
    train_over = _changed(args.train, default.train)
    if args.resume is not None:
        if args.init_from is not None:
            raise LmlabError("--resume continues a run from its own checkpoints; --init-from is for a new run")
        train(data, resume=args.resume, model=model_over, **train_over)
        return
    if data is None:
        raise LmlabError(
            "give the dataset directory to train on: lmlab train DATA_DIR PRESET (make one with lmlab prepare)"
        )
    train(
        data, preset_name, out=args.out, model=model_over, init_from=args.init_from,
        init_checkpoint=args.init_checkpoint, **train_over,
    )  # fmt: skip


def _data_and_preset(positionals: list[str]) -> tuple[str | None, str | None]:
    """DATA_DIR and PRESET from the words before the options (one word: a dataset, or a preset when it names one
    and no such path exists), each checked so that the message says which is wrong."""
    usage = "usage is lmlab train DATA_DIR PRESET [options]"
    if len(positionals) > 2:
        raise LmlabError(f"unexpected argument {positionals[2]!r}: {usage}")
    if len(positionals) == 1 and positionals[0] in preset_names() and not Path(positionals[0]).exists():
        return None, positionals[0]
    data = positionals[0] if positionals else None
    preset_name = positionals[1] if len(positionals) > 1 else None
    if data is not None:
        path = Path(data)
        if not path.exists():
            raise LmlabError(f"dataset directory {data} not found; make one with lmlab prepare SOURCE --out {data}")
        if not path.is_dir():
            raise LmlabError(f"{data} is a file, not a dataset directory; prepare it first: lmlab prepare {data}")
    if preset_name is not None:
        get_preset(preset_name)  # an unknown name: "did you mean"
    return data, preset_name


def _changed(value: Any, default: Any) -> dict[str, Any]:
    """The fields of a config dataclass that the command line changed from its default."""
    return {
        f.name: getattr(value, f.name)
        for f in dataclasses.fields(value)
        if getattr(value, f.name) != getattr(default, f.name)
    }


def _option_value(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _saved_config(run_dir: Path) -> dict[str, Any]:
    from lmlab.runs import read_config

    cfg = read_config(run_dir)
    if "train" not in cfg:
        raise LmlabError(
            f"{run_dir} was not made by lmlab train (no train section in config.json); it cannot be resumed"
        )
    return cfg
