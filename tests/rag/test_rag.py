"""lmlab rag: chunking, the BM25 index on disk, search, add, retrieval recall, and every bad input in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlab.errors import LmlabError
from lmlab.rag import Document, Index, chunk_document, read_questions, retrieval_scores
from tests.conftest import SHARED_DATA
from tests.helpers import assert_one_line_error, run_cli

SQUAD = SHARED_DATA / "qa" / "squad-v2.0-dev-first5articles.json"


def sentences(n: int, words: int = 9) -> str:
    return " ".join(f"Sentence {i} " + " ".join(f"w{i}x{j}" for j in range(words - 3)) + " end." for i in range(n))


def test_chunks_respect_the_budget_overlap_and_offsets():
    text = sentences(12) + "\n\n" + sentences(5) + " " + " ".join(f"long{j}" for j in range(70)) + "."
    doc = Document("d", text, "d.txt", "D")
    chunks = chunk_document(doc, chunk_tokens=30, overlap=10)
    assert len(chunks) > 4
    for c in chunks:
        assert c.text == text[c.start : c.end] and len(c.text.split()) <= 30
        assert c.doc_id == "d" and c.title == "D" and c.id.startswith("d#")
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end or b.start >= a.end - 1  # overlapping, or after a cut inside a long sentence
    assert any(b.start < a.end for a, b in zip(chunks, chunks[1:])), "no chunk repeats the end of the one before"
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())  # nothing is lost


@pytest.fixture
def corpus(tmp_path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "cats.txt").write_text("Cats purr when they are content. A cat sleeps sixteen hours a day.\n")
    (d / "rivers.txt").write_text("The Danube flows through ten countries. It ends in the Black Sea.\n")
    (d / "facts.jsonl").write_text(json.dumps({"id": "zorbl", "text": "The zorblax glows violet at dusk.",
                                               "title": "Zorblax", "kind": "fiction"}) + "\n")  # fmt: skip
    return d


def test_index_save_load_search(corpus, tmp_path):
    idx = Index.build([str(corpus)], chunk_tokens=50, overlap=5)
    out = idx.save(tmp_path / "idx")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["chunks"] == 3 and set(manifest["files"]) >= {"chunks.jsonl"}
    loaded = Index.load(out)
    hits = loaded.search("Which colour does the zorblax glow?", k=2)
    assert hits[0].chunk.doc_id == "zorbl" and hits[0].chunk.meta == {"kind": "fiction"} and hits[0].rank == 1
    assert hits[0].score > 0 and all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert loaded.search("where does the Danube end", k=1)[0].chunk.source.endswith("rivers.txt")
    assert loaded.search("the of and", k=3) == []  # nothing but stopwords: no match


def test_bm25_on_squad_finds_the_paragraph(tmp_path):
    idx = Index.build([str(SQUAD)])
    scores = retrieval_scores(idx, read_questions(SQUAD))
    assert scores["questions"] == 705 and len(idx.chunks) >= 173
    assert scores["recall@5"] >= 0.90 and scores["recall@1"] >= 0.7 and 0 < scores["mrr"] <= 1


def test_add_appends_and_a_failed_add_leaves_the_index(corpus, tmp_path, capsys):
    out = tmp_path / "idx"
    assert run_cli(["rag", "index", str(corpus / "cats.txt"), "--out", str(out)], capsys).code == 0
    assert run_cli(["rag", "add", str(out), str(corpus / "rivers.txt")], capsys).code == 0
    idx = Index.load(out)
    assert [c.doc_id for c in idx.chunks] == ["cats", "rivers"]
    before = (out / "manifest.json").read_bytes()
    assert_one_line_error(run_cli(["rag", "add", str(out), str(corpus / "rivers.txt")], capsys), "already in the index")
    assert (out / "manifest.json").read_bytes() == before
    code, stdout, _ = run_cli(["rag", "search", str(out), "Danube", "-k", "1", "--json"], capsys)
    assert code == 0 and json.loads(stdout)["doc_id"] == "rivers"


def test_eval_cli_prints_recall(tmp_path, capsys):
    out = tmp_path / "idx"
    assert run_cli(["rag", "index", str(SQUAD), "--out", str(out)], capsys).code == 0
    code, stdout, _ = run_cli(["rag", "eval", str(out), "--questions", str(SQUAD), "--out", str(tmp_path / "s.json")],
                              capsys)  # fmt: skip
    assert code == 0 and "recall@5" in stdout
    assert json.loads((tmp_path / "s.json").read_text())["questions"] == 705


def test_bad_input_is_one_line(corpus, tmp_path, capsys):
    out = tmp_path / "idx"
    assert run_cli(["rag", "index", str(corpus), "--out", str(out)], capsys).code == 0
    assert_one_line_error(run_cli(["rag", "search", str(tmp_path / "none"), "q"], capsys), "not found")
    assert_one_line_error(run_cli(["rag", "search", str(out), "q", "-k", "0"], capsys), "-k must be an integer >= 1")
    assert_one_line_error(run_cli(["rag", "search", str(out), "q", "--mode", "dense"], capsys), "BM25 only", "--dense")
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    assert_one_line_error(run_cli(["rag", "index", str(empty), "--out", str(tmp_path / "e")], capsys), "no text")
    assert not (tmp_path / "e").exists()
    assert_one_line_error(run_cli(["rag", "index", str(corpus), "--out", str(corpus / "idx")], capsys), "destroy")
    assert_one_line_error(run_cli(["rag", "index", str(corpus), "--out", str(out), "--overlap", "500"], capsys),
                          "--overlap")  # fmt: skip
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "where?"}\n')
    assert_one_line_error(run_cli(["rag", "eval", str(out), "--questions", str(bad)], capsys), "q.jsonl:1")
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"id": 1}\n')
    assert_one_line_error(run_cli(["rag", "index", str(broken), "--out", str(tmp_path / "b")], capsys), "b.jsonl:1")
    assert_one_line_error(run_cli(["rag", "serach", str(out), "q"], capsys), "did you mean 'search'")
    # a damaged index is refused, not searched
    chunks = out / "chunks.jsonl"
    chunks.write_text(chunks.read_text().replace("purr", "meow"))
    assert_one_line_error(run_cli(["rag", "search", str(out), "cats"], capsys), "damaged", "chunks.jsonl")
    with pytest.raises(LmlabError, match="damaged"):
        Index.load(out)


def test_dense_and_hybrid_search(corpus, base, tmp_path, capsys):
    from lmlab.rag.dense import rrf

    out = tmp_path / "idx"
    code, _, err = run_cli(["rag", "index", str(corpus / "cats.txt"), str(corpus / "rivers.txt"), "--out", str(out),
                            "--dense", str(base), "--chunk-tokens", "8", "--overlap", "0"], capsys)  # fmt: skip
    assert code == 0, err
    idx = Index.load(out)
    assert idx.dense.shape == (len(idx.chunks), idx.settings["dense"]["width"]) and idx.dense.dtype.name == "float16"
    for c in idx.chunks:  # a chunk's own text is its nearest neighbour (cosine 1)
        top = idx.search(c.text, k=1, mode="dense")[0]
        assert top.chunk.id == c.id and top.score == pytest.approx(1.0, abs=2e-3)
    hybrid = idx.search("Danube Black Sea", k=3, mode="hybrid")
    assert hybrid[0].chunk.doc_id == "rivers" and len(hybrid) == 3
    assert rrf([[1, 2, 3], [3, 1]], 2, rrf_k=60) == [(1, 1 / 61 + 1 / 62), (3, 1 / 63 + 1 / 61)]
    # adding embeds the new chunks with the same run
    assert run_cli(["rag", "add", str(out), str(corpus / "facts.jsonl")], capsys).code == 0
    idx = Index.load(out)
    assert (
        idx.dense.shape[0] == len(idx.chunks) and idx.search("zorblax", k=1, mode="hybrid")[0].chunk.doc_id == "zorbl"
    )
    # a BM25-only index refuses dense modes; a run whose tokenizer changed is refused
    plain = Index.build([str(corpus)])
    with pytest.raises(LmlabError, match="BM25 only"):
        plain.search("cats", mode="dense")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["settings"]["dense"]["tokenizer_sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(run_cli(["rag", "search", str(out), "cats", "--mode", "dense"], capsys), "another tokenizer")


def test_reader_prompt_and_fitting_passages_to_the_context():
    from types import SimpleNamespace

    from lmlab.rag import Hit, reader_prompt
    from lmlab.rag.ask import _Reader
    from lmlab.rag.chunks import Chunk

    assert reader_prompt("Who?", ["A  b.", "C"], ["T", ""]) == (
        "Answer the question from the passages.\n[1] T: A b.\n[2] C\n\nQuestion: Who?\nAnswer:"
    )
    assert reader_prompt("Who?", []) == "Question: Who?\nAnswer:"

    class Words:  # a tokenizer of one token per word
        def encode(self, text):
            return list(range(len(text.split())))

        def unknown_chars(self, text):
            return []

    reader = _Reader.__new__(_Reader)
    reader.run = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(block_size=64)), tokenizer=Words())
    reader.template = False
    hits = [Hit(i + 1, 1.0, Chunk(f"d{i}#0", f"d{i}", " ".join(["w"] * 20), "s", "", 0, 1)) for i in range(4)]
    prompt, kept = reader.fit("Who is it?", hits, max_new_tokens=10)
    assert [h.chunk.doc_id for h in kept] == ["d0", "d1"] and len(prompt.split()) <= 54  # the best that fit
    prompt, kept = reader.fit("Who is it?", hits[:1], max_new_tokens=40)
    assert len(kept) == 1 and len(kept[0].chunk.text.split()) < 20 and len(prompt.split()) <= 24  # one passage, cut
    with pytest.raises(LmlabError, match="leaves no room"):
        reader.fit("Who?", hits, max_new_tokens=62)


def test_ask_cli(corpus, base, tmp_path, capsys):
    out = tmp_path / "idx"
    assert run_cli(["rag", "index", str(corpus), "--out", str(out), "--chunk-tokens", "8", "--overlap", "0"],
                   capsys).code == 0  # fmt: skip
    code, stdout, err = run_cli(["rag", "ask", str(out), str(base), "zorblax?", "--max-new-tokens", "2"],
                                capsys)  # fmt: skip
    assert code == 0, err
    assert err.startswith("[1]") or "closed-book" in err  # sources cited, or said that none fit the tiny context
    code, stdout, err = run_cli(["rag", "ask", "-", str(base), "what?", "--no-retrieval", "--max-new-tokens", "3"],
                                capsys)  # fmt: skip
    assert code == 0 and err == ""
    assert_one_line_error(run_cli(["rag", "ask", str(out), str(base), " ", "--max-new-tokens", "3"], capsys),
                          "non-empty")  # fmt: skip


def test_a_full_disk_during_add_leaves_the_old_index(corpus, tmp_path, monkeypatch, capsys):
    import errno
    import os

    import lmlab.io

    out = tmp_path / "idx"
    assert run_cli(["rag", "index", str(corpus / "cats.txt"), "--out", str(out)], capsys).code == 0
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(lmlab.io, "fsync_path", full)
    assert_one_line_error(run_cli(["rag", "add", str(out), str(corpus / "rivers.txt")], capsys), "No space left")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert [c.doc_id for c in Index.load(out).chunks] == ["cats"]
