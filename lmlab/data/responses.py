"""A prompt and a response as token ids, the one way the reward model, DPO and RL rollouts all see them.

A chat model (a run trained on lmlab's chat template, or preference data that is a conversation) sees a prompt
rendered by the template up to the generation prompt (``... <|user|> prompt <|end|> <|assistant|>``) and a
response that ends with ``<|end|>``. A base model sees the prompt as plain text (an empty one starts a new
document) and a response that ends with ``<|eos|>``. The prompt and the response are encoded separately, so a
response scored or trained on has exactly the tokens a rollout generated after that prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmlab.data.chat import render
from lmlab.data.tokenizer import ASSISTANT, BOS, END
from lmlab.errors import LmlabError

Prompt = str | Sequence[Mapping[str, str]]  # plain text, or the conversation before the response


def prompt_ids(tokenizer: Any, prompt: Prompt, template: bool, where: str = "the prompt") -> list[int]:
    """Token ids of ``prompt``: through the chat template (a string becomes one user turn) or as plain text."""
    if not isinstance(prompt, str):  # a conversation is always rendered by the template
        return render(tokenizer, prompt, generation_prompt=True, where=where).ids
    if template:
        if not prompt:  # no user turn: the reply starts right after <|bos|>
            ids = [tokenizer.token_to_id(t) for t in (BOS, ASSISTANT)]
            if None in ids:
                raise LmlabError("the tokenizer has no <|bos|> or <|assistant|>; the chat template needs them")
            return ids
        return render(tokenizer, [{"role": "user", "content": prompt}], generation_prompt=True, where=where).ids
    from lmlab.generation.text import encode_prompt

    try:
        return encode_prompt(tokenizer, prompt)
    except LmlabError as e:
        raise LmlabError(f"{where}: {e}") from None


def stop_id(tokenizer: Any, template: bool) -> int:
    """The token that ends a response: ``<|end|>`` for a chat model, ``<|eos|>`` for a base model."""
    tid = tokenizer.token_to_id(END) if template else tokenizer.eos_id
    if tid is None:
        raise LmlabError(f"the tokenizer has no {END if template else '<|eos|>'} token to end a response with")
    return tid


def response_ids(tokenizer: Any, response: str, template: bool, where: str = "the response") -> list[int]:
    """Token ids of ``response`` followed by the token that ends it."""
    if tokenizer.unknown_chars(response):
        shown = ", ".join(repr(c) for c in tokenizer.unknown_chars(response)[:5])
        raise LmlabError(f"{where}: character(s) not in this model's vocabulary: {shown}")
    from lmlab.data.tokenizer import SPECIAL_TOKENS

    found = [t for t in SPECIAL_TOKENS if t in response]
    if found:
        raise LmlabError(f"{where}: contains the special token {found[0]}; remove it")
    return (tokenizer.encode(response) if response else []) + [stop_id(tokenizer, template)]
