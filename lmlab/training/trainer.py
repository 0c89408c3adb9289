"""The one training loop, used by pretraining, translation and every fine-tuning method.

What is trained on, and how the loss and the evaluation metrics are computed, comes from an
*objective* (``lmlab.objectives``: language modeling, translation, ...), so each method plugs in its
own batches and loss without a second loop. The loop owns everything else: the optimizer and
schedule, gradient accumulation, mixed precision, clipping, evaluation, checkpoints, tracking,
signals and resume. Those parts are separate objects (``CheckpointManager``, ``make_tracker``,
``StopRequest``, ``make_adamw``/``lr_at``, ``Runtime``) so that a second kind of loop (RL's rollout
→ score → update) is built from the same parts rather than copied.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmlab import checkpoint as ckpt
from lmlab import runtime
from lmlab.config import TrainConfig
from lmlab.errors import LmlabError, did_you_mean
from lmlab.objectives.base import Batches, LossOut, Objective
from lmlab.training.energy import EnergyMeter, kwh
from lmlab.training.optim import lr_at, make_optimizer
from lmlab.training.signals import StopRequest
from lmlab.training.tracking import make_tracker


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    tokens_seen: int
    status: str  # finished | interrupted
    metrics: dict[str, Any] = field(default_factory=dict)  # the last evaluation
    best: dict[str, Any] = field(default_factory=dict)  # best checkpoint name and metric
    signum: int | None = None  # the signal that interrupted it (SIGINT or SIGTERM)
    energy_kwh: float = 0.0  # energy of the whole run, resumes included
    co2_kg: float = 0.0  # its estimated CO2
    energy_source: str = ""  # rapl | nvml | estimate, and how (EnergyMeter.describe)

    def raise_if_interrupted(self) -> None:
        """After an interrupted run was saved and reported: KeyboardInterrupt (Ctrl-C) or Terminated (SIGTERM), so
        that a caller stops too and the CLI exits with 130 or 143 instead of 0 as if the run had finished."""
        if self.status != "interrupted":
            return
        import signal

        from lmlab.errors import Terminated

        raise Terminated() if self.signum == signal.SIGTERM else KeyboardInterrupt()


class Trainer:
    """Runs the optimization of ``model`` on ``objective`` per ``cfg``, writing into ``run_dir``."""

    def __init__(
        self,
        model: torch.nn.Module,
        objective: Objective,
        cfg: TrainConfig,
        run_dir: str | Path,
        rt: runtime.Runtime,
        *,
        resume_from: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        run_name: str = "",
    ):
        self.cfg, self.objective, self.rt = cfg, objective, rt
        self.run_dir = Path(run_dir)
        self.clock = clock
        self.run_name = run_name or self.run_dir.name
        self.model = model.to(rt.device)
        self.raw_model = self.model
        # real tokens per micro-batch: translation pairs are shorter than block_size, and padding does not count
        tokens_per_micro = cfg.batch_size * objective.tokens_per_sequence * rt.world_size
        if cfg.tokens_per_step:
            self.accum = max(1, round(cfg.tokens_per_step / tokens_per_micro))
            # a micro-batch of whole windows has an exact size: a target that is not a multiple of it is refused
            # rather than silently rounded (pairs of sentences vary in length: there it is the nearest multiple)
            exact = float(tokens_per_micro).is_integer()
            if cfg.tokens_per_step < tokens_per_micro or (exact and cfg.tokens_per_step % int(tokens_per_micro)):
                lo = max(1, cfg.tokens_per_step // int(tokens_per_micro)) * int(tokens_per_micro)
                raise LmlabError(
                    f"--train.tokens-per-step {cfg.tokens_per_step:,} cannot be met: one micro-batch is "
                    f"{int(tokens_per_micro):,} tokens ({cfg.batch_size} sequences x {objective.tokens_per_sequence:g} "
                    f"tokens x {rt.world_size} processes); use a multiple of it (e.g. {lo:,} or "
                    f"{lo + int(tokens_per_micro):,}) or change --train.batch-size"
                )
        else:
            self.accum = cfg.grad_accum
        self.tokens_per_step = tokens_per_micro * self.accum
        self.optimizer = make_optimizer(model, cfg, rt.device)
        self.scaler = torch.amp.GradScaler(rt.device.type) if rt.precision == "fp16" else None
        self.train_loader = self._batches("train")
        # fail now, not at the first evaluation, when the validation split cannot fill one batch
        self.eval_batches = min(cfg.eval_steps, self._val_loader().batches_per_epoch)
        reported = list(objective.metric_names)  # a typo would otherwise never mark a best
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
        self.energy_before = 0.0  # joules of the run before this process (resume)
        self.meter = EnergyMeter(rt.device.type, torch.get_num_threads(), cfg.power_watts,
                                 device_index=rt.device.index or 0, clock=clock)  # fmt: skip
        self.fit_start = clock()
        self.last_eval: dict[str, Any] = {}
        self.skipped_steps = 0
        self.window: dict[str, Any] = {"loss_sum": torch.zeros(()), "log_sums": {}, "steps": 0, "good": 0}
        if resume_from is not None:
            self._restore(resume_from)
        if rt.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(
                self.model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
            )
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.stop = StopRequest()
        # created now, so a missing tracker package fails before any training
        self.tracker = make_tracker(self.run_dir, cfg, self.step, self.run_name) if rt.is_main else None

    # -- pieces ----------------------------------------------------------------------------
    def _batches(self, split: str) -> Batches:
        rt = self.rt
        return self.objective.batches(
            split, batch_size=self.cfg.batch_size, seed=self.cfg.seed, rank=rt.rank, world_size=rt.world_size,
            device=rt.device,
        )  # fmt: skip

    def _val_loader(self) -> Batches:
        return self._batches("val")

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
            "energy_j": self.energy_joules(),
            "log_window": {
                "loss_sum": self.window["loss_sum"].detach().cpu().clone(),
                "log_sums": {k: v.detach().cpu().clone() for k, v in self.window["log_sums"].items()},
                "steps": self.window["steps"],
                "good": self.window["good"],
            },
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
        self.energy_before = float(state.get("energy_j", 0.0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if "log_window" in state:  # older checkpoints: the window restarts
            self.window = dict(state["log_window"])

    def energy_joules(self) -> float:
        """Joules used by the run so far, across resumes (``lmlab.training.energy``)."""
        return self.energy_before + self.meter.joules()

    def _energy(self) -> dict[str, float]:
        used = kwh(self.energy_joules())
        return {"energy_kwh": used, "co2_kg": used * self.cfg.carbon_intensity / 1000}

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

    def _all_mean(self, value: torch.Tensor) -> float:
        if self.rt.distributed:
            value = value.clone()
            self._all_mean_(value)
        return float(value.item())

    def _all_mean_(self, value: torch.Tensor) -> None:
        """Replace ``value`` by its mean over the processes, in place."""
        import torch.distributed as dist

        dist.all_reduce(value, op=dist.ReduceOp.AVG if self.rt.device.type == "cuda" else dist.ReduceOp.SUM)
        if self.rt.device.type != "cuda":  # gloo has no AVG
            value /= self.rt.world_size

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The objective's metrics over the same first ``eval_steps`` validation batches every time, each
        averaged over the processes."""
        self.model.eval()
        loader = self._val_loader()
        outs = []
        for _ in range(self.eval_batches):
            with self.rt.autocast():
                outs.append(self.objective.loss(self.raw_model, next(loader)))
        self.model.train()
        return self.objective.reduce(self._across_ranks(outs) if self.rt.distributed else outs)

    def _across_ranks(self, outs: list[LossOut]) -> list[LossOut]:
        """Every rank's results of batch i as one: the mean loss, summed token counts and metrics (metrics are
        counts or sums by contract, so that ``reduce`` sees the whole validation set on every rank)."""
        import torch.distributed as dist

        losses = torch.stack([o.loss.float() for o in outs])
        self._all_mean_(losses)
        merged = []
        for i, o in enumerate(outs):
            values = {"n_tokens": o.n_tokens, **o.metrics}
            parts = {k: torch.as_tensor(v, dtype=torch.float64, device=self.rt.device) for k, v in values.items()}
            for t in parts.values():
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
            n = parts.pop("n_tokens")
            merged.append(LossOut(losses[i], n, parts))
        return merged

    @torch.no_grad()
    def sample_text(self, n_tokens: int) -> str:
        """The objective's sample for the log, seeded per step (the global RNG is untouched)."""
        if n_tokens <= 0:
            return ""
        self.raw_model.eval()
        try:
            return self.objective.sample(self.raw_model, n_tokens=n_tokens, seed=self.cfg.seed + self.step, rt=self.rt)
        finally:
            self.raw_model.train()

    def _save(self, metrics: dict[str, Any]) -> Path | None:
        if not self.rt.is_main:
            return None
        state = {"tokens_seen": self.tokens_seen, "metrics": metrics, "time": time.time()}
        try:
            return self.ckpts.save(self.step, self.raw_model, state, self._trainer_state())
        except (OSError, LmlabError) as e:
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
            raise LmlabError(
                f"could not save the checkpoint of step {self.step} ({reason}); the earlier checkpoints "
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
        self.meter.reset()
        window_start = self.fit_start
        # the log window (the steps since the last log row): restored on resume, so that the row after a resume
        # averages the same steps as an uninterrupted run's. good = not skipped (non-finite)
        w = self.window
        loss_sum = w["loss_sum"].to(rt.device)
        log_sums: dict[str, torch.Tensor] = {k: v.to(rt.device) for k, v in w["log_sums"].items()}
        window_steps, window_good = w["steps"], w["good"]
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
                            out = self.objective.loss(self.model, batch)
                            loss = out.loss / self.accum
                        (self.scaler.scale(loss) if self.scaler else loss).backward()
                    step_loss += loss.detach().float()
                    for k, v in out.log.items():  # on the device: summed without a sync until the log line
                        log_sums[k] = log_sums.get(k, 0.0) + v.detach().float() / self.accum
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
                self.window = {"loss_sum": loss_sum, "log_sums": log_sums, "steps": window_steps, "good": window_good}
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
                    row.update({f"train_{k}": self._all_mean(v / window_steps) for k, v in log_sums.items()})
                    log_sums.clear()
                    if self.skipped_steps:
                        row["skipped_steps"] = self.skipped_steps
                    if bar is not None:
                        loss_text = f"loss {row['train_loss']:.4f}  " if "train_loss" in row else ""
                        bar.set_postfix_str(f"{loss_text}{tps / 1000:.1f}k tok/s", refresh=False)
                    loss_sum.zero_()
                    window_steps = window_good = 0
                    window_start = self.clock()
                    self.window = {"loss_sum": loss_sum, "log_sums": log_sums, "steps": 0, "good": 0}
                eval_due = (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.max_steps
                save_due = self.ckpts.due(self.step) or self.step == cfg.max_steps or (eval_due and not cfg.save_every)
                paused = self.clock()  # time spent saving and evaluating does not count against tokens/s
                if save_due:
                    self._save(dict(row))  # before evaluating, so a crash in evaluation loses nothing
                if eval_due:
                    row.update(self._evaluate_and_report(bar))
                window_start += self.clock() - paused
                if row and tracker is not None:
                    seen = {"tokens": self.tokens_seen, "elapsed_s": self.elapsed(), **self._energy()}  # one moment
                    tracker.log(self.step, {**seen, **row})
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
        result = TrainResult(self.run_dir, self.step, self.tokens_seen, status, self.last_eval, signum=self.stop.signum,
                             energy_source=self.meter.describe(), **self._energy())  # fmt: skip
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
