"""Metric sinks: metrics.jsonl (always), TensorBoard (default), Weights & Biases (on request)."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError
from lmlab.io import write_error, write_text


class JsonlSink:
    """One JSON object per line; each line is flushed so a crash loses at most the line being written."""

    def __init__(self, path: Path, keep_until_step: int | None = None):
        self.path = path
        if keep_until_step is not None:
            truncate_metrics(path, keep_until_step)
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        try:
            self.f.write(json.dumps(row) + "\n")
            self.f.flush()
        except OSError as e:  # a full disk: the rows written so far are whole (a torn last line is skipped on read)
            raise write_error(self.path, e) from None

    def text(self, step: int, tag: str, text: str) -> None:
        self.log(step, {tag: text})

    def close(self) -> None:
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as e:
            raise write_error(self.path, e) from None
        finally:
            with contextlib.suppress(OSError):
                self.f.close()


def truncate_metrics(path: Path, keep_until_step: int) -> None:
    """Drop rows after ``keep_until_step`` (steps that a resumed run will redo), atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= keep_until_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a torn last line from a crash
    write_text(path, "".join(line + "\n" for line in kept))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class TensorBoardSink:
    def __init__(self, logdir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.w = SummaryWriter(log_dir=str(logdir), purge_step=purge_step)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.w.add_scalar(k.replace("_", "/", 1) if k.startswith(("train_", "val_")) else k, v, step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.w.add_text(tag, "```\n" + text + "\n```", step)

    def close(self) -> None:
        self.w.close()


class WandbSink:
    def __init__(self, run_dir: Path, project: str, name: str, config: dict, resume_id: str | None):
        try:
            import wandb
        except ImportError:
            raise LmlabError("--train.track wandb needs Weights & Biases: pip install 'lmlab[wandb]'") from None
        # WANDB_MODE=offline is honoured by wandb itself
        self.run = wandb.init(
            project=project,
            name=name,
            config=config,
            dir=str(run_dir),
            id=resume_id,
            resume="allow" if resume_id else None,
        )
        self.wandb = wandb

    @property
    def id(self) -> str:
        return self.run.id

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.run.log({tag: self.wandb.Html(f"<pre>{text}</pre>")}, step=step)

    def close(self) -> None:
        self.run.finish()


class Tracker:
    """Fans each call out to every sink."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for s in self.sinks:
            s.log(step, metrics)

    def text(self, step: int, tag: str, text: str) -> None:
        for s in self.sinks:
            s.text(step, tag, text)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf
    return v


def make_tracker(run_dir: Path, cfg: Any, step: int = 0, run_name: str = "") -> Tracker:
    """The tracker of a run directory per ``cfg`` (a ``TrainConfig``: ``track``, ``wandb_project``): metrics.jsonl
    always, plus TensorBoard or W&B. ``step`` > 0 is a resume: rows logged after it are dropped (they will be
    logged again), and a W&B run continues under its saved id."""
    sinks: list = [JsonlSink(run_dir / "metrics.jsonl", keep_until_step=step)]
    if cfg.track == "tensorboard":
        sinks.append(TensorBoardSink(run_dir / "tb", purge_step=step + 1 if step else None))
    elif cfg.track == "wandb":
        id_file = run_dir / "wandb_id"
        old_id = id_file.read_text().strip() if id_file.is_file() else None
        sink = WandbSink(run_dir, cfg.wandb_project, run_name or run_dir.name, {"train": cfg.to_dict()}, old_id)
        write_text(id_file, sink.id)
        sinks.append(sink)
    return Tracker(sinks)
