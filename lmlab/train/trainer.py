"""`lmlab train`: the one training loop, used by pretraining and (later) every fine-tuning method.

What is trained on, and how the loss is computed, comes from a *task* object (``LMTask`` here:
next-token prediction on a prepared dataset), so fine-tuning plugs in its own batches and loss
without a second loop. The loop owns everything else: the optimizer and schedule, gradient
accumulation, mixed precision, clipping, evaluation, checkpoints, tracking, signals and resume.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import tyro

from lmlab import __version__, runtime
from lmlab.config import ModelConfig, Preset, TrainConfig, get_preset, preset_train_config
from lmlab.data.loader import BatchLoader, Dataset, load_dataset
from lmlab.data.sources import sha256_file
from lmlab.errors import LmlabError, did_you_mean
from lmlab.train import checkpoint as ckpt
from lmlab.train.optim import lr_at, make_adamw
from lmlab.train.tracking import JsonlSink, TensorBoardSink, Tracker, WandbSink

# ---------------------------------------------------------------------------------------------
# Tasks: where batches come from and what the loss is


@dataclass
class LMTask:
    """Next-token prediction on a prepared dataset."""

    dataset: Dataset
    block_size: int

    def loader(self, split: str, batch_size: int, seed: int, rank: int, world_size: int, device) -> BatchLoader:
        return BatchLoader(
            self.dataset.tokens(split),
            batch_size,
            self.block_size,
            shuffle=split == "train",
            seed=seed,
            rank=rank,
            world_size=world_size,
            device=device,
            name=split,
        )

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return model(x, y).loss

    def eval_metrics(self, mean_loss: float) -> dict[str, float]:
        """Validation loss, perplexity, and bits per character (char) or per byte (other tokenizers)."""
        m = {"val_loss": mean_loss, "val_ppl": math.exp(min(mean_loss, 50.0))}
        val = self.dataset.meta.get("splits", {}).get("val", {})
        bits = mean_loss / math.log(2)
        if self.dataset.meta.get("tokenizer", {}).get("kind") == "char":
            m["val_bpc"] = bits
        elif val.get("bytes") and val.get("tokens"):
            m["val_bpb"] = bits * val["tokens"] / val["bytes"]
        return m


# ---------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    tokens_seen: int
    status: str  # finished | interrupted
    metrics: dict[str, Any] = field(default_factory=dict)  # the last evaluation
    best: dict[str, Any] = field(default_factory=dict)  # best checkpoint name and metric


class _StopRequested:
    """Ctrl-C or SIGTERM asks the loop to save and stop at the next step boundary; a second Ctrl-C forces."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


class Trainer:
    """Runs the optimization of ``model`` on ``task`` per ``cfg``, writing into ``run_dir``."""

    def __init__(
        self,
        model: torch.nn.Module,
        task: Any,
        cfg: TrainConfig,
        run_dir: str | Path,
        rt: runtime.Runtime,
        *,
        tokenizer: Any = None,
        resume_from: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        run_name: str = "",
    ):
        self.cfg, self.task, self.rt = cfg, task, rt
        self.run_dir = Path(run_dir)
        self.tokenizer = tokenizer
        self.clock = clock
        self.run_name = run_name or self.run_dir.name
        self.model = model.to(rt.device)
        self.raw_model = self.model
        self.block_size = model.config.block_size
        # a task whose sequences are shorter than block_size (translation pairs) says how long they are
        tokens_per_micro = cfg.batch_size * getattr(task, "tokens_per_sequence", self.block_size) * rt.world_size
        self.accum = max(1, round(cfg.tokens_per_step / tokens_per_micro)) if cfg.tokens_per_step else cfg.grad_accum
        self.tokens_per_step = tokens_per_micro * self.accum
        self.optimizer = make_adamw(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps, rt.device)
        self.scaler = torch.amp.GradScaler(rt.device.type) if rt.precision == "fp16" else None
        self.train_loader = task.loader("train", cfg.batch_size, cfg.seed, rt.rank, rt.world_size, rt.device)
        # fail now, not at the first evaluation, when the validation split cannot fill one batch
        self.eval_batches = min(cfg.eval_steps, self._val_loader().batches_per_epoch)
        reported = list(task.eval_metrics(1.0))  # metric names only; a typo would otherwise never mark a best
        if cfg.best_metric not in reported:
            raise LmlabError(
                f"--train.best-metric {cfg.best_metric!r}{did_you_mean(cfg.best_metric, reported)} is not a metric "
                f"this run reports; choose one of {', '.join(reported)}"
            )
        self.ckpts = ckpt.CheckpointManager(
            self.run_dir / "checkpoints",
            keep_last=cfg.keep_last,
            keep_best=cfg.keep_best,
            metric=cfg.best_metric,
            mode=cfg.best_mode,
            every_steps=cfg.save_every,
            every_minutes=cfg.save_every_minutes,
            clock=clock,
        )
        self.step, self.tokens_seen = 0, 0
        self.elapsed_before = 0.0  # wall time of the run before this process (resume)
        self.fit_start = clock()
        self.last_eval: dict[str, Any] = {}
        self.skipped_steps = 0
        if resume_from is not None:
            self._restore(resume_from)
        if rt.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(
                self.model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
            )
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.stop = _StopRequested()
        self.tracker = self._tracker() if rt.is_main else None  # fail before training when a tracker is missing

    # -- pieces ----------------------------------------------------------------------------
    def _val_loader(self) -> BatchLoader:
        return self.task.loader(
            "val", self.cfg.batch_size, self.cfg.seed, self.rt.rank, self.rt.world_size, self.rt.device
        )

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": runtime.rng_state(),
            "loader": self.train_loader.state_dict(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "skipped_steps": self.skipped_steps,
            "elapsed_s": self.elapsed(),
        }

    def _restore(self, path: Path) -> None:
        ckpt.load_weights(self.raw_model, path, self.rt.device)
        state = ckpt.load_trainer_state(path)
        if state is None:
            raise LmlabError(f"checkpoint {path} has no trainer state (weights only); it cannot be resumed")
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # a changed --train.lr applies from the first resumed step
            group["lr"] = lr_at(state["step"], **self._schedule())
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        loader_state = dict(state["loader"], rank=self.rt.rank)  # every rank is at rank 0's cursor
        self.train_loader.load_state_dict(loader_state)
        runtime.set_rng_state(state["rng"])
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.skipped_steps = int(state.get("skipped_steps", 0))

    def elapsed(self) -> float:
        """Wall-clock seconds of training so far, across resumes."""
        return self.elapsed_before + self.clock() - self.fit_start

    def _schedule(self) -> dict[str, Any]:
        c = self.cfg
        return dict(
            lr=c.lr,
            min_lr=c.min_lr,
            warmup_steps=c.warmup_steps,
            max_steps=c.max_steps,
            schedule=c.schedule,
            decay_fraction=c.decay_fraction,
        )

    def _tracker(self) -> Tracker:
        sinks: list = [JsonlSink(self.run_dir / "metrics.jsonl", keep_until_step=self.step)]
        if self.cfg.track == "tensorboard":
            sinks.append(TensorBoardSink(self.run_dir / "tb", purge_step=self.step + 1 if self.step else None))
        elif self.cfg.track == "wandb":
            id_file = self.run_dir / "wandb_id"
            old_id = id_file.read_text().strip() if id_file.is_file() else None
            sink = WandbSink(self.run_dir, self.cfg.wandb_project, self.run_name, {"train": self.cfg.to_dict()}, old_id)
            id_file.write_text(sink.id)
            sinks.append(sink)
        return Tracker(sinks)

    def _all_mean(self, value: torch.Tensor) -> float:
        if self.rt.distributed:
            import torch.distributed as dist

            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.AVG if self.rt.device.type == "cuda" else dist.ReduceOp.SUM)
            if self.rt.device.type != "cuda":  # gloo has no AVG
                value /= self.rt.world_size
        return float(value.item())

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean validation loss over the same first ``eval_steps`` batches every time, plus derived metrics."""
        self.model.eval()
        loader = self._val_loader()
        total = torch.zeros((), device=self.rt.device)
        for _ in range(self.eval_batches):
            with self.rt.autocast():
                total += self.task.loss(self.raw_model, next(loader)).float()
        self.model.train()
        return self.task.eval_metrics(self._all_mean(total / self.eval_batches))

    @torch.no_grad()
    def sample_text(self, n_tokens: int) -> str:
        """A short sample from the start of a document, seeded per step (the global RNG is untouched)."""
        from lmlab.generate.engine import generate

        if hasattr(self.task, "sample_text"):  # e.g. translation: translate a few validation sources
            return self.task.sample_text(self.raw_model, n_tokens, self.rt)
        if self.tokenizer is None or n_tokens <= 0:
            return ""
        self.raw_model.eval()
        try:
            return generate(
                self.raw_model,
                self.tokenizer,
                "",
                max_new_tokens=n_tokens,
                top_k=50,
                seed=self.cfg.seed + self.step,
                on_notice=lambda message: None,
            )
        except LmlabError:
            return ""  # e.g. a tokenizer with no start token: the sample is a courtesy, not a reason to stop
        finally:
            self.raw_model.train()

    def _save(self, metrics: dict[str, Any]) -> Path | None:
        if not self.rt.is_main:
            return None
        state = {"tokens_seen": self.tokens_seen, "metrics": metrics, "time": time.time()}
        try:
            return self.ckpts.save(self.step, self.raw_model, state, self._trainer_state())
        except OSError as e:
            raise LmlabError(
                f"could not save the checkpoint of step {self.step} ({e.strerror or e}); the earlier checkpoints "
                f"are intact: free some disk space and resume with lmlab train --resume {self.run_dir}"
            ) from None

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg, rt = self.cfg, self.rt
        tracker = self.tracker
        flops_per_token = self.raw_model.flops_per_token()
        peak = runtime.peak_flops(rt.device.type, "fp32" if rt.precision == "fp32" else rt.precision)
        bar = self._progress_bar()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.stop.install()
        status = "finished"
        self.fit_start = self.clock()
        window_start, window_steps, window_good = self.fit_start, 0, 0  # good = not skipped (non-finite)
        loss_sum = torch.zeros((), device=rt.device)
        self.model.train()
        try:
            while self.step < cfg.max_steps:
                if self.stop.signum is not None:
                    status = "interrupted"
                    break
                lr = lr_at(self.step, **self._schedule())
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                step_loss = torch.zeros((), device=rt.device)
                for micro in range(self.accum):
                    batch = next(self.train_loader)
                    sync = micro == self.accum - 1
                    no_sync = self.model.no_sync() if rt.distributed and not sync else nullcontext()
                    with no_sync:
                        with rt.autocast():
                            loss = self.task.loss(self.model, batch) / self.accum
                        (self.scaler.scale(loss) if self.scaler else loss).backward()
                    step_loss += loss.detach().float()
                if self.scaler:
                    self.scaler.unscale_(self.optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                if not (torch.isfinite(step_loss) and torch.isfinite(grad_norm)):
                    self._skip_non_finite(step_loss, bar)
                else:
                    if self.scaler:
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                    else:
                        self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    loss_sum += step_loss
                    window_good += 1
                self.step += 1
                self.tokens_seen += self.tokens_per_step
                window_steps += 1
                row: dict[str, Any] = {}
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    elapsed = max(self.clock() - window_start, 1e-9)
                    tps = window_steps * self.tokens_per_step / elapsed
                    if window_good:  # the mean over the steps that updated the model (none: no train_loss)
                        row["train_loss"] = self._all_mean(loss_sum / window_good)
                    row.update(
                        lr=lr,
                        grad_norm=float(grad_norm),
                        tok_per_s=tps,
                        mfu=tps * flops_per_token / (peak * rt.world_size),
                    )
                    if self.skipped_steps:
                        row["skipped_steps"] = self.skipped_steps
                    if bar is not None:
                        loss_text = f"loss {row['train_loss']:.4f}  " if "train_loss" in row else ""
                        bar.set_postfix_str(f"{loss_text}{tps / 1000:.1f}k tok/s", refresh=False)
                    loss_sum.zero_()
                    window_steps = window_good = 0
                    window_start = self.clock()
                eval_due = (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.max_steps
                save_due = self.ckpts.due(self.step) or self.step == cfg.max_steps or (eval_due and not cfg.save_every)
                paused = self.clock()  # time spent saving and evaluating does not count against tokens/s
                if save_due:
                    self._save(dict(row))  # before evaluating, so a crash in evaluation loses nothing
                if eval_due:
                    row.update(self._evaluate_and_report(bar))
                window_start += self.clock() - paused
                if row and tracker is not None:
                    tracker.log(self.step, {"tokens": self.tokens_seen, "elapsed_s": self.elapsed(), **row})
                if bar is not None:
                    bar.update(1)
            if status == "interrupted":
                if not (self.ckpts.root / ckpt.step_name(self.step)).exists() and self.step > 0:
                    self._save({})
        finally:
            self.stop.restore()
            if bar is not None:
                bar.close()
            if tracker is not None:
                tracker.close()
        best = self.ckpts.ranked()
        result = TrainResult(self.run_dir, self.step, self.tokens_seen, status, self.last_eval)
        if best:
            result.best = {
                "checkpoint": best[0],
                cfg.best_metric: self.ckpts.index[best[0]]["metrics"][cfg.best_metric],
            }
        return result

    def _skip_non_finite(self, step_loss: torch.Tensor, bar) -> None:
        """A step whose loss or gradient is not finite: stop the run (default) or drop the update."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.cfg.on_nan == "stop":
            last = self.ckpts.root / "latest"
            have = "no checkpoint was saved"
            if last.is_symlink():
                have = f"the last good checkpoint is {os.readlink(last)}"
            raise LmlabError(
                f"loss is {step_loss.item()} at step {self.step + 1}: training diverged; {have}. "
                "Lower --train.lr, or pass --train.on-nan skip to skip such steps"
            )
        self.skipped_steps += 1
        if bar is not None:
            bar.write(f"step {self.step + 1}: non-finite loss, step skipped ({self.skipped_steps} so far)")

    def _evaluate_and_report(self, bar) -> dict[str, Any]:
        metrics = self.evaluate()
        self.last_eval = {"step": self.step, **metrics}
        if self.rt.is_main:
            self.ckpts.record(self.step, metrics)
        text = self.sample_text(self.cfg.sample_tokens) if self.rt.is_main else ""
        line = f"step {self.step:>6}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        if bar is not None:
            bar.write(line)
            if text:
                bar.write("  sample: " + text[:160].replace("\n", "\n          "))
        return {**metrics, **({"sample": text} if text else {})}

    def _progress_bar(self):
        if not (self.cfg.progress and self.rt.is_main):
            return None
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        return tqdm(
            total=self.cfg.max_steps,
            initial=self.step,
            desc="train",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.5 if tty else 30.0,
        )


# ---------------------------------------------------------------------------------------------
# The verb


@dataclass
class TrainArgs:
    """Train a model on a prepared dataset: lmlab train DATA_DIR PRESET [--model.X ...] [--train.X ...]"""

    model: ModelConfig  # the model shape (starts from the preset)
    train: TrainConfig  # how to train (starts from the preset)
    out: str | None = None  # run directory; default runs/<preset>-<dataset>
    resume: str | None = None  # continue the run in this directory from its latest good checkpoint


def _data_fingerprint(ds: Dataset) -> dict[str, Any]:
    return {
        "path": str(ds.path.resolve()),
        "vocab_size": ds.vocab_size,
        "tokenizer_sha256": sha256_file(ds.path / "tokenizer.json"),
        "train_tokens": ds.meta["splits"]["train"]["tokens"],
        "val_tokens": ds.meta["splits"]["val"]["tokens"],
    }


def train(
    data: str | Path | None = None,
    preset: str | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    model: dict[str, Any] | None = None,
    **train_fields: Any,
) -> TrainResult:
    """Train ``preset`` (default ``baby``) on the dataset directory ``data``; or resume the run ``resume``.

    ``model`` overrides fields of the preset's ModelConfig; other keyword arguments override TrainConfig
    fields (``max_steps=500``). ``lmlab.train("data/shakespeare-char", "baby", max_steps=500)``
    """
    if resume is not None:
        return _resume(Path(resume), data, model or {}, train_fields)
    if data is None:
        raise LmlabError("give the dataset directory to train on (made by lmlab prepare), e.g. data/shakespeare-char")
    p = get_preset(preset or "baby")
    model_cfg = dataclasses.replace(p.model, **(model or {}))
    train_cfg = preset_train_config(p, **train_fields)
    return _start(Path(data), p, model_cfg, train_cfg, Path(out) if out else None)


def _start(data: Path, p: Preset, model_cfg: ModelConfig, train_cfg: TrainConfig, out: Path | None) -> TrainResult:
    ds = load_dataset(data)
    if ds.task == "translation" or model_cfg.arch == "seq2seq":
        from lmlab.data.translation import fit_model_config

        model_cfg = fit_model_config(ds, model_cfg)
    elif ds.task != "lm":
        raise LmlabError(f"{data} is a {ds.task} dataset; lmlab train trains language models on lm datasets")
    if model_cfg.vocab_size and model_cfg.vocab_size != ds.vocab_size:
        raise LmlabError(
            f"--model.vocab-size {model_cfg.vocab_size} does not match the dataset's vocabulary ({ds.vocab_size}); "
            "leave it at 0 to take the dataset's"
        )
    model_cfg = dataclasses.replace(model_cfg, vocab_size=ds.vocab_size)
    run_dir = out or Path("runs") / f"{p.name}-{ds.path.resolve().name}"
    if (run_dir / "checkpoints").exists() and any(ckpt.list_checkpoints(run_dir / "checkpoints")):
        raise LmlabError(
            f"run directory {run_dir} already has checkpoints; continue it with --resume {run_dir} "
            "or choose another --out"
        )
    rt = runtime.setup(train_cfg.device, train_cfg.precision)
    if rt.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise LmlabError(
                f"cannot write the run directory {run_dir}: {e.strerror or e}; choose another --out"
            ) from None
        from lmlab.runs import write_json

        write_json(
            run_dir / "config.json",
            {
                "lmlab_version": __version__,
                "preset": p.name,
                "model": model_cfg.to_dict(),
                "train": train_cfg.to_dict(),
                "data": _data_fingerprint(ds),
            },
        )
        shutil.copyfile(ds.path / "tokenizer.json", run_dir / "tokenizer.json")
        if (ds.path / "tokenizer.src.json").is_file():  # translation with a separate source tokenizer
            shutil.copyfile(ds.path / "tokenizer.src.json", run_dir / "tokenizer.src.json")
    if rt.distributed:
        torch.distributed.barrier()
    return _fit(ds, model_cfg, train_cfg, run_dir, rt, None)


def _fit(ds, model_cfg, train_cfg, run_dir, rt, resume_from) -> TrainResult:
    from lmlab.models import build_model

    runtime.seed_everything(train_cfg.seed)
    model = build_model(model_cfg)
    if ds.task == "translation":
        from lmlab.data.translation import TranslationTask

        task = TranslationTask(ds, model_cfg)
    else:
        task = LMTask(ds, model_cfg.block_size)
    try:
        trainer = Trainer(model, task, train_cfg, run_dir, rt, tokenizer=ds.tokenizer, resume_from=resume_from)
        if rt.is_main:
            n = model.num_params()
            print(
                f"training {model_cfg.arch} ({n / 1e6:.2f}M parameters) on {ds.path} -> {run_dir}\n"
                f"  {rt.describe()}; {trainer.tokens_per_step:,} tokens per step "
                f"({train_cfg.batch_size} sequences x {trainer.accum} accum x {rt.world_size} processes); "
                f"steps {trainer.step} -> {train_cfg.max_steps}",
                file=sys.stderr,
            )
        t0 = time.perf_counter()
        result = trainer.fit()
        if rt.is_main:
            took = time.perf_counter() - t0
            best = (
                f"; best {train_cfg.best_metric} {list(result.best.values())[1]:.4f} ({result.best['checkpoint']})"
                if result.best
                else ""
            )
            print(
                f"{result.status}: step {result.step}, {result.tokens_seen:,} tokens, {took:.1f}s{best}; "
                f"run directory {run_dir}",
                file=sys.stderr,
            )
        return result
    finally:
        runtime.teardown(rt)


def _resume(run_dir: Path, data: str | Path | None, model_over: dict, train_over: dict) -> TrainResult:
    from lmlab.runs import read_config, write_json

    cfg = read_config(run_dir)
    saved_model = ModelConfig.from_dict(cfg["model"])
    changed_model = {k: v for k, v in model_over.items() if getattr(saved_model, k) != v}
    if changed_model:
        raise LmlabError(
            f"cannot change the model shape on resume ({', '.join(f'model.{k}' for k in changed_model)}); "
            "start a new run with --out instead"
        )
    saved_train = TrainConfig.from_dict(cfg["train"])
    train_cfg = dataclasses.replace(saved_train, **train_over)
    data_path = Path(data) if data else Path(cfg["data"]["path"])
    ds = load_dataset(data_path)
    fp = _data_fingerprint(ds)
    for key in ("vocab_size", "tokenizer_sha256", "train_tokens"):
        if fp[key] != cfg["data"].get(key):
            raise LmlabError(
                f"{data_path} is not the dataset this run was trained on ({key} differs); resume with the original "
                f"dataset ({cfg['data'].get('path')})"
            )
    path = ckpt.find_checkpoint(run_dir / "checkpoints", "latest")
    rt = runtime.setup(train_cfg.device, train_cfg.precision)
    changes = {
        k: (getattr(saved_train, k), getattr(train_cfg, k))
        for k in train_over
        if getattr(saved_train, k) != getattr(train_cfg, k)
    }
    if rt.is_main:
        if changes:
            print(
                "resuming with changed settings: "
                + ", ".join(f"train.{k} {a} -> {b}" for k, (a, b) in changes.items()),
                file=sys.stderr,
            )
            history = cfg.setdefault("resumes", [])
            history.append({"from": path.name, "changed": {k: list(v) for k, v in changes.items()}})
        cfg["train"] = train_cfg.to_dict()
        write_json(run_dir / "config.json", cfg)
    return _fit(ds, saved_model, train_cfg, run_dir, rt, path)


def cli(argv: list[str]) -> None:
    positionals = []
    while argv and not argv[0].startswith("-"):
        positionals.append(argv.pop(0))
    data = preset_name = None
    for arg in positionals:
        if Path(arg).is_dir() and data is None:
            data = arg
        elif preset_name is None and not Path(arg).exists() and "/" not in arg:
            preset_name = arg
        else:
            raise LmlabError(f"unexpected argument {arg!r}: usage is lmlab train DATA_DIR PRESET [options]")
    resume = _option_value(argv, "--resume")
    if resume is not None:
        cfg = _saved_config(Path(resume))
        default = TrainArgs(ModelConfig.from_dict(cfg["model"]), TrainConfig.from_dict(cfg["train"]), resume=resume)
    else:
        p = get_preset(preset_name or "baby")
        default = TrainArgs(p.model, preset_train_config(p))
    from lmlab.config import preset_names

    description = (
        f"{TrainArgs.__doc__}\n\nPRESET is one of {', '.join(preset_names())} (default baby); its values are the "
        "defaults shown below. Resume: lmlab train --resume RUN [--train.max-steps N ...]"
    )
    args = tyro.cli(TrainArgs, default=default, args=argv, prog="lmlab train DATA_DIR PRESET", description=description)
    if args.resume is not None:
        model_over = {
            f.name: getattr(args.model, f.name)
            for f in dataclasses.fields(ModelConfig)
            if getattr(args.model, f.name) != getattr(default.model, f.name)
        }
        train_over = {
            f.name: getattr(args.train, f.name)
            for f in dataclasses.fields(TrainConfig)
            if getattr(args.train, f.name) != getattr(default.train, f.name)
        }
        _resume(Path(args.resume), data, model_over, train_over)
        return
    if data is None:
        raise LmlabError(
            "give the dataset directory to train on: lmlab train DATA_DIR PRESET (make one with lmlab prepare)"
        )
    p = get_preset(preset_name or "baby")
    _start(Path(data), p, args.model, args.train, Path(args.out) if args.out else None)


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
