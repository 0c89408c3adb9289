"""What is optimized: the one protocol every objective implements, and the registry the trainer finds them in.

The trainer knows only this protocol. An objective says where batches come from (``batches``), what the
loss of one batch is (``loss`` -> ``LossOut``), how per-batch results become evaluation metrics
(``reduce``; accuracy, pair accuracy and margins as well as mean loss), which metric names it reports
(``metric_names``, known before training so a mistyped ``--train.best-metric`` is refused up front), and
optionally a short sample for the log (``sample``). Objectives are registered under the dataset task (or
fine-tuning method) they train on, so ``lmlab train`` picks one with a dictionary look-up, not an if-chain.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from lmlab.data.formats import holdout  # noqa: F401 - re-exported: the methods' readers split with it
from lmlab.errors import LmlabError, did_you_mean


@dataclass
class FinetuneOptions:
    """What every fine-tuning method takes: where validation data comes from, and how long to train."""

    val: str | None = None  # a file for validation; default: hold out --val-fraction of DATA
    val_fraction: float = 0.1  # share of DATA held out for validation when --val is not given (seeded)
    epochs: float = 3.0  # passes over the training data; sets --train.max-steps unless given

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise LmlabError(f"--val-fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if self.epochs <= 0:
            raise LmlabError(f"--epochs must be positive, got {self.epochs}")


@dataclass
class LossOut:
    """The result of one batch: the loss to minimize, how many tokens (or examples) it averages over, and
    per-batch metrics that ``Objective.reduce`` turns into evaluation metrics."""

    loss: torch.Tensor  # scalar; what backward() sees
    n_tokens: int | torch.Tensor  # units the loss is a mean over (target tokens, examples, pairs)
    metrics: dict[str, float | torch.Tensor] = field(default_factory=dict)  # e.g. correct counts, margins
    # training steps: scalar tensors the trainer averages over each log window and logs as train_NAME
    log: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class Batches(Protocol):
    """A resumable, endless stream of batches (``lmlab.data.loader``'s loaders are)."""

    batches_per_epoch: int

    def __iter__(self) -> Iterator[Any]: ...
    def __next__(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Objective:
    """Base class of every objective. Subclasses set ``task`` and implement ``batches`` and ``loss``; the
    defaults of ``reduce``, ``metric_names`` and ``sample`` fit a pure next-token loss."""

    task: ClassVar[str] = ""  # the dataset task (meta.json "task") or method this objective trains on
    # fine-tuning methods: their options dataclass, their default TrainConfig fields, whether they add a head
    Options: ClassVar[type | None] = None
    RECIPE: ClassVar[dict[str, Any]] = {}
    has_head: ClassVar[bool] = False
    # fine-tuning methods that train a new model of another shape (distill's student): ``model_config(opts,
    # parent_cfg)`` gives it, the parent's weights are not loaded, and ``teacher_checkpoint`` is set to them
    new_model: ClassVar[bool] = False

    # real (non-padding) tokens per sequence: with batch_size it gives tokens per step for --train.tokens-per-step
    tokens_per_sequence: int = 1
    n_train: int = 0  # fine-tuning methods: training examples (sets the steps of --epochs)
    data_format: str = ""  # fine-tuning methods: the format the data was read as (recorded in the run)
    chat: bool = False  # renders its data through the chat template (the run becomes a chat model)
    reads_preferences: ClassVar[bool] = False  # from_files takes ``template`` (the parent is a chat model)
    summary: str = ""  # a line about the data for the log (format, split sizes, truncations), printed at the start

    @classmethod
    def fit_model_config(cls, ds: Any, model_cfg: Any) -> Any:
        """The model config for training on ``ds``; refuses an architecture that does not fit the task."""
        return model_cfg

    @classmethod
    def fit_options(cls, opts: Any, model_cfg: Any) -> Any:
        """A fine-tuning method's options adjusted to the model (e.g. no packing for a recurrent one)."""
        return opts

    @classmethod
    def from_dataset(cls, ds: Any, model_cfg: Any, tokenizer: Any = None) -> Objective:
        raise NotImplementedError

    # -- the protocol ------------------------------------------------------------------------
    def batches(
        self, split: str, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, device: Any = "cpu"
    ) -> Batches:
        """The endless, resumable batch stream of ``split`` (shuffled for ``train``, fixed order otherwise)."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Any) -> LossOut:
        raise NotImplementedError

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The names ``reduce`` returns."""
        return ("val_loss", "val_ppl")

    def reduce(self, outs: Sequence[LossOut]) -> dict[str, float]:
        """Evaluation metrics from the per-batch results of one pass over the validation batches.

        The default is the mean of the batch losses (every evaluation uses the same batches, so values are
        comparable across steps) and its perplexity."""
        total = torch.zeros((), device=outs[0].loss.device) if outs else torch.zeros(())
        for o in outs:
            total += o.loss.detach().float()
        mean = float(total / max(1, len(outs)))  # one device sync, not one per batch
        return {"val_loss": mean, "val_ppl": math.exp(min(mean, 50.0))}

    def prepare(self, model: torch.nn.Module, rt: Any, run_dir: Any, start: Any = None) -> None:
        """Called once before training: what an objective needs from the starting weights (DPO: its reference).
        ``start`` is None when ``model`` holds them (a new run), else the checkpoint they are in (a resumed run,
        whose model is about to get its own). The default needs nothing."""

    def sample(self, model: torch.nn.Module, *, n_tokens: int, seed: int, rt: Any) -> str:
        """A short text for the log at each evaluation ('' = none). ``model`` is in eval mode; ``rt`` is the
        run's ``Runtime`` (device, autocast)."""
        return ""


# ---------------------------------------------------------------------------------------------
# The registry: task name -> objective class

_REGISTRY: dict[str, type[Objective]] = {}
# where each built-in objective lives, imported on first use so `import lmlab.objectives` stays light
_BUILTIN = {
    "lm": "lmlab.objectives.lm",
    "translation": "lmlab.objectives.translation",
    "classify": "lmlab.objectives.classify",
    "sft": "lmlab.objectives.sft",
    "reward": "lmlab.objectives.reward",
    "dpo": "lmlab.objectives.dpo",
    "encoder": "lmlab.objectives.encoder",
    "distill": "lmlab.objectives.distill",
}
# the objectives `lmlab finetune RUN METHOD DATA` trains (each has Options, RECIPE and from_files)
FINETUNE_METHODS = ("classify", "sft", "reward", "dpo", "encoder", "distill")


def finetune_method(method: str) -> type[Objective]:
    """The objective of a fine-tuning method; an unknown method is a one-line error."""
    if method not in FINETUNE_METHODS:
        raise LmlabError(
            f"unknown fine-tuning method {method!r}{did_you_mean(method, FINETUNE_METHODS)}; the methods are "
            + ", ".join(FINETUNE_METHODS)
        )
    return objective_for(method)


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make ``cls`` the objective of datasets (or methods) named ``cls.task``."""
    if not cls.task:
        raise ValueError(f"{cls.__name__} has no task name")
    _REGISTRY[cls.task] = cls
    return cls


def objective_for(task: str) -> type[Objective]:
    """The objective class registered for ``task``; an unknown task is a one-line error."""
    if task not in _REGISTRY and task in _BUILTIN:
        import importlib

        importlib.import_module(_BUILTIN[task])
    if task not in _REGISTRY:
        known = sorted(set(_REGISTRY) | set(_BUILTIN))
        raise LmlabError(
            f"no objective trains on {task!r} datasets{did_you_mean(task, known)}; lmlab train knows {', '.join(known)}"
        )
    return _REGISTRY[task]


def objective_names() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN))
