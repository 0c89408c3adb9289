"""Helpers shared by tests in several directories: the real CLI run in-process, and the shape of its errors.

Import them by name (``from tests.helpers import run_cli``): ``tests/`` is a package, while a conftest module is
not meant to be imported from another directory.
"""

from __future__ import annotations

import re
import sys
from typing import NamedTuple

# "lmlab VERB: error: MESSAGE", the one line lmlab.cli.main prints for an LmlabError (then it exits with 2)
ERROR_LINE = re.compile(r"lmlab (?P<verb>[a-z][a-z0-9-]*): error: \S.*\n")


def on_screen(text: str) -> str:
    """Text as a terminal shows it: each carriage return goes back to the line's start and overwrites it (a
    progress bar that cleared itself that way leaves nothing behind)."""
    lines = []
    for line in text.split("\n"):
        shown: list[str] = []
        for part in line.split("\r"):
            shown[: len(part)] = part
        lines.append("".join(shown).rstrip())
    return "\n".join(lines)


class CliResult(NamedTuple):
    code: int  # exit status: 0 when main() returned, else SystemExit's code
    out: str  # captured stdout ("" without capsys)
    err: str  # captured stderr ("" without capsys)


def run_cli(argv: list[str], capsys=None) -> CliResult:
    """Run ``lmlab ARGV...`` in-process through the real entry point; give capsys to capture its output."""
    from lmlab.cli import main  # imported here so that a broken CLI fails the tests that use it, not collection

    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:  # sys.exit("message"): the interpreter would print it to stderr and exit with 1
            print(e.code, file=sys.stderr)
            code = 1
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return CliResult(code, out, err)


def assert_one_line_error(result: CliResult | int, *args: str, verb: str | None = None) -> str:
    """Check a user error: exit status 2 and exactly one stderr line, ``lmlab VERB: error: ...`` (as a terminal
    shows it: see on_screen), that contains every fragment. Call it as
    ``assert_one_line_error(run_cli(argv, capsys), *fragments)`` or as ``assert_one_line_error(code, err, *fragments)``.
    Returns the line (without its newline)."""
    if isinstance(result, CliResult):
        code, err, fragments = result.code, result.err, args
    else:
        code, (err, *fragments) = result, args
    assert code == 2, f"exit status {code}, expected 2; stderr: {err!r}"
    line = on_screen(err)
    match = ERROR_LINE.fullmatch(line)
    assert match, f"stderr is not exactly one 'lmlab VERB: error: ...' line: {err!r}"
    if verb is not None:
        assert match["verb"] == verb, f"the error names verb {match['verb']!r}, expected {verb!r}: {err!r}"
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} is not in the error: {line!r}"
    return line.rstrip("\n")
