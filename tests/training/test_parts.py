"""The parts of the trainer that a second kind of loop (RL: rollout -> score -> update) is built from work
without ``Trainer``: runtime, optimizer and schedule, checkpoint manager, tracker, stop request."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import pytest
import torch

from lmlab import checkpoint as ckpt
from lmlab import runtime
from lmlab.config import TrainConfig, get_preset
from lmlab.models import build_model
from lmlab.training.optim import lr_at, make_adamw
from lmlab.training.signals import StopRequest
from lmlab.training.tracking import make_tracker


def test_a_loop_of_its_own_from_the_trainers_parts(tmp_path):
    rt = runtime.setup("cpu", "fp32")
    runtime.seed_everything(0)
    model = build_model(dataclasses.replace(get_preset("tiny").model, vocab_size=11))
    cfg = TrainConfig(max_steps=4, warmup_steps=1, track="none", progress=False)
    opt = make_adamw(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps, rt.device)
    manager = ckpt.CheckpointManager(tmp_path / "checkpoints", keep_last=2, metric="reward", mode="max")
    tracker = make_tracker(tmp_path, cfg)
    stop = StopRequest()
    stop.install()
    try:
        for step in range(1, cfg.max_steps + 1):
            for group in opt.param_groups:
                group["lr"] = lr_at(
                    step - 1, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps
                )
            x = torch.randint(0, 11, (2, 8))
            loss = model(x, x).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            tracker.log(step, {"loss": loss.item()})
            manager.save(step, model, {"metrics": {}}, {"optimizer": opt.state_dict(), "step": step})
            manager.record(step, {"reward": -loss.item()})
            if step == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # asks to stop; the loop decides when
            if stop.signum is not None:
                break
    finally:
        stop.restore()
        tracker.close()
    assert stop.signum == signal.SIGTERM and step == 3
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")][-2:] == ["step-00000002", "step-00000003"]
    assert ckpt.find_checkpoint(tmp_path / "checkpoints", "latest").name == "step-00000003"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert ckpt.load_trainer_state(tmp_path / "checkpoints" / "step-00000003")["step"] == 3


def test_weight_decay_reaches_embeddings_only_when_asked():
    from lmlab.training.optim import param_groups

    cfg = dataclasses.replace(get_preset("tiny").model, vocab_size=11, tie_embeddings=False)
    model = build_model(cfg)
    decayed = {id(p) for p in param_groups(model, 0.1)[0]["params"]}
    assert id(model.wte.weight) not in decayed  # the token table; the position table is a matrix like the others
    assert id(model.lm_head.weight) in decayed and id(model.blocks[0].attn.qkv.weight) in decayed
    assert all(p.dim() >= 2 for p in param_groups(model, 0.1)[0]["params"])
    with_emb = param_groups(model, 0.1, embeddings=True)
    decayed = {id(p) for p in with_emb[0]["params"]}
    assert id(model.wte.weight) in decayed and id(model.lm_head.weight) in decayed
    assert not any(p.dim() < 2 for p in with_emb[0]["params"])  # norms and biases never
    n = sum(p.numel() for g in with_emb for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())  # every parameter in exactly one group


def test_cpu_runtime_flushes_subnormals_to_zero():
    # subnormal floats take a slow path on x86 CPUs; the CPU runtime turns them into zeros
    tiny = torch.tensor([1e-39, 1e-30], dtype=torch.float32)
    runtime.setup("cpu", "fp32")
    assert (tiny * 1.0).tolist()[0] == 0.0 and (tiny * 1.0).tolist()[1] == pytest.approx(1e-30)
