"""What every experiment does: run lmlab commands in a workspace, reuse what an earlier run already made, and
write its results table (markdown and JSON) and figure.

An experiment is a script of ordinary lmlab commands (``prepare``, ``train``, ``finetune`` ...), each run as a
child process ``python -m lmlab ...``: the user can rerun any step by hand (every command is appended to
``commands.txt``), a failing step reports its own one-line error, and each step's peak memory is its own. A
step's output directory is named by a hash of its arguments, so a changed setting makes a new directory and an
unchanged one is reused: a finished run is skipped, an interrupted one resumed. The workspace is locked while
an experiment runs (one writer at a time).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab import checkpoint as ckpt
from lmlab import io
from lmlab.errors import LmlabError


@dataclass
class Step:
    """A finished command: its output directory, wall time and peak resident memory (None when reused)."""

    path: Path
    seconds: float | None
    peak_rss_mb: float | None
    reused: bool


def spec_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]


def require(path: str | Path, what: str, option: str) -> Path:
    """``path`` if it exists, else a one-line error naming the option that gives it."""
    p = Path(path)
    if not p.exists():
        raise LmlabError(f"{option} {p}: no such file or directory; give the path to {what}")
    return p


def pick_size(sizes: dict[str, Any], size: str | None, quick: bool) -> tuple[str, Any]:
    """The (name, settings) of an experiment's size: ``size`` if given, else quick or full."""
    name = size or ("quick" if quick else "full")
    if name not in sizes:
        raise LmlabError(f"unknown size {name!r}; sizes are {', '.join(sizes)}")
    return name, sizes[name]


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


class Workspace:
    """The directory an experiment writes into, locked while it runs; runs lmlab commands in child processes."""

    def __init__(self, root: str | Path, *, device: str = "auto", quiet: bool = False) -> None:
        from lmlab.runtime import pick_device

        pick_device(device)  # an unknown or missing device fails here, not in the first training step
        self.root = Path(root)
        self.device = device
        self.quiet = quiet
        self._lock = io.DirLock(self.root, "experiment directory")

    def __enter__(self) -> Workspace:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LmlabError(f"cannot create the experiment directory {self.root}: {e.strerror or e}") from None
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def say(self, message: str) -> None:
        print(f"[experiment] {message}", file=sys.stderr, flush=True)

    def lmlab(self, argv: Sequence[str]) -> tuple[float, float]:
        """Run ``lmlab ARGV`` as a child process; (seconds, peak RSS in MB). Its output goes to our stderr; a
        failure raises the child's last error line, an interrupted step (Ctrl-C) KeyboardInterrupt: the next run of
        the experiment resumes it."""
        argv = [str(a) for a in argv]
        line = "lmlab " + " ".join(shlex.quote(a) for a in argv)
        with open(self.root / "commands.txt", "a", encoding="utf-8") as f:
            f.write(line + "\n")
        self.say(line)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "lmlab", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        tail = b""
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read1(4096):
                tail = (tail + chunk)[-4096:]
                if not self.quiet:
                    sys.stderr.write(text.decode(chunk))
                    sys.stderr.flush()
        except KeyboardInterrupt:  # the step got the Ctrl-C too: let it write its checkpoint before we stop
            proc.wait()
            raise
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        if proc.returncode in (130, -signal.SIGINT):  # Ctrl-C reached the step too; it kept its last checkpoint
            raise KeyboardInterrupt
        if proc.returncode != 0:
            last = [ln for ln in tail.decode(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
            why = last[-1].strip() if last else f"exit status {proc.returncode}"
            raise LmlabError(f"step failed ({line}): {why}")
        return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux

    def prepared(self, name: str, argv: Sequence[str]) -> Path:
        """A dataset made by ``lmlab prepare ARGV --out data/NAME-HASH``, reused when it exists."""
        out = self.root / "data" / f"{name}-{spec_hash(list(argv))}"
        if not (out / "meta.json").is_file():
            self.lmlab(["prepare", *argv, "--out", out])
        else:
            self.say(f"reusing {out}")
        return out

    def trained(self, kind: str, argv: Sequence[str], *, resume_argv: Sequence[str] = ("train", "--resume")) -> Step:
        """A run made by ``lmlab ARGV --out DIR`` (``train`` or ``finetune``): reused when finished, resumed when
        it stopped after a checkpoint, started otherwise. DIR is KIND-HASH of the arguments."""
        out = self.root / kind.split("/")[0] / f"{kind.split('/')[-1]}-{spec_hash(list(argv))}"
        if run_finished(out):
            self.say(f"reusing {out}")
            return Step(out, None, None, True)
        if has_checkpoint(out):
            seconds, rss = self.lmlab([*resume_argv, out])
        else:
            seconds, rss = self.lmlab([*argv, "--out", out, "--train.device", self.device])
        return Step(out, seconds, rss, False)

    def scored(self, run: Path, data: Path) -> dict[str, Any]:
        """A classifier run's scores on the labeled file ``data`` with its best checkpoint (``lmlab eval RUN
        --data DATA``), reused while that checkpoint is the same."""
        best = ckpt.find_checkpoint(run / "checkpoints")
        out = run / f"eval-{spec_hash(str(data), best.name)}.json"
        if not out.is_file():
            self.lmlab(["eval", run, "--data", data, "--out", out, "--device", self.device])
        return io.read_json(out)

    def write_results(self, name: str, results: dict[str, Any], markdown: str) -> tuple[Path, Path]:
        """Write ``NAME.json`` and ``NAME.md`` in the workspace, atomically."""
        js, md = self.root / f"{name}.json", self.root / f"{name}.md"
        io.write_json(js, results)
        io.write_text(md, markdown)
        return js, md


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def best_metrics(run: Path) -> dict[str, float]:
    """The evaluation metrics of a run's best checkpoint (else its latest), from the checkpoints' index.json."""
    path = ckpt.find_checkpoint(run / "checkpoints")
    metrics = ckpt.read_index(run / "checkpoints").get(path.name, {}).get("metrics") or {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def step_seconds(run: Path) -> float | None:
    """Median seconds per optimizer step over a run's logged training windows (tokens per step / tokens per
    second of each logged row; evaluation time is not counted). None if the run logged no throughput."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    from lmlab.training.tracking import read_metrics

    rows = read_metrics(path)
    times = sorted(r["tokens"] / r["step"] / r["tok_per_s"] for r in rows if r.get("tok_per_s") and r.get("step"))
    return times[len(times) // 2] if times else None


def bar_chart(path: Path, labels: Sequence[str], means: Sequence[float], stds: Sequence[float], *, ylabel: str,
              title: str, reference: Sequence[float | None] | None = None,
              legend: tuple[str, str] = ("measured (mean ± std over seeds)", "published")) -> Path:  # fmt: skip
    """A bar per row (mean, with ±std error bars), a hollow marker at a reference figure (published, or chance);
    ``legend`` names the two. Written atomically."""
    from lmlab.figures import pyplot, save_png

    fig, ax = pyplot().subplots(figsize=(1.6 + 1.5 * len(labels), 4.2))
    xs = range(len(labels))
    ax.bar(xs, means, yerr=stds if any(stds) else None, capsize=5, color="#4c72b0", label=legend[0])
    if reference is not None and any(r is not None for r in reference):
        pts = [(x, r) for x, r in zip(xs, reference) if r is not None]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="D", facecolors="none", edgecolors="#c44e52",
                   s=60, zorder=3, label=legend[1])  # fmt: skip
    ax.set_xticks(list(xs), labels, rotation=15, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.figure.tight_layout()
    return save_png(ax.figure, path)
