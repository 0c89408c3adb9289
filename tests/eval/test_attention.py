"""`lmlab attention`: the PNG grid and its inputs."""

from __future__ import annotations

import shutil

import pytest
import torch

from lmlab.api import attention
from lmlab.cli import main
from lmlab.config import ModelConfig
from lmlab.data.tokenizer import train_char
from lmlab.errors import LmlabError
from lmlab.eval.attention import _figure, attention_weights
from lmlab.models import build_model
from lmlab.runs import save_run
from tests.helpers import assert_one_line_error, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run(tmp_path):
    tok = train_char(["to be or not to be\n"])
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=24, n_layer=3, n_head=2, n_embd=16)
    return save_run(tmp_path / "run", build_model(cfg), tok)


def test_writes_a_png_with_one_cell_per_layer_and_head(run, capsys):
    main(["attention", str(run), "--text", "to be", "--layers", "0", "-1"])
    assert "attention.png" in capsys.readouterr().out
    assert (run / "attention.png").read_bytes()[:8] == PNG_MAGIC
    path = attention(run, "not", out=run / "all.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert not list(run.glob(".*tmp*"))  # written through a temporary file that is gone


def test_grid_labels_tokens_on_both_axes():
    weights = torch.rand(3, 2, 4, 4).softmax(-1)
    labels = ["t", "o", "␣", "b"]
    fig = _figure(weights, labels, [0, 2], "")
    axes = fig.axes
    assert len(axes) == 4  # 2 layers × 2 heads
    assert [a.get_title() for a in axes] == ["layer 0 head 0", "layer 0 head 1", "layer 2 head 0", "layer 2 head 1"]
    for ax in axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == labels
        assert [t.get_text() for t in ax.get_yticklabels()] == labels
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_weights_are_causal_distributions(run):
    from lmlab.runs import load_run

    model, tok, _ = load_run(run)
    w = attention_weights(model, tok.encode("to be"))
    assert w.shape == (3, 2, 5, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 5))
    assert (w.triu(1) == 0).all()


def test_unknown_layer(run, capsys):
    result = run_cli(["attention", str(run), "--text", "to be", "--layers", "3"], capsys)
    assert_one_line_error(result, "--layers 3: the model has 3 layers; choose from 0 to 2")
    with pytest.raises(LmlabError, match="--layers -4"):
        attention(run, "to", layers=[-4])


def test_bad_text(run):
    with pytest.raises(LmlabError, match="--text is empty"):
        attention(run, "")
    with pytest.raises(LmlabError, match="--text is 38 tokens, more than model.block_size \\(24\\)"):
        attention(run, "to be or not to be " * 2)


def test_run_without_tokenizer_or_checkpoint(run):
    (run / "tokenizer.json").unlink()
    with pytest.raises(LmlabError, match="has no tokenizer.json"):
        attention(run, "to be")
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(LmlabError, match="no checkpoint"):
        attention(run, "to be")


def test_recurrent_run_has_no_attention(tmp_path):
    tok = train_char(["abc"])
    save_run(tmp_path / "lstm", build_model(ModelConfig(arch="lstm", vocab_size=tok.vocab_size)), tok)
    with pytest.raises(LmlabError, match="is a lstm model, which has no attention"):
        attention(tmp_path / "lstm", "abc")


def test_missing_run(tmp_path):
    with pytest.raises(LmlabError, match="not found"):
        attention(tmp_path / "nope", "abc")
