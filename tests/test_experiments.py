"""`lmlab experiment`: the generated skills, the workspace (reuse, resume, one writer), and both experiments run
for real at their ``test`` size on a generated corpus and labeled files."""

from __future__ import annotations

import json
import random

import pytest

import lmlab
from lmlab.errors import LmlabError
from lmlab.experiments import common, gpt1_ablation, sft_skills, skills
from tests.helpers import assert_one_line_error, run_cli

WORDS = "the a king queen sun moon good bad fine dull film day night sea ship road stone fire water gold".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A books directory (two small generated "books") and a labeled train/dev pair in SST-2's format."""
    d = tmp_path_factory.mktemp("exp")
    rng = random.Random(0)
    books = d / "books"
    books.mkdir()
    for i in range(2):
        text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(400))
        (books / f"book{i}.txt").write_text(text, encoding="utf-8")
    rows = [(" ".join(rng.choice(WORDS) for _ in range(6)), rng.randint(0, 1)) for _ in range(80)]
    (d / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows[:60]))
    (d / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows[60:]))
    return d


def test_skills_answers_are_right_and_test_problems_are_never_trained_on():
    train = skills.make_split(300, test=False, seed=0)
    test = skills.make_split(40, test=True, seed=0)
    assert {p.skill for p in train} == set(skills.SKILLS) == {p.skill for p in test}
    assert not {p.key for p in train} & {p.key for p in test}
    assert len({p.key for p in test}) == len(test)  # distinct test problems
    assert skills.make_split(300, test=False, seed=0) == train  # seeded
    for p in train + test:
        if p.skill == "add":
            a, b = map(int, p.key.split("+"))
            assert p.answer == str(a + b)
        elif p.skill == "sort":
            assert p.answer == ", ".join(sorted(p.key.split(", "), key=int))
        elif p.skill == "reverse":
            assert p.answer.split(", ") == p.key.split(", ")[::-1]
        elif p.skill == "repeat":
            word, n = p.key.split("*")
            assert p.answer == ", ".join([word] * int(n))
        else:
            assert p.answer in p.prompt  # a span of the passage
    some = skills.make_split({"add": 5, "span": 2}, test=False, seed=0)
    assert sorted(p.skill for p in some) == ["add"] * 5 + ["span"] * 2
    with pytest.raises(ValueError, match="unknown skills"):
        skills.make_split({"multiply": 3}, test=False, seed=0)
    assert sft_skills.train_counts(sft_skills.SIZES["full"])["add"] == 3 * sft_skills.SIZES["full"].per_skill


def test_mean_and_sample_spread():
    assert common.mean_std([70.0, 72.0, 74.0]) == (72.0, 2.0)
    assert common.mean_std([61.5]) == (61.5, 0.0)


def test_workspace_has_one_writer_and_reports_a_failing_step(tmp_path):
    with common.Workspace(tmp_path / "ws", quiet=True) as ws:
        with pytest.raises(LmlabError, match="experiment directory"), common.Workspace(tmp_path / "ws"):
            pass
        with pytest.raises(LmlabError, match=r"step failed \(lmlab prepare .*\): lmlab prepare: error: "):
            ws.lmlab(["prepare", tmp_path / "missing.txt", "--out", tmp_path / "d"])
        assert "lmlab prepare" in (ws.root / "commands.txt").read_text()


def test_experiment_cli_errors(corpus, tmp_path, capsys):
    res = run_cli(["experiment", "--help"], capsys)
    assert res.code == 0 and "gpt1-ablation" in res.out and "sft-skills" in res.out
    assert_one_line_error(run_cli(["experiment", "gpt1-ablasion"], capsys), "unknown experiment", "gpt1-ablation")
    out = ["--out", str(tmp_path / "ws")]
    assert_one_line_error(run_cli(["experiment", "gpt1-ablation", *out, "--books", str(tmp_path / "none")], capsys),
                          "--books", "no such file or directory")  # fmt: skip
    books = ["--books", str(corpus / "books")]
    res = run_cli(["experiment", "gpt1-ablation", *out, *books, "--train", str(tmp_path / "x.tsv")], capsys)
    assert_one_line_error(res, "--train", "x.tsv")
    res = run_cli(["experiment", "gpt1-ablation", *out, *books, "--dev", str(tmp_path / "d.tsv")], capsys)
    assert_one_line_error(res, "--dev", "d.tsv", "no such file or directory")
    res = run_cli(["experiment", "gpt1-ablation", *out, *books, "--device", "gpu"], capsys)
    assert_one_line_error(res, "unknown device 'gpu'")
    (tmp_path / "file").write_text("")
    res = run_cli(["experiment", "sft-skills", "--out", str(tmp_path / "file" / "ws"), *books], capsys)
    assert_one_line_error(res, "cannot create the experiment directory", "file/ws")
    assert_one_line_error(run_cli(["experiment", "gpt1-ablation", *out, "--seeds", "0"], capsys), "--seeds must be 1")
    assert_one_line_error(run_cli(["experiment", "sft-skills", *out, "--size", "huge"], capsys), "unknown size 'huge'")
    with pytest.raises(LmlabError, match="'seed' is not an option of experiment gpt1-ablation"):
        lmlab.experiment("gpt1-ablation", seed=1)


def test_gpt1_ablation_and_sft_skills_run_and_reuse_their_runs(corpus, tmp_path, capsys):
    ws = tmp_path / "ws"
    opts = dict(out=ws, size="test", books=corpus / "books", quiet=True)
    res = lmlab.experiment("gpt1-ablation", train=corpus / "train.tsv", dev=corpus / "dev.tsv", **opts)
    assert [r["row"] for r in res["rows"]] == ["full", "scratch", "no-aux", "lstm"]
    for row in res["rows"]:
        assert len(row["seeds"]) == 1 and 0 <= row["seeds"][0] <= 100  # the test size has one seed
        assert row["accuracy"] == [row["seeds"][0], 0.0]
    saved = json.loads((ws / "gpt1-ablation.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(res["rows"]))
    md = (ws / "gpt1-ablation.md").read_text()
    assert "| Transformer w/o pre-training |" in md and "91.3" in md
    assert (ws / "gpt1-ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scratch = json.loads((ws / res["runs"]["scratch"][0]["run"] / "config.json").read_text())
    assert scratch["parent"]["init"] == "random" and scratch["parent"]["checkpoint"] is None
    commands = (ws / "commands.txt").read_text().splitlines()
    assert sum(c.startswith("lmlab finetune") for c in commands) == 4
    assert sum(c.startswith("lmlab train") for c in commands) == 2 and sum("--scratch" in c for c in commands) == 1
    assert sum(c.startswith("lmlab eval") and str(corpus / "dev.tsv") in c for c in commands) == 4
    assert all(str(corpus / "dev.tsv") not in c for c in commands if c.startswith("lmlab finetune"))

    # run again: every run is reused, nothing is retrained
    capsys.readouterr()
    again = lmlab.experiment("gpt1-ablation", train=corpus / "train.tsv", dev=corpus / "dev.tsv", **opts)
    assert (ws / "commands.txt").read_text().splitlines() == commands
    assert [r["accuracy"] for r in again["rows"]] == [r["accuracy"] for r in res["rows"]]
    assert "reusing" in capsys.readouterr().err

    # the SFT experiment starts from the same pretrained Transformer (reused) and fine-tunes twice
    sft = lmlab.experiment("sft-skills", **opts)
    new = (ws / "commands.txt").read_text().splitlines()[len(commands) :]
    assert [c.split()[1] for c in new] == ["finetune", "finetune"] and "--lora.r" in new[1]
    assert sft["base"] == res["pretrained"]["gpt"]
    assert [r["row"] for r in sft["rows"]] == ["base", "full", "lora"]
    for row in sft["rows"]:
        assert set(row["exact_match"]) == set(skills.SKILLS) and 0 <= row["mean_exact_match"] <= 100
    lora, full = sft["rows"][2], sft["rows"][1]
    assert 0 < lora["trainable_params"] < full["trainable_params"]
    assert lora["peak_rss_mb"] > 0 and full["step_s"] > 0
    assert "| SFT (full) |" in (ws / "sft-skills.md").read_text()


def test_an_interrupted_step_is_resumed_not_restarted(corpus, tmp_path):
    with common.Workspace(tmp_path / "ws", quiet=True) as ws:
        data = ws.prepared("books", [corpus / "books", "--tokenizer", "bpe", "--vocab-size", 300])
        argv = ["train", data, "tiny", "--train.max-steps", 3, "--train.eval-every", 0]
        first = ws.trained("pretrain/tiny", argv)
        assert common.run_finished(first.path) and not first.reused
        cfg = json.loads((first.path / "config.json").read_text())
        cfg["train"]["max_steps"] = 5  # as if it had stopped at step 3 of 5
        (first.path / "config.json").write_text(json.dumps(cfg))
        again = ws.trained("pretrain/tiny", argv)
        assert again.path == first.path and common.run_finished(again.path)
        assert (ws.root / "commands.txt").read_text().splitlines()[-1].startswith("lmlab train --resume")
        assert ws.trained("pretrain/tiny", argv).reused


def test_scratch_finetune_refuses_a_checkpoint_or_lora(corpus, tmp_path, capsys):
    base = tmp_path / "base"
    lmlab.prepare(str(corpus / "books"), out=str(tmp_path / "d"), tokenizer="bpe", vocab_size=300, quiet=True)
    lmlab.train(tmp_path / "d", "tiny", out=base, max_steps=2, eval_every=0, progress=False, track="none")
    args = ["finetune", str(base), "classify", str(corpus / "train.tsv"), "--scratch"]
    capsys.readouterr()
    assert_one_line_error(run_cli([*args, "--checkpoint", "latest"], capsys), "--scratch", "no --checkpoint")
    assert_one_line_error(run_cli([*args, "--lora.r", "4"], capsys), "--scratch", "no --lora.r")


def test_sft_skills_scores_a_base_model_by_its_first_line(corpus, tmp_path):
    base = tmp_path / "base"
    lmlab.prepare(str(corpus / "books"), out=str(tmp_path / "d"), tokenizer="bpe", vocab_size=300, quiet=True)
    lmlab.train(tmp_path / "d", "tiny", out=base, max_steps=2, eval_every=0, progress=False, track="none")
    problems = skills.make_split(2, test=True, seed=0)
    got = sft_skills.answers(base, problems)
    assert len(got) == len(problems) and all("\n" not in text for text, _ in got)
    scored = sft_skills.score(base, problems)
    assert set(scored["exact_match"]) == set(skills.SKILLS) and 0 <= scored["ended"] <= 100
    assert gpt1_ablation.SIZES["test"].train_examples > 0


def test_sentiment_rlhf_runs_every_method_and_reuses_its_runs(corpus, tmp_path, capsys):
    rng = random.Random(1)  # more review sentences than the shared corpus has: the LM's text needs a validation split
    rows = [(" ".join(rng.choice(WORDS) for _ in range(8)), rng.randint(0, 1)) for _ in range(300)]
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    ws = tmp_path / "ws"
    opts = dict(out=ws, size="test", train=tmp_path / "train.tsv", dev=corpus / "dev.tsv", quiet=True)
    res = lmlab.experiment("sentiment-rlhf", **opts)
    assert [r["row"] for r in res["rows"]] == ["start", "ppo", "grpo", "dpo1", "dpo2"]
    start = res["rows"][0]
    assert start["kl"] == pytest.approx(0.0, abs=1e-6)  # the starting policy is its own reference
    for row in res["rows"]:
        assert 0 <= row["reward"] <= 1 and row["ref_ppl"] > 0 and 0 <= row["distinct2"] <= 1
    for row in res["rows"][1:]:
        assert isinstance(row["goal_reward"], bool) and isinstance(row["goal_ppl"], bool)
    assert res["rows"][1]["curve"] and res["rows"][3]["curve"] is None  # PPO has evaluations, DPO one point
    md = (ws / "sentiment-rlhf.md").read_text()
    assert "| PPO |" in md and "| DPO round 2 (iterated) |" in md and "Samples" in md
    assert (ws / "sentiment-rlhf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    commands = (ws / "commands.txt").read_text().splitlines()
    methods = [c.split()[3] for c in commands if c.startswith("lmlab finetune")]
    assert methods == ["classify", "ppo", "grpo", "dpo", "dpo"]
    assert sum("--ref-run" in c for c in commands) == 2  # both DPO rounds keep the starting policy as reference
    dpo2 = json.loads((ws / res["rows"][4]["run"] / "config.json").read_text())
    assert dpo2["parent"]["run"] == res["rows"][3]["run"]  # round 2 starts from round 1's policy
    capsys.readouterr()
    again = lmlab.experiment("sentiment-rlhf", **opts)
    assert (ws / "commands.txt").read_text().splitlines() == commands  # nothing retrained or re-scored
    assert [r["reward"] for r in again["rows"]] == [r["reward"] for r in res["rows"]]


def test_rag_facts_runs_end_to_end_and_reuses_its_steps(tmp_path, capsys):
    ws = tmp_path / "ws"
    res = lmlab.experiment("rag-facts", out=ws, size="test", quiet=True)
    assert set(res["answers"]) == {"closed-book", "retrieval", "oracle"}
    assert res["held_out_questions"] == 8 * 5 and res["retrieval"]["questions"] == 40
    assert res["retrieval"]["recall@5"] >= 0.9  # every name is unique: BM25 finds the person
    for cond in res["answers"].values():
        assert cond["questions"] == 40 and 0 <= cond["exact_match"] <= 100
    assert 0 < res["chance_exact_match"] < 5 and isinstance(res["goal_met"], bool)
    md = (ws / "rag-facts.md").read_text()
    assert "| with retrieval (BM25, top 3) |" in md and "| chance" in md
    assert (ws / "rag-facts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    commands = (ws / "commands.txt").read_text().splitlines()
    assert [c.split()[1] for c in commands] == ["rag", "prepare", "train", "finetune", "rag", "rag"]
    held_out = [json.loads(x) for x in next((ws / "data").glob("rag-facts-*/questions-held-out.jsonl")).open()]
    trained = "".join(p.read_text() for p in (ws / "data").glob("rag-facts-*/*.*") if "held-out" not in p.name
                      and p.name not in ("kb.jsonl",) and p.is_file())  # fmt: skip
    names = {q["question"].split(" was ")[-1].removesuffix(" born?") for q in held_out if "year" in q["question"]}
    assert len(names) == 8 and not [n for n in names if n in trained]  # no held-out person is trained on
    capsys.readouterr()
    again = lmlab.experiment("rag-facts", out=ws, size="test", quiet=True)
    assert (ws / "commands.txt").read_text().splitlines() == commands and again["answers"] == res["answers"]


def test_the_experiment_cli_shows_its_progress_and_table(monkeypatch, capsys):
    import sys

    from lmlab.experiments import rag_facts

    def fake(out: str = "runs/experiments", *, quick: bool = False, seed: int = 0) -> dict:
        """A stand-in experiment.

        Args:
            out: the workspace.
            quick: the small size.
            seed: the seed.
        """
        print(f"[experiment] step 1 of {out}", file=sys.stderr)
        print(f"| table | {seed} |")
        return {}

    monkeypatch.setattr(rag_facts, "run", fake)
    res = run_cli(["experiment", "rag-facts", "--out", "ws", "--seed", "3"], capsys)
    assert res.code == 0 and "| table | 3 |" in res.out and "step 1 of ws" in res.err
    assert_one_line_error(run_cli(["experiment", "rag-facts", "--sed", "3"], capsys), "--seed")
