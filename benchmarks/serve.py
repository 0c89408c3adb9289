"""`lmlab serve` under load: 1, 8, 32 and 64 concurrent streaming clients, against `transformers serve`.

    python -m benchmarks.serve [--clients 1 8 32 64] [--requests 64] [--models baby 10m] [--no-hf]

Each model is a run with random weights (speed does not depend on what the weights are) and tiny Shakespeare's
char tokenizer: ``baby`` (4 layers, width 128) and ``10m`` (6 layers, width 384, about 10.7M parameters), both with
``block_size`` 512 so that the mixed lengths fit. The server runs in its own process (``lmlab serve RUN --port P
--max-batch 64``), bound to 127.0.0.1; the load generator here is asyncio + httpx in this process. Each level sends
``--requests`` streaming chat-less completions (at least 2 per client), with prompt lengths drawn from 8 to 128
tokens and output lengths from 16 to 128 (seeded), no end-of-text stop (lmlab: ``ignore_eos``; transformers: the
export's ``eos_token_id`` removed) so every request must return exactly the tokens it asked for (checked: none
lost, none duplicated), plain sampling at temperature 1. Reported per level:

  agg tok/s   output tokens of all requests / wall time of the level
  ttft p50/p99  from sending the request to its first content chunk
  itl p50/p99   between consecutive content chunks of a request (one token each)

The same load then goes to ``transformers serve`` (Hugging Face's OpenAI-compatible server, with
``--continuous-batching``; it needs ``pip install accelerate``) on the same weights (``lmlab export-hf``), when it
starts here offline; otherwise the table says why. Bounded: every level stops after ``--timeout`` seconds. Two
cores: the server and the client share them, which is the machine's limit, not the server's. Results also go to
benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine_line, print_table, update_section, write_result

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / "shared" / "data" / "shakespeare" / "input.txt"
SHAPES = {"baby": dict(n_layer=4, n_head=4, n_embd=128), "10m": dict(n_layer=6, n_head=6, n_embd=384)}


def make_run(shape: str, out: Path) -> Path:
    import torch

    from lmlab.config import get_preset
    from lmlab.data.tokenizer import train_char
    from lmlab.models import build_model
    from lmlab.runs import save_run

    tok = train_char([SHAKESPEARE.read_text(encoding="utf-8")])
    cfg = dataclasses.replace(get_preset("baby").model, vocab_size=tok.vocab_size, block_size=512, dropout=0.0,
                              **SHAPES[shape])  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    save_run(out, model, tok)
    return out


def no_eos(hf_dir: Path) -> None:
    """No end-of-text token for transformers (what lmlab's ignore_eos does), so both return exactly max_tokens."""
    for name in ("config.json", "generation_config.json"):
        path = hf_dir / name
        if path.is_file():
            cfg = json.loads(path.read_text())
            cfg["eos_token_id"] = None
            path.write_text(json.dumps(cfg))


def workload(n: int, seed: int, prompts=(8, 128), outputs=(16, 128)) -> list[tuple[str, int]]:
    """``n`` (prompt, max_tokens): slices of tiny Shakespeare and output lengths, uniform in the given ranges."""
    rng = random.Random(seed)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    jobs = []
    for _ in range(n):
        length = rng.randint(*prompts)
        start = rng.randrange(0, len(text) - length)
        jobs.append((text[start : start + length], rng.randint(*outputs)))
    return jobs


async def one(client, url: str, model: str, prompt: str, max_tokens: int, seed: int, extra: dict) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 1.0,
            "seed": seed, "stream_options": {"include_usage": True}, **extra}  # fmt: skip
    t0 = time.perf_counter()
    stamps, tokens, usage = [], 0, None
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"error": f"{r.status_code} {(await r.aread())[:200]!r}"}
        buf = ""
        async for chunk in r.aiter_text():
            buf += chunk
            while "\n\n" in buf:
                event, buf = buf.split("\n\n", 1)
                data = event.removeprefix("data: ")
                if data == "[DONE]":
                    continue
                obj = json.loads(data)
                if obj.get("usage"):
                    usage = obj["usage"]
                for c in obj.get("choices", []):
                    if c.get("text"):
                        stamps.append(time.perf_counter())
                        tokens += len(c["text"])  # char tokenizer: one character per token
    got = usage["completion_tokens"] if usage else None
    return {"ttft": stamps[0] - t0 if stamps else None, "gaps": [b - a for a, b in zip(stamps, stamps[1:])],
            "tokens": got, "asked": max_tokens, "chars": tokens}  # fmt: skip


async def level(url: str, model: str, clients: int, requests: int, seed: int, timeout: float, extra: dict,
                prompts=(8, 128), outputs=(16, 128)) -> dict:  # fmt: skip
    import httpx

    jobs = workload(max(requests, 2 * clients), seed, prompts, outputs)
    queue = list(enumerate(jobs))
    results: list[dict] = []

    async def worker(client):
        while queue:
            i, (prompt, n) = queue.pop()
            results.append(await one(client, url, model, prompt, n, seed + i, extra))

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(clients))), timeout)
        except asyncio.TimeoutError:
            pass
        wall = time.perf_counter() - t0
    errors = [r["error"] for r in results if "error" in r]
    ok = [r for r in results if "error" not in r]
    exact = sum(1 for r in ok if r["tokens"] == r["asked"])
    ttft = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
    gaps = sorted(g for r in ok for g in r["gaps"])
    out_tokens = sum(r["tokens"] or 0 for r in ok)

    def q(xs, p):
        return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")

    return {"clients": clients, "requests": len(jobs), "done": len(ok), "exact": exact, "errors": errors[:3],
            "wall_s": wall, "agg_tok_s": out_tokens / wall, "ttft_p50": q(ttft, 0.5), "ttft_p99": q(ttft, 0.99),
            "itl_p50": q(gaps, 0.5), "itl_p99": q(gaps, 0.99),
            "itl_mean": statistics.fmean(gaps) if gaps else 0}  # fmt: skip


def wait_up(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the server did not come up")


def free_port() -> int:
    from lmlab.serving.server import free_port as fp

    return fp()


def run_server(cmd: list[str], url: str, env: dict, startup: float):
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_up(url, proc, startup)
    except RuntimeError as e:
        proc.kill()
        proc.wait()
        log.seek(0)
        tail = log.read()[-400:].strip().splitlines()
        raise RuntimeError(f"{e}: {tail[-1] if tail else ''}") from None
    return proc


def bench(args) -> list[dict]:
    rows = []
    work = Path(tempfile.mkdtemp(prefix="lmlab-serve-bench-"))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONUNBUFFERED="1")  # fmt: skip
    try:
        for shape in args.models:
            run = make_run(shape, work / shape)
            servers = [("lmlab", [sys.executable, "-m", "lmlab", "serve", str(run), "--max-batch", "64",
                                  "--max-queue", "256", "--device", "cpu"])]  # fmt: skip
            if not args.no_hf:
                hf_dir = work / f"{shape}-hf"
                subprocess.run([sys.executable, "-m", "lmlab", "export-hf", str(run), str(hf_dir)], check=True,
                               capture_output=True)  # fmt: skip
                no_eos(hf_dir)
                exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
                servers.append(("transformers serve", [exe, "serve", str(hf_dir), "--continuous-batching",
                                                       "--device", "cpu", "--dtype", "float32"]))  # fmt: skip
            for name, cmd in servers:
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                cmd = [*cmd, "--port", str(port), "--host", "127.0.0.1"]
                model = shape if name == "lmlab" else str(work / f"{shape}-hf")
                try:
                    proc = run_server(cmd, url, env, args.startup)
                except RuntimeError as e:
                    rows.append({"server": name, "model": shape, "note": f"did not run: {e}"})
                    print(f"{name} on {shape}: did not run: {e}", file=sys.stderr)
                    continue
                try:
                    for clients in args.clients:
                        extra = {"ignore_eos": True} if name == "lmlab" else {}  # HF: its export has no eos
                        r = asyncio.run(level(url, model, clients, args.requests, args.seed, args.timeout, extra))
                        r.update(server=name, model=shape)
                        rows.append(r)
                        print(f"{name:>18} {shape:>5} {clients:>3} clients: {r['agg_tok_s']:8.0f} tok/s  "
                              f"ttft p50 {r['ttft_p50']:.3f}s p99 {r['ttft_p99']:.3f}s  itl p50 "
                              f"{1000 * r['itl_p50']:.1f}ms  {r['exact']}/{r['requests']} exact"
                              + (f"  errors: {r['errors']}" if r["errors"] else ""), file=sys.stderr)  # fmt: skip
                finally:
                    proc.terminate()
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--requests", type=int, default=64, help="requests per level (at least 2 per client)")
    p.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--no-hf", action="store_true", help="skip transformers serve")
    p.add_argument("--threads", type=int, default=2, help="OMP threads of each server")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a level may take")
    p.add_argument("--startup", type=float, default=120.0, help="seconds a server may take to start")
    p.add_argument("--no-doc", action="store_true", help="do not rewrite the section in BENCHMARKS.md")
    args = p.parse_args(argv)
    rows = bench(args)
    table_rows = []
    for r in rows:
        if "note" in r:
            table_rows.append({"server": r["server"], "model": r["model"], "clients": "-", "tok/s": r["note"]})
            continue
        one = next((x for x in rows if x.get("server") == r["server"] and x.get("model") == r["model"]
                    and x.get("clients") == 1), None)  # fmt: skip
        table_rows.append({
            "server": r["server"], "model": r["model"], "clients": r["clients"], "tok/s": f"{r['agg_tok_s']:.0f}",
            "x one stream": f"{r['agg_tok_s'] / one['agg_tok_s']:.1f}" if one else "",
            "ttft p50 / p99 (s)": f"{r['ttft_p50']:.3f} / {r['ttft_p99']:.3f}",
            "itl p50 / p99 (ms)": f"{1000 * r['itl_p50']:.1f} / {1000 * r['itl_p99']:.1f}",
            "complete": f"{r['exact']}/{r['requests']}",
        })  # fmt: skip
    cols = ["server", "model", "clients", "tok/s", "x one stream", "ttft p50 / p99 (s)", "itl p50 / p99 (ms)",
            "complete"]  # fmt: skip
    table = print_table(table_rows, cols)
    cmd = "python -m benchmarks.serve " + " ".join(argv if argv is not None else sys.argv[1:])
    write_result("serve", {"rows": rows, "command": cmd})
    if not args.no_doc:
        update_section("serve", f"Command: `{cmd.strip()}`\n\n{machine_line()}\n\n{table}\n")


if __name__ == "__main__":
    main()
