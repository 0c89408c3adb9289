"""`lmlab presets`: the named presets, one line each."""

from __future__ import annotations

from lmlab.config import list_presets
from lmlab.errors import LmlabError


def main(argv: list[str]) -> None:
    if argv and argv[0] in ("-h", "--help"):
        print("usage: lmlab presets\n\nList the named presets (model shape and training defaults).")
        return
    if argv:
        raise LmlabError(f"unexpected argument {argv[0]!r}: lmlab presets takes no arguments")
    for p in list_presets():
        m = p.model
        shape = f"{m.arch} L{m.n_layer}"
        shape += f" H{m.n_head} d{m.n_embd}" if m.arch in ("gpt", "seq2seq") else f" e{m.n_embd} h{m.hidden}"
        print(f"{p.name:<18} {shape:<20} block {m.block_size:<5} {p.description}")
