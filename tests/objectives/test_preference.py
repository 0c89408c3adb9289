"""Preference data, the reward model and DPO: formats, losses, the real CLI on a tiny model, resume, errors."""

from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import lmlab
from lmlab.data.formats.preference import parse_hh, read_preferences
from lmlab.data.responses import prompt_ids, response_ids
from lmlab.data.tokenizer import train_char
from lmlab.errors import LmlabError
from lmlab.objectives.dpo import DPO, DPOOptions, response_logprobs
from lmlab.objectives.reward import GroupLoader, Reward, encode_groups, join
from tests.conftest import SHARED_DATA
from tests.helpers import assert_one_line_error, run_cli

QUIET = ["--train.no-progress", "--train.track", "none"]
HH = SHARED_DATA / "preference" / "hh-rlhf-harmless-base-test.jsonl"
WORDS = ["king", "lord", "moon", "rose", "sword", "night", "crown", "love"]


def jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# -- reading ------------------------------------------------------------------------------------


def test_every_record_form_reads_and_rankings_give_all_pairs(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", [
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: well", "rejected":
         "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: go away"},
        {"chosen": "good text", "rejected": "bad text"},
        {"prompt": "say", "chosen": " yes", "rejected": " no"},
        {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
         "rejected": "b"},
        {"prompt": "rank", "responses": [" x", " y", " z"], "ranking": [2, 0, 1]},
        {"prompt": "list", "responses": [" best", " mid", " worst", " last"]},
    ])  # fmt: skip
    groups, skipped = read_preferences(path)
    assert skipped == 0 and len(groups) == 6
    hh = groups[0]
    assert hh.prompt == ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                         {"role": "user", "content": "how?"})  # fmt: skip
    assert hh.responses == ("well", "go away")
    assert groups[1].prompt == "" and groups[1].responses == ("good text", "bad text")
    assert groups[3].prompt == ({"role": "user", "content": "q"},) and groups[3].responses == ("a", "b")
    assert groups[4].responses == (" z", " x", " y")  # the ranking lists indices best first
    assert groups[5].pairs == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]  # K(K-1)/2 = 6
    assert [g.line for g in groups] == [1, 2, 3, 4, 5, 6]


def test_the_shared_hh_rlhf_file_reads_and_divergent_pairs_are_counted():
    groups, skipped = read_preferences(HH)
    assert len(groups) + skipped == 2312 and skipped == 5
    assert all(isinstance(g.prompt, tuple) and g.prompt[-1]["role"] == "user" for g in groups)
    assert parse_hh("\n\nHuman: a\n\nAssistant: b", "x") == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]  # fmt: skip


@pytest.mark.parametrize(
    "record, message",
    [
        ({"chosen": "a"}, "missing rejected"),
        ({"chosen": "same", "rejected": "same"}, "are the same text"),
        ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "plain"}, "rejected is not"),
        ({"prompt": "p", "responses": ["a"]}, "at least two"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}, "every response index"),
        ({"prompt": "p", "responses": ["a", "a"]}, "two responses are the same"),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "prompt must be text or a list"),
        ({"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}, "last message"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_bad_preference_records_name_their_line(tmp_path, record, message):
    path = jsonl(tmp_path / "bad.jsonl", [{"chosen": "ok", "rejected": "no"}, record])
    with pytest.raises(LmlabError, match=f"bad.jsonl:2: .*{message}"):
        read_preferences(path)


def test_bad_preference_files(tmp_path):
    with pytest.raises(LmlabError, match="not found"):
        read_preferences(tmp_path / "none.jsonl")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(LmlabError, match="has no preference records"):
        read_preferences(tmp_path / "e.jsonl")
    (tmp_path / "j.jsonl").write_text("{oops\n")
    with pytest.raises(LmlabError, match="j.jsonl:1: not a JSON object"):
        read_preferences(tmp_path / "j.jsonl")


# -- encoding and batches -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
    return train_char(["abcdefghijklmnopqrstuvwxyz ?!.,"])


def test_prompts_and_responses_encode_through_the_template_or_as_text(tok):
    end, eos = tok.token_to_id("<|end|>"), tok.eos_id
    chat = prompt_ids(tok, "hi", True)
    assert tok.decode(chat) == "<|bos|><|user|>hi<|end|><|assistant|>"
    assert prompt_ids(tok, "hi", False) == tok.encode("hi")
    assert prompt_ids(tok, "", False) == [eos]  # an empty prompt starts a new document
    assert response_ids(tok, "yo", True)[-1] == end and response_ids(tok, "yo", False)[-1] == eos
    with pytest.raises(LmlabError, match="special token <|end|>"):
        response_ids(tok, "a<|end|>", True)
    with pytest.raises(LmlabError, match="not in this model's vocabulary"):
        response_ids(tok, "ZZZ", False)


def test_join_cuts_the_prompt_first_and_keeps_the_ending_token():
    assert join([1, 2, 3], [7, 8, 9], 10) == ([1, 2, 3, 7, 8, 9], 3, False)
    assert join([1, 2, 3, 4], [7, 8, 9], 5) == ([3, 4, 7, 8, 9], 2, True)
    ids, n, cut = join([1, 2], [7, 8, 9, 10], 3)  # the response alone overflows: it loses its end
    assert ids == [2, 7, 8] and n == 1 and cut


def test_a_batch_keeps_each_group_together_and_weighs_prompts_equally(tmp_path, tok):
    records = [{"prompt": "a", "responses": [" b", " c", " d"]}, {"prompt": "e", "chosen": " f", "rejected": " g"}]
    groups, _ = read_preferences(jsonl(tmp_path / "g.jsonl", records))
    enc = encode_groups(groups, tok, 32, False, "g.jsonl")
    b = next(GroupLoader(enc, 2, pad_id=tok.pad_id, shuffle=False, name="val"))
    assert b.tokens.shape[0] == 5 and b.better.tolist() == [0, 0, 1, 3] and b.worse.tolist() == [1, 2, 2, 4]
    assert b.weight.tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 2])  # each prompt sums to 1/2
    assert b.prompt_len.tolist() == [1, 1, 1, 1, 1] and b.lengths.tolist() == [4, 4, 4, 4, 4]  # "a" " b" <|eos|>


class _Scores(torch.nn.Module):
    """Stands in for a reward model: row i's reward is ``values[i]``."""

    def __init__(self, values):
        super().__init__()
        self.values = torch.tensor(values)

    def forward(self, tokens, lengths):
        return SimpleNamespace(logits=self.values[: tokens.size(0), None])


def test_bradley_terry_loss_centering_and_metrics(tmp_path, tok):
    groups, _ = read_preferences(jsonl(tmp_path / "g.jsonl", [{"prompt": "a", "responses": [" b", " c", " d"]}]))
    enc = encode_groups(groups, tok, 32, False, "g")
    batch = next(GroupLoader(enc, 1, pad_id=tok.pad_id, shuffle=False, name="val"))
    r = [2.0, 0.5, 1.0]  # the middle response scored lowest: one of the three pairs is wrong
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = sum(-F.logsigmoid(torch.tensor(r[i] - r[j])) for i, j in pairs) / 3
    model = _Scores(r).eval()
    obj = Reward(enc, enc, 0.0, tok.pad_id, False)
    out = obj.loss(model, batch)
    assert float(out.loss) == pytest.approx(float(expected))
    m = obj.reduce([out])
    assert m["val_accuracy"] == pytest.approx(2 / 3) and m["val_margin"] == pytest.approx((1.5 + 1.0 - 0.5) / 3)
    assert m["val_accuracy_se"] == pytest.approx(math.sqrt(2 / 9 / 3))
    centered = Reward(enc, enc, 0.1, tok.pad_id, False).loss(model, batch)
    penalty = 0.1 * sum((r[i] + r[j]) ** 2 for i, j in pairs) / 3
    assert float(centered.loss) == pytest.approx(float(expected) + penalty)


# -- the real CLI on a tiny model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    """Pairs where the better answer is exclaimed, the worse one asked: learnable in a few steps."""
    rng = random.Random(0)
    recs = []
    for _ in range(96):
        w = rng.choice(WORDS)
        recs.append({"prompt": f"say {w}:", "chosen": f" {w}!", "rejected": f" {w}?"})
    recs.append({"prompt": "rank:", "responses": [" one", " two", " three"]})
    return jsonl(tmp_path_factory.mktemp("prefs") / "prefs.jsonl", recs)


def finetune(base, method, data, out, *extra, capsys=None):
    args = ["finetune", str(base), method, str(data), "--out", str(out), "--train.batch-size", "8", *QUIET]
    return run_cli([*args, *extra], capsys)


def test_reward_model_end_to_end(base, prefs, tmp_path, capsys):
    run = tmp_path / "rm"
    res = finetune(base, "reward", prefs, run, "--train.max-steps", "40", "--train.lr", "3e-3", "--train.eval-every",
                   "20", capsys=capsys)  # fmt: skip
    assert res.code == 0, res.err
    assert "prefs.jsonl: 87 training prompts (" in res.err and "pairs) and 10 validation prompts" in res.err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["objective"] == "reward" and cfg["head"] == {"kind": "reward", "labels": ["reward"]}
    assert cfg["train"]["best_metric"] == "val_accuracy" and "chat_template" not in cfg  # text prompts, base parent
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "val_accuracy" in r][-1]
    assert last["val_accuracy"] >= 0.8 and last["val_margin"] > 0 and 0 <= last["val_accuracy_se"] < 0.2
    out = run_cli(["score", str(run), "--prompt", "say moon:", "--response", " moon!", "--response", " moon?"], capsys)
    assert out.code == 0, out.err
    (good, _), (bad, _) = (line.split("\t") for line in out.out.splitlines())
    assert float(good) > float(bad)
    assert lmlab.score(run, "say moon:", " moon!") == pytest.approx(float(good), abs=1e-4)
    assert run_cli(["score", str(run), "--prompt", "x", "--response", "a", "--json"], capsys).out.startswith("[")
    scored = run_cli(["eval", str(run), "--data", str(prefs)], capsys)
    assert scored.code == 0 and "pairwise accuracy" in scored.out
    saved = json.loads((run / "eval-reward.json").read_text())
    assert saved["n_pairs"] == 96 + 3 and saved["pair_accuracy"] >= 0.7
    for args, message in [
        (["score", str(base), "--response", "a"], "is a language model"),
        (["score", str(run)], "give at least one --response"),
        (["score", str(run), "--response", "a", "--label", "x"], "--label is for a classifier run"),
        (["finetune", str(run), "dpo", str(prefs)], "is a fine-tuned reward model"),
    ]:
        assert_one_line_error(run_cli(args, capsys), message)


def test_reward_model_on_hh_rlhf_uses_the_chat_template(base, tmp_path, capsys):
    tok = lmlab.load(base).tokenizer
    lines = HH.read_text(encoding="utf-8").splitlines(keepends=True)
    fits = [ln for ln in lines if not tok.unknown_chars("".join(json.loads(ln).values()))][:40]  # char vocabulary
    sample = tmp_path / "hh.jsonl"
    sample.write_text("".join(fits), encoding="utf-8")
    run = tmp_path / "rm-hh"
    res = finetune(base, "reward", sample, run, "--train.max-steps", "2", capsys=capsys)
    assert res.code == 0, res.err
    assert "sequence(s) cut to block_size 32" in res.err
    assert json.loads((run / "config.json").read_text())["chat_template"] == "lmlab"


def test_reward_resume_is_exact(base, prefs, tmp_path, capsys):
    flat = ["--train.schedule", "constant", "--train.warmup-steps", "1", "--train.eval-every", "3"]
    straight, split = tmp_path / "a", tmp_path / "b"
    assert finetune(base, "reward", prefs, straight, "--train.max-steps", "6", *flat, capsys=capsys).code == 0
    assert finetune(base, "reward", prefs, split, "--train.max-steps", "3", *flat, capsys=capsys).code == 0
    assert run_cli(["train", "--resume", str(split), "--train.max-steps", "6", *QUIET], capsys).code == 0
    a, b = (load_file(str(p / "checkpoints" / "latest" / "model.safetensors")) for p in (straight, split))
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- DPO --------------------------------------------------------------------------------------------


@torch.no_grad()
def test_response_logprobs_sum_the_response_tokens_only(base, prefs, tok):
    loaded = lmlab.load(base)
    groups, _ = read_preferences(prefs)
    enc = encode_groups(groups[:2], loaded.tokenizer, 32, False, "p")
    batch = next(GroupLoader(enc, 2, pad_id=loaded.tokenizer.pad_id, shuffle=False, name="val"))
    got = response_logprobs(loaded.model, batch)
    for row in range(batch.tokens.size(0)):
        ids = enc.seqs[int(batch.rows[row])]
        p = enc.prompt_len[int(batch.rows[row])]
        logp = torch.log_softmax(loaded.model(torch.tensor([ids])).logits[0].float(), -1)
        want = sum(float(logp[t - 1, ids[t]]) for t in range(p, len(ids)))
        assert float(got[row]) == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge"])
def test_dpo_losses_follow_their_formulas(monkeypatch, tmp_path, tok, loss):
    groups, _ = read_preferences(jsonl(tmp_path / "g.jsonl", [{"prompt": "a", "chosen": " b", "rejected": " c"}]))
    enc = encode_groups(groups, tok, 32, False, "g")
    batch = next(GroupLoader(enc, 1, pad_id=tok.pad_id, shuffle=False, name="val"))
    opts = DPOOptions(beta=0.5, loss=loss, label_smoothing=0.1 if loss == "sigmoid" else 0.0)
    obj = DPO(enc, enc, opts, tok.pad_id, False)
    obj.ref = {"val": torch.tensor([-3.0, -2.0], dtype=torch.float64), "train": torch.zeros(2)}
    monkeypatch.setattr("lmlab.objectives.dpo.response_logprobs", lambda m, b: torch.tensor([-1.0, -4.0]))
    out = obj.loss(torch.nn.Linear(1, 1).eval(), batch)
    h = (-1.0 - -3.0) - (-4.0 - -2.0)  # 4
    want = {
        "sigmoid": -0.9 * math.log(1 / (1 + math.exp(-0.5 * h))) - 0.1 * math.log(1 / (1 + math.exp(0.5 * h))),
        "ipo": (h - 1 / (2 * 0.5)) ** 2,
        "hinge": max(0.0, 1 - 0.5 * h),
    }[loss]
    assert float(out.loss) == pytest.approx(want)
    m = obj.reduce([out])
    assert m["val_reward_accuracy"] == 1.0 and m["val_margin"] == pytest.approx(0.5 * h)
    assert m["val_chosen_logp"] == -1.0 and m["val_rejected_logp"] == -4.0


def test_dpo_end_to_end_reference_resume_and_lora(base, prefs, tmp_path, capsys):
    common = ["--train.max-steps", "12", "--train.lr", "3e-3", "--train.eval-every", "6", "--train.log-every", "1"]
    run = tmp_path / "dpo"
    res = finetune(base, "dpo", prefs, run, *common, capsys=capsys)
    assert res.code == 0, res.err
    assert "sigmoid loss, beta 0.1, reference precomputed" in res.err
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference at the first step
    for key in ("train_reward_accuracy", "train_margin", "train_chosen_logp", "train_rejected_logp"):
        assert key in rows[-1]
    last = [r for r in rows if "val_reward_accuracy" in r][-1]
    assert last["val_margin"] > 0 and last["val_reward_accuracy"] > 0.5
    ref = load_file(str(run / "reference-logprobs.safetensors"))
    assert set(ref) == {"train", "val"} and bool(torch.isfinite(ref["train"]).all())
    online = tmp_path / "online"
    assert finetune(base, "dpo", prefs, online, *common, "--reference", "online", capsys=capsys).code == 0
    rows_online = [json.loads(r) for r in (online / "metrics.jsonl").read_text().splitlines()]
    assert rows_online[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert rows_online[-1]["train_loss"] == pytest.approx(rows[-1]["train_loss"], rel=1e-3)  # the same reference
    lora = tmp_path / "lora"
    assert finetune(base, "dpo", prefs, lora, *common, "--lora.r", "4", capsys=capsys).code == 0
    assert torch.allclose(load_file(str(lora / "reference-logprobs.safetensors"))["train"], ref["train"], atol=1e-5)
    assert finetune(base, "dpo", prefs, tmp_path / "lora-online", *common, "--lora.r", "4", "--reference", "online",
                    capsys=capsys).code == 0  # fmt: skip
    # resume: bit for bit, reading the reference back
    flat = ["--train.schedule", "constant", "--train.warmup-steps", "1", "--train.eval-every", "3"]
    straight, split = tmp_path / "s", tmp_path / "t"
    assert finetune(base, "dpo", prefs, straight, "--train.max-steps", "6", *flat, capsys=capsys).code == 0
    assert finetune(base, "dpo", prefs, split, "--train.max-steps", "3", *flat, capsys=capsys).code == 0
    assert run_cli(["train", "--resume", str(split), "--train.max-steps", "6", *QUIET], capsys).code == 0
    a, b = (load_file(str(p / "checkpoints" / "latest" / "model.safetensors")) for p in (straight, split))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # --ref-run: the reference is another run of the same shape (iterated DPO)
    again = tmp_path / "round2"
    assert finetune(run, "dpo", prefs, again, "--train.max-steps", "2", "--ref-run", str(base), capsys=capsys).code == 0
    assert torch.allclose(load_file(str(again / "reference-logprobs.safetensors"))["train"], ref["train"], atol=1e-5)


def test_dpo_and_reward_errors(base, prefs, tmp_path, capsys, shakespeare_char):
    other = tmp_path / "other"
    lmlab.train(shakespeare_char, "tiny", out=other, max_steps=1, eval_every=0, progress=False, track="none",
                model={"n_embd": 16})  # fmt: skip
    capsys.readouterr()
    for extra, message in [
        (["--beta", "0"], "--beta must be positive"),
        (["--loss", "ipo", "--label-smoothing", "0.1"], "--label-smoothing applies to --loss sigmoid only"),
        (["--label-smoothing", "0.7"], "--label-smoothing must be in [0, 0.5)"),
        (["--ref-run", str(other)], "is not a language model of this run's shape"),
        (["--center", "1"], "--center is an option of lmlab finetune RUN reward, not of dpo"),
    ]:
        assert_one_line_error(finetune(base, "dpo", prefs, tmp_path / "x", *extra, capsys=capsys), message)
    assert_one_line_error(finetune(base, "reward", prefs, tmp_path / "y", "--center", "-1", capsys=capsys),
                          "--center must be 0 or more")  # fmt: skip
    bad = jsonl(tmp_path / "bad.jsonl", [{"chosen": "a", "rejected": "a"}])
    assert_one_line_error(finetune(base, "reward", bad, tmp_path / "z", capsys=capsys), "bad.jsonl:1", "same text")
    assert_one_line_error(finetune(base, "dpo", tmp_path / "none.jsonl", tmp_path / "w", capsys=capsys), "not found")
