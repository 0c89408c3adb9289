"""Objectives are found by the dataset's task through a registry, and follow one protocol."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab.data.dataset import load_dataset
from lmlab.errors import LmlabError
from lmlab.objectives.base import LossOut, Objective, objective_for, objective_names
from lmlab.objectives.lm import LanguageModeling
from lmlab.objectives.translation import Translation
from tests.helpers import assert_one_line_error, run_cli


def test_builtin_objectives_by_task():
    assert objective_for("lm") is LanguageModeling and objective_for("translation") is Translation
    assert {"lm", "translation"} <= set(objective_names())
    with pytest.raises(LmlabError, match="no objective trains on 'translaton' datasets .did you mean 'translation'"):
        objective_for("translaton")


def test_lm_objective_protocol(shakespeare_char):
    ds = load_dataset(shakespeare_char)
    obj = LanguageModeling.from_dataset(ds, type("Cfg", (), {"block_size": 16})(), ds.tokenizer)
    assert isinstance(obj, Objective) and obj.tokens_per_sequence == 16
    assert obj.metric_names == ("val_loss", "val_ppl", "val_bpc")
    batches = obj.batches("val", batch_size=2, seed=0)
    x, y = next(batches)
    logits_model = torch.nn.Module()
    logits_model.forward = lambda x, y: type("Out", (), {"loss": torch.tensor(2.0)})()  # noqa: ARG005
    out = obj.loss(logits_model, (x, y))
    assert isinstance(out, LossOut) and out.n_tokens == 32 and float(out.loss) == 2.0
    metrics = obj.reduce([out, LossOut(torch.tensor(4.0), 32)])
    assert metrics["val_loss"] == 3.0 and set(metrics) == set(obj.metric_names)
    assert metrics["val_bpc"] == pytest.approx(3.0 / 0.6931471805599453)


def test_train_refuses_a_dataset_of_an_unknown_task(shakespeare_char, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shakespeare_char, data)
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({**meta, "task": "telepathy"}))
    assert_one_line_error(run_cli(["train", str(data), "tiny"], capsys), "no objective trains on 'telepathy'")
