"""Class probabilities from a fine-tuned classifier run, and its scores on a labeled file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.data.formats.labeled import Example, read_labeled
from lmlab.errors import LmlabError


def classifier_run(run: str | Path, checkpoint: str | None = None, device: str | torch.device = "cpu") -> Any:
    """A loaded fine-tuned classifier run; any other run is refused with the verb that fits it."""
    from lmlab.runs import load, read_config

    if "head" not in read_config(run):
        raise LmlabError(
            f"{run} is not a classifier; fine-tune one with lmlab finetune {run} classify DATA.tsv, or sample from it"
        )
    loaded = load(run, checkpoint=checkpoint, device=device)
    if loaded.tokenizer is None:
        raise LmlabError(f"{run} has no tokenizer.json; copy its parent run's tokenizer.json into it")
    return loaded


@torch.no_grad()
def probabilities(loaded: Any, examples: Sequence[Example], batch_size: int = 64, where: str = "input") -> np.ndarray:
    """(N, K) class probabilities of ``examples`` (their labels are ignored) under the classifier run ``loaded``."""
    from lmlab.objectives.classify import ExampleLoader, encode

    if not examples:
        return np.zeros((0, len(loaded.labels)))
    if batch_size < 1:
        raise LmlabError(f"--batch-size must be at least 1, got {batch_size}")
    model, tok = loaded.model, loaded.tokenizer
    classes = loaded.labels
    unlabeled = [Example(e.text, classes[0], e.text_b, e.line) for e in examples]
    data = encode(unlabeled, tok, model.config.block_size, classes, where)
    device = next(model.parameters()).device
    pad = tok.pad_id if tok.pad_id is not None else 0
    loader = ExampleLoader(data, batch_size, pad_id=pad, shuffle=False, device=device, name=where)
    out = []
    for _ in range(loader.batches_per_epoch):
        batch = next(loader)
        out.append(torch.softmax(model(batch.tokens, batch.lengths).logits.float(), -1).cpu())
    return torch.cat(out).numpy()


def score_file(loaded: Any, path: str | Path, batch_size: int = 64) -> dict[str, Any]:
    """Accuracy, macro-F1 and Matthews correlation of the classifier on a labeled file."""
    from lmlab.objectives.classify import confusion_scores

    examples = read_labeled(path)
    classes = loaded.labels
    index = {c: i for i, c in enumerate(classes)}
    for e in examples:
        if e.label not in index:
            raise LmlabError(f"{Path(path).name}:{e.line}: unknown label {e.label!r}; the run's labels are "
                             f"{', '.join(classes)}")  # fmt: skip
    probs = probabilities(loaded, examples, batch_size, Path(path).name)
    k = len(classes)
    truth = np.array([index[e.label] for e in examples])
    confusion = np.bincount(truth * k + probs.argmax(1), minlength=k * k).reshape(k, k)
    scores = {key.removeprefix("val_"): v for key, v in confusion_scores(confusion).items()}
    return {"data": str(path), "n_examples": len(examples), **scores, "confusion": confusion.tolist()}
