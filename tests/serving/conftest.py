from __future__ import annotations

import json
from pathlib import Path

import pytest

import lmlab


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory, base) -> Path:
    """A chat model: the session's tiny base run, SFT'd for 3 steps (it speaks the chat template)."""
    d = tmp_path_factory.mktemp("serve-chat")
    (d / "talk.jsonl").write_text(
        "".join(json.dumps({"prompt": f"say {w}", "completion": w}) + "\n" for w in ["yes", "no", "more"] * 10)
    )
    lmlab.finetune(base, "sft", d / "talk.jsonl", out=d / "sft", batch_size=4, max_steps=3, progress=False,
                   track="none")  # fmt: skip
    return d / "sft"


@pytest.fixture
def server(base, chat_run):
    """A live server on a free 127.0.0.1 port with the base run (as "base") and the chat run (as "chat")."""
    srv = lmlab.serve([base, chat_run], names=["base", "chat"], port=0, background=True, max_batch=8, max_queue=8)
    try:
        yield srv
    finally:
        srv.close()
