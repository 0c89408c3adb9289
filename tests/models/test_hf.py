"""Hugging Face GPT-2 interop: logits agree both ways on random weights; bad inputs get clear messages."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from lmlab.api import export_hf, import_hf
from lmlab.cli import main
from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.models import build_model
from lmlab.models.hf import load_hf_model, save_hf_model
from lmlab.runs import load_run, save_run
from tests.helpers import assert_one_line_error, run_cli

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)

SHAPES = [
    dict(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2),
    dict(vocab_size=71, n_positions=32, n_embd=24, n_layer=2, n_head=3, n_inner=40),
    dict(vocab_size=64, n_positions=24, n_embd=32, n_layer=3, n_head=4, tie_word_embeddings=False),
]


def hf_gpt2(seed: int, **shape):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(bos_token_id=0, eos_token_id=0, **shape)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # GPT-2 initializes biases and gains trivially; randomize them so parity sees them
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(std=0.5)
    return model


@pytest.mark.parametrize("shape", SHAPES, ids=["tiny", "n_inner", "untied"])
def test_import_parity(tmp_path, shape):
    hf = hf_gpt2(0, **shape)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf_model(tmp_path / "hf")
    x = torch.randint(0, shape["vocab_size"], (2, shape["n_positions"]))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, hf(input_ids=x).logits, atol=1e-4, rtol=0)
    assert ours.config.tie_embeddings == shape.get("tie_word_embeddings", True)

    run = import_hf(tmp_path / "hf", tmp_path / "run")  # and through a run directory
    model, tokenizer, config = load_run(run)
    assert tokenizer is None and "import_hf" in config["source"]
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(input_ids=x).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("ffn_hidden", [0, 48])
def test_export_parity(tmp_path, tied, ffn_hidden):
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=43, block_size=20, n_layer=2, n_head=2, n_embd=16, tie_embeddings=tied,
                      ffn_hidden=ffn_hidden)  # fmt: skip
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    save_run(tmp_path / "run", model)
    export_hf(tmp_path / "run", tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, 43, (3, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=x).logits, model(x).logits, atol=1e-4, rtol=0)


def test_tokenizer_travels_both_ways(tmp_path):
    from lmlab.data.tokenizer import train_bpe

    tok = train_bpe(["hello world, hello there"] * 20, vocab_size=300)
    hf = hf_gpt2(2, vocab_size=tok.vocab_size, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    hf.save_pretrained(tmp_path / "hf")
    tok.save(tmp_path / "hf" / "tokenizer.json")
    run = import_hf(tmp_path / "hf", tmp_path / "run")
    _, loaded, _ = load_run(run)
    assert loaded.encode("hello world") == tok.encode("hello world")
    out = export_hf(run, tmp_path / "back")
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(out)
    assert fast("hello world")["input_ids"] == tok.encode("hello world")


def test_import_reads_gpt2_vocab_and_merges(tmp_path):
    hf = hf_gpt2(3, vocab_size=260, n_positions=8, n_embd=16, n_layer=1, n_head=2)
    hf.save_pretrained(tmp_path / "hf")
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["he"] = 256
    (tmp_path / "hf" / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "hf" / "merges.txt").write_text("#version: 0.2\nh e\n")
    _, tok, _ = load_run(import_hf(tmp_path / "hf", tmp_path / "run"))
    assert tok.encode("hehe") == [256, 256] and tok.decode([256, 256]) == "hehe"


def test_cli_round_trip(tmp_path, capsys):
    hf_gpt2(4, **SHAPES[0]).save_pretrained(tmp_path / "hf")
    main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "run")])
    main(["export-hf", str(tmp_path / "run"), str(tmp_path / "back"), "--checkpoint", "latest"])
    assert "exported" in capsys.readouterr().out
    assert (tmp_path / "back" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------
# bad inputs


def _cli_error(argv, capsys) -> str:
    return assert_one_line_error(run_cli(argv, capsys))


def test_import_missing_directory(tmp_path, capsys):
    err = _cli_error(["import-hf", str(tmp_path / "nope"), str(tmp_path / "run")], capsys)
    assert "nope: no such directory" in err


def test_import_without_config(tmp_path):
    (tmp_path / "hf").mkdir()
    with pytest.raises(LmlabError, match="has no config.json"):
        import_hf(tmp_path / "hf", tmp_path / "run")


def test_import_not_gpt2(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(LmlabError, match="model_type is 'llama', not 'gpt2'"):
        import_hf(tmp_path / "hf", tmp_path / "run")


def test_import_unsupported_gpt2_variant(tmp_path):
    hf_gpt2(5, **SHAPES[0]).save_pretrained(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["activation_function"] = "relu"
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LmlabError, match="activation_function is 'relu'; lmlab's gelu is GPT-2's gelu_new"):
        import_hf(tmp_path / "hf", tmp_path / "run")


def test_import_pickle_only_and_missing_tensor(tmp_path):
    hf_gpt2(6, **SHAPES[0]).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(LmlabError, match="only pytorch_model.bin"):
        import_hf(tmp_path / "hf", tmp_path / "run")
    save_file({"transformer.wte.weight": torch.zeros(50, 16)}, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(LmlabError, match="tensor 'transformer.wpe.weight' is missing"):
        import_hf(tmp_path / "hf", tmp_path / "run")


def test_import_into_existing_run(tmp_path):
    hf_gpt2(7, **SHAPES[0]).save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "run")
    with pytest.raises(LmlabError, match="already holds a run"):
        import_hf(tmp_path / "hf", tmp_path / "run")


def test_export_non_gpt2_shape(tmp_path):
    cfg = ModelConfig(vocab_size=20, n_layer=1, n_head=2, n_embd=16, pos="rope")
    save_run(tmp_path / "run", build_model(cfg))
    with pytest.raises(LmlabError, match="model.pos is 'rope' but GPT-2 needs 'learned'"):
        export_hf(tmp_path / "run", tmp_path / "hf")
    save_run(tmp_path / "lstm", build_model(ModelConfig(arch="lstm", vocab_size=20)))
    with pytest.raises(LmlabError, match="model.arch is 'lstm'"):
        export_hf(tmp_path / "lstm", tmp_path / "hf")


def test_export_run_without_checkpoint(tmp_path, capsys):
    save_run(tmp_path / "run", build_model(ModelConfig(vocab_size=20, n_layer=1, n_head=2, n_embd=16)))
    import shutil

    shutil.rmtree(tmp_path / "run" / "checkpoints")
    err = _cli_error(["export-hf", str(tmp_path / "run"), str(tmp_path / "hf")], capsys)
    assert "no checkpoint" in err


def test_export_missing_run(tmp_path):
    with pytest.raises(LmlabError, match="not found"):
        export_hf(tmp_path / "nope", tmp_path / "hf")


def test_save_hf_model_refuses_a_file_as_output(tmp_path):
    (tmp_path / "file").write_text("x")
    model = build_model(ModelConfig(vocab_size=20, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(LmlabError, match="not a directory"):
        save_hf_model(model, tmp_path / "file")


def test_import_sharded_checkpoint(tmp_path):
    hf = hf_gpt2(8, **SHAPES[1])
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    x = torch.randint(0, SHAPES[1]["vocab_size"], (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(load_hf_model(tmp_path / "hf")(x).logits, hf(input_ids=x).logits, atol=1e-4, rtol=0)
