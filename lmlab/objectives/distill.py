"""Knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"): a new, smaller
student learns the teacher's next-token distributions as well as the data's next tokens.

``lmlab finetune TEACHER distill DATA --student PRESET``: DATA is a dataset directory prepared with the
teacher's tokenizer. The student is the preset's architecture with the teacher's vocabulary (and a context no
longer than the teacher's, so the teacher scores every window it sees), from random weights. Per token:

    loss = alpha · T² · KL(softmax(z_teacher / T) ‖ softmax(z_student / T)) + (1 − alpha) · CE(z_student, next token)

T² keeps the soft term's gradients the size of the hard term's as T changes (the paper's argument). The teacher
runs frozen in eval mode beside the student; it is the run's parent (config.json records its checkpoint), so a
resumed distillation loads the same teacher. Validation reports the student's cross-entropy on the data
(``val_loss``: comparable with a student trained on the data alone) and the KL to the teacher (``val_kl``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmlab.data.dataset import Dataset, load_dataset
from lmlab.data.loader import BatchLoader
from lmlab.errors import LmlabError
from lmlab.objectives.base import FinetuneOptions, LossOut, Objective, register


@dataclass
class DistillOptions(FinetuneOptions):
    """Distill the run into a new, smaller student: the student (--student PRESET, the run's vocabulary) learns the
    teacher's next-token distributions at --temperature, weighted by --alpha, and the data's tokens (1 − alpha)."""

    student: str = "baby"  # the student's preset (its shape; vocabulary and context follow the teacher)
    alpha: float = 0.5  # weight of the distillation term; 1 − alpha goes to the data's cross-entropy (0 = data only)
    temperature: float = 2.0  # softens both distributions before the KL (the soft term is scaled by T²)
    epochs: float = 1.0  # passes over the dataset's train split; sets --train.max-steps unless given

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.alpha <= 1.0:
            raise LmlabError(f"--alpha must be between 0 and 1, got {self.alpha}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise LmlabError(f"--temperature must be positive, got {self.temperature}")
        if self.val is not None:
            raise LmlabError("distill validates on the dataset's own val split; it takes no --val")


RECIPE: dict[str, Any] = {"lr": 2e-3, "batch_size": 16, "min_lr": 2e-4, "warmup_steps": 50, "sample_tokens": 0}


def dataset_dir(data: str | Path) -> Path:
    """The dataset directory DATA names (the directory itself, or its meta.json as a run records it)."""
    data = Path(data)
    return data.parent if data.name == "meta.json" else data


@register
class Distill(Objective):
    """The distillation loss above on windows of the dataset; ``teacher`` is set by ``prepare``."""

    task = "distill"
    Options = DistillOptions
    RECIPE = RECIPE
    new_model = True  # the run trains a new model (the student), not the parent's weights

    def __init__(self, dataset: Dataset, block_size: int, opts: DistillOptions) -> None:
        self.dataset, self.block_size, self.opts = dataset, block_size, opts
        self.tokens_per_sequence = block_size
        self.n_train = max(1, len(dataset.tokens("train")) // block_size)
        self.teacher: torch.nn.Module | None = None
        self.teacher_checkpoint: Path | None = None  # set by lmlab.training.launch: the parent's checkpoint
        self.summary = (
            f"distilling into a {opts.student} student on {dataset.path} (alpha {opts.alpha}, temperature "
            f"{opts.temperature})"
        )

    @classmethod
    def model_config(cls, opts: DistillOptions, teacher_cfg: Any) -> Any:
        """The student's config: the preset's shape with the teacher's vocabulary and at most its context."""
        from lmlab.config import get_preset

        student = get_preset(opts.student).model
        if student.arch == "seq2seq":
            raise LmlabError(f"--student {opts.student} is an encoder-decoder; distill into a gpt, rnn or lstm preset")
        return dataclasses.replace(
            student, vocab_size=teacher_cfg.vocab_size, block_size=min(student.block_size, teacher_cfg.block_size)
        )

    @classmethod
    def from_files(cls, data: str | Path, opts: DistillOptions, tokenizer: Any, block_size: int, seed: int) -> Distill:
        path = dataset_dir(data)
        ds = load_dataset(path)
        if ds.task != "lm":
            raise LmlabError(f"{path} is a {ds.task} dataset; distill trains on text prepared with lmlab prepare")
        if tokenizer is None or ds.tokenizer.hf.to_str() != tokenizer.hf.to_str():
            raise LmlabError(
                f"{path} was prepared with another tokenizer than the teacher's; prepare the text with the teacher's "
                "tokenizer (lmlab prepare SOURCE --tokenizer TEACHER/tokenizer.json)"
            )
        for split in ("train", "val"):
            if len(ds.tokens(split)) <= block_size:
                raise LmlabError(f"{path}: its {split} split is shorter than one window of {block_size} tokens")
        return cls(ds, block_size, opts)

    def prepare(self, model: torch.nn.Module, rt: Any, run_dir: Path, start: Path | None = None) -> None:
        """Load the teacher (frozen, eval mode) from its checkpoint onto the run's device."""
        from lmlab.runs import load

        where = self.teacher_checkpoint
        if where is None or not where.is_dir():
            raise LmlabError(f"the teacher's checkpoint {where} is gone; restore the parent run to distill from it")
        teacher = load(where.parent.parent, checkpoint=where.name, device=rt.device).model
        self.teacher = teacher.eval().requires_grad_(False)

    def batches(self, split, *, batch_size, seed, rank=0, world_size=1, device="cpu") -> BatchLoader:
        return BatchLoader(
            self.dataset.tokens(split), batch_size, self.block_size, shuffle=split == "train", seed=seed,
            rank=rank, world_size=world_size, device=device, name=split,
        )  # fmt: skip

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> LossOut:
        x, y = batch
        logits = model(x).logits.float()  # (B, T, V)
        V = logits.size(-1)
        ce = F.cross_entropy(logits.view(-1, V), y.view(-1), ignore_index=-100)
        keep = (y >= 0).view(-1)
        a, T = self.opts.alpha, self.opts.temperature
        if not a and model.training:  # data alone (the baseline): the teacher is only asked at evaluation
            return LossOut(ce, int(keep.sum()), {"ce": ce.detach(), "kl": torch.zeros(())}, log={"ce": ce.detach()})
        with torch.no_grad():
            target = self.teacher(x).logits.float()
        s = F.log_softmax(logits.view(-1, V)[keep] / T, -1)
        t = F.log_softmax(target.view(-1, V)[keep] / T, -1)
        kl = F.kl_div(s, t, log_target=True, reduction="batchmean")  # KL(teacher ‖ student), mean over tokens
        loss = a * T * T * kl + (1 - a) * ce if a else ce
        return LossOut(loss, int(keep.sum()), {"ce": ce.detach(), "kl": kl.detach()}, log={"ce": ce.detach()})

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("val_loss", "val_ppl", "val_kl", "val_objective")

    def reduce(self, outs: Sequence[LossOut]) -> dict[str, float]:
        n = max(1, len(outs))
        ce = float(sum(o.metrics["ce"] for o in outs)) / n
        kl = float(sum(o.metrics["kl"] for o in outs)) / n
        obj = float(sum(o.loss.detach().float() for o in outs)) / n
        return {"val_loss": ce, "val_ppl": math.exp(min(ce, 50.0)), "val_kl": kl, "val_objective": obj}
