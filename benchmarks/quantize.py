"""What weight-only quantization costs and buys: quality on a trained run, decode speed at GPT-2 small's shape.

    python -m benchmarks.quantize --run RUN [--eval-tokens 65536] [--batch 1 8] [--new-tokens 32] [--repeats 3]

Quality (with ``--run``, a trained GPT whose dataset is still where its config.json says): the run quantized by
``lmlab.quantize`` to int8 (RTN), int4 g128 (RTN and GPTQ), and int4 g128 GPTQ with the embeddings and head
quantized too, each compared with the run on the same first ``--eval-tokens`` validation tokens (perplexity
change, mean KL, top-1 agreement, file size); beside them torchao's ``Int8WeightOnlyConfig`` (and
``Int4WeightOnlyConfig`` where it runs) applied to the same linear layers, scored the same way.

Speed: the ``gpt2-124m`` preset's shape (12 layers, width 768, vocabulary 50,257) with random weights, decoding
``--new-tokens`` tokens (greedy: sampling adds the same fixed cost to every variant, about 1 ms a row per token
at this vocabulary) after 16-token prompts at each ``--batch`` through lmlab's engine, for the
fp32 model, lmlab's int8 and int4 g128 (head and embeddings kept, and quantized), and torchao's int8 applied to the
same lmlab model. Decode tokens/s = batch × (new tokens − 1) / (last token − first token); the variants alternate
for ``--repeats`` rounds and each keeps its best. Results go to benchmarks/results/quantize.json and, with
``--write-doc``, to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import machine_line, print_table, update_section, write_result

QUALITY = [  # (name, lmlab.quantize options)
    ("int8 rtn", dict(scheme="int8")),
    ("int4 g128 rtn", dict(scheme="int4", group_size=128)),
    ("int4 g128 gptq", dict(scheme="int4", group_size=128, method="gptq")),
    ("int4 g128 gptq, all", dict(scheme="int4", group_size=128, method="gptq", keep="none")),
]


def torchao_variant(model: nn.Module, scheme: str, head: bool = False) -> nn.Module | str:
    """``model`` with torchao's weight-only config applied to its linear layers (not the head unless ``head``),
    or why that does not run here (a one-line string)."""
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError as e:
        return f"torchao not installed ({e})"
    m = copy.deepcopy(model)
    if head and m.lm_head.weight is m.wte.weight:  # tied: the head gets its own copy, the table stays float
        m.lm_head.weight = nn.Parameter(m.wte.weight.detach().clone())
    config = Int8WeightOnlyConfig() if scheme == "int8" else Int4WeightOnlyConfig(group_size=128)
    try:
        quantize_(m, config, filter_fn=lambda mod, fqn: isinstance(mod, nn.Linear) and (head or fqn != "lm_head"))
        with torch.no_grad():
            m(torch.zeros(1, 4, dtype=torch.long))
    except Exception as e:  # noqa: BLE001 - whatever torchao raises on this machine is the finding
        return f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"
    return m


def quality(run: Path, eval_tokens: int, batch_size: int) -> list[dict]:
    import lmlab
    from lmlab.data.dataset import load_dataset
    from lmlab.eval.compare import compare_models, windows

    ref = lmlab.load(run)
    ds = load_dataset(ref.config["data"]["path"])
    batches = windows(ds.tokens("val"), ref.model.config.block_size, batch_size, eval_tokens, "cpu")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, opts in QUALITY:
            t0 = time.perf_counter()
            s = lmlab.quantize(run, Path(d) / name.replace(" ", "-").replace(",", ""), eval_tokens=eval_tokens,
                               batch_size=batch_size, **opts)  # fmt: skip
            rows.append(_row(f"lmlab {name}", s, time.perf_counter() - t0))
            print(f"  {rows[-1]}", file=sys.stderr)
    for scheme in ("int8", "int4"):
        t0 = time.perf_counter()
        m = torchao_variant(ref.model, scheme)
        if isinstance(m, str):
            rows.append({"variant": f"torchao {scheme} weight-only", "ppl": m})
            continue
        s = compare_models(m, ref.model, batches)
        rows.append(_row(f"torchao {scheme} weight-only", s, time.perf_counter() - t0))
        print(f"  {rows[-1]}", file=sys.stderr)
    return rows


def _row(name: str, s: dict, seconds: float) -> dict:
    row = {
        "variant": name, "ppl_ref": s["ppl_ref"], "ppl": s["ppl"], "ppl change %": f"{s['ppl_change_pct']:+.2f}",
        "KL": f"{s['kl']:.5f}", "top-1 %": f"{100 * s['top1_agreement']:.2f}", "seconds": round(seconds, 1),
    }  # fmt: skip
    if "size_ratio" in s:
        row |= {"MiB": f"{s['bytes'] / 2**20:.2f}", "x fp32 size": f"{s['size_ratio']:.3f}"}
    return row


def decode_tokens_per_s(model: nn.Module, batch: int, new_tokens: int, seed: int = 0) -> float:
    from lmlab.generation.engine import stream_ids
    from lmlab.generation.request import GenerationRequest

    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, model.config.vocab_size, (batch, 16), generator=g)
    steps = stream_ids(model, prompts.tolist(), GenerationRequest(max_new_tokens=new_tokens, temperature=0))
    next(steps)
    t1 = time.perf_counter()
    n = 1 + sum(1 for _ in steps)
    assert n == new_tokens, n
    return batch * (n - 1) / (time.perf_counter() - t1)


def speed(batches: list[int], new_tokens: int, repeats: int) -> list[dict]:
    from lmlab.config import get_preset
    from lmlab.models import build_model
    from lmlab.models.quant import QuantSpec, prepare, quantize_model

    cfg = dataclasses.replace(get_preset("gpt2-124m").model, vocab_size=50257, dropout=0.0)
    torch.manual_seed(0)
    fp32 = build_model(cfg).eval()

    def lmlab_variant(spec: QuantSpec) -> nn.Module:
        m = copy.deepcopy(fp32)
        quantize_model(m, spec)
        prepare(m)
        return m.eval()

    variants = {
        "fp32": lambda: fp32,
        "lmlab int8": lambda: lmlab_variant(QuantSpec("int8")),
        "lmlab int8, all": lambda: lmlab_variant(QuantSpec("int8", keep=())),
        "lmlab int4 g128": lambda: lmlab_variant(QuantSpec("int4", 128)),
        "lmlab int4 g128, all": lambda: lmlab_variant(QuantSpec("int4", 128, keep=())),
        "torchao int8": lambda: torchao_variant(fp32, "int8"),
        "torchao int8, head too": lambda: torchao_variant(fp32, "int8", head=True),
        "torchao int4": lambda: torchao_variant(fp32, "int4"),
    }
    best: dict[tuple[str, int], float] = {}
    notes: dict[str, str] = {}
    for r in range(repeats):
        for name, make in variants.items():
            if name in notes:
                continue
            m = make()
            if isinstance(m, str):
                notes[name] = m
                continue
            for b in batches:
                with torch.no_grad():
                    tps = decode_tokens_per_s(m, b, new_tokens, seed=r)
                best[name, b] = max(best.get((name, b), 0.0), tps)
            print(f"  round {r + 1}: {name}: " + ", ".join(f"b{b} {best[name, b]:.1f}" for b in batches),
                  file=sys.stderr)  # fmt: skip
            if m is not fp32:
                del m
                gc.collect()
    rows = []
    for name in variants:
        row: dict = {"variant": name}
        for b in batches:
            if name in notes:
                row[f"b{b} tok/s"] = notes[name] if b == batches[0] else ""
                continue
            row[f"b{b} tok/s"] = round(best[name, b], 1)
            row[f"b{b} x fp32"] = f"{best[name, b] / best['fp32', b]:.2f}x"
        rows.append(row)
    return rows


def distill_chain(teacher: Path, student: str, steps: int, batch_size: int, seed: int) -> list[dict]:
    """teacher → distilled student (and the same student on the data alone) → the distilled student quantized:
    file size, full validation loss, decode tokens/s at batch 1."""
    import lmlab
    from lmlab.eval.compare import weights_bytes

    data = lmlab.load(teacher).config["data"]["path"]
    rows = []

    def add(name: str, run: Path, seconds: float | None = None, params: int | None = None) -> None:
        loaded = lmlab.load(run)
        # a quantized model keeps its packed weights in buffers, so its parameter count is its source's
        params = loaded.model.num_params() if params is None else params
        val = lmlab.evaluate(run, out=Path(tmp) / f"{run.name}-eval.json")["loss"]
        with torch.no_grad():
            tps = decode_tokens_per_s(loaded.model, 1, min(32, loaded.model.config.block_size - 16))
        rows.append({
            "model": name, "params (M)": round(params / 1e6, 2),
            "MiB": f"{weights_bytes(loaded.checkpoint) / 2**20:.2f}", "val loss": f"{val:.4f}",
            "b1 tok/s": round(tps, 1), "train s": "" if seconds is None else round(seconds),
        })  # fmt: skip
        print(f"  {rows[-1]}", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        add("teacher", teacher)
        train = dict(max_steps=steps, batch_size=batch_size, eval_every=steps, progress=False, track="none", seed=seed)
        for name, alpha in ((f"{student}, distilled (alpha 0.5, T 2)", 0.5), (f"{student}, data alone", 0.0)):
            out = Path(tmp) / f"alpha{alpha}"
            t0 = time.perf_counter()
            lmlab.finetune(teacher, "distill", data, out=out, student=student, alpha=alpha, **train)
            add(name, out, time.perf_counter() - t0)
        student_params = lmlab.load(Path(tmp) / "alpha0.5").model.num_params()
        for scheme in ("int8", "int4"):
            q = Path(tmp) / f"q-{scheme}"
            lmlab.quantize(Path(tmp) / "alpha0.5", q, scheme=scheme, keep="none", eval_tokens=4096)
            add(f"{student}, distilled, {scheme} (all weights)", q, params=student_params)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quantize", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="a trained GPT run for the quality table")
    p.add_argument("--eval-tokens", type=int, default=65536)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--distill", metavar="PRESET", help="with --run: distill the run into this student preset")
    p.add_argument("--distill-steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--write-doc", action="store_true")
    a = p.parse_args()
    cmd = "python -m benchmarks.quantize " + " ".join(sys.argv[1:])
    out: dict = {"command": cmd}
    body = [f"`{cmd.strip()}` on {machine_line()}.", ""]
    if a.run is not None:
        print(f"quality: {a.run}", file=sys.stderr)
        rows = quality(a.run, a.eval_tokens, a.batch_size)
        out["quality"] = rows
        cols = ("variant", "ppl_ref", "ppl", "ppl change %", "KL", "top-1 %", "MiB", "x fp32 size")
        body += [f"Quality: {a.run.name}, first {a.eval_tokens:,} validation tokens", "", print_table(rows, cols), ""]
    if a.distill is not None and a.run is not None:
        print(f"distill: {a.run} -> {a.distill}", file=sys.stderr)
        rows = distill_chain(a.run, a.distill, a.distill_steps, a.batch_size, a.seed)
        out["distill"] = rows
        cols = ("model", "params (M)", "MiB", "val loss", "b1 tok/s", "train s")
        title = (
            f"Teacher → distilled → quantized: {a.distill} student, {a.distill_steps} steps of {a.batch_size} "
            f"windows, seed {a.seed}; full validation split"
        )
        body += [title, "", print_table(rows, cols), ""]
    if not a.no_speed:
        print("speed: gpt2-124m shape, random weights", file=sys.stderr)
        rows = speed(a.batch, a.new_tokens, a.repeats)
        out["speed"] = rows
        cols = ["variant"] + [c for b in a.batch for c in (f"b{b} tok/s", f"b{b} x fp32")]
        body += [f"Decode speed: gpt2-124m shape, {a.new_tokens} new tokens, best of {a.repeats}", "",
                 print_table(rows, cols)]  # fmt: skip
    write_result("quantize", out)
    if a.write_doc:
        update_section("quantize", "\n".join(body))


if __name__ == "__main__":
    main()
