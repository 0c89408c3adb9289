"""Rewards of (prompt, response) texts: a reward-model run, a classifier run and one of its labels, or a Python
function. RL (``lmlab.training.rl``), ``lmlab score`` and the experiments call them the same way:
``scorer(prompts, responses) -> list[float]``.

Texts, not token ids, go between the policy and the reward: the reward side encodes them with its own tokenizer
and template (``lmlab.data.responses``), so a policy and a reward model with different tokenizers work together.
A response the reward's tokenizer cannot encode is an error naming it.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from lmlab.errors import LmlabError

Transform = Literal["prob", "logprob"]
TRANSFORMS: tuple[str, ...] = get_args(Transform)


def _text(prompt: Any) -> str:
    """A prompt as one text (a conversation's contents, in order), for rewards that read plain text."""
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


class ModelReward:
    """Reward-model run: its scalar head on (prompt, response)."""

    def __init__(self, loaded: Any, batch_size: int = 32) -> None:
        from lmlab.generation.chat import uses_template

        self.loaded, self.batch_size = loaded, batch_size
        self.template = uses_template(loaded.config)
        self.name = f"reward model {loaded.path}"

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        from lmlab.data.loader import pad_rows
        from lmlab.data.responses import prompt_ids, response_ids
        from lmlab.objectives.reward import join

        model, tok = self.loaded.model, self.loaded.tokenizer
        device = next(model.parameters()).device
        seqs = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            where = f"reward for response {i + 1}"
            ids = join(
                prompt_ids(tok, p, self.template, where),
                response_ids(tok, r, self.template, where),
                model.config.block_size,
            )[0]
            seqs.append(ids)
        pad = tok.pad_id if tok.pad_id is not None else 0
        out: list[float] = []
        for i in range(0, len(seqs), self.batch_size):
            chunk = seqs[i : i + self.batch_size]
            tokens = pad_rows(chunk, pad).to(device)
            lengths = torch.tensor([len(s) for s in chunk], device=device)
            out += model(tokens, lengths).logits[:, 0].float().tolist()
        return out


class ClassifierReward:
    """Classifier run: the probability (or log-probability) of one label for the text prompt + response."""

    def __init__(self, loaded: Any, label: str, transform: str = "prob", batch_size: int = 64) -> None:
        labels = loaded.labels
        if label not in labels:
            raise LmlabError(
                f"--reward-label {label!r} is not a label of {loaded.path}; its labels are " + ", ".join(labels)
            )
        if transform not in TRANSFORMS:
            raise LmlabError(f"--reward-transform {transform!r}: choose {' or '.join(TRANSFORMS)}")
        self.loaded, self.index, self.transform, self.batch_size = loaded, labels.index(label), transform, batch_size
        self.name = f"{transform} of {label!r} under {loaded.path}"

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        from lmlab.data.formats.labeled import Example
        from lmlab.eval.classify import probabilities

        examples = [Example(_text(p) + r, "", None, i) for i, (p, r) in enumerate(zip(prompts, responses), start=1)]
        p = probabilities(self.loaded, examples, self.batch_size, "the responses")[:, self.index]
        if self.transform == "logprob":
            return [math.log(max(float(x), 1e-30)) for x in p]
        return [float(x) for x in p]


class FunctionReward:
    """A Python function ``module:function(prompt, response) -> float`` (a verifiable reward)."""

    def __init__(self, spec: str) -> None:
        module, _, name = spec.partition(":")
        if not module or not name:
            raise LmlabError(f"--reward {spec!r}: give a run directory or module:function")
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise LmlabError(f"--reward {spec}: cannot import {module} ({e})") from None
        fn = getattr(mod, name, None)
        if not callable(fn):
            raise LmlabError(f"--reward {spec}: {module} has no function {name}")
        self.fn: Callable[[Any, str], float] = fn
        self.name = f"function {spec}"

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        out = []
        for p, r in zip(prompts, responses):
            v = self.fn(p, r)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise LmlabError(f"{self.name} returned {type(v).__name__}, not a number, for response {r[:40]!r}")
            out.append(float(v))
        return out


def load_reward(spec: str, *, label: str | None = None, transform: str = "prob", device: Any = "cpu") -> Any:
    """The scorer ``spec`` names: a reward-model run, a classifier run (with ``label``), or module:function."""
    from lmlab.runs import load, read_config

    path = Path(spec)
    if not path.is_dir():
        if ":" in spec and not path.exists():
            if label is not None:
                raise LmlabError("--reward-label is for a classifier run; a reward function takes none")
            return FunctionReward(spec)
        raise LmlabError(f"--reward {spec}: not a run directory (or a module:function)")
    cfg = read_config(path)
    kind = (cfg.get("head") or {}).get("kind")
    if kind is None:
        raise LmlabError(
            f"--reward {spec} is a language model; give a reward-model run (lmlab finetune RUN reward DATA), a "
            "classifier run with --reward-label, or module:function"
        )
    loaded = load(path, device=device)
    if loaded.tokenizer is None:
        raise LmlabError(f"--reward {spec} has no tokenizer.json")
    if kind == "reward":
        if label is not None:
            raise LmlabError(f"--reward-label is for a classifier run; {spec} is a reward model")
        return ModelReward(loaded)
    if label is None:
        raise LmlabError(
            f"--reward {spec} is a classifier: give the label to reward with --reward-label "
            f"({', '.join(loaded.labels)})"
        )
    return ClassifierReward(loaded, label, transform)


@torch.no_grad()
def score_pairs(run: str | Path, path: str | Path, *, batch_size: int = 64, checkpoint: str | None = None,
                device: str = "auto") -> dict[str, Any]:  # fmt: skip
    """Pairwise accuracy (with its binomial standard error) and mean margin of a reward-model run on every pair of
    a preference file."""
    from lmlab.data.formats.preference import read_preferences
    from lmlab.generation.chat import uses_template
    from lmlab.objectives.reward import GroupLoader, encode_groups
    from lmlab.runs import load
    from lmlab.runtime import pick_device

    loaded = load(run, checkpoint=checkpoint, device=pick_device(device))
    if (loaded.config.get("head") or {}).get("kind") != "reward":
        raise LmlabError(f"{run} is not a reward model (lmlab finetune RUN reward DATA makes one)")
    groups, skipped = read_preferences(path)
    model, tok = loaded.model, loaded.tokenizer
    chat = uses_template(loaded.config) or any(not isinstance(g.prompt, str) for g in groups)
    enc = encode_groups(groups, tok, model.config.block_size, chat, Path(path).name)
    device_ = next(model.parameters()).device
    pad = tok.pad_id if tok.pad_id is not None else 0
    loader = GroupLoader(enc, max(1, batch_size // 2), pad_id=pad, shuffle=False, device=device_, name="pairs")
    margins = []
    for _ in range(loader.batches_per_epoch):
        b = next(loader)
        r = model(b.tokens, b.lengths).logits[:, 0].float()
        margins.append((r[b.better] - r[b.worse]).cpu())
    m = torch.cat(margins)
    acc = float((m > 0).float().mean())
    return {
        "data": str(path), "checkpoint": loaded.checkpoint.name, "n_pairs": int(m.numel()), "skipped": skipped,
        "pair_accuracy": acc, "pair_accuracy_se": math.sqrt(acc * (1 - acc) / m.numel()), "margin": float(m.mean()),
    }  # fmt: skip


def score(run: str | Path, prompt: Any, responses: Sequence[str], *, label: str | None = None,
          transform: str = "prob", checkpoint: str | None = None, device: str = "auto") -> list[float]:  # fmt: skip
    """The reward of each response to ``prompt`` under a reward-model run (or a classifier run's ``label``)."""
    from lmlab.runs import load, read_config
    from lmlab.runtime import pick_device

    kind = (read_config(run).get("head") or {}).get("kind")
    if kind is None:
        raise LmlabError(f"{run} is a language model; lmlab score takes a reward model (lmlab finetune RUN reward "
                         "DATA) or a classifier run with --label")  # fmt: skip
    if not responses:
        raise LmlabError("give at least one --response to score")
    loaded = load(run, checkpoint=checkpoint, device=pick_device(device))
    if kind == "reward":
        if label is not None:
            raise LmlabError(f"--label is for a classifier run; {run} is a reward model")
        return ModelReward(loaded)([prompt] * len(responses), list(responses))
    if label is None:
        raise LmlabError(f"{run} is a classifier: give the label to score with --label ({', '.join(loaded.labels)})")
    return ClassifierReward(loaded, label, transform)([prompt] * len(responses), list(responses))
