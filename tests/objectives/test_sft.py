"""Supervised fine-tuning: instruction formats, the loss on assistant tokens only, and the real CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch

import lmlab
from lmlab.data.formats.chat import read_conversations
from lmlab.data.tokenizer import train_char
from lmlab.errors import LmlabError
from lmlab.objectives.sft import SFT, ConversationLoader, Rows, SFTOptions, render_all
from tests.conftest import SHARED_DATA
from tests.helpers import assert_one_line_error, run_cli

QUIET = ["--train.no-progress", "--train.track", "none"]
U, A = "user", "assistant"


def jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "record, fmt, turns",
    [
        (
            {"messages": [{"role": U, "content": "hi"}, {"role": A, "content": "yo"}]},
            "messages",
            [(U, "hi"), (A, "yo")],
        ),
        ({"prompt": "2+2?", "completion": "4"}, "prompt-completion", [(U, "2+2?"), (A, "4")]),
        ({"instruction": "Sort", "input": "b a", "output": "a b"}, "alpaca", [(U, "Sort\n\nb a"), (A, "a b")]),
        ({"instruction": "Sort", "input": "", "output": "a b"}, "alpaca", [(U, "Sort"), (A, "a b")]),
        ({"instruction": "Say", "context": "c", "response": "r"}, "dolly", [(U, "Say\n\nc"), (A, "r")]),
        ({"question": "q?", "answer": "a\n#### 3"}, "gsm8k", [(U, "q?"), (A, "a\n#### 3")]),
    ],
)
def test_formats_are_detected_and_become_conversations(tmp_path, record, fmt, turns):
    found, convs = read_conversations(jsonl(tmp_path / "d.jsonl", [record]))
    assert found == fmt and [(m["role"], m["content"]) for m in convs[0].messages] == turns


def test_self_instruct_gives_one_conversation_per_instance_and_json_arrays_are_read(tmp_path):
    rec = {"instruction": "Add", "instances": [{"input": "1 2", "output": "3"}, {"input": "", "output": "0"}]}
    fmt, convs = read_conversations(jsonl(tmp_path / "s.jsonl", [rec]))
    assert fmt == "self-instruct" and [c.messages[1]["content"] for c in convs] == ["3", "0"]
    (tmp_path / "a.json").write_text(json.dumps([{"prompt": "p", "completion": "c"}] * 2))
    assert len(read_conversations(tmp_path / "a.json")[1]) == 2


def test_the_shared_instruction_data_reads():
    base = SHARED_DATA / "instruct"
    assert read_conversations(base / "dolly" / "dolly-first12.json")[0] == "dolly"
    assert read_conversations(base / "gsm8k" / "test.jsonl")[0] == "gsm8k"
    fmt, convs = read_conversations(base / "self-instruct" / "seed_tasks.jsonl")
    assert fmt == "self-instruct" and len(convs) >= 175


@pytest.mark.parametrize(
    "records, fmt, message",
    [
        ([{"text": "x"}], "auto", "cannot tell the format from the first record .text.; give --format"),
        ([{"prompt": "p", "completion": "c"}, {"prompt": "p"}], "auto", "d.jsonl:2: a prompt-completion record needs"),
        ([{"question": "q", "answer": ""}], "auto", "d.jsonl:1: answer is missing, empty or not text"),
        ([{"prompt": "p", "completion": "c"}], "gsm8k", "d.jsonl:1: a gsm8k record needs question, answer"),
        ([{"messages": [{"role": "bot", "content": "x"}]}], "auto", "d.jsonl:1: message 1 has role 'bot'"),
        ([{"prompt": "p", "completion": "c"}], "csv", "--format 'csv': choose auto or one of"),
    ],
)
def test_bad_instruction_data_names_the_line(tmp_path, records, fmt, message):
    with pytest.raises(LmlabError, match=message):
        read_conversations(jsonl(tmp_path / "d.jsonl", records), fmt)


def test_targets_are_the_assistant_tokens_only_and_empty_batches_are_refused():
    tok = train_char(["abcdefghij ?"])
    from lmlab.data.formats.chat import Conversation

    c = Conversation(({"role": "user", "content": "abc"}, {"role": "assistant", "content": "cba"}), 1)
    r = render_all([c], tok, 64, "t")
    inputs, targets = r.inputs[0], r.targets[0]
    assert len(inputs) == len(targets) and tok.decode(inputs) == "<|bos|><|user|>abc<|end|><|assistant|>cba"
    assert tok.decode([t for t in targets if t != -100]) == "cba<|end|>"
    assert targets[: len(targets) - 4] == [-100] * (len(targets) - 4)
    assert tok.decode(r.prompts[0]) == "<|bos|><|user|>abc<|end|><|assistant|>"
    cut = render_all([c], tok, 6, "t")  # the reply starts at token 7: nothing left to learn
    assert cut.inputs == [] and cut.dropped == 1
    sft = SFT(r, r, tok, "messages")
    batch = next(ConversationLoader(sft.rows["val"], 1, pad_id=0, shuffle=False))
    assert int((batch.targets != -100).sum()) == 4
    nothing = Rows(r.inputs, [[-100] * len(t) for t in r.targets], None)  # as if a template lost the mask
    with pytest.raises(LmlabError, match="a batch has no assistant token to train on"):
        next(ConversationLoader(nothing, 1, pad_id=0, shuffle=False))


# -- the real CLI on a tiny model --------------------------------------------------------------


@pytest.fixture(scope="module")
def reverse(tmp_path_factory):
    rng = random.Random(0)
    words = ["king", "lord", "moon", "rose", "sword", "night", "crown", "love"]
    recs = [{"prompt": f"reverse {w}", "completion": w[::-1]} for w in (rng.choice(words) for _ in range(120))]
    return jsonl(tmp_path_factory.mktemp("sft") / "reverse.jsonl", recs)


def test_sft_end_to_end_and_exact_resume(base, reverse, tmp_path, capsys):
    common = ["finetune", str(base), "sft", str(reverse), "--train.batch-size", "8", *QUIET]
    flat = ["--train.schedule", "constant", "--train.warmup-steps", "1", "--train.eval-every", "4"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    res = run_cli([*common, "--out", str(straight), "--train.max-steps", "8", *flat], capsys)
    assert res.code == 0, res.err
    assert "read as prompt-completion: 108 training and 12 validation conversations" in res.err
    cfg = json.loads((straight / "config.json").read_text())
    assert cfg["objective"] == "sft" and cfg["finetune"]["format"] == "prompt-completion" and "head" not in cfg
    assert cfg["parent"]["run"] == str(base.resolve())
    assert type(lmlab.load(straight).model).__name__ == "GPT"
    assert run_cli([*common, "--out", str(split), "--train.max-steps", "4", *flat], capsys).code == 0
    assert run_cli(["train", "--resume", str(split), "--train.max-steps", "8", *QUIET], capsys).code == 0
    a, b = (lmlab.load(p, checkpoint="latest").model.state_dict() for p in (straight, split))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sft_lowers_the_assistant_token_loss(base, reverse, tmp_path):
    lmlab.finetune(
        base, "sft", reverse, out=tmp_path / "r", batch_size=8, max_steps=60, eval_every=30, lr=3e-3,
        progress=False, track="none",
    )  # fmt: skip
    rows = [json.loads(r) for r in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(val) == 2 and val[1] < val[0] - 0.3


def test_sft_errors(base, reverse, tmp_path, capsys):
    def err(*args, fragment):
        assert_one_line_error(run_cli(["finetune", *map(str, args), *QUIET], capsys), fragment, verb="finetune")

    err(base, "sft", reverse, "--aux-lm", "0", fragment="--aux-lm is an option of lmlab finetune RUN classify")
    err(base, "sft", reverse, "--format", "gsm8k", fragment="reverse.jsonl:1: a gsm8k record needs question")
    err(base, "sft", reverse, "--val-fraction", "1.5", fragment="--val-fraction must be between 0 and 1")
    long = jsonl(tmp_path / "long.jsonl", [{"prompt": "a" * 80, "completion": "b"}] * 4)
    err(base, "sft", long, fragment="no conversation with an assistant reply within block_size 32")
    err(base, "sft", reverse, "--train.batch-size", "500", fragment="fewer than one batch of 500")


# -- packing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos", ["learned", "rope", "sinusoidal"])
def test_a_packed_row_computes_each_sequence_as_if_alone(pos):
    import dataclasses

    from lmlab.config import get_preset
    from lmlab.models import build_model

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(get_preset("tiny").model, vocab_size=30, pos=pos)).eval()
    a, b = torch.randint(0, 30, (1, 7)), torch.randint(0, 30, (1, 5))
    row = torch.cat([a, b, torch.zeros(1, 3, dtype=torch.long)], 1)
    segments = torch.tensor([[1] * 7 + [2] * 5 + [0] * 3])
    packed = model(row, segments=segments).logits
    torch.testing.assert_close(packed[:, :7], model(a).logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 7:12], model(b).logits, atol=1e-5, rtol=1e-5)


def test_packing_places_every_conversation_once_and_gives_the_same_loss(reverse, base):
    import dataclasses

    from lmlab.config import get_preset
    from lmlab.data.formats.chat import read_conversations as read
    from lmlab.models import build_model
    from lmlab.objectives.sft import pack

    tok = lmlab.load(base).tokenizer
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(get_preset("tiny").model, vocab_size=tok.vocab_size, block_size=64))
    model.eval()
    r = render_all(read(reverse)[1], tok, model.config.block_size, "reverse.jsonl")
    rows = pack(r, model.config.block_size)
    assert len(rows.inputs) < len(r.inputs) and all(len(x) <= model.config.block_size for x in rows.inputs)
    assert sorted(x for row in rows.inputs for x in row) == sorted(x for conv in r.inputs for x in conv)
    assert all(seg == sorted(seg) and seg[0] == 1 for seg in rows.segments)
    losses = {}
    for packing in (0, model.config.block_size):
        sft = SFT(r, r, tok, "prompt-completion", packing)
        loader = sft.batches("val", batch_size=4, seed=0)
        with torch.no_grad():
            losses[packing] = sft.reduce([sft.loss(model, next(loader)) for _ in range(loader.batches_per_epoch)])
    assert losses[0]["val_loss"] == pytest.approx(losses[model.config.block_size]["val_loss"], rel=1e-5)


def test_recurrent_models_pad_instead_of_packing():
    from lmlab.config import get_preset

    assert SFT.fit_options(SFTOptions(), get_preset("tiny").model).packing
    assert not SFT.fit_options(SFTOptions(), get_preset("lstm").model).packing


# ---------------------------------------------------------------------------------------------
# Conversations as a dataset: lmlab prepare FILE --task sft, then lmlab train DATA PRESET from random weights


def test_reply_accuracy_counts_tokens_and_whole_replies_packed_or_not():
    from lmlab.objectives.sft import reply_accuracy

    V = 5
    targets = torch.tensor([[1, 2, -100, 3], [4, -100, -100, -100]])
    preds = torch.tensor([[1, 2, 0, 0], [4, 0, 0, 0]])  # row 0: its last target is wrong; row 1: right
    logits = torch.nn.functional.one_hot(preds, V).float()
    c = {k: int(v) for k, v in reply_accuracy(logits, targets, None).items()}
    assert c == {"tokens": 4, "correct": 3, "replies": 2, "exact": 1}
    # packed: row 0 holds two conversations (segments 1 and 2); the wrong token belongs to the second
    segments = torch.tensor([[1, 1, 2, 2], [1, 1, 1, 0]])
    c = {k: int(v) for k, v in reply_accuracy(logits, targets, segments).items()}
    assert c == {"tokens": 4, "correct": 3, "replies": 3, "exact": 2}


def test_prepare_task_sft_then_train_from_scratch_is_a_chat_model(tmp_path, capsys):
    rng = random.Random(0)
    rows = [{"prompt": f"{a} + {b} =", "completion": str(a + b)} for a in range(12) for b in range(12)]
    rng.shuffle(rows)
    src = jsonl(tmp_path / "add.jsonl", rows)
    data = tmp_path / "add-data"
    res = run_cli(["prepare", str(src), "--task", "sft", "--tokenizer", "word", "--vocab-size", "64",
                   "--min-frequency", "1", "--val-fraction", "0.25", "--out", str(data)], capsys)  # fmt: skip
    assert res.code == 0, res.err
    meta = json.loads((data / "meta.json").read_text())
    assert meta["task"] == "sft" and meta["format"] == "prompt-completion"
    assert meta["splits"]["train"]["conversations"] == 108 and meta["splits"]["val"]["conversations"] == 36
    val = [json.loads(line)["messages"] for line in (data / "val.jsonl").read_text().splitlines()]
    train = [json.loads(line)["messages"] for line in (data / "train.jsonl").read_text().splitlines()]
    assert len(val) == 36 and not {m[0]["content"] for m in val} & {m[0]["content"] for m in train}
    assert meta["splits"]["val"]["tokens"] == 10 * len(val)  # <|bos|> <|user|> a + b = <|end|> <|assistant|> c <|end|>
    run = tmp_path / "run"
    res = run_cli(["train", str(data), "tiny", "--out", str(run), "--model.block-size", "16",
                   "--train.max-steps", "4", "--train.eval-every", "2", *QUIET], capsys)  # fmt: skip
    assert res.code == 0, res.err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["objective"] == "sft" and cfg["chat_template"] == "lmlab"
    rows_logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows_logged if "val_exact" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0 <= r["val_exact"] <= r["val_token_accuracy"] <= 1 for r in evals)
    assert any("train_token_accuracy" in r and "train_exact" in r for r in rows_logged)
    # it resumes like any run, and answers through the chat template
    res = run_cli(["train", "--resume", str(run), "--train.max-steps", "6", *QUIET], capsys)
    assert res.code == 0, res.err
    done = lmlab.load(run)
    assert done.config["chat_template"] == "lmlab"


def test_prepare_task_sft_errors(tmp_path, capsys):
    src = jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}] * 3)
    out = ["--out", str(tmp_path / "o")]
    (tmp_path / "dir").mkdir()
    jsonl(tmp_path / "dir" / "x.jsonl", [{"prompt": "a", "completion": "b"}] * 3)
    jsonl(tmp_path / "dir" / "y.jsonl", [{"prompt": "a", "completion": "b"}] * 3)
    assert_one_line_error(run_cli(["prepare", str(tmp_path / "dir"), "--task", "sft", *out], capsys),
                          "--task sft takes one JSONL or JSON file")  # fmt: skip
    jsonl(tmp_path / "bad.jsonl", [{"text": "x"}])
    assert_one_line_error(run_cli(["prepare", str(tmp_path / "bad.jsonl"), "--task", "sft", *out], capsys),
                          "cannot tell the format")  # fmt: skip
    res = run_cli(["prepare", str(src), "--task", "sft", "--format", "alpaca", *out], capsys)
    assert_one_line_error(res, "d.jsonl:1", "alpaca record needs")
    one = jsonl(tmp_path / "one.jsonl", [{"prompt": "a", "completion": "b"}])
    assert_one_line_error(run_cli(["prepare", str(one), "--task", "sft", *out], capsys), "too few to hold out")
    assert not (tmp_path / "o").exists()
    res = run_cli(["prepare", str(src), "--task", "sft", "--tokenizer", "char", *out], capsys)
    assert res.code == 0, res.err
    assert_one_line_error(run_cli(["train", str(tmp_path / "o"), "seq2seq-tiny", "--out", str(tmp_path / "r")],
                                  capsys), "holds conversations", "seq2seq")  # fmt: skip
    (tmp_path / "o" / "val.jsonl").unlink()
    assert_one_line_error(run_cli(["train", str(tmp_path / "o"), "tiny", "--out", str(tmp_path / "r")], capsys),
                          "val.jsonl is missing")  # fmt: skip
    assert not (tmp_path / "r").exists()
