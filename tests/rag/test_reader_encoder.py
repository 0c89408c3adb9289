"""lmlab rag: answers scored closed-book / with retrieval / with the gold passage, inverse-cloze pairs, the
contrastive encoder (lmlab rag train-encoder), and the generated knowledge base of the rag-facts experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.rag import Index, exact_match, f1_score, ict_pairs, read_questions, reader_scores
from tests.helpers import assert_one_line_error, run_cli


def test_answers_are_scored_as_squad_does():
    assert exact_match("The Danube.", ["danube"]) and exact_match("  an  Owl ", ["owl", "heron"])
    assert not exact_match("Danube river", ["Danube"])
    assert f1_score("Danube river", ["the Danube"]) == pytest.approx(2 / 3)
    assert f1_score("", ["x"]) == 0.0 and f1_score("x y", ["z"]) == 0.0 and f1_score("", [""]) == 1.0


@pytest.fixture
def facts(tmp_path) -> tuple[Path, Path]:
    kb = tmp_path / "kb.jsonl"
    rows = [("zorb", "Zorblax", "The zorblax glows violet at dusk."), ("quil", "Quilm", "The quilm sings at dawn."),
            ("tav", "Tavro", "Tavro is a river that ends in the lake of Mirn.")]  # fmt: skip
    kb.write_text("".join(json.dumps({"id": i, "title": t, "text": x}) + "\n" for i, t, x in rows))
    qs = tmp_path / "q.jsonl"
    qs.write_text(json.dumps({"question": "What colour does the zorblax glow?", "answers": ["violet"],
                              "doc_id": "zorb"}) + "\n"
                  + json.dumps({"question": "Where does the Tavro end?", "answers": ["the lake of Mirn"],
                                "context": "Tavro ends in the lake of Mirn."}) + "\n")  # fmt: skip
    return kb, qs


@pytest.fixture(scope="module")
def reader(tmp_path_factory, shakespeare_char) -> Path:
    """A `tiny` GPT with a 160-token context (the shared base has 32: no room for a passage), 2 steps."""
    from lmlab.api import train

    run = tmp_path_factory.mktemp("runs") / "reader"
    train(shakespeare_char, "tiny", out=run, model={"block_size": 160}, max_steps=2, eval_every=0, progress=False,
          track="none")  # fmt: skip
    return run


def test_reader_scores_three_conditions_and_the_cli(facts, reader, tmp_path, capsys):
    kb, qs = facts
    base = reader
    idx = Index.build([str(kb)])
    questions = read_questions(qs)
    assert questions[1].context == "Tavro ends in the lake of Mirn." and questions[0].context is None
    scores = reader_scores(idx, questions, base, k=2, max_new_tokens=4, device="cpu")
    assert set(scores) == {"closed-book", "retrieval", "oracle"}
    for cond in scores.values():  # every question has a gold passage here (a doc_id, or its context)
        assert cond["questions"] == 2 and 0 <= cond["exact_match"] <= cond["f1"] + 1e-9 <= 100 + 1e-9
        assert len(cond["examples"]) == 2 and all(isinstance(e["reply"], str) for e in cond["examples"])
    out = tmp_path / "idx"
    assert run_cli(["rag", "index", str(kb), "--out", str(out)], capsys).code == 0
    code, stdout, err = run_cli(["rag", "eval", str(out), "--questions", str(qs), "--reader", str(base),
                                 "--max-new-tokens", "3", "--out", str(tmp_path / "s.json")], capsys)  # fmt: skip
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("retrieval  recall@1") and [ln.split()[0] for ln in lines[1:]] == [
        "closed-book", "retrieval", "oracle"]  # fmt: skip
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["retrieval"]["questions"] == 2 and saved["answers"]["oracle"]["questions"] == 2
    # bad input: one line each
    for argv, words in [
        (["-k", "0"], ["-k 0"]),
        (["--limit", "0"], ["--limit 0"]),
        (["--reader", str(tmp_path / "nope")], ["nope"]),
    ]:
        assert_one_line_error(run_cli(["rag", "eval", str(out), "--questions", str(qs), *argv], capsys), *words)
    ctx = tmp_path / "ctx.jsonl"
    ctx.write_text('{"question": "q?", "answers": ["a"], "context": 3}\n')
    assert_one_line_error(run_cli(["rag", "eval", str(out), "--questions", str(ctx)], capsys), "ctx.jsonl:1", "context")


def test_inverse_cloze_pairs(tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    text = " ".join(f"Sentence number {i} tells of the {i}th thing here." for i in range(30))
    doc.write_text(text + "\n")
    pairs = ict_pairs([str(doc)], chunk_tokens=40, seed=1)
    assert len(pairs) >= 5
    removed = sum(p["question"] not in p["passage"] for p in pairs)
    assert removed >= len(pairs) // 2  # the query sentence is usually taken out of its passage
    for p in pairs:
        assert p["question"] in text and p["doc_id"] == "doc"
    assert ict_pairs([str(doc)], chunk_tokens=40, seed=1) == pairs  # seeded
    assert len(ict_pairs([str(doc)], chunk_tokens=40, limit=2)) == 2
    out = tmp_path / "pairs.jsonl"
    code, _, err = run_cli(["rag", "pairs", str(doc), "--out", str(out), "--chunk-tokens", "40"], capsys)
    assert code == 0 and "inverse-cloze pairs" in err
    assert [json.loads(x) for x in out.read_text().splitlines()][0].keys() == {"question", "passage", "doc_id"}
    assert_one_line_error(run_cli(["rag", "pairs", str(doc), "--out", str(doc)], capsys), "destroy")
    short = tmp_path / "short.txt"
    short.write_text("One sentence only.\n")
    assert_one_line_error(run_cli(["rag", "pairs", str(short), "--out", str(tmp_path / "p2.jsonl")], capsys),
                          "three sentences")  # fmt: skip


def test_the_encoder_loss_does_not_count_a_shared_passage_as_a_negative(base):
    from lmlab.objectives.encoder import Encoder, encode_pairs
    from lmlab.rag.dense import pool
    from lmlab.runs import load

    run = load(base)
    pairs = [("cats purr", "A cat purrs."), ("do cats purr", "A cat purrs."), ("rivers", "The Danube flows.")]
    enc = encode_pairs(pairs, run.tokenizer, 32)
    assert enc.passage_id.tolist() == [0, 0, 1]
    obj = Encoder(enc, enc, temperature=0.1, pad_id=0)
    model = run.model.eval()
    batch = next(iter(obj.batches("val", batch_size=3, seed=0)))
    assert batch.same.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    out = obj.loss(model, batch)
    with torch.no_grad():
        q, p = pool(model, batch.q, batch.q_mask), pool(model, batch.p, batch.p_mask)
    sim = q @ p.T / 0.1
    keep = [[0, 2], [1, 2], [0, 1, 2]]  # row i: its own passage and the other passages (not its twin)
    q2p = [-(sim[i, i] - torch.logsumexp(sim[i, keep[i]], 0)) for i in range(3)]
    p2q = [-(sim.T[i, i] - torch.logsumexp(sim.T[i, keep[i]], 0)) for i in range(3)]
    assert float(out.loss.detach()) == pytest.approx(float((sum(q2p) / 3 + sum(p2q) / 3) / 2), rel=1e-4)
    assert obj.reduce([out])["val_accuracy"] in (0, 1 / 3, 2 / 3, 1)


def test_train_encoder_then_index_with_it(base, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"question": f"thing {i}?", "passage": f"The thing number {i} is kept in box {i % 3}."} for i in range(16)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    enc = tmp_path / "enc"
    code, _, err = run_cli(["rag", "train-encoder", str(base), str(pairs), "--out", str(enc), "--train.max-steps", "2",
                            "--train.batch-size", "4", "--val-fraction", "0.25", "--train.device", "cpu"],
                           capsys)  # fmt: skip
    assert code == 0, err
    cfg = json.loads((enc / "config.json").read_text())
    assert cfg["objective"] == "encoder" and cfg["finetune"]["options"]["temperature"] == 0.05 and "head" not in cfg
    index = json.loads((enc / "checkpoints" / "index.json").read_text())
    assert any("val_accuracy" in (v.get("metrics") or {}) for v in index.values() if isinstance(v, dict))
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": r["passage"]}) + "\n" for i, r in enumerate(rows)))
    out = tmp_path / "idx"
    assert run_cli(["rag", "index", str(docs), "--out", str(out), "--dense", str(enc)], capsys).code == 0
    assert len(Index.load(out).search("thing 3?", k=2, mode="dense")) == 2
    # bad input
    assert_one_line_error(run_cli(["rag", "train-encoder", str(base)], capsys), "give the base run and the pairs")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    assert_one_line_error(run_cli(["rag", "train-encoder", str(base), str(bad), "--out", str(tmp_path / "e2")],
                                  capsys), "bad.jsonl:1", "passage")  # fmt: skip
    assert_one_line_error(run_cli(["rag", "train-encoder", str(base), str(pairs), "--out", str(tmp_path / "e3"),
                                   "--temperature", "0"], capsys), "--temperature")  # fmt: skip
    assert not (tmp_path / "e2").exists() and not (tmp_path / "e3").exists()
    code, stdout, _ = run_cli(["rag", "train-encoder", "--help"], capsys)
    assert code == 0 and "--temperature" in stdout


def test_the_knowledge_base_is_unique_and_answerable():
    from lmlab.experiments.factbase import FACTS, chance, make_people

    people = make_people(300, seed=3)
    assert len({p.name for p in people}) == 300 and make_people(300, seed=3) == people
    for p in people[:50]:
        text = p.passage()
        assert text.startswith(p.name) and text.count(p.name) == 5 and p.fact("town") in text
        for a in FACTS:
            assert p.facts[a] in text and p.name in p.question(a) and f"Answer: {p.facts[a]}" in p.qa_text()
    assert chance("pet") == 0 and chance("profession") == pytest.approx(1 / 30)


def test_pairs_from_squad_json():
    from lmlab.objectives.encoder import read_pairs
    from tests.conftest import SHARED_DATA

    squad = SHARED_DATA / "qa" / "squad-v2.0-dev-first5articles.json"
    pairs = read_pairs(squad)
    assert len(pairs) == 705 and len({p for _, p in pairs}) <= 177
    assert all(q.strip() for q, _ in pairs) and all(len(p.split()) > 20 for _, p in pairs)


def test_question_file_errors(tmp_path):
    missing = tmp_path / "none.jsonl"
    with pytest.raises(LmlabError, match="not found"):
        read_questions(missing)
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"question": "q", "answers": [1]}\n')
    with pytest.raises(LmlabError, match="b.jsonl:1"):
        read_questions(bad)
