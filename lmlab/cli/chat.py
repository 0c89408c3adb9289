"""`lmlab chat RUN`: an interactive loop in the terminal that streams the model's replies.

A base model (trained on plain text) has no notion of turns, so the conversation is one running text:
what you type is appended to it and the model continues it. The text is kept within the model's
context: the prompt of each reply is the last ``block_size - reply budget`` tokens of the
conversation. A chat model (an SFT run) gets the conversation as messages through lmlab's chat template
(``lmlab.generation.chat``), with an optional system message, and each reply ends at ``<|end|>``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, TextIO

import tyro

from lmlab.cli import parse
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    from lmlab.generation.request import GenerationRequest

HELP = "type text and the model continues it; an empty line lets it go on; /reset forgets the text, /quit leaves"
CHAT_HELP = "type a message and the model replies; /reset forgets the conversation, /quit leaves"


@dataclass
class ChatConfig:
    """Talk to a trained run in the terminal. A base model continues the running text of the conversation;
    replies stream as they are written. Commands: /reset forgets the conversation, /quit (or Ctrl-D) leaves."""

    run: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="RUN")]  # run directory
    max_new_tokens: int = 128  # most tokens per reply (at most half the model's context)
    temperature: float = 0.8  # divide the logits by this; 0 = greedy (always the most likely token)
    top_k: int = 0  # sample from the k most likely tokens only; 0 = off
    top_p: float = 0.95  # sample from the smallest set of tokens whose probability reaches p; 1 = off
    min_p: float = 0.0  # drop tokens less likely than min_p times the most likely one; 0 = off
    repetition_penalty: float = 1.0  # > 1 makes tokens already in the conversation less likely; 1 = off
    seed: int | None = None  # reply i uses seed + i, so a seed reproduces a session; unset = new replies each run
    stop: tuple[str, ...] = ()  # end a reply at any of these strings (\n is a newline: "\n\n" ends at a blank line)
    system: str | None = None  # chat models: a system message before the conversation (base models: refused)
    checkpoint: str | None = None  # best, latest or step-N; default best, else latest
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps


@dataclass
class PlainText:
    """The conversation of a base model: one running text, kept as token ids."""

    ids: list[int] = field(default_factory=list)

    def add_user(self, tokenizer, text: str) -> None:
        from lmlab.generation.text import encode_prompt

        self.ids += encode_prompt(tokenizer, text, start_if_empty=False)

    def add_reply(self, tokenizer, text: str) -> None:
        if text:
            self.ids += tokenizer.encode(text)

    def prompt(self, tokenizer, budget: int) -> list[int]:
        """The last ``budget`` tokens; an empty conversation starts a new document."""
        if not self.ids:
            from lmlab.generation.text import encode_prompt

            return encode_prompt(tokenizer, "")
        return self.ids[-budget:]


def chat(cfg: ChatConfig, stdin: TextIO | None = None, out: TextIO | None = None) -> None:
    """Run the chat loop on ``stdin`` / ``out`` (default: the terminal) until /quit, end of input or Ctrl-C."""
    from lmlab.cli.sample import SampleConfig, _check, load_for_generation

    stdin, out = stdin or sys.stdin, out or sys.stdout
    _, request = _check(
        SampleConfig(
            cfg.run,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            min_p=cfg.min_p,
            repetition_penalty=cfg.repetition_penalty,
            seed=cfg.seed,
            stop=cfg.stop,
        )
    )
    from lmlab.generation.chat import stream_reply, uses_template
    from lmlab.runs import check_generates_text, read_config

    run_cfg = read_config(cfg.run)
    check_generates_text(cfg.run, run_cfg, "chat")  # before the first line is typed, not after it
    template = uses_template(run_cfg)
    if cfg.system is not None and not template:
        raise LmlabError(f"{cfg.run} is a base model with no chat template; --system needs a chat (sft) run")
    model, tok = load_for_generation(cfg.run, cfg.checkpoint, cfg.device, "chat")
    context = model.config.block_size
    reply_budget = max(1, min(cfg.max_new_tokens, context // 2))
    history_budget = context - reply_budget  # prompt + reply always fit: no window slides mid-reply
    request = request.replace(max_new_tokens=reply_budget)
    seed = request.sampling.seed
    notes: set[str] = set()

    def note(msg: str) -> None:
        if msg not in notes:
            notes.add(msg)
            print(f"lmlab: note: {msg}", file=sys.stderr)

    if reply_budget < cfg.max_new_tokens:
        note(f"replies are limited to {reply_budget} tokens, half of this model's {context}-token context")
    n = model.num_params() / 1e6
    out.write(f"chatting with {cfg.run} ({model.config.arch}, {n:.2f}M parameters, context {context} tokens)\n")
    out.write((CHAT_HELP if template else HELP) + "\n")
    convo = PlainText()
    system = [{"role": "system", "content": cfg.system}] if cfg.system is not None else []
    messages = list(system)
    turn = 0
    while True:
        try:
            text = _read_line(stdin, out)
        except KeyboardInterrupt:
            text = None
        if text is None:  # end of input (Ctrl-D) or Ctrl-C at the prompt
            out.write("\n")
            return
        command = text.strip().lower()
        if command in ("/quit", "/exit", "/q"):
            return
        if command == "/reset":
            convo, messages = PlainText(), list(system)
            out.write("(conversation forgotten)\n")
            continue
        if command in ("/help", "/?"):
            out.write((CHAT_HELP if template else HELP) + "\n")
            continue
        turn_request = request if seed is None else request.replace(seed=seed + turn)
        if template:
            if not text.strip():
                continue
            try:
                pieces = stream_reply(model, tok, [*messages, {"role": "user", "content": text}], turn_request,
                                      template=True, on_notice=note)  # fmt: skip
                reply = _show(pieces, out)
            except LmlabError as e:  # a special token typed in, an unknown character: say so, go on
                out.write(f"error: {e}\n")
                continue
            messages += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
            turn += 1
            continue
        try:
            convo.add_user(tok, text)
        except LmlabError as e:  # an unknown character is a typo, not a reason to end the session
            out.write(f"error: {e}\n")
            continue
        if len(convo.ids) > history_budget:
            note(f"the conversation is longer than the model's context: it sees the last {history_budget} tokens")
        # reply i uses seed + i: a seed reproduces the session, and no two replies replay the same draws
        reply = _reply(
            model,
            tok,
            convo.prompt(tok, history_budget),
            request if seed is None else request.replace(seed=seed + turn),
            out,
        )
        turn += 1
        convo.add_reply(tok, reply)


def _read_line(stdin: TextIO, out: TextIO) -> str | None:
    """The next line typed, without its newline; None at the end of the input."""
    if stdin is sys.stdin and out is sys.stdout:
        if stdin.isatty():
            try:
                import readline  # noqa: F401 - gives input() line editing and history
            except ImportError:
                pass
        try:
            return input("> ")
        except EOFError:
            return None
    out.write("> ")
    out.flush()
    line = stdin.readline()
    return line.rstrip("\r\n") if line else None


def _reply(model, tok, prompt: list[int], request: GenerationRequest, out: TextIO) -> str:
    """Stream one reply to ``out``; Ctrl-C ends the reply early (the text so far is kept)."""
    from lmlab.generation.text import stream_events

    steps = stream_events(model, tok, [prompt], request)
    return _show((ev.text for step in steps for ev in step if ev.text), out, steps.close)


def _show(pieces, out: TextIO, close=None) -> str:
    """Write the pieces of a reply as they come; Ctrl-C ends it early (the text so far is kept)."""
    shown = []
    try:
        for piece in pieces:
            shown.append(piece)
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        (close or pieces.close)()
        out.write(" [interrupted]")
    out.write("\n")
    return "".join(shown)


def main(argv: list[str]) -> None:
    cfg = parse(ChatConfig, args=argv, prog="lmlab chat", description=ChatConfig.__doc__)
    chat(cfg)
