from __future__ import annotations

import errno
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from lmlab import checkpoint as ckpt
from lmlab import runtime
from lmlab.config import TrainConfig, get_preset
from lmlab.data.dataset import load_dataset
from lmlab.errors import LmlabError
from lmlab.models import build_model
from lmlab.objectives.lm import LanguageModeling
from lmlab.training.optim import lr_at, param_groups
from lmlab.training.trainer import Trainer
from tests.helpers import run_cli
from tests.training.conftest import FAST, read_rows


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def small_module():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def test_keep_last_and_best_never_deletes_the_best(tmp_path):
    m = ckpt.CheckpointManager(tmp_path, keep_last=2, keep_best=1)
    losses = {1: 3.0, 2: 1.0, 3: 2.5, 4: 2.0, 5: 1.5}
    for step, loss in losses.items():
        m.save(step, small_module(), {"metrics": {}}, None)
        m.record(step, {"val_loss": loss})
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000002", "step-00000004", "step-00000005"]
    assert os.readlink(tmp_path / "best") == "step-00000002"
    assert os.readlink(tmp_path / "latest") == "step-00000005"
    assert m.ranked() == ["step-00000002", "step-00000005", "step-00000004"]


def test_keep_best_k_by_a_maximized_metric(tmp_path):
    m = ckpt.CheckpointManager(tmp_path, keep_last=1, keep_best=2, metric="accuracy", mode="max")
    for step, acc in {1: 0.5, 2: 0.9, 3: 0.7, 4: 0.6}.items():
        m.save(step, small_module(), {"metrics": {}}, None)
        m.record(step, {"accuracy": acc})
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003", "step-00000004"]


def test_save_every_steps_and_every_minutes_with_an_injected_clock(tmp_path):
    clock = FakeClock()
    m = ckpt.CheckpointManager(tmp_path, every_steps=100, every_minutes=10, clock=clock)
    assert m.due(100) and not m.due(150)
    clock.t = 9 * 60
    assert not m.due(151)
    clock.t = 10 * 60
    assert m.due(152)
    m.save(152, small_module(), {"metrics": {}}, None)
    assert not m.due(153)  # the wall-clock timer restarts at each save
    clock.t = 20 * 60
    assert m.due(154)


def test_trainer_saves_by_wall_clock(data, tmp_path):
    clock = FakeClock()
    cfg = TrainConfig(
        **{
            **get_preset("tiny").train,
            "max_steps": 12,
            "eval_every": 0,
            "save_every": 1000,
            "save_every_minutes": 1.0,
            "keep_last": 10,
            "progress": False,
            "track": "none",
            "sample_tokens": 0,
        }
    )
    ticking = iter(range(10_000))

    def tick():  # each call advances the clock 4 seconds: a save is due about every 15 calls
        clock.t = next(ticking) * 4.0
        return clock.t

    trainer = make_trainer(data, tmp_path, cfg, clock=tick)
    trainer.fit()
    steps = [int(p.name.split("-")[1]) for p in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    assert 12 in steps and len(steps) >= 2  # some saves came from the clock, not only the final one


def make_trainer(data, run_dir, cfg, **kw):
    runtime.seed_everything(cfg.seed)
    ds = load_dataset(data)
    model_cfg = get_preset("tiny").model
    import dataclasses

    model = build_model(dataclasses.replace(model_cfg, vocab_size=ds.vocab_size))
    rt = runtime.setup("cpu", "fp32")
    objective = kw.pop("objective", None) or LanguageModeling(ds, model_cfg.block_size, ds.tokenizer)
    return Trainer(model, objective, cfg, run_dir, rt, **kw)


class NanAt(LanguageModeling):
    """The language-modelling objective, except that the loss of chosen calls is NaN."""

    def __init__(self, base: LanguageModeling, bad_calls: set[int]):
        super().__init__(base.dataset, base.block_size)
        self.calls, self.bad = 0, bad_calls

    def loss(self, model, batch):
        self.calls += 1
        out = super().loss(model, batch)
        if self.calls in self.bad:
            out.loss = out.loss * math.nan
        return out


def tiny_cfg(**kw):
    base = {**get_preset("tiny").train, "progress": False, "track": "none", "sample_tokens": 0, "log_every": 1}
    return TrainConfig(**{**base, **kw})


def test_nan_stops_with_the_last_good_checkpoint_kept(data, tmp_path):
    cfg = tiny_cfg(max_steps=20, save_every=5, eval_every=0)
    ds = load_dataset(data)
    objective = NanAt(LanguageModeling(ds, 32), {13})
    trainer = make_trainer(data, tmp_path, cfg, objective=objective)
    with pytest.raises(
        LmlabError, match="loss is nan at step 13: training diverged; the last good checkpoint is step-00000010"
    ):
        trainer.fit()
    assert os.readlink(tmp_path / "checkpoints" / "latest") == "step-00000010"
    assert ckpt.verify_checkpoint(tmp_path / "checkpoints" / "step-00000010") is None


def test_nan_skip_skips_the_step_and_goes_on(data, tmp_path):
    cfg = tiny_cfg(max_steps=20, eval_every=0, on_nan="skip")
    ds = load_dataset(data)
    trainer = make_trainer(data, tmp_path, cfg, objective=NanAt(LanguageModeling(ds, 32), {5, 9}))
    result = trainer.fit()
    assert result.status == "finished" and result.step == 20
    rows = read_rows(tmp_path)
    assert rows[-1]["skipped_steps"] == 2
    # a logged window made only of skipped steps has no train loss (not a made-up 0); the others are finite
    assert [r["step"] for r in rows if "train_loss" not in r] == [5, 9]
    assert all(math.isfinite(r["train_loss"]) for r in rows if "train_loss" in r)
    assert all(r["train_loss"] > 1.0 for r in rows if "train_loss" in r)
    weights = load_file(str(tmp_path / "checkpoints" / "latest" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_full_disk_while_saving_leaves_previous_checkpoints_intact(data, tmp_path, monkeypatch):
    cfg = tiny_cfg(max_steps=20, save_every=5, eval_every=0)
    trainer = make_trainer(data, tmp_path, cfg)
    real = ckpt.save_model
    calls = {"n": 0}

    def flaky_save(model, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(model, path, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_model", flaky_save)
    with pytest.raises(LmlabError, match="could not save the checkpoint of step 15 \\(No space left on device\\)"):
        trainer.fit()
    root = tmp_path / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step-00000005", "step-00000010"]
    assert os.readlink(root / "latest") == "step-00000010"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    assert all(ckpt.verify_checkpoint(p) is None for p in ckpt.list_checkpoints(root))


def test_corrupted_checkpoint_is_detected_and_resume_falls_back(data, tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "train",
        str(data),
        "tiny",
        "--out",
        str(run),
        "--train.max-steps",
        "30",
        "--train.save-every",
        "10",
        "--train.keep-last",
        "3",
        "--train.eval-every",
        "0",
        "--train.log-every",
        "1",
        *FAST,
    ]
    assert run_cli(args, capsys)[0] == 0
    root = run / "checkpoints"
    bad = root / "step-00000030" / "model.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    assert "does not match its sha256" in ckpt.verify_checkpoint(root / "step-00000030")
    with pytest.warns(UserWarning, match="using step-00000020 instead"):
        code, _, err = run_cli(["train", "--resume", str(run), "--train.max-steps", "40", *FAST], capsys)
    assert code == 0, err
    # steps after the fallback checkpoint were redone, and each step is logged exactly once
    assert [r["step"] for r in read_rows(run)] == list(range(1, 41))


def test_find_checkpoint_without_any_good_one(tmp_path):
    with pytest.raises(LmlabError, match="no checkpoint in"):
        ckpt.find_checkpoint(tmp_path)
    path = ckpt.write_checkpoint(tmp_path, 1, small_module(), {})
    (path / "manifest.json").unlink()
    with pytest.raises(LmlabError, match="no manifest.json .* and there is no older good checkpoint"):
        ckpt.find_checkpoint(tmp_path, "step-00000001")


def test_lr_schedules():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)  # halfway down the cosine
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw, schedule="constant") == 1.0
    assert lr_at(60, **kw, schedule="linear") == pytest.approx(0.55)
    assert lr_at(80, **kw, schedule="wsd", decay_fraction=0.2) == 1.0
    assert lr_at(99, **kw, schedule="wsd", decay_fraction=0.2) == pytest.approx(1.0 - 0.9 * 11 / 22)


def test_weight_decay_on_matrices_only():
    model = build_model(get_preset("tiny").model.__class__(**{**get_preset("tiny").model.to_dict(), "vocab_size": 50}))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    assert all(p.dim() == 2 and id(p) not in embeddings for p in decay["params"])
    assert all(p.dim() < 2 or id(p) in embeddings for p in no_decay["params"])
    n_unique = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique  # the tied weight counted once


def test_gradient_accumulation_equals_one_big_batch(data, tmp_path):
    # batch 4 x 2 micro-steps reads the same 8 windows per step as batch 8 x 1, so the updates agree
    big = make_trainer(data, tmp_path / "big", tiny_cfg(max_steps=3, batch_size=8, eval_every=0, warmup_steps=1))
    accum_cfg = tiny_cfg(max_steps=3, batch_size=4, tokens_per_step=8 * 32, eval_every=0, warmup_steps=1)
    small = make_trainer(data, tmp_path / "accum", accum_cfg)
    assert small.accum == 2 and small.tokens_per_step == big.tokens_per_step
    big.fit()
    small.fit()
    for (name, a), (_, b) in zip(big.raw_model.state_dict().items(), small.raw_model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-5), name
    rows_big, rows_small = read_rows(tmp_path / "big"), read_rows(tmp_path / "accum")
    assert [r["train_loss"] for r in rows_big] == pytest.approx([r["train_loss"] for r in rows_small], rel=1e-5)


@pytest.mark.slow
def test_compiled_model_trains(data, tmp_path):
    trainer = make_trainer(data, tmp_path, tiny_cfg(max_steps=10, eval_every=0, compile=True))
    result = trainer.fit()
    rows = read_rows(tmp_path)
    assert result.step == 10 and rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_the_default_checkpoint_is_the_best_then_the_latest(tmp_path):
    """What lmlab.load and eval pick without --checkpoint: best when a run has one, else latest."""
    manager = ckpt.CheckpointManager(tmp_path, keep_last=3, metric="val_loss")
    for step, loss in ((1, 3.0), (2, 1.0), (3, 2.0)):
        manager.save(step, small_module(), {"metrics": {}}, None)
        if step < 3:
            manager.record(step, {"val_loss": loss})
    assert ckpt.find_checkpoint(tmp_path).name == "step-00000002"  # best, though step 3 is latest
    assert ckpt.find_checkpoint(tmp_path, "latest").name == "step-00000003"
    (tmp_path / "best").unlink()
    assert ckpt.find_checkpoint(tmp_path).name == "step-00000003"
