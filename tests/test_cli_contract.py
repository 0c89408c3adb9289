"""The CLI's contract, verb by verb: ``--help`` exits 0 and prints the verb's usage; a misspelt option, a value of
the wrong type and a missing positional argument each end in exactly one ``lmlab VERB: error: ...`` line and exit
status 2, before anything is read or written. Every verb in ``lmlab.cli.VERBS`` must have a row here (a new verb
without one fails ``test_every_verb_has_a_row``)."""

from __future__ import annotations

import pytest

from lmlab.cli import VERBS
from tests.helpers import assert_one_line_error, run_cli

# verb -> (its positional arguments, a wrong value for one of its typed options, the arguments with a positional
# left out or None where it has none to leave out). The paths need not exist: all of these must be refused while
# parsing, before any file is opened.
CASES: dict[str, tuple[list[str], list[str], list[str] | None]] = {
    "prepare": (["a.txt"], ["--vocab-size", "big"], []),
    "train": ([], ["--train.max-steps", "many"], []),
    "finetune": (["runs/x", "sft", "data.jsonl"], ["--train.lr", "fast"], []),
    "score": (["runs/x"], ["--response", "hi", "--json", "yes"], []),
    "classify": (["runs/x"], ["--batch-size", "lots"], []),
    "merge": (["runs/x", "--out", "runs/y"], ["--checkpoint"], ["--out", "runs/y"]),
    "plot": (["runs/x"], ["--x", "minutes"], []),
    "sample": (["runs/x"], ["--max-new-tokens", "abc"], []),
    "chat": (["runs/x"], ["--temperature", "hot"], []),
    "presets": ([], ["baby"], None),
    "import-hf": (["hf", "runs/x"], ["extra"], ["hf"]),
    "export-hf": (["runs/x", "hf"], ["--overwrite", "yes"], ["runs/x"]),
    "attention": (["runs/x"], ["--layers", "first"], []),
    "translate": (["runs/x", "hello"], ["--beam", "wide"], []),
    "experiment": (["sentiment-rlhf"], ["--seed", "abc"], None),  # `lmlab experiment` lists the experiments
    "eval": (["runs/x"], ["--limit", "abc"], []),
    "quantize": (["runs/x", "--out", "runs/y"], ["--group-size", "wide"], []),
    "serve": (["runs/x"], ["--port", "http"], []),
    "rag": (["search", "idx", "query"], ["-k", "many"], ["search"]),
    "scaling": (["predict", "sweep"], ["--params", "big"], ["predict"]),
}


def test_every_verb_has_a_row():
    assert set(CASES) == set(VERBS), f"verbs without a contract row: {set(VERBS) - set(CASES)}"


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_help_exits_zero(verb, capsys):
    code, out, err = run_cli([verb, "--help"], capsys)
    assert code == 0, err
    assert "usage" in out.lower() and f"lmlab {verb}" in out, out[:300]
    assert "Traceback" not in out + err


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_misspelt_option_is_one_line(verb, capsys):
    positionals, _, _ = CASES[verb]
    assert_one_line_error(run_cli([verb, *positionals, "--no-such-option", "1"], capsys), "--no-such-option", verb=verb)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_wrong_value_is_one_line(verb, capsys):
    positionals, wrong, _ = CASES[verb]
    line = assert_one_line_error(run_cli([verb, *positionals, *wrong], capsys), wrong[-1], verb=verb)
    assert "literal" not in line and "int()" not in line, line  # said in the user's terms, not Python's


@pytest.mark.parametrize("verb", sorted(v for v, (_, _, missing) in CASES.items() if missing is not None))
def test_missing_positional_is_one_line(verb, capsys):
    _, _, missing = CASES[verb]
    assert_one_line_error(run_cli([verb, *missing], capsys), verb=verb)


def test_did_you_mean(capsys):
    line = assert_one_line_error(run_cli(["sample", "runs/x", "--max-new-token", "5"], capsys), "--max-new-token")
    assert "did you mean --max-new-tokens" in line


def test_unknown_verb(capsys):
    code, out, err = run_cli(["trian"], capsys)
    assert code == 2 and "train" in err and "Traceback" not in err
