"""Direct preference optimization (Rafailov et al. 2023) and its variants, on the reward model's data.

For a pair (better y_w, worse y_l) of a prompt x, with log-probabilities summed over the response tokens (the
ending token included) under the policy π and the frozen reference π_ref (the starting policy):

    h = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) − log π_ref(y_l|x)]

    sigmoid (DPO):  −(1 − ε)·log σ(β·h) − ε·log σ(−β·h)   (ε: label smoothing, cDPO; 0 = plain DPO)
    ipo (IPO):      (h − 1/(2β))²                            (Azar et al. 2023)
    hinge (SLiC):   max(0, 1 − β·h)                          (Zhao et al. 2023)

β·[log π(y|x) − log π_ref(y|x)] is the implicit reward of a response; the log shows its accuracy and margin, and
the chosen and rejected log-probabilities themselves, so the known failure where both fall is visible.

The reference log-probabilities are computed once, before the first step, with the starting weights, and kept in
``RUN/reference-logprobs.safetensors`` (a resumed run reads them back). ``--reference online`` computes them every
step instead, from a frozen copy of the starting model, or, for a LoRA run, from the same model with its adapters
switched off (the reference is the base: no second copy).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

from lmlab.errors import LmlabError
from lmlab.objectives.base import FinetuneOptions, LossOut, register
from lmlab.objectives.reward import Encoded, GroupLoader, PreferenceBatch, PreferenceObjective

Loss = Literal["sigmoid", "ipo", "hinge"]
LOSSES: tuple[str, ...] = get_args(Loss)
Reference = Literal["precomputed", "online"]
REFERENCE_FILE = "reference-logprobs.safetensors"


@dataclass
class DPOOptions(FinetuneOptions):
    """Direct preference optimization of a policy on preference pairs or rankings (the reward model's data), against
    the frozen starting model: losses sigmoid (DPO), ipo or hinge."""

    beta: float = 0.1  # β: strength of the pull toward the reference (higher = stay closer)
    loss: Loss = "sigmoid"  # sigmoid (DPO) | ipo | hinge
    label_smoothing: float = 0.0  # ε of conservative DPO: the share of pairs assumed mislabeled (sigmoid only)
    reference: Reference = "precomputed"  # precomputed (once, before training) | online (every step)
    ref_run: str | None = None  # the reference's run (same shape and tokenizer); default the starting policy

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise LmlabError(f"--beta must be positive, got {self.beta}")
        if self.loss not in LOSSES:
            raise LmlabError(f"--loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise LmlabError(f"--label-smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss != "sigmoid":
            raise LmlabError("--label-smoothing applies to --loss sigmoid only")
        if self.reference not in get_args(Reference):
            raise LmlabError(f"--reference {self.reference!r}: choose precomputed or online")


RECIPE: dict[str, Any] = {
    "lr": 5e-5,
    "min_lr": 0.0,
    "batch_size": 16,  # prompts (each with all of its responses)
    "schedule": "linear",
    "weight_decay": 0.0,
    "eval_steps": 1_000_000,
    "best_metric": "val_reward_accuracy",
    "best_mode": "max",
    "sample_tokens": 0,
}


def response_logprobs(model: torch.nn.Module, batch: PreferenceBatch) -> torch.Tensor:
    """(N,) log-probability of every row's response tokens (those after its prompt, up to its length)."""
    tokens = batch.tokens
    logits = model(tokens[:, :-1]).logits.float()  # (N, T-1, V)
    targets = tokens[:, 1:]  # (N, T-1): position t predicts token t+1
    idx = torch.arange(targets.size(1), device=tokens.device)[None, :] + 1  # the index of each target token
    in_response = (idx >= batch.prompt_len[:, None]) & (idx < batch.lengths[:, None])
    logp = -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (N, T-1)
    return (logp * in_response).sum(1)


def reference_model(ref_run: str | Path, model: torch.nn.Module, tokenizer: Any) -> torch.nn.Module:
    """The model of ``--ref-run``, refused unless it has the shape and tokenizer of ``model`` (the policy being
    trained, whose data ``tokenizer`` encoded)."""
    from lmlab.data.tokenizer import load_tokenizer
    from lmlab.runs import load, read_config

    ref = Path(ref_run)
    other = read_config(ref)
    same_tok = (ref / "tokenizer.json").is_file() and (
        tokenizer is None or load_tokenizer(ref / "tokenizer.json").hf.to_str() == tokenizer.hf.to_str()
    )
    if other["model"] != model.config.to_dict() or not same_tok or "head" in other:
        raise LmlabError(f"--ref-run {ref} is not a language model of this run's shape and tokenizer")
    return load(ref).model


@register
class DPO(PreferenceObjective):
    task = "dpo"
    Options = DPOOptions
    RECIPE = RECIPE

    def __init__(self, train: Encoded, val: Encoded, opts: DPOOptions, pad_id: int, chat: bool) -> None:
        super().__init__(train, val, pad_id, chat)
        self.opts = opts
        self.ref: dict[str, torch.Tensor] = {}  # precomputed: split -> (N,) reference log-probs
        self.ref_model: Any = None  # online: a frozen copy, or "adapters-off"

    @classmethod
    def from_files(cls, data, opts: DPOOptions, tokenizer, block_size, seed, template: bool = False) -> DPO:
        enc_t, enc_v, pad, chat, summary = cls.encode(data, opts, tokenizer, block_size, seed, template)
        obj = cls(enc_t, enc_v, opts, pad, chat)
        obj.tokenizer = tokenizer
        obj.summary = summary + f"; {opts.loss} loss, beta {opts.beta}, reference {opts.reference}"
        return obj

    # -- the reference ---------------------------------------------------------------------------
    def prepare(self, model: torch.nn.Module, rt: Any, run_dir: Path, start: Path | None = None) -> None:
        """Before training: the reference log-probs (read back from the run directory on resume) or, online, the
        frozen reference model; from ``model``'s starting weights (in ``start`` when resuming)."""

        lora = getattr(model, "saves_adapter_only", False)
        if self.opts.ref_run is not None:  # iterated DPO keeps the first policy as the reference: no drift
            model, lora, start = (
                reference_model(self.opts.ref_run, model, getattr(self, "tokenizer", None)),
                False,
                None,
            )
        if self.opts.reference == "online" and lora:
            self.ref_model = "adapters-off"
            return
        path = run_dir / REFERENCE_FILE
        if self.opts.reference == "precomputed" and path.is_file():
            from safetensors.torch import load_file

            saved = load_file(path)
            if all(s in saved and len(saved[s]) == len(self.data[s].seqs) for s in self.data):
                self.ref = {s: saved[s].to(rt.device) for s in self.data}
                return
        if start is not None and not lora:  # a resumed run: the starting weights are the parent's
            from lmlab import checkpoint as ckpt

            if not (start / ckpt.WEIGHTS).is_file():
                raise LmlabError(f"DPO's reference is the parent checkpoint {start}, which is gone; restore it")
            model = copy.deepcopy(model)
            ckpt.load_weights(model, start)
        if self.opts.reference == "online":
            self.ref_model = copy.deepcopy(model).to(rt.device).eval().requires_grad_(False)
            return
        if lora:  # adapters start at zero, but a resumed run's do not: the reference is the base without them
            from lmlab.models.lora import adapters_off

            with adapters_off(model):
                return self._precompute(model, rt, path)
        self._precompute(model, rt, path)

    def _precompute(self, model: torch.nn.Module, rt: Any, path: Path) -> None:
        from lmlab import io

        model = model.to(rt.device)
        was = model.training
        model.eval()
        with torch.no_grad(), rt.autocast():
            for split, enc in self.data.items():
                out = torch.zeros(len(enc.seqs), dtype=torch.float64)
                loader = GroupLoader(enc, 16, pad_id=self.pad_id, shuffle=False, device=rt.device, name=split)
                for _ in range(loader.batches_per_epoch):
                    b = next(loader)
                    out[b.rows.cpu()] = response_logprobs(model, b).double().cpu()
                self.ref[split] = out.to(rt.device)
        model.train(was)
        if rt.is_main:
            from safetensors.torch import save

            io.write_bytes(path, save({s: t.cpu().contiguous() for s, t in self.ref.items()}))

    def _reference(self, model: torch.nn.Module, batch: PreferenceBatch, split: str) -> torch.Tensor:
        if self.ref_model is None:
            return self.ref[split][batch.rows].float()
        with torch.no_grad():
            if self.ref_model == "adapters-off":
                from lmlab.models.lora import adapters_off

                with adapters_off(model):
                    return response_logprobs(model, batch)
            return response_logprobs(self.ref_model, batch)

    # -- the protocol ----------------------------------------------------------------------------
    def loss(self, model: torch.nn.Module, batch: PreferenceBatch) -> LossOut:
        o = self.opts
        pi = response_logprobs(model, batch)  # (N,)
        ref = self._reference(model, batch, "train" if model.training else "val")
        reward = (pi - ref) * o.beta  # the implicit reward of every response
        h = (pi - ref)[batch.better] - (pi - ref)[batch.worse]  # (P,)
        if o.loss == "sigmoid":
            pair = -(1 - o.label_smoothing) * F.logsigmoid(o.beta * h) - o.label_smoothing * F.logsigmoid(-o.beta * h)
        elif o.loss == "ipo":
            pair = (h - 1 / (2 * o.beta)) ** 2
        else:
            pair = F.relu(1 - o.beta * h)
        loss = (batch.weight * pair).sum()
        margin = (reward[batch.better] - reward[batch.worse]).detach()
        n = margin.numel()
        stats = {
            "correct": (margin > 0).sum(),
            "margin_sum": margin.sum(),
            "chosen_logp_sum": pi.detach()[batch.better].sum(),
            "rejected_logp_sum": pi.detach()[batch.worse].sum(),
            "loss_sum": pair.detach().sum(),
        }
        if model.training:  # the same figures, per step, for the log (averaged over the log window)
            names = {
                "correct": "reward_accuracy",
                "margin_sum": "margin",
                "chosen_logp_sum": "chosen_logp",
                "rejected_logp_sum": "rejected_logp",
            }
            return LossOut(loss, n, log={names[k]: stats[k] / n for k in names})
        return LossOut(loss, n, stats)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("val_loss", "val_reward_accuracy", "val_margin", "val_chosen_logp", "val_rejected_logp")

    def reduce(self, outs: Sequence[LossOut]) -> dict[str, float]:
        n = max(sum(float(o.n_tokens) for o in outs), 1.0)

        def mean(key: str) -> float:
            return sum(float(o.metrics[key]) for o in outs) / n

        return {
            "val_loss": mean("loss_sum"),
            "val_reward_accuracy": mean("correct"),
            "val_margin": mean("margin_sum"),
            "val_chosen_logp": mean("chosen_logp_sum"),
            "val_rejected_logp": mean("rejected_logp_sum"),
        }
