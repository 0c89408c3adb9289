"""Run directories: everything needed to use a trained model, in one self-contained folder.

RUN/config.json      {"model": ModelConfig, "train": ..., "data": ...}
RUN/tokenizer.json   copied from the dataset
RUN/metrics.jsonl    one JSON object per logged step
RUN/checkpoints/     see lmlab.checkpoint

A run started from another run's weights records it in config.json as ``parent`` (run, checkpoint,
weights sha256, objective); ``lineage`` follows those links back to the first run (base → sft → dpo …).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmlab import checkpoint as ckpt
from lmlab import io
from lmlab.config import ModelConfig
from lmlab.errors import LmlabError

log = logging.getLogger("lmlab")


@dataclass
class Run:
    """A loaded run: the model (in eval mode), its tokenizer (None if the run has none) and its config."""

    path: Path
    model: torch.nn.Module
    tokenizer: Any
    config: dict[str, Any]
    checkpoint: Path
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str] | None:
        """The class names of a fine-tuned classifier (class id i is ``labels[i]``), else None."""
        head = self.config.get("head")
        return list(head["labels"]) if head else None


def read_config(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise LmlabError(f"run directory {run_dir} not found")
    if not path.is_file():
        raise LmlabError(f"{run_dir} is not an lmlab run (no config.json)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        cfg["model"]  # noqa: B018 - presence check
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise LmlabError(f"{path} is damaged ({type(e).__name__}); it must hold a 'model' section") from None
    return cfg


def save_run(
    run_dir: str | Path,
    model: torch.nn.Module,
    tokenizer: Any = None,
    extra_config: dict[str, Any] | None = None,
    step: int = 0,
    extra_files: tuple[str | Path, ...] = (),
) -> Path:
    """Write a run directory holding ``model`` as checkpoint ``step`` (used by import-hf, merge, quantize and by
    tests); ``extra_files`` are copied in beside it (a seq2seq parent's ``tokenizer.src.json``)."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise LmlabError(f"{run_dir} exists and is not empty; choose a new run directory")
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise io.write_error(run_dir.parent, e) from None
    with io.atomic_dir(run_dir) as tmp:  # built whole beside it: an interrupted import or merge leaves nothing
        config = {"model": model.config.to_dict(), **(extra_config or {})}
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer.json")
            config["tokenizer_sha256"] = io.sha256_file(tmp / "tokenizer.json")
        for f in extra_files:
            shutil.copyfile(f, tmp / Path(f).name)
        io.write_json(tmp / "config.json", config)
        root = tmp / "checkpoints"
        path = ckpt.write_checkpoint(root, step, model, {"tokens_seen": 0, "metrics": {}})
        ckpt.point(root, "latest", path)
    return run_dir


def load_run(
    run_dir: str | Path, checkpoint: str | None = None, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """(model, tokenizer or None, config) of a run; see ``load``."""
    run = load(run_dir, checkpoint=checkpoint, device=device)
    return run.model, run.tokenizer, run.config


def build_run_model(cfg: dict[str, Any]) -> torch.nn.Module:
    """The model a run's config.json describes, before its own checkpoint is loaded: the architecture, a
    classifier head, and for a LoRA run the parent's (frozen) weights with the adapters on top."""
    from lmlab.models import build_model

    model = build_model(ModelConfig.from_dict(cfg["model"]))
    lora = cfg.get("lora")
    if lora:
        parent = cfg["parent"]
        where = Path(parent["run"]) / "checkpoints" / parent["checkpoint"]
        weights = where / ckpt.WEIGHTS
        if not weights.is_file() or io.sha256_file(weights) != parent["model_sha256"]:
            raise LmlabError(
                f"this LoRA run keeps only its adapters; its base weights ({where}) are gone or changed. Restore the "
                "parent run, or keep a standalone copy next time with lmlab merge"
            )
        ckpt.load_weights(model, where)
    head = cfg.get("head")
    if head is not None:
        from lmlab.models.heads import SequenceClassifier

        model = SequenceClassifier(model, len(head["labels"]))
    if lora:
        from lmlab.models.lora import LoRAConfig, apply_lora

        apply_lora(model, LoRAConfig(**{**lora, "targets": tuple(lora["targets"])}))
    if cfg.get("quant"):  # the quantized layers' shapes, filled by the checkpoint (checked by check_quantized)
        from lmlab.models.quant import QuantSpec, quantize_model

        quantize_model(model, QuantSpec.from_dict(cfg["quant"]))
    return model


def parent_weights_sha256(checkpoint: Path) -> str:
    """The sha256 of a checkpoint's full weights (what a child run records); a LoRA checkpoint has none."""
    files = io.read_json(checkpoint / "manifest.json")["files"]
    if ckpt.WEIGHTS not in files:
        raise LmlabError(f"{checkpoint} holds LoRA adapters only; merge that run first (lmlab merge RUN --out NEW)")
    return files[ckpt.WEIGHTS]


def load(run_dir: str | Path, checkpoint: str | None = None, device: str | torch.device = "cpu") -> Run:
    """Load a run's model from ``checkpoint`` (best, latest, step-N; default best, else latest). A fine-tuned
    classifier comes back with its head (a ``SequenceClassifier``; its labels in ``Run.labels``)."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    path = ckpt.find_checkpoint(run_dir / "checkpoints", checkpoint)
    model = build_run_model(cfg)
    if cfg.get("quant"):
        from lmlab.models.quant import check_file

        check_file(model, path / ckpt.WEIGHTS)
    ckpt.load_weights(model, path, device)
    model.to(device).eval()
    if cfg.get("quant"):
        from lmlab.models.quant import prepare

        kernels = prepare(model)
        log.info("%s: %s weights; matmuls: %s", run_dir, cfg["quant"]["scheme"],
                 ", ".join(f"{n} layers {k}" for k, n in kernels.items()))  # fmt: skip
    tokenizer = run_tokenizer(run_dir, cfg)
    return Run(run_dir, model, tokenizer, cfg, path, ckpt.read_state(path))


def check_generates_text(run_dir: str | Path, cfg: dict[str, Any], verb: str = "sample") -> None:
    """Refuse, before loading anything, a run that does not continue text: a classifier or reward model (a head)
    or a translation (seq2seq) run, saying which verb it takes."""
    head = cfg.get("head")
    if head is not None:
        if head.get("kind") == "reward":
            raise LmlabError(f"{run_dir} is a reward model, which scores responses rather than writing them; use "
                             f"lmlab score {run_dir}")  # fmt: skip
        raise LmlabError(f"{run_dir} is a classifier, which labels text rather than writing it; use lmlab classify "
                         f"{run_dir}")  # fmt: skip
    if (cfg.get("model") or {}).get("arch") == "seq2seq":
        raise LmlabError(f"{run_dir} is a translation (seq2seq) run, which {verb} cannot talk to; use lmlab translate "
                         f"{run_dir} \"TEXT\"")  # fmt: skip


def run_tokenizer(run_dir: str | Path, cfg: dict[str, Any], name: str = "tokenizer.json") -> Any:
    """The run's tokenizer (None when it has none), checked against what the run was trained with: the sha256 its
    config.json recorded, and a vocabulary that fits the model. A swapped tokenizer.json would decode the model's
    ids into garbage without a word; this says so instead."""
    from lmlab.data.tokenizer import load_tokenizer

    path = Path(run_dir) / name
    if not path.is_file():
        return None
    recorded = cfg.get("tokenizer_sha256") if name == "tokenizer.json" else None
    if name == "tokenizer.json" and recorded is None:
        recorded = (cfg.get("data") or {}).get("tokenizer_sha256")
    if recorded is not None and io.sha256_file(path) != recorded:
        raise LmlabError(
            f"{path} is not the tokenizer this run was trained with (its sha256 differs from config.json's); put the "
            "original back (it is the dataset's tokenizer.json)"
        )
    tokenizer = load_tokenizer(path)
    vocab = (cfg.get("model") or {}).get("vocab_size")
    if name == "tokenizer.json" and vocab and tokenizer.vocab_size > vocab:
        raise LmlabError(
            f"{path} has {tokenizer.vocab_size} tokens but the model only {vocab}: it is not this run's tokenizer"
        )
    return tokenizer


def lineage(run_dir: str | Path) -> list[dict[str, Any]]:
    """The chain of runs that ``run_dir`` descends from, itself first: one entry per run with its path,
    objective and (but for the first run) the parent checkpoint it started from. A parent that is gone ends
    the chain with ``"missing": True``."""
    chain: list[dict[str, Any]] = []
    seen: set[Path] = set()
    path: Path | None = Path(run_dir)
    while path is not None:
        key = path.resolve()
        if key in seen:  # a hand-edited config could point back at a descendant
            break
        seen.add(key)
        if not (path / "config.json").is_file():
            chain.append({"run": str(path), "missing": True})
            break
        cfg = read_config(path)
        entry: dict[str, Any] = {"run": str(path), "objective": cfg.get("objective")}
        parent = cfg.get("parent")
        if parent:
            entry["parent_checkpoint"] = parent.get("checkpoint")
        chain.append(entry)
        path = Path(parent["run"]) if parent else None
    return chain


def run_finished(run: Path) -> bool:
    """Whether ``run`` trained to its last step (its latest checkpoint is at train.max_steps)."""
    try:
        cfg = io.read_json(run / "config.json")
        state = ckpt.read_state(ckpt.find_checkpoint(run / "checkpoints", "latest"))
    except (LmlabError, OSError, ValueError):
        return False
    return int(state.get("step", -1)) >= int(cfg["train"]["max_steps"])


def has_checkpoint(run: Path) -> bool:
    return (run / "checkpoints").is_dir() and bool(ckpt.list_checkpoints(run / "checkpoints"))
