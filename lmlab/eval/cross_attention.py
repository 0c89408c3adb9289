"""`lmlab attention RUN --source "..."`: the cross-attention alignment of a translation run.

The run translates the source; the decoder is then run once more over the translation it wrote,
taking the explicit attention path, and every decoder layer's cross-attention weights are drawn:
one heat map per (layer, head) plus each layer's mean over heads, rows = target tokens (the token
each step wrote), columns = source tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lmlab.errors import LmlabError
from lmlab.figures import pyplot, save_png


@torch.no_grad()
def cross_attention_weights(
    model: torch.nn.Module, src: Sequence[int], tgt: Sequence[int], *, bos_id: int, eos_id: int
) -> torch.Tensor:
    """Cross-attention weights of a seq2seq model writing ``tgt`` (ids, without BOS/EOS) for ``src`` (ids,
    without EOS): (n_layer, n_head, len(tgt) + 1, len(src) + 1). Row i is the step that wrote target token i
    (the last row wrote EOS); the last column is the source's EOS."""
    device = next(model.parameters()).device
    x = torch.tensor([[*src, eos_id]], dtype=torch.long, device=device)
    y = torch.tensor([[bos_id, *tgt]], dtype=torch.long, device=device)
    out = model(x, y, return_attention=True)
    return torch.stack([w[0] for w in out.cross_attentions]).float().cpu()


def _label(tokenizer, i: int) -> str:
    text = tokenizer.decode([i])
    if not text or "\ufffd" in text:  # a byte-level piece of a multi-byte character: show the raw token
        text = tokenizer.id_to_token(i) or str(i)
    return text.replace(" ", "␣")


def plot_cross_attention(
    weights: torch.Tensor,
    src_labels: Sequence[str],
    tgt_labels: Sequence[str],
    layers: Sequence[int],
    path: str | Path,
    title: str = "",
) -> Path:
    """Save heat maps of ``weights`` (n_layer, n_head, T, S): a row per layer in ``layers``, a column per head
    and a last column with the mean over heads."""
    plt = pyplot()

    n_head, T, S = weights.shape[1:]
    cols = n_head + 1
    cell_w, cell_h = max(2.0, 0.3 * S), max(2.0, 0.3 * T)
    fig, axes = plt.subplots(len(layers), cols, figsize=(cell_w * cols, cell_h * len(layers)), squeeze=False)
    for r, layer in enumerate(layers):
        for c in range(cols):
            ax = axes[r][c]
            w = weights[layer, c] if c < n_head else weights[layer].mean(dim=0)
            ax.imshow(w.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_xticks(range(S), src_labels, rotation=90, fontsize=8)
            ax.set_yticks(range(T), tgt_labels, fontsize=8)
            ax.set_title(f"layer {layer} " + (f"head {c}" if c < n_head else "mean"), fontsize=9)
            if c == 0:
                ax.set_ylabel("target (written)", fontsize=8)
            if r == len(layers) - 1:
                ax.set_xlabel("source", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, path)


def cross_attention(
    run: str | Path,
    source: str,
    layers: Sequence[int] = (),
    out: str | Path | None = None,
    checkpoint: str | None = None,
    beam: int = 4,
) -> Path:
    """Translate ``source`` with the seq2seq run ``run`` and draw the cross-attention of ``layers`` (default all)
    between source and translation; return the PNG path (default RUN/cross-attention.png)."""
    from lmlab.generation.translation import load_translation_run, translate_ids

    if not source.strip():
        raise LmlabError("--source is empty; give the sentence whose translation to draw")
    tr = load_translation_run(run, checkpoint)
    model, src_tok, tgt_tok = tr.model, tr.src_tokenizer, tr.tgt_tokenizer
    n_layer, limit = model.config.n_layer, model.config.block_size - 1
    src = src_tok.encode(source)
    if len(src) > limit:
        raise LmlabError(f"--source is {len(src)} tokens, more than the model's limit of {limit}; shorten it")
    chosen = list(layers) or list(range(n_layer))
    for layer in chosen:
        if not -n_layer <= layer < n_layer:
            raise LmlabError(
                f"--layers {layer}: the decoder has {n_layer} layers; choose from 0 to {n_layer - 1} "
                "(or negative to count from the end)"
            )
    chosen = [layer % n_layer for layer in chosen]
    (tgt,) = translate_ids(model, [src], bos_id=tgt_tok.bos_id, eos_id=tgt_tok.eos_id, pad_id=tgt_tok.pad_id, beam=beam)
    tgt = tgt[:limit]  # room for the BOS the decoder reads first
    weights = cross_attention_weights(model, src, tgt, bos_id=tgt_tok.bos_id, eos_id=tgt_tok.eos_id)
    src_labels = [_label(src_tok, i) for i in src] + ["<eos>"]
    tgt_labels = [_label(tgt_tok, i) for i in tgt] + ["<eos>"]
    path = Path(out) if out is not None else Path(run) / "cross-attention.png"
    translation = tgt_tok.decode(tgt, skip_special_tokens=True)
    return plot_cross_attention(weights, src_labels, tgt_labels, chosen, path, title=f"{source}  →  {translation}")
