"""Weight-only quantization: error bounds, packed kernels against the reference path, GPTQ against RTN, quantized
runs that load, sample, evaluate and round-trip bit for bit, and the one-line errors."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmlab
from lmlab.errors import LmlabError
from lmlab.io import sha256_file
from lmlab.models import quant
from lmlab.models.quant import QuantLinear, QuantSpec
from tests.helpers import assert_one_line_error, run_cli

SPECS = [
    QuantSpec("int8"),
    QuantSpec("int8", symmetric=False),
    QuantSpec("int4", 32),
    QuantSpec("int4", 64, symmetric=False),
    QuantSpec("int4", 128),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name.replace(" ", "-"))
def test_round_to_nearest_is_within_half_a_step(spec):
    torch.manual_seed(0)
    w = torch.randn(48, 256) * torch.rand(48, 1)  # rows of different ranges
    w[3, 5] = 9.0  # an outlier: only its own row / group gets the coarse scale
    u, scale, zero = quant.quantize_weight(w, spec)
    assert u.min() >= 0 and u.max() <= 2**spec.bits - 1 and torch.equal(u, u.round())
    back = quant.dequantize_codes(u, scale, zero)
    g = spec.group_size or 256
    step = scale.repeat_interleave(g, dim=1)  # (N, K): the step of each weight's row or group
    assert ((back - w).abs() <= step / 2 + 1e-6).all()
    if spec.scheme == "int4":  # the outlier's group is coarse, the other groups of its row are not
        assert scale[3, 0] > 5 * scale[3, 1]


def test_int4_codes_pack_two_per_byte_and_back():
    u = torch.randint(0, 16, (16, 64), dtype=torch.uint8)
    p = quant.pack_int4(u)
    assert p.shape == (16, 32) and p.dtype == torch.uint8
    assert torch.equal(p[0, 0], u[0, 0] | (u[0, 1] << 4))
    assert torch.equal(quant.unpack_int4(p), u)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name.replace(" ", "-"))
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_packed_kernels_equal_the_reference_path(spec, rows):
    torch.manual_seed(1)
    lin = torch.nn.Linear(256, 96)
    q = QuantLinear.from_weight(lin, spec)
    x = torch.randn(rows, 3, 256)
    assert q.prepare("reference") == "reference"
    ref = q(x)
    want = torch.nn.functional.linear(x, q.dequantize(), lin.bias)
    torch.testing.assert_close(ref, want)  # the reference path is dequantize-then-matmul in fp32
    kernel = q.prepare("auto")
    assert kernel == ("int8pack" if spec.scheme == "int8" else "int4pack")
    got = q(x)
    assert got.dtype == x.dtype and got.shape == ref.shape
    # the kernels take bf16 activations: the difference is bf16's rounding of x (2^-8 relative), no more
    err = (got - ref).norm() / ref.norm()
    assert err < 6e-3, err


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_kernel_pads_rows_to_its_tile_and_to_moves_back_to_the_reference(symmetric):
    q = QuantLinear.from_weight(torch.nn.Linear(64, 72), QuantSpec("int4", 32, symmetric))  # 72 rows: not 16k
    x = torch.randn(5, 64)
    q.prepare("reference")
    ref = q(x)
    assert q.prepare() == "int4pack"
    got = q(x)
    assert got.shape == (5, 72) and (got - ref).norm() / ref.norm() < 6e-3
    q = QuantLinear.from_weight(torch.nn.Linear(64, 64), QuantSpec("int4", 32))
    assert q.prepare() == "int4pack"
    q.to(torch.device("meta"))
    assert q.kernel == "reference"


def test_gptq_beats_round_to_nearest_on_its_calibration_inputs():
    torch.manual_seed(0)
    K, N = 128, 64
    # correlated inputs (near rank 32, like a layer's activations): the errors of one column can be cancelled
    x = torch.randn(4096, 32) @ torch.randn(32, K) + 0.05 * torch.randn(4096, K)
    w = torch.randn(N, K) * 0.1
    H = x.T @ x
    for spec in (QuantSpec("int4", 32), QuantSpec("int8"), QuantSpec("int4", 64, symmetric=False)):
        rtn = quant.dequantize_codes(*quant.quantize_weight(w, spec))
        u, s, z = quant.gptq(w, H, spec)
        assert u.min() >= 0 and u.max() <= 2**spec.bits - 1
        g = quant.dequantize_codes(u, s, z)
        e_rtn, e_gptq = ((x @ (rtn - w).T).norm()), ((x @ (g - w).T).norm())
        assert e_gptq < 0.6 * e_rtn, (spec.name, e_gptq, e_rtn)


def test_spec_errors():
    with pytest.raises(LmlabError, match="int8 is quantized per output channel"):
        QuantSpec("int8", 64)
    with pytest.raises(LmlabError, match="choose one of 32, 64, 128, 256"):
        QuantSpec("int4", 48)
    with pytest.raises(LmlabError, match="choose int8 or int4"):
        QuantSpec("int3")
    with pytest.raises(LmlabError, match="--keep 'bias'"):
        QuantSpec(keep=("bias",))
    assert QuantSpec("int4").group_size == 128


@pytest.fixture(scope="module")
def quantized(base, tmp_path_factory):
    """The `tiny` base run (width 32) quantized to int4 g32 with every tensor quantized, by GPTQ."""
    out = tmp_path_factory.mktemp("quant") / "q4"
    scores = lmlab.quantize(base, out, scheme="int4", group_size=32, method="gptq", keep="none", eval_tokens=4096)
    return out, scores


def test_a_quantized_run_is_a_run(quantized, base, tmp_path):
    out, scores = quantized
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quant"]["scheme"] == "int4" and cfg["quant"]["group_size"] == 32 and cfg["quant"]["keep"] == []
    assert cfg["parent"]["method"] == "quantize" and cfg["parent"]["run"] == str(base.resolve())
    assert scores["size_ratio"] < 0.4 and 0.9 < scores["top1_agreement"] <= 1 and scores["kl"] >= 0
    assert abs(scores["ppl_change_pct"]) < 20
    run = lmlab.load(out)
    layers = dict(quant.quantized_layers(run.model))
    assert {"blocks.0.attn.qkv", "lm_head", "wte"} <= set(layers)
    assert layers["wte"].qweight is layers["lm_head"].qweight  # tied: one table for lookup and head
    tensors = load_file(str(run.checkpoint / "model.safetensors"))
    assert tensors["blocks.0.attn.qkv.qweight"].dtype == torch.uint8
    assert tensors["blocks.0.attn.qkv.qweight"].shape == (96, 16)
    assert not any(t.dtype == torch.float32 and t.dim() == 2 and t.shape[1] == 32 and t.shape[0] >= 32
                   for n, t in tensors.items() if "wpe" not in n)  # fmt: skip
    # save and load again: the same tensors bit for bit, the same logits
    from lmlab.runs import save_run

    again = lmlab.load(save_run(tmp_path / "copy", run.model, run.tokenizer, {"quant": cfg["quant"]}))
    a, b = run.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    x = torch.randint(0, run.model.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(run.model(x).logits, again.model(x).logits)


def test_a_quantized_run_samples_through_the_fast_step_and_evaluates(quantized, base, capsys):
    out, _ = quantized
    run = lmlab.load(out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fast decode step must agree with forward (else it warns)
        text = lmlab.generate(run.model, run.tokenizer, "ROMEO:", max_new_tokens=12, seed=0)
    assert isinstance(text, str)
    r = run_cli(["sample", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "8", "--seed", "0"], capsys)
    assert r.code == 0 and "int4pack" in r.err  # the log says which kernels run
    r = run_cli(["eval", str(out), "--compare", str(base), "--per-layer"], capsys)
    assert r.code == 0, r.err
    assert "top-1" in r.out and "KL" in r.out and "blocks.1.mlp.down" in r.out
    saved = json.loads((out / "eval-compare.json").read_text())
    assert saved["layers"] and all(0 <= row["output_rel_err"] < 1 for row in saved["layers"])


def test_quantize_cli_int8_keeps_head_and_embeddings_by_default(base, tmp_path, capsys):
    r = run_cli(["quantize", str(base), "--out", str(tmp_path / "q8"), "--eval-tokens", "2048"], capsys)
    assert r.code == 0, r.err
    assert "ppl" in r.out and "top-1" in r.out and "size" in r.out
    run = lmlab.load(tmp_path / "q8")
    names = {n for n, _ in quant.quantized_layers(run.model)}
    assert "lm_head" not in names and "wte" not in names and "blocks.0.mlp.up" in names
    assert type(run.model.wte) is torch.nn.Embedding


def test_a_seq2seq_run_quantizes_and_translates(tiny_run_seq2seq, tmp_path):
    out = tmp_path / "s8"
    lmlab.quantize(tiny_run_seq2seq, out, scheme="int8")
    assert (out / "tokenizer.json").read_bytes() == (tiny_run_seq2seq / "tokenizer.json").read_bytes()
    assert isinstance(lmlab.translate(out, "I am cold.", beam=1), str)


@pytest.fixture(scope="module")
def tiny_run_seq2seq(tmp_path_factory, en_fr):
    run = tmp_path_factory.mktemp("runs") / "s2s"
    lmlab.train(en_fr, "seq2seq-tiny", out=run, max_steps=3, eval_every=0, progress=False, track="none")
    return run


def test_quantize_errors(base, quantized, shakespeare_char, tmp_path, capsys):
    out, _ = quantized

    def err(*argv: str, fragment: str):
        assert_one_line_error(run_cli(["quantize", *argv], capsys), fragment, verb="quantize")

    err(str(base), "--out", str(tmp_path / "a"), "--scheme", "int4", fragment="does not divide the input width 32")
    err(str(base), "--out", str(tmp_path / "a"), "--group-size", "32", fragment="int8 is quantized per output channel")
    err(str(base), "--out", str(tmp_path / "a"), "--scheme", "int2", fragment="choose int8 or int4")
    err(str(base), "--out", str(tmp_path / "a"), "--keep", "lm", fragment="--keep 'lm'")
    err(str(out), "--out", str(tmp_path / "a"), fragment="is quantized already")
    err(str(base), "--out", str(base), fragment="exists; choose a new run directory")
    other = tmp_path / "other.txt"
    other.write_text("zzzz yyyy xxxx 0123 " * 400)
    lmlab.prepare(str(other), out=str(tmp_path / "other"), quiet=True)
    err(str(base), "--out", str(tmp_path / "a"), "--method", "gptq", "--calib", str(tmp_path / "other"),
        fragment="another tokenizer")  # fmt: skip
    lstm = tmp_path / "lstm"
    lmlab.train(shakespeare_char, "lstm", out=lstm, max_steps=1, eval_every=0, progress=False, track="none")
    capsys.readouterr()
    err(str(lstm), "--out", str(tmp_path / "a"), fragment="recurrent cells")
    assert not (tmp_path / "a").exists()
    err(str(base), "--out", str(tmp_path / "a"), "--calib-tokens", "0", fragment="calib")
    assert_one_line_error(run_cli(["eval", str(base), "--per-layer"], capsys), "--per-layer goes with --compare")
    r = run_cli(["eval", str(base), "--compare", str(base), "--compare-tokens", "-1"], capsys)
    assert_one_line_error(r, "compare")


def test_a_file_that_does_not_match_the_scheme_is_refused(quantized, tmp_path):
    import shutil

    out, _ = quantized
    bad = tmp_path / "bad"
    shutil.copytree(out, bad, symlinks=True)
    ckpt = lmlab.load(bad).checkpoint
    f = ckpt / "model.safetensors"
    tensors = load_file(str(f))
    tensors["blocks.0.mlp.up.qweight"] = tensors["blocks.0.mlp.up.qweight"].float()  # a float where codes belong
    f.unlink()
    save_file(tensors, str(f))
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = sha256_file(f)  # a consistent checkpoint, of the wrong kind
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LmlabError, match=r"blocks.0.mlp.up.qweight is F32 .* stores uint8"):
        lmlab.load(bad)
    with pytest.raises(LmlabError, match="damaged or truncated"):
        quant.check_file(lmlab.load(out).model, _truncated(out, tmp_path))


def _truncated(run, tmp_path):
    f = lmlab.load(run).checkpoint / "model.safetensors"
    t = tmp_path / "cut.safetensors"
    t.write_bytes(f.read_bytes()[:100])
    return t
