"""LoRA: adapters start at the base model, merge exactly, train and save alone, resume exactly."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import lmlab
from lmlab.config import get_preset
from lmlab.errors import LmlabError
from lmlab.models import build_model
from lmlab.models.heads import SequenceClassifier
from lmlab.models.lora import LoRAConfig, LoRALinear, apply_lora, merge_lora, trainable_parameters
from lmlab.training.optim import make_adamw
from tests.helpers import assert_one_line_error, run_cli

QUIET = ["--train.no-progress", "--train.track", "none"]


def tiny(vocab=20):
    torch.manual_seed(0)
    return build_model(dataclasses.replace(get_preset("tiny").model, vocab_size=vocab))


def test_adapters_start_at_the_base_and_merge_exactly():
    model = tiny().eval()
    x = torch.randint(0, 20, (2, 12))
    before = model(x).logits
    n = apply_lora(model, LoRAConfig(r=4, targets=("attention", "mlp")))
    assert n == 4 * get_preset("tiny").model.n_layer
    torch.testing.assert_close(model(x).logits, before)  # B = 0: the same function
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(std=0.5)
    adapted = model(x).logits
    assert not torch.allclose(adapted, before)
    assert merge_lora(model) == n and not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(x).logits, adapted, atol=1e-5, rtol=1e-5)


def test_only_adapters_and_head_train_and_the_optimizer_holds_only_them():
    model = SequenceClassifier(tiny(), 3)
    apply_lora(model, LoRAConfig(r=2, targets=("qkv",)))
    cfg = get_preset("tiny").model
    C, L = cfg.n_embd, cfg.n_layer
    expected = L * (2 * C + 3 * C * 2) + (C * 3 + 3)  # A (r×C) + B (3C×r) per layer, plus the head
    assert trainable_parameters(model) == expected
    assert {n.split(".")[-1] for n, p in model.named_parameters() if p.requires_grad} == {
        "lora_a",
        "lora_b",
        "weight",
        "bias",
    }
    opt = make_adamw(model, 1e-3, 0.0, (0.9, 0.99), 1e-8, torch.device("cpu"))
    out = model(torch.randint(0, 20, (2, 8)), torch.tensor([8, 5]))
    out.logits.sum().backward()
    opt.step()
    state = sum(t.numel() for s in opt.state.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq"))
    assert state == 2 * expected
    with pytest.raises(LmlabError, match="--lora.targets 'foo': choose from"):
        LoRAConfig(r=2, targets=("foo",))
    with pytest.raises(LmlabError, match="--lora.r must be 0"):
        LoRAConfig(r=-1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shakespeare_char, shakespeare):
    d = tmp_path_factory.mktemp("lora")
    lmlab.train(shakespeare_char, "tiny", out=d / "base", max_steps=10, eval_every=0, progress=False, track="none")
    lines = [ln.strip() for ln in shakespeare.read_text().splitlines() if 5 < len(ln.strip()) < 25][:120]
    (d / "t.tsv").write_text("sentence\tlabel\n" + "".join(f"{ln}\t{ln.endswith('?')}\n" for ln in lines))
    return d


def finetune(d, out, *extra, capsys):
    args = ["finetune", str(d / "base"), "classify", str(d / "t.tsv"), "--out", str(out), "--lora.r", "4"]
    flat = ["--train.batch-size", "8", "--train.schedule", "constant", "--train.warmup-steps", "1"]
    return run_cli([*args, *flat, "--train.eval-every", "3", "--train.lr", "1e-2", *QUIET, *extra], capsys)


def test_lora_runs_save_adapters_only_resume_exactly_and_merge(setup, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    res = finetune(setup, straight, "--train.max-steps", "6", capsys=capsys)
    assert res.code == 0, res.err
    assert "LoRA r=4 on attention" in res.err and "parameters train" in res.err
    ck = straight / "checkpoints" / "latest"
    assert (ck / "adapter.safetensors").is_file() and not (ck / "model.safetensors").exists()
    saved = load_file(str(ck / "adapter.safetensors"))
    assert all("lora_" in k or k.startswith("head.") for k in saved)
    assert json.loads((straight / "config.json").read_text())["lora"]["r"] == 4
    loaded = lmlab.load(straight)
    assert any(isinstance(m, LoRALinear) for m in loaded.model.modules())

    assert finetune(setup, split, "--train.max-steps", "3", capsys=capsys).code == 0
    assert run_cli(["train", "--resume", str(split), "--train.max-steps", "6", *QUIET], capsys).code == 0
    other = load_file(str(split / "checkpoints" / "latest" / "adapter.safetensors"))
    assert saved.keys() == other.keys() and all(torch.equal(saved[k], other[k]) for k in saved)

    merged = tmp_path / "merged"
    assert run_cli(["merge", str(straight), "--out", str(merged), "--checkpoint", "latest"], capsys).code == 0
    m = lmlab.load(merged)
    x, lengths = torch.randint(0, 60, (3, 16)), torch.tensor([16, 9, 4])
    lora_model = lmlab.load(straight, checkpoint="latest").model
    torch.testing.assert_close(m.model(x, lengths).logits, lora_model(x, lengths).logits, atol=1e-5, rtol=1e-5)
    assert m.labels == loaded.labels and json.loads((merged / "config.json").read_text())["parent"]["method"] == "merge"

    assert_one_line_error(run_cli(["merge", str(merged), "--out", str(tmp_path / "x")], capsys), "no LoRA adapters")
    assert_one_line_error(run_cli(["merge", str(straight), "--out", str(merged)], capsys), "already holds a run")
    bad = run_cli(["finetune", str(setup / "base"), "classify", str(setup / "t.tsv"), "--lora.targets", "foo"], capsys)
    assert_one_line_error(bad, "--lora.targets 'foo'")


def test_a_lora_run_needs_its_parent(setup, tmp_path, capsys):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(setup / "base", base, symlinks=True)
    (tmp_path / "t.tsv").write_text((setup / "t.tsv").read_text())
    assert finetune(tmp_path, tmp_path / "child", "--train.max-steps", "2", capsys=capsys).code == 0
    shutil.rmtree(base)
    with pytest.raises(LmlabError, match="keeps only its adapters; its base weights .* are gone or changed"):
        lmlab.load(tmp_path / "child")
