"""A run killed with SIGKILL and resumed ends bitwise identical to an uninterrupted one (CPU)."""

from __future__ import annotations

import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from tests.training.conftest import free_port, lmlab_subprocess, read_rows

COMMON = [
    "tiny",
    "--model.dropout",
    "0.1",
    "--train.max-steps",
    "300",
    "--train.save-every",
    "25",
    "--train.eval-every",
    "100",
    "--train.log-every",
    "1",
    "--train.keep-last",
    "20",
    "--train.no-progress",
    "--train.track",
    "none",
    "--train.sample-tokens",
    "10",
]


def final_weights(run):
    return load_file(str(run / "checkpoints" / "step-00000300" / "model.safetensors"))


def test_sigkill_then_resume_is_bitwise_identical(data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert lmlab_subprocess(["train", str(data), *COMMON, "--out", str(a)]).wait(timeout=300) == 0

    p = lmlab_subprocess(["train", str(data), *COMMON, "--out", str(b)], stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        metrics = b / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count("\n") >= 130:
            break
        time.sleep(0.01)
    p.kill()
    assert p.wait() == -9, "the run finished before it could be killed; the test proves nothing"
    killed_at = len(read_rows(b))
    assert 130 <= killed_at < 300

    assert lmlab_subprocess(["train", "--resume", str(b), "--train.no-progress"]).wait(timeout=300) == 0
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rows_a, rows_b = read_rows(a), read_rows(b)
    assert [r["step"] for r in rows_b] == list(range(1, 301))  # no gaps, no duplicates
    assert [r["train_loss"] for r in rows_a] == [r["train_loss"] for r in rows_b]
    assert [r.get("sample") for r in rows_a] == [r.get("sample") for r in rows_b]


def test_ddp_two_gloo_processes_match_one_process(data, tmp_path):
    common = [
        "--train.max-steps",
        "8",
        "--train.eval-every",
        "0",
        "--train.log-every",
        "1",
        "--train.warmup-steps",
        "2",
        "--train.no-progress",
        "--train.track",
        "none",
    ]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    args = ["train", str(data), "tiny", "--train.batch-size", "8", "--out", str(single), *common]
    assert lmlab_subprocess(args).wait(timeout=300) == 0
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "lmlab",
        "train",
        str(data),
        "tiny",
        "--train.batch-size",
        "4",
        "--out",
        str(ddp),
        *common,
    ]
    r = subprocess.run(
        torchrun, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows_s, rows_d = read_rows(single), read_rows(ddp)
    assert [r["step"] for r in rows_d] == list(range(1, 9))  # only rank 0 logs
    for rs, rd in zip(rows_s, rows_d):
        assert abs(rs["train_loss"] - rd["train_loss"]) < 1e-4 * rs["train_loss"]
        assert rd["tokens"] == rs["tokens"]
    ws = load_file(str(single / "checkpoints" / "step-00000008" / "model.safetensors"))
    wd = load_file(str(ddp / "checkpoints" / "step-00000008" / "model.safetensors"))
    assert all(torch.allclose(ws[k], wd[k], atol=1e-5) for k in ws)


def test_sigterm_saves_a_final_checkpoint_and_exits_with_143(data, tmp_path):
    import signal

    run = tmp_path / "run"
    args = [
        "train",
        str(data),
        "tiny",
        "--out",
        str(run),
        "--train.max-steps",
        "100000",
        "--train.save-every",
        "100000",
        "--train.eval-every",
        "0",
        "--train.log-every",
        "1",
        "--train.no-progress",
        "--train.track",
        "none",
    ]
    p = lmlab_subprocess(args, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(read_rows(run)) >= 20):
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err  # 128 + SIGTERM, after saving: not 0 as if it had finished
    assert "interrupted: step" in err and err.rstrip().endswith("lmlab train: terminated") and "Traceback" not in err
    from lmlab.checkpoint import find_checkpoint, read_state

    last = find_checkpoint(run / "checkpoints", "latest")
    step = read_state(last)["step"]
    assert step == read_rows(run)[-1]["step"] >= 20
    r = lmlab_subprocess(["train", "--resume", str(run), "--train.max-steps", str(step + 5), "--train.no-progress"])
    assert r.wait(timeout=120) == 0
    assert [row["step"] for row in read_rows(run)] == list(range(1, step + 6))
