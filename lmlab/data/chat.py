"""The one chat template: a conversation rendered into token ids with its loss mask, from the reserved role tokens.

    <|bos|> <|system|> You are terse. <|end|> <|user|> Hi! <|end|> <|assistant|> Hello. <|end|> <|user|> ...

Each message is its role token, its content, and ``<|end|>``. The loss mask is produced *while rendering*:
1 on every assistant message's content tokens and on the ``<|end|>`` that closes it (so a model learns to stop),
0 on everything else (the start token, role tokens, system and user messages). It is never recovered by
searching the rendered text, so a template change cannot silently shift it. With ``generation_prompt`` the
rendering ends with ``<|assistant|>``, where a model's reply begins (serving, ``lmlab chat``, RL rollouts).

Message contents are plain text: one that contains a special token's text (``<|end|>``) is refused, since the
tokenizer would read it as that token and a user could forge a turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple, get_args

from lmlab.data.tokenizer import ASSISTANT, BOS, END, SPECIAL_TOKENS, SYSTEM, USER
from lmlab.errors import LmlabError

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = get_args(Role)
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


class Rendered(NamedTuple):
    ids: list[int]  # the conversation's token ids
    mask: list[int]  # 1 where the token is trained on (assistant content and its <|end|>), else 0


def check_messages(messages: Any, where: str = "the conversation") -> list[dict[str, str]]:
    """The messages as ``[{"role", "content"}]``, or a one-line error naming the message that is wrong."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise LmlabError(f"{where}: messages must be a non-empty list of {{'role', 'content'}} objects")
    out = []
    for i, m in enumerate(messages, start=1):
        if not isinstance(m, Mapping):
            raise LmlabError(f"{where}: message {i} is not an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise LmlabError(f"{where}: message {i} has role {role!r}; roles are {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise LmlabError(f"{where}: message {i} ({role}) has no text content")
        found = sorted((content.index(t), t) for t in SPECIAL_TOKENS if t in content)
        if found:
            raise LmlabError(f"{where}: message {i} ({role}) contains the special token {found[0][1]}; remove it")
        if role == "system" and i != 1:
            raise LmlabError(f"{where}: message {i} is a system message; only the first message may be one")
        out.append({"role": role, "content": content})
    return out


def render(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], *, generation_prompt: bool = False, where: str = ""
) -> Rendered:
    """Token ids and loss mask of ``messages`` (see the module docstring)."""
    messages = check_messages(messages, where or "the conversation")
    special = {t: tokenizer.token_to_id(t) for t in (BOS, END, *ROLE_TOKENS.values())}
    missing = [t for t, i in special.items() if i is None]
    if missing:
        raise LmlabError(f"the tokenizer has no {', '.join(missing)}; the chat template needs its reserved tokens")
    contents = tokenizer.encode_batch([m["content"] for m in messages])
    ids, mask = [special[BOS]], [0]
    for m, content in zip(messages, contents):
        train = int(m["role"] == "assistant")
        ids += [special[ROLE_TOKENS[m["role"]]], *content, special[END]]
        mask += [0] + [train] * (len(content) + 1)  # the role token is given; the content and <|end|> are learned
    if generation_prompt:
        ids.append(special[ASSISTANT])
        mask.append(0)
    return Rendered(ids, mask)


def to_text(messages: Sequence[Mapping[str, str]], *, generation_prompt: bool = False) -> str:
    """The rendered conversation as text (what ``tokenizer.decode(render(...).ids)`` gives back)."""
    messages = check_messages(messages)
    text = BOS + "".join(ROLE_TOKENS[m["role"]] + m["content"] + END for m in messages)
    return text + (ASSISTANT if generation_prompt else "")
