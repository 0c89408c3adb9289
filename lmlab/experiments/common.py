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

import torch

from lmlab import checkpoint as ckpt
from lmlab import io
from lmlab.errors import LmlabError
from lmlab.runs import has_checkpoint, run_finished


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


SHAKESPEARE = "../shared/data/shakespeare/input.txt"  # the default --text of the experiments that train on text


def text_source(text: str | Path) -> Path:
    """``--text``, the text file an experiment trains on, or its one-line error."""
    return require(text, f"a text file to train on ({SHAKESPEARE})", "--text")


def pick_size(sizes: dict[str, Any], size: str | None, quick: bool) -> tuple[str, Any]:
    """The (name, settings) of an experiment's size: ``size`` if given, else quick or full."""
    name = size or ("quick" if quick else "full")
    if name not in sizes:
        raise LmlabError(f"unknown size {name!r}; sizes are {', '.join(sizes)}")
    return name, sizes[name]


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

    def evaluated(self, run: Path, checkpoint: str | None = None, batch_size: int = 64) -> dict[str, Any]:
        """A language model's loss on its whole validation split (``lmlab eval RUN``) with its best checkpoint (or
        ``checkpoint``), reused while that checkpoint is the same."""
        which = ckpt.find_checkpoint(run / "checkpoints", checkpoint)
        out = run / f"eval-val-{which.name}.json"
        if not out.is_file():  # in this process: a second of work does not need a child's seconds of start-up
            from lmlab.api import evaluate

            argv = ["eval", run, "--checkpoint", which.name, "--batch-size", batch_size, "--out", out, "--device",
                    self.device]  # fmt: skip
            with open(self.root / "commands.txt", "a", encoding="utf-8") as f:
                f.write("lmlab " + " ".join(shlex.quote(str(a)) for a in argv) + "\n")
            evaluate(run, checkpoint=which.name, batch_size=batch_size, out=out, device=self.device)
        return io.read_json(out)

    def char_dataset(self, text: Path) -> Path:
        """``text`` prepared as a character-level dataset in the workspace (shared by the experiments on text)."""
        return self.prepared("text-char", [Path(text).resolve(), "--tokenizer", "char", "--quiet"])

    def write_results(self, name: str, results: dict[str, Any], markdown: str) -> tuple[Path, Path]:
        """Write ``NAME.json`` and ``NAME.md`` in the workspace, atomically."""
        js, md = self.root / f"{name}.json", self.root / f"{name}.md"
        io.write_json(js, results)
        io.write_text(md, markdown)
        return js, md

    def finish(self, name: str, results: dict[str, Any], markdown: str, figures: Sequence[Path],
               command: str) -> dict[str, Any]:  # fmt: skip
        """Write the results (with the command that reruns them and the versions), print the table, return them."""
        results = {**results, "command": command, "versions": versions(), "figures": [str(f) for f in figures]}
        markdown += f"\nCommand: `{command}`\n"
        js, mdp = self.write_results(name, results, markdown)
        self.say(f"wrote {mdp}, {js} and {', '.join(map(str, figures))}")
        print(markdown)
        return results


def command_line(name: str, *positional: Any, **options: Any) -> str:
    """The ``lmlab experiment`` command that reruns an experiment with ``options`` (recorded in its results)."""
    parts = ["lmlab", "experiment", name, *(str(p) for p in positional if p is not None)]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts += [flag] if value else []
        elif value is not None:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def versions() -> dict[str, str]:
    """The versions an experiment ran with: lmlab, PyTorch, Python, and the machine's CPU count."""
    import platform

    import torch

    from lmlab import __version__

    return {"lmlab": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpus": str(os.cpu_count())}  # fmt: skip


def text_file(ws: Workspace, stem: str, text: str, suffix: str) -> Path:
    """``text`` in the workspace's data directory, named by a hash of its content (so a changed generator writes a
    new file and the datasets made from it are new too); written once, atomically."""
    path = ws.root / "data" / f"{stem}-{hashlib.sha256(text.encode()).hexdigest()[:8]}{suffix}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        io.write_text(path, text)
    return path


def records_file(ws: Workspace, stem: str, records: Sequence[dict[str, Any]]) -> Path:
    """``records`` as a JSONL file in the workspace's data directory (see ``text_file``)."""
    return text_file(ws, stem, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), ".jsonl")


def metric_rows(run: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl (training windows and evaluations), oldest first."""
    from lmlab.training.tracking import read_metrics

    return read_metrics(run / "metrics.jsonl")


def greedy_answers(run: str | Path, prompts: Sequence[str], *, max_new_tokens: int = 24,
                   batch_size: int = 64) -> list[tuple[str, bool]]:  # fmt: skip
    """(answer, ended) of run ``run`` for each prompt, greedy, batched. A chat model (an SFT run) answers through
    the chat template and its reply ends at <|end|>; a base model continues ``PROMPT\\nAnswer:`` and its first line
    is the answer (its fairest zero-shot reading; ended is then whether it wrote a newline)."""
    from lmlab.data.tokenizer import END
    from lmlab.generation.chat import chat_prompt, uses_template
    from lmlab.generation.engine import generate_ids
    from lmlab.generation.request import GenerationRequest
    from lmlab.generation.text import detokenizer_for, encode_prompt
    from lmlab.runs import load

    loaded = load(run)
    tok, model = loaded.tokenizer, loaded.model
    budget = model.config.block_size - max_new_tokens
    template = uses_template(loaded.config)
    end = tok.token_to_id(END)
    if template:
        ids = [chat_prompt(tok, [{"role": "user", "content": p}], budget)[0] for p in prompts]
        request = GenerationRequest(temperature=0.0, max_new_tokens=max_new_tokens, stop_token_ids=(end,))
    else:
        ids = [encode_prompt(tok, p + "\nAnswer:")[-budget:] for p in prompts]
        request = GenerationRequest(temperature=0.0, max_new_tokens=max_new_tokens, stop=("\n",))
    out: list[tuple[str, bool]] = []
    for i in range(0, len(ids), batch_size):
        done = generate_ids(model, ids[i : i + batch_size], request, detokenizer=detokenizer_for(tok))
        for c in done:
            ended = c.finish_reason == "stop" and (c.stop == end if template else True)
            out.append((c.text.strip(), ended))
    return out


def val_windows(data: Path, length: int, count: int, seed: int) -> torch.Tensor:
    """``count`` windows of ``length + 1`` tokens (inputs and next-token targets) from a dataset's validation
    split, at seeded random offsets: (count, length + 1) int64."""
    import numpy as np

    from lmlab.data.dataset import load_dataset

    tokens = load_dataset(data).tokens("val")
    if len(tokens) <= length + 1:
        raise LmlabError(f"the validation split of {data} has {len(tokens)} tokens, too few for windows of {length}")
    starts = np.random.default_rng(seed).integers(0, len(tokens) - length - 1, size=count)
    return torch.from_numpy(np.stack([tokens[s : s + length + 1].astype(np.int64) for s in starts]))


@torch.no_grad()
def per_position_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 32) -> list[float]:
    """The mean next-token loss at each position of ``windows`` (N, T + 1), positions 0 … T − 1."""
    import torch.nn.functional as F

    model.eval()
    total = torch.zeros(windows.size(1) - 1, dtype=torch.float64)
    for i in range(0, len(windows), batch_size):
        w = windows[i : i + batch_size]
        logits = model(w[:, :-1]).logits  # (B, T, V)
        loss = F.cross_entropy(logits.transpose(1, 2).float(), w[:, 1:], reduction="none")  # (B, T)
        total += loss.sum(0).double()
    return (total / len(windows)).tolist()


def train_seconds(run: Path) -> float | None:
    """Seconds a run spent training (its last logged ``elapsed_s``; resumes included), the same when it is reused."""
    rows = [r for r in metric_rows(run) if "elapsed_s" in r]
    return rows[-1]["elapsed_s"] if rows else None


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
