from __future__ import annotations

import subprocess
import sys

import pytest

from lmlab.cli import VERBS, main
from lmlab.config import get_preset
from lmlab.errors import LmlabError
from tests.helpers import assert_one_line_error, run_cli


def test_help_lists_every_verb(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for name in VERBS:
        assert f"  {name}" in out


def test_verb_help_shows_options_with_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--vocab-size INT" in out and "(default: 8192)" in out
    assert "--val-fraction" in out and "share of the corpus held out" in out


def test_unknown_verb_did_you_mean(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prepair"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "lmlab prepair: error: unknown verb 'prepair' (did you mean 'prepare'?); `lmlab --help` lists the verbs"
    )


def test_unknown_option_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "x", "--vocab-sise", "10"])
    assert exc.value.code == 2
    assert "--vocab-size" in capsys.readouterr().err


def test_unknown_preset_did_you_mean():
    with pytest.raises(LmlabError, match="unknown preset 'bbay' \\(did you mean 'baby'\\?\\)"):
        get_preset("bbay")


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "lmlab", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "prepare" in r.stdout


def test_console_script_error_is_one_line(tmp_path):
    exe = subprocess.run(
        [sys.executable, "-c", "import shutil; print(shutil.which('lmlab') or '')"], capture_output=True, text=True
    ).stdout.strip()
    cmd = [exe] if exe else [sys.executable, "-m", "lmlab"]
    r = subprocess.run([*cmd, "prepare", str(tmp_path / "nope.txt")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize(("verb", "typo", "meant"), [("rag", "serch", "search"), ("scaling", "fitt", "fit")])
def test_verbs_with_commands_list_them_and_name_the_closest_to_a_typo(verb, typo, meant, capsys):
    from lmlab.cli import rag, scaling

    commands = {"rag": rag, "scaling": scaling}[verb].COMMANDS
    for args in ([verb], [verb, "--help"]):
        res = run_cli(args, capsys)
        assert res.code == 0 and res.out.startswith(f"usage: lmlab {verb} ")
        listed = [ln.split()[0] for ln in res.out.splitlines()[2:]]
        assert listed == list(commands)  # one line per command
    assert_one_line_error(run_cli([verb, typo], capsys), f"unknown command '{typo}'", f"did you mean '{meant}'")
