"""--train.optimizer: each one trains, stops and resumes to the same weights as a run that never stopped, Muon takes
exactly the blocks' matrices, and a changed optimizer on resume is refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from lmlab.config import TrainConfig, get_preset
from lmlab.models import build_model
from lmlab.training.optim import Optimizers, hidden_matrices, make_optimizer
from tests.helpers import assert_one_line_error, run_cli
from tests.training.conftest import FAST, read_rows

STEPS = ["--train.max-steps", "12", "--train.save-every", "6", "--train.eval-every", "6", "--train.log-every", "1",
         "--train.warmup-steps", "2", "--train.keep-last", "5", "--train.schedule", "constant"]  # fmt: skip


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = build_model(dataclasses.replace(get_preset("tiny").model, vocab_size=11, tie_embeddings=False))
    hidden = {id(p) for p in hidden_matrices(model)}
    names = {n for n, p in model.named_parameters() if id(p) in hidden}
    assert names == {
        f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.up", "mlp.down")
    }
    opt = make_optimizer(model, TrainConfig(optimizer="muon", lr=0.01), torch.device("cpu"))
    assert isinstance(opt, Optimizers) and isinstance(opt.optimizers[0], torch.optim.Muon)
    muon, adamw = opt.optimizers
    assert {id(p) for g in muon.param_groups for p in g["params"]} == hidden
    rest = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert not rest & hidden and len(rest | hidden) == len(list(model.parameters()))
    assert id(model.lm_head.weight) in rest and id(model.wte.weight) in rest
    for group in opt.param_groups:  # the trainer sets the scheduled lr through these
        group["lr"] = 0.5
    assert all(g["lr"] == 0.5 for o in opt.optimizers for g in o.param_groups)
    lstm = build_model(dataclasses.replace(get_preset("lstm").model, vocab_size=11))
    with pytest.raises(Exception, match="muon needs a Transformer"):
        make_optimizer(lstm, TrainConfig(optimizer="muon"), torch.device("cpu"))


@pytest.mark.parametrize("optimizer", ["adamw", "muon", "sgd", "adafactor"])
def test_optimizer_trains_and_resumes_exactly(optimizer, shakespeare_char, tmp_path, capsys):
    lr = {"adamw": 0.02, "muon": 0.02, "sgd": 0.3, "adafactor": 0.05}[optimizer]
    opt = ["--train.optimizer", optimizer, "--train.lr", str(lr), "--train.min-lr", "0"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(["train", str(shakespeare_char), "tiny", *opt, *STEPS, *FAST, "--out", str(a)], capsys).code == 0
    rows = read_rows(a)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.3, optimizer  # it learns
    # the same run stopped at step 6 and resumed: identical weights at the end
    half = [*STEPS[:1], "6", *STEPS[2:]]
    assert run_cli(["train", str(shakespeare_char), "tiny", *opt, *half, *FAST, "--out", str(b)], capsys).code == 0
    res = run_cli(["train", "--resume", str(b), "--train.max-steps", "12", "--train.no-progress"], capsys)
    assert res.code == 0, res.err
    wa = load_file(str(a / "checkpoints" / "step-00000012" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "step-00000012" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa), optimizer
    assert [r["train_loss"] for r in read_rows(a)] == [r["train_loss"] for r in read_rows(b)]


def test_optimizer_errors(shakespeare_char, tmp_path, capsys):
    out = ["--out", str(tmp_path / "r")]
    res = run_cli(["train", str(shakespeare_char), "tiny", "--train.optimizer", "muom", *out], capsys)
    assert_one_line_error(res, "muom")
    res = run_cli(["train", str(shakespeare_char), "lstm", "--train.optimizer", "muon", *FAST, *out], capsys)
    assert_one_line_error(res, "muon needs a Transformer")
    assert not (tmp_path / "r").exists()
    ok = ["--train.max-steps", "2", "--train.eval-every", "2", *FAST, *out]
    assert run_cli(["train", str(shakespeare_char), "tiny", *ok], capsys).code == 0
    res = run_cli(["train", "--resume", str(tmp_path / "r"), "--train.optimizer", "muon",
                   "--train.max-steps", "4"], capsys)  # fmt: skip
    assert_one_line_error(res, "cannot change --train.optimizer on resume", "adamw -> muon")


def test_speedrun_preset_shape():
    """The speedrun preset as BENCHMARKS.md describes it (its time is measured in benchmarks.speedrun, not here)."""
    from lmlab.config import preset_train_config

    p = get_preset("speedrun")
    model = build_model(dataclasses.replace(p.model, vocab_size=65))
    assert model.num_params() <= 1_000_000 and p.model.pos == "rope"
    cfg = preset_train_config(p)
    assert (cfg.optimizer, cfg.precision, cfg.max_steps) == ("muon", "bf16", 450)
    assert cfg.eval_every == 0 and cfg.eval_steps >= 1_000_000  # one evaluation, over the whole validation split
