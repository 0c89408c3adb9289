"""Replies in a conversation: through the chat template for a chat model (an SFT run and its descendants), as
continued text for a base model.

A chat model's prompt is the conversation rendered by ``lmlab.data.chat.render`` with the generation prompt
(``<|assistant|>``); its reply ends at ``<|end|>``. When the conversation outgrows the context, the oldest
turns after the system message are left out first, whole, so the template stays intact. A base model has no
turns: the messages' texts are one running text and the reply continues it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from lmlab.data.chat import check_messages, render
from lmlab.data.tokenizer import END


def uses_template(config: Mapping[str, Any]) -> bool:
    """Whether a run (its config.json) was trained on lmlab's chat template."""
    return config.get("chat_template") == "lmlab"


def chat_prompt(tokenizer: Any, messages: Sequence[Mapping[str, str]], budget: int) -> tuple[list[int], int]:
    """(prompt ids, messages left out) of a conversation for a chat model, at most ``budget`` tokens."""
    messages = check_messages(messages)
    head = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(head) :]
    dropped = 0
    ids = render(tokenizer, messages, generation_prompt=True).ids
    while len(ids) > budget and len(turns) > 1:
        turns = turns[1:]
        dropped += 1
        ids = render(tokenizer, head + turns, generation_prompt=True).ids
    return ids[-budget:], dropped  # a single turn longer than the budget keeps its end


def text_prompt(tokenizer: Any, messages: Sequence[Mapping[str, str]], budget: int) -> list[int]:
    """A base model's prompt: every message's text as one running text, its last ``budget`` tokens."""
    from lmlab.generation.text import encode_prompt

    text = "".join(m["content"] for m in check_messages(messages))
    return encode_prompt(tokenizer, text)[-budget:]


def stream_reply(
    model: torch.nn.Module,
    tokenizer: Any,
    messages: Sequence[Mapping[str, str]],
    request: Any,
    *,
    template: bool,
    on_notice: Callable[[str], None] | None = None,
) -> Iterator[str]:
    """The reply to ``messages`` in pieces as it is written (``request``: a ``GenerationRequest``)."""
    from lmlab.generation.text import stream_events

    budget = max(1, model.config.block_size - request.max_new_tokens)
    if template:
        ids, dropped = chat_prompt(tokenizer, messages, budget)
        if dropped and on_notice is not None:
            on_notice(f"the conversation is longer than the model's context: its {dropped} oldest turn(s) are left out")
        end = tokenizer.token_to_id(END)
        request = request.replace(stop_token_ids=(*request.stop_token_ids, end))
    else:
        ids = text_prompt(tokenizer, messages, budget)
    for step in stream_events(model, tokenizer, [ids], request, on_notice=on_notice):
        for ev in step:
            if ev.text:
                yield ev.text
