"""Every public function of ``lmlab.api``, called through ``lmlab.NAME`` after every module of the package has
been imported (importing a submodule must never hide a function behind a module of the same name)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import lmlab
from lmlab import api

QUIET = dict(progress=False, track="none", sample_tokens=0)


@pytest.fixture(scope="module", autouse=True)
def _every_module_imported():
    for info in pkgutil.walk_packages(lmlab.__path__, "lmlab."):
        importlib.import_module(info.name)


def test_every_public_function_is_called_here():
    called = {"prepare", "train", "load", "generate", "stream", "plot", "evaluate", "attention", "translate"}
    called |= {"import_hf", "export_hf", "finetune", "classify", "chat", "merge", "experiment", "quantize"}
    assert set(api.__all__) == called, "a public function was added: call it in this module too"
    assert set(api.__all__) <= set(lmlab.__all__)


def test_lm_verbs_end_to_end(shakespeare, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    ds = lmlab.prepare(str(corpus), out=str(tmp_path / "data"), quiet=True)
    result = lmlab.train(ds.path, "tiny", out=tmp_path / "run", max_steps=4, eval_every=2, **QUIET)
    assert result.status == "finished" and result.step == 4
    run = lmlab.load(tmp_path / "run")
    text = lmlab.generate(run.model, run.tokenizer, "ROMEO:", max_new_tokens=5, seed=0)
    assert text == "".join(lmlab.stream(run.model, run.tokenizer, "ROMEO:", max_new_tokens=5, seed=0))
    assert lmlab.plot([tmp_path / "run"], tmp_path / "curves.png").is_file()
    q = lmlab.quantize(tmp_path / "run", tmp_path / "run-q8", scheme="int8", eval_tokens=1024)
    assert q["top1_agreement"] > 0.9 and lmlab.load(tmp_path / "run-q8").config["quant"]["scheme"] == "int8"
    assert lmlab.evaluate(tmp_path / "run", "val", out=tmp_path / "eval.json")["loss"] > 0
    assert lmlab.attention(tmp_path / "run", "to be", out=tmp_path / "attention.png").is_file()
    # tiny is GPT-2-shaped, so it goes to the Hugging Face layout and back
    hf = lmlab.export_hf(tmp_path / "run", tmp_path / "hf")
    back = lmlab.load(lmlab.import_hf(hf, tmp_path / "back"))
    assert lmlab.generate(back.model, back.tokenizer, "ROMEO:", max_new_tokens=5, seed=0) == text
    labeled = tmp_path / "labeled.tsv"
    labeled.write_text("sentence\tlabel\n" + "".join(f"{w} day\t{w}\n" for w in ["good", "bad"] * 20), encoding="utf-8")
    clf = lmlab.finetune(
        tmp_path / "run", "classify", labeled, out=tmp_path / "clf", batch_size=4, max_steps=2, **QUIET
    )
    assert clf.status == "finished" and lmlab.classify(tmp_path / "clf", "a good day")["label"] in ("bad", "good")
    assert isinstance(lmlab.chat(tmp_path / "run", "ROMEO:", max_new_tokens=3, seed=0), str)
    lmlab.finetune(
        tmp_path / "run", "classify", labeled, out=tmp_path / "lora", batch_size=4, max_steps=2, lora={"r": 2}
    )
    merged = lmlab.merge(tmp_path / "lora", tmp_path / "merged")
    probs = lmlab.classify(tmp_path / "lora", "a bad day")["probs"]
    assert lmlab.classify(merged, "a bad day")["probs"] == pytest.approx(probs)
    # experiments run for real in tests/test_experiments.py; here, that the name is the function
    with pytest.raises(lmlab.LmlabError, match="--seeds must be 1 or more"):
        lmlab.experiment("gpt1-ablation", seeds=0, out=tmp_path / "exp")


def test_translation_verbs_end_to_end(en_fr, tmp_path):
    lmlab.train(en_fr, "seq2seq-tiny", out=tmp_path / "mt", max_steps=2, eval_every=2, **QUIET)
    assert isinstance(lmlab.translate(tmp_path / "mt", "I am cold.", beam=2, max_new_tokens=4), str)
    scores = lmlab.evaluate(tmp_path / "mt", "test", limit=3, beam=1)
    assert {"bleu", "chrf", "loss"} <= set(scores)
    png = lmlab.attention(tmp_path / "mt", source="I am cold.", out=tmp_path / "cross.png")
    assert png.is_file()
