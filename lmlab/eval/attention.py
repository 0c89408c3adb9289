"""Every head's attention weights on a text, as a PNG grid (``lmlab attention``, ``lmlab.attention``).

One row per chosen layer, one column per head; each cell is the (query × key) weight matrix with
the tokens written on both axes. The weights come from the explicit attention path, the same
numbers the fused kernel computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lmlab.errors import LmlabError
from lmlab.figures import pyplot, save_png


@torch.no_grad()
def attention_weights(model: torch.nn.Module, tokens: Sequence[int]) -> torch.Tensor:
    """Attention weights of a GPT on one token sequence: (n_layer, n_head, T, T), rows = queries."""
    x = torch.tensor([list(tokens)], dtype=torch.long, device=model.wte.weight.device)
    out = model(x, return_attention=True)
    return torch.stack([w[0] for w in out.attentions]).float().cpu()


def _label(tokenizer, i: int) -> str:
    """A readable label for one token: its decoded text with whitespace made visible."""
    text = tokenizer.decode([i])
    if not text or "\ufffd" in text:  # a byte-level piece of a multi-byte character: show the raw token
        text = tokenizer.id_to_token(i) or str(i)
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")


def _figure(weights: torch.Tensor, labels: Sequence[str], layers: Sequence[int], title: str):
    """The matplotlib figure: a heat map per (layer, head), rows = ``layers``, tokens on both axes."""
    plt = pyplot()

    n_head, T = weights.shape[1], weights.shape[-1]
    cell = max(2.0, 0.22 * T)  # inches per heat map: room for a label per token
    font = max(4.0, min(9.0, 120.0 / T))
    fig, axes = plt.subplots(len(layers), n_head, figsize=(cell * n_head, cell * len(layers)), squeeze=False)
    for r, layer in enumerate(layers):
        for h in range(n_head):
            ax = axes[r][h]
            ax.imshow(weights[layer, h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_xticks(range(T), labels, rotation=90, fontsize=font)
            ax.set_yticks(range(T), labels, fontsize=font)
            ax.set_title(f"layer {layer} head {h}", fontsize=9)
            if h == 0:
                ax.set_ylabel("query", fontsize=8)
            if r == len(layers) - 1:
                ax.set_xlabel("key", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_attention(
    weights: torch.Tensor, labels: Sequence[str], layers: Sequence[int], path: str | Path, title: str = ""
) -> Path:
    """Save a grid of heat maps of ``weights`` (n_layer, n_head, T, T): a row per layer in ``layers``, a column
    per head."""
    return save_png(_figure(weights, labels, layers, title), path)


def gpt_attention(
    run: str | Path,
    text: str,
    layers: Sequence[int] = (),
    out: str | Path | None = None,
    checkpoint: str | None = None,
) -> Path:
    """Draw the attention weights of run ``run`` on ``text`` for ``layers`` (default all); return the PNG path."""
    from lmlab.runs import load_run

    run = Path(run)
    model, tokenizer, _ = load_run(run, checkpoint=checkpoint)
    from lmlab.models.heads import SequenceClassifier

    if isinstance(model, SequenceClassifier):  # a classifier: the attention of its language model
        model = model.lm
    cfg = model.config
    if cfg.arch == "seq2seq":
        raise LmlabError(f'run {run} is a translation model: draw its cross-attention with --source "SENTENCE"')
    if cfg.arch != "gpt":
        raise LmlabError(f"run {run} is a {cfg.arch} model, which has no attention; use a gpt run")
    if tokenizer is None:
        raise LmlabError(f"run {run} has no tokenizer.json, so text cannot be tokenized; copy the dataset's into it")
    if not text:
        raise LmlabError("--text is empty; give the text whose attention to draw")
    tokens = tokenizer.encode(text)
    if len(tokens) > cfg.block_size:
        raise LmlabError(f"--text is {len(tokens)} tokens, more than model.block_size ({cfg.block_size}); shorten it")
    chosen = list(layers) or list(range(cfg.n_layer))
    for layer in chosen:
        if not -cfg.n_layer <= layer < cfg.n_layer:
            raise LmlabError(
                f"--layers {layer}: the model has {cfg.n_layer} layers; choose from 0 to {cfg.n_layer - 1} "
                "(or negative to count from the end)"
            )
    chosen = [layer % cfg.n_layer for layer in chosen]
    weights = attention_weights(model, tokens)
    labels = [_label(tokenizer, i) for i in tokens]
    path = Path(out) if out is not None else run / "attention.png"
    return plot_attention(weights, labels, chosen, path, title=f"{run.name}: attention")
