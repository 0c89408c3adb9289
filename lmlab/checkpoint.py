"""Checkpoints as directories, written atomically and verified by a sha256 manifest.

    checkpoints/step-00000100/
        model.safetensors   weights only (no pickle); tied weights stored once
        trainer.pt          optimizer, scheduler, RNG states, data cursor (optional; weights_only=True on load)
        state.json          step, tokens seen, metrics
        manifest.json       sha256 of every file above, written last
    checkpoints/latest -> step-00000100     (symlinks, swapped atomically once a checkpoint is complete)
    checkpoints/best   -> step-00000080

A checkpoint is built under a temporary name, every file fsynced, then renamed into place, so a
crash, Ctrl-C or full disk at any moment leaves the previous checkpoints and links untouched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from lmlab import __version__, io
from lmlab.errors import LmlabError

STEP_DIR = re.compile(r"^step-(\d+)$")
LINKS = ("latest", "best")
WEIGHTS, ADAPTER = "model.safetensors", "adapter.safetensors"  # every weight, or only a LoRA run's trained ones


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def write_checkpoint(
    root: str | Path,
    step: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``root/step-N`` atomically and return its path. An existing checkpoint of that step is replaced."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(step)
    with io.atomic_dir(final, on_swap=_write_manifest) as tmp:
        if getattr(model, "saves_adapter_only", False):  # LoRA: the frozen base weights live in the parent run
            tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
            save_file(tensors, str(tmp / ADAPTER), metadata={"lmlab_version": __version__})
        else:
            save_model(model, str(tmp / WEIGHTS), metadata={"lmlab_version": __version__})
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer.pt")
        io.write_json(tmp / "state.json", {"step": step, **state})
    return final


def _write_manifest(tmp: Path) -> None:
    """The sha256 of every file, written last: a checkpoint without it is incomplete."""
    files = sorted(p.name for p in tmp.iterdir())
    io.write_json(
        tmp / "manifest.json", {"lmlab_version": __version__, "files": {n: io.sha256_file(tmp / n) for n in files}}
    )


def point(root: str | Path, link: str, target: Path | str) -> None:
    """Make ``root/link`` a symlink to the checkpoint ``target``, replacing any old link atomically."""
    io.symlink(Path(root) / link, target)


def verify_checkpoint(path: str | Path) -> str | None:
    """None when every file matches the manifest, else what is wrong (one line)."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        return f"{path.name}: no manifest.json (incomplete checkpoint)"
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return f"{path.name}: manifest.json is damaged"
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            return f"{path.name}: {name} is missing"
        if io.sha256_file(f) != digest:
            return f"{path.name}: {name} does not match its sha256 (corrupted or truncated)"
    if WEIGHTS not in files and ADAPTER not in files:
        return f"{path.name}: no model.safetensors"
    return None


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint directories under ``root``, oldest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def find_checkpoint(root: str | Path, which: str | None = None) -> Path:
    """The checkpoint to load: ``which`` (``best``, ``latest``, ``step-N`` or a path), by default best, else
    latest. A corrupted choice is reported and the newest good checkpoint before it is used instead."""
    root = Path(root)
    if which is not None and Path(which).is_dir() and (Path(which) / "manifest.json").exists():
        wanted: Path | None = Path(which)
    elif which is not None:
        if which not in LINKS and not STEP_DIR.match(which):
            raise LmlabError(f"unknown checkpoint {which!r}: use best, latest, step-N or a checkpoint directory")
        wanted = root / which
        if wanted.is_symlink() and not wanted.exists():  # a link to a checkpoint deleted by hand: the newest good one
            good = [c for c in reversed(list_checkpoints(root)) if verify_checkpoint(c) is None]
            if not good:
                raise LmlabError(f"{which} in {root} points to {os.readlink(wanted)}, which is gone, and no other "
                                 "checkpoint is left")  # fmt: skip
            warnings.warn(f"{which} points to {os.readlink(wanted)}, which is gone; using {good[0].name}", stacklevel=2)
            return good[0].resolve()
        if not wanted.exists():
            have = ", ".join(p.name for p in list_checkpoints(root)[-5:]) or "none"
            raise LmlabError(f"checkpoint {which} not found in {root} (have: {have})")
    else:
        wanted = next((root / link for link in ("best", "latest") if (root / link).exists()), None)  # best first
    candidates = list_checkpoints(root)
    if wanted is None:
        if not candidates:
            raise LmlabError(f"no checkpoint in {root}; train the run first (lmlab train ...)")
        wanted = candidates[-1]
    wanted = wanted.resolve()
    problem = verify_checkpoint(wanted)
    if problem is None:
        return wanted
    # fall back to the newest good checkpoint older than the damaged one
    for older in reversed([c.resolve() for c in candidates]):
        if older != wanted and older.name < wanted.name and verify_checkpoint(older) is None:
            warnings.warn(f"{problem}; using {older.name} instead", stacklevel=2)
            return older
    raise LmlabError(f"{problem}, and there is no older good checkpoint in {root}")


def read_index(root: str | Path) -> dict[str, dict[str, Any]]:
    """``root/index.json``: each present checkpoint's step and metrics (its evaluation included), by name."""
    root = Path(root)
    path = root / "index.json"
    try:
        index = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError:
        index = {}
    present = {p.name for p in list_checkpoints(root)}
    return {k: v for k, v in index.items() if k in present}


def read_state(path: str | Path) -> dict[str, Any]:
    return io.read_json(Path(path) / "state.json")


def load_weights(model: torch.nn.Module, path: str | Path, device: str | torch.device = "cpu") -> None:
    """Load ``path/model.safetensors`` into ``model``; shapes must match exactly. A LoRA checkpoint
    (``adapter.safetensors``) holds exactly the model's trainable tensors; the rest must be loaded already."""
    path = Path(path)
    try:
        if (path / ADAPTER).is_file():
            tensors = load_file(str(path / ADAPTER), device=str(device))
            wanted = {n for n, p in model.named_parameters() if p.requires_grad}
            if set(tensors) != wanted:
                diff = sorted(set(tensors) ^ wanted)[:3]
                raise LmlabError(f"checkpoint {path} does not fit this model's adapters (e.g. {', '.join(diff)})")
            model.load_state_dict(tensors, strict=False)
        else:
            load_model(model, str(path / WEIGHTS), strict=True, device=str(device))
    except RuntimeError as e:
        raise LmlabError(f"checkpoint {path} does not fit this model: {str(e).splitlines()[0]}") from None


def load_trainer_state(path: str | Path) -> dict[str, Any] | None:
    f = Path(path) / "trainer.pt"
    return torch.load(f, map_location="cpu", weights_only=True) if f.is_file() else None


class CheckpointManager:
    """When to save, which checkpoints to keep, and the ``latest`` / ``best`` links.

    Saves every ``every_steps`` steps and whenever ``every_minutes`` of wall time passed since the last
    save (``clock`` is injectable so tests need no sleeping). Keeps the newest ``keep_last`` and the best
    ``keep_best`` by ``metric`` (never deleting a best one); ``index.json`` holds each checkpoint's metrics.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        keep_last: int = 2,
        keep_best: int = 1,
        metric: str = "val_loss",
        mode: str = "min",
        every_steps: int = 0,
        every_minutes: float = 0.0,
        clock=time.monotonic,
    ):
        self.root = Path(root)
        self.keep_last, self.keep_best = keep_last, keep_best
        self.metric, self.mode = metric, mode
        self.every_steps, self.every_minutes = every_steps, every_minutes
        self.clock = clock
        self.last_save_time = clock()
        self.root.mkdir(parents=True, exist_ok=True)
        io.remove_stale(self.root, ".step-*")  # half-written checkpoints of a killed process
        self.index: dict[str, dict[str, Any]] = self._read_index()

    def _read_index(self) -> dict[str, dict[str, Any]]:
        return read_index(self.root)

    def _write_index(self) -> None:
        io.write_json(self.root / "index.json", self.index)

    def due(self, step: int) -> bool:
        """Whether a save is due at ``step`` by the step or the wall-clock rule."""
        if self.every_steps and step % self.every_steps == 0:
            return True
        return bool(self.every_minutes) and (self.clock() - self.last_save_time) >= 60 * self.every_minutes

    def save(self, step: int, model: torch.nn.Module, state: dict[str, Any], trainer_state: dict | None) -> Path:
        path = write_checkpoint(self.root, step, model, state, trainer_state)
        point(self.root, "latest", path)
        self.last_save_time = self.clock()
        self.index[path.name] = {"step": step, "metrics": dict(state.get("metrics", {}))}
        self._write_index()
        self.prune()
        return path

    def record(self, step: int, metrics: dict[str, Any]) -> bool:
        """Attach evaluation metrics to the checkpoint of ``step``; returns True when it became the best."""
        name = step_name(step)
        if name not in self.index:
            return False
        self.index[name]["metrics"].update(metrics)
        self._write_index()
        ranked = self.ranked()
        is_best = bool(ranked) and ranked[0] == name
        if is_best:
            point(self.root, "best", self.root / name)
        self.prune()
        return is_best

    def ranked(self) -> list[str]:
        """Checkpoint names that have the metric, best first (ties: the later step first)."""
        scored = [
            (v["metrics"][self.metric], v["step"], k)
            for k, v in self.index.items()
            if isinstance(v["metrics"].get(self.metric), (int, float))
        ]
        sign = 1 if self.mode == "min" else -1
        return [k for _, _, k in sorted(scored, key=lambda t: (sign * t[0], -t[1]))]

    def prune(self) -> None:
        names = [p.name for p in list_checkpoints(self.root)]
        keep = set(names[-self.keep_last :]) | set(self.ranked()[: self.keep_best])
        for link in LINKS:  # never delete what a link points to
            target = self.root / link
            if target.is_symlink():
                keep.add(os.readlink(target))
        for name in names:
            if name not in keep:
                shutil.rmtree(self.root / name, ignore_errors=True)
                self.index.pop(name, None)
        self._write_index()
