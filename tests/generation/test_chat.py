"""Conversations: a chat model (SFT run) through the template and stopping at <|end|>; a base run continues text."""

from __future__ import annotations

import io
import json

import pytest

import lmlab
from lmlab.data.tokenizer import train_char
from lmlab.errors import LmlabError
from lmlab.generation.chat import chat_prompt
from tests.helpers import assert_one_line_error, run_cli


def test_chat_prompt_keeps_the_system_message_and_drops_the_oldest_turns():
    tok = train_char(["abcdefghijklmnopqrstuvwxyz ."])
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "aaaa"},
        {"role": "assistant", "content": "bbbb"},
        {"role": "user", "content": "cc"},
    ]
    ids, dropped = chat_prompt(tok, msgs, 100)
    assert dropped == 0 and tok.decode(ids).endswith("<|user|>cc<|end|><|assistant|>")
    ids, dropped = chat_prompt(tok, msgs, 20)
    assert dropped == 2 and tok.decode(ids) == "<|bos|><|system|>be brief<|end|><|user|>cc<|end|><|assistant|>"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare_char):
    d = tmp_path_factory.mktemp("chat")
    lmlab.train(shakespeare_char, "tiny", out=d / "base", max_steps=5, eval_every=0, progress=False, track="none")
    (d / "talk.jsonl").write_text(
        "".join(json.dumps({"prompt": f"say {w}", "completion": w}) + "\n" for w in ["yes", "no", "more"] * 10)
    )
    lmlab.finetune(d / "base", "sft", d / "talk.jsonl", out=d / "sft", batch_size=4, max_steps=3, progress=False,
                   track="none")  # fmt: skip
    return d


def test_sft_runs_are_chat_models_and_replies_stop_at_end(runs):
    assert json.loads((runs / "sft" / "config.json").read_text())["chat_template"] == "lmlab"
    assert "chat_template" not in json.loads((runs / "base" / "config.json").read_text())
    reply = lmlab.chat(runs / "sft", "say yes", max_new_tokens=20, seed=0, temperature=0.0)
    assert isinstance(reply, str) and "<|" not in reply
    base = lmlab.chat(runs / "base", "say yes", max_new_tokens=5, seed=0)
    assert isinstance(base, str)
    with pytest.raises(LmlabError, match="contains the special token <\\|end\\|>"):
        lmlab.chat(runs / "sft", "hi<|end|>", max_new_tokens=2)


def test_the_cli_chats_through_the_template(runs, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("say no\nhi <|end|>\nsay yes\n/quit\n"))
    res = run_cli(["chat", str(runs / "sft"), "--system", "be brief", "--max-new-tokens", "8", "--seed", "0"], capsys)
    assert res.code == 0, res.err
    assert "type a message and the model replies" in res.out and "error:" in res.out
    assert_one_line_error(run_cli(["chat", str(runs / "base"), "--system", "x"], capsys), "--system needs a chat")
