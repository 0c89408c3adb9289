"""`lmlab eval RUN_Q --compare RUN`: what a quantized (or any smaller) run costs against its reference.

Reported as llama.cpp's perplexity and KL-divergence tools do: file size of both, perplexity of both on the
same windows and its change in percent, the mean KL divergence KL(P_ref ‖ P_run) of the next-token
distributions, top-1 agreement (how often both put the same token first), and with ``per_layer`` each
quantized layer's relative weight error ‖W − Ŵ‖/‖W‖ and relative output error ‖xWᵀ − xŴᵀ‖/‖xWᵀ‖ on the
reference model's own inputs to that layer.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError


def weights_bytes(checkpoint: Path) -> int:
    from lmlab.checkpoint import WEIGHTS

    return (Path(checkpoint) / WEIGHTS).stat().st_size


def windows(tokens, block: int, batch_size: int, max_tokens: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive non-overlapping windows from the start of ``tokens``: at most ``max_tokens`` targets (0 = all)."""
    from lmlab.data.loader import BatchLoader

    loader = BatchLoader(tokens, batch_size, block, shuffle=False, device=device, name="compare")
    n = loader.batches_per_epoch
    if max_tokens:
        n = max(1, min(n, math.ceil(max_tokens / (batch_size * block))))
    return [next(loader) for _ in range(n)]


@torch.no_grad()
def compare_models(model: nn.Module, reference: nn.Module, batches) -> dict[str, Any]:
    """Loss, perplexity, mean KL(reference ‖ model) and top-1 agreement of two models on the same batches."""
    loss = loss_ref = kl = agree = 0.0
    n = 0
    for x, y in batches:
        a, b = model(x).logits.float(), reference(x).logits.float()  # (B, T, V)
        keep = y >= 0
        la, lb = F.log_softmax(a, -1)[keep], F.log_softmax(b, -1)[keep]  # (n, V)
        t = y[keep]
        loss += float(-la.gather(1, t[:, None]).sum())
        loss_ref += float(-lb.gather(1, t[:, None]).sum())
        kl += float((lb.exp() * (lb - la)).sum())
        agree += float((la.argmax(-1) == lb.argmax(-1)).sum())
        n += int(keep.sum())
    if not n:
        raise LmlabError("nothing to compare on: the split has no complete window")
    loss, loss_ref = loss / n, loss_ref / n
    ppl, ppl_ref = math.exp(min(loss, 50.0)), math.exp(min(loss_ref, 50.0))
    return {
        "tokens": n, "loss": round(loss, 5), "loss_ref": round(loss_ref, 5), "ppl": round(ppl, 4),
        "ppl_ref": round(ppl_ref, 4), "ppl_change_pct": round(100 * (ppl / ppl_ref - 1), 3),
        "kl": round(kl / n, 8), "top1_agreement": round(agree / n, 5),
    }  # fmt: skip


@torch.no_grad()
def layer_errors(model: nn.Module, reference: nn.Module, batches) -> list[dict[str, Any]]:
    """Per quantized layer of ``model``: relative weight error and relative output error on the inputs the
    reference model feeds the layer of the same name."""
    from lmlab.models.quant import QuantLinear, quantized_layers

    layers = {n: m for n, m in quantized_layers(model) if isinstance(m, QuantLinear)}
    ref = dict(reference.named_modules())
    sums: dict[str, list[float]] = {n: [0.0, 0.0] for n in layers if n in ref}
    hooks = []
    for name in sums:

        def pre(_m, args, name=name):
            x = args[0]
            want = F.linear(x, ref[name].weight)
            got = layers[name](x) - (0 if layers[name].bias is None else layers[name].bias)
            sums[name][0] += float((got - want).float().square().sum())
            sums[name][1] += float(want.float().square().sum())

        hooks.append(ref[name].register_forward_pre_hook(pre))
    try:
        for x, _ in batches:
            reference(x)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for name, (err, norm) in sums.items():
        w, wq = ref[name].weight.float(), layers[name].dequantize().float()
        out.append(
            {
                "layer": name, "shape": list(w.shape), "kernel": layers[name].kernel,
                "weight_rel_err": round(float((wq - w).norm() / w.norm().clamp_min(1e-30)), 6),
                "output_rel_err": round(math.sqrt(err / max(norm, 1e-30)), 6),
            }
        )  # fmt: skip
    return out


def compare_runs(
    run: Path, reference: Path, ds, split: str, batch_size: int, max_tokens: int, checkpoint, device,
    per_layer: bool = False, reference_checkpoint: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``lmlab eval RUN --compare REF``'s scores (see the module docstring)."""
    from lmlab.runs import load

    if split not in ("val", "train"):
        raise LmlabError(f"--compare scores language models on val or train, not {split!r}")
    t0 = time.perf_counter()
    a, b = (
        load(run, checkpoint=checkpoint, device=device),
        load(reference, checkpoint=reference_checkpoint, device=device),
    )
    from lmlab.io import sha256_file

    ta, tb = (Path(r) / "tokenizer.json" for r in (run, reference))
    digest = [sha256_file(t) if t.is_file() else None for t in (ta, tb)]
    if a.config["model"].get("vocab_size") != b.config["model"].get("vocab_size") or digest[0] != digest[1]:
        raise LmlabError(f"--compare {reference}: it has another tokenizer than {run}; compare runs of one dataset")
    block = min(a.model.config.block_size, b.model.config.block_size)
    batches = windows(ds.tokens(split), block, batch_size, max_tokens, device)
    scores = {"run": str(run), "reference": str(reference), "split": split, "quant": a.config.get("quant")}
    size, size_ref = weights_bytes(a.checkpoint), weights_bytes(b.checkpoint)
    scores.update(bytes=size, bytes_ref=size_ref, size_ratio=round(size / size_ref, 4))
    scores.update(compare_models(a.model, b.model, batches))
    if per_layer:
        scores["layers"] = layer_errors(a.model, b.model, batches[:4])
    scores["seconds"] = round(time.perf_counter() - t0, 1)
    return scores


def format_comparison(s: dict[str, Any]) -> list[str]:
    """The comparison as terminal lines (what ``lmlab quantize`` and ``lmlab eval --compare`` print)."""
    mb = 1 / 2**20
    lines = [
        f"size      {s['bytes_ref'] * mb:9.2f} MiB -> {s['bytes'] * mb:9.2f} MiB  ({s['size_ratio']:.3f}x)",
        f"ppl       {s['ppl_ref']:9.3f}     -> {s['ppl']:9.3f}      ({s['ppl_change_pct']:+.2f}%)  on "
        f"{s['tokens']:,} {s['split']} tokens",
        f"KL        {s['kl']:.6f} nats/token (mean KL of the next-token distributions from the reference)",
        f"top-1     {100 * s['top1_agreement']:.2f}% agreement with the reference",
    ]
    for r in s.get("layers", []):
        lines.append(
            f"  {r['layer']:<28} {'x'.join(map(str, r['shape'])):>10}  weight err {r['weight_rel_err']:.4f}  "
            f"output err {r['output_rel_err']:.4f}  [{r['kernel']}]"
        )
    return lines
