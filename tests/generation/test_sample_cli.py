"""`lmlab sample` and `lmlab chat` through the real CLI, on tiny saved runs."""

from __future__ import annotations

import io
import shutil
import sys

import pytest
import torch

from lmlab.cli import main
from lmlab.config import ModelConfig
from lmlab.data.tokenizer import Tokenizer, train_char
from lmlab.generation.request import GenerationRequest
from lmlab.generation.text import generate_text
from lmlab.models import build_model
from lmlab.runs import load, save_run

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"


def make_run(path, tokenizer, **overrides):
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16, init_std=0.5)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    return save_run(path, build_model(cfg), tokenizer)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs") / "char", train_char([TEXT]))


def cli(capsys, *argv):
    main(list(argv))
    return capsys.readouterr()


def error(capsys, *argv) -> str:
    """The one-line message of a command that must fail with status 2."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"lmlab {argv[0]}: error: "), err
    return err


# ---------------------------------------------------------------------------------------------
# lmlab sample


def test_sample_streams_prompt_and_continuation(run, capsys):
    out = cli(capsys, "sample", str(run), "--prompt", "Speak", "--max-new-tokens", "20", "--seed", "3").out
    loaded = load(run)
    want = generate_text(loaded.model, loaded.tokenizer, "Speak", max_new_tokens=20, seed=3)
    assert out == "Speak" + want + "\n"
    assert cli(capsys, "sample", str(run), "--prompt", "Speak", "--max-new-tokens", "20", "--seed", "3").out == out


def test_sample_several_in_one_batch(run, capsys):
    out = cli(capsys, "sample", str(run), "--num-samples", "3", "--max-new-tokens", "12", "--seed", "1", "--no-echo")
    samples = out.out.split("-" * 40 + "\n")
    assert len(samples) == 3
    loaded = load(run)
    # sample i is the one --seed (1 + i) gives alone
    for i, s in enumerate(samples):
        alone = generate_text(loaded.model, loaded.tokenizer, "", max_new_tokens=12, seed=1 + i)
        assert s == alone + "\n"


def test_sample_prompt_file_and_stop(run, capsys, tmp_path):
    f = tmp_path / "prompt.txt"
    f.write_text("All:\n", encoding="utf-8")
    free = cli(capsys, "sample", str(run), "--prompt-file", str(f), "--max-new-tokens", "30", "--seed", "0").out
    cont = free[len("All:\n") : -1]
    stop = cont[4:6]
    out = cli(capsys, "sample", str(run), "--prompt-file", str(f), "--max-new-tokens", "30", "--seed", "0",
              "--stop", stop, "zzz").out  # fmt: skip
    assert out == "All:\n" + cont[: cont.index(stop)] + "\n"


def test_sample_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--prompt-file", "--num-samples", "--max-new-tokens", "--top-k", "--top-p", "--min-p", "--stop"):
        assert opt in out
    assert "sample i uses seed + i" in out


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--temperature", "-0.5", "--temperature must be a finite number >= 0"),
        ("--top-k", "-1", "--top-k must be an integer >= 1, or 0 to turn it off"),
        ("--top-p", "0", r"--top-p must be in (0, 1]"),
        ("--top-p", "1.5", r"--top-p must be in (0, 1]"),
        ("--min-p", "1.5", "--min-p must be in [0, 1]"),
        ("--max-new-tokens", "0", "--max-new-tokens must be at least 1, got 0"),
        ("--num-samples", "0", "--num-samples must be at least 1, got 0"),
    ],
)
def test_out_of_range_options(run, capsys, option, value, message):
    assert message in error(capsys, "sample", str(run), option, value)


def test_prompt_with_unknown_characters(run, capsys):
    err = error(capsys, "sample", str(run), "--prompt", "Speak, Zoë")
    assert "not in this model's char vocabulary: 'Z', 'ë'" in err


def bare_tokenizer() -> Tokenizer:
    """A char tokenizer with no special tokens at all: no <|eos|> to start from or to stop at."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.WordLevel({c: i for i, c in enumerate("abc ")}, unk_token=None))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    hf.decoder = decoders.Fuse()
    return Tokenizer(hf, "char")


def test_empty_prompt_without_eos_or_bos(tmp_path, capsys):
    bare = make_run(tmp_path / "bare", bare_tokenizer())
    err = error(capsys, "sample", str(bare))
    assert "the prompt is empty and this tokenizer has no <|eos|> or <|bos|> token" in err
    assert cli(capsys, "sample", str(bare), "--prompt", "ab", "--max-new-tokens", "3").out.startswith("ab")


def test_run_without_checkpoint(run, tmp_path, capsys):
    bare = tmp_path / "untrained"
    shutil.copytree(run, bare)
    shutil.rmtree(bare / "checkpoints")
    assert "no checkpoint in" in error(capsys, "sample", str(bare), "--prompt", "a")
    assert "no checkpoint in" in error(capsys, "chat", str(bare))


def test_missing_prompt_file_and_both_prompts(run, tmp_path, capsys):
    assert "prompt file" in error(capsys, "sample", str(run), "--prompt-file", str(tmp_path / "nope.txt"))
    f = tmp_path / "p.txt"
    f.write_text("a")
    assert "not both" in error(capsys, "sample", str(run), "--prompt", "a", "--prompt-file", str(f))


def test_rope_run_refuses_past_its_context(tmp_path, capsys):
    rope = make_run(tmp_path / "rope", train_char([TEXT]), pos="rope")
    err = error(capsys, "sample", str(rope), "--prompt", "Speak", "--max-new-tokens", "40")
    assert "more than this RoPE model's context (block_size 32)" in err
    assert cli(capsys, "sample", str(rope), "--prompt", "Speak", "--max-new-tokens", "27").out.startswith("Speak")


def test_sliding_window_is_announced_once(tmp_path, capsys):
    no_eos = make_run(tmp_path / "no-eos", bare_tokenizer())  # nothing ends a sample early
    res = cli(capsys, "sample", str(no_eos), "--prompt", "ab", "--max-new-tokens", "100", "--seed", "0")
    assert res.err.count("sliding a window") == 1
    assert len(res.out) == 2 + 100 + 1


# ---------------------------------------------------------------------------------------------
# lmlab chat


def chat(monkeypatch, capsys, run, typed: str, *argv):
    monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
    main(["chat", str(run), *argv])
    return capsys.readouterr()


def test_chat_streams_replies_and_quits(run, monkeypatch, capsys):
    res = chat(monkeypatch, capsys, run, "Speak\n\n/reset\nAll\n/quit\nnever read\n", "--seed", "0")
    out = res.out
    assert out.startswith("chatting with") and "/quit" in out
    assert out.count("> ") == 5  # four lines handled, then /quit; the last line is never read
    assert "(conversation forgotten)" in out
    # the first reply is what the engine writes after the typed text
    loaded = load(run)
    request = GenerationRequest(max_new_tokens=16, seed=0, temperature=0.8, top_p=0.95)
    first = generate_text(loaded.model, loaded.tokenizer, "Speak", request)
    assert out.split("> ")[1] == first + "\n"  # what was typed is not echoed: it came from stdin


def test_chat_ends_cleanly_at_end_of_input(run, monkeypatch, capsys):
    res = chat(monkeypatch, capsys, run, "Speak", "--max-new-tokens", "5")
    assert res.out.count("> ") == 2 and res.out.endswith("> \n")
    assert res.err == ""


def test_chat_keeps_the_conversation_in_the_context(run, monkeypatch, capsys):
    typed = "".join(f"Speak, {w}\n" for w in ("speak", "All", "hear", "me", "First", "Before")) + "/quit\n"
    res = chat(monkeypatch, capsys, run, typed, "--max-new-tokens", "40", "--seed", "1")
    assert res.out.count("> ") == 7
    assert "replies are limited to 16 tokens" in res.err  # half of block_size 32
    assert res.err.count("it sees the last 16 tokens") == 1


def test_chat_unknown_characters_do_not_end_the_session(run, monkeypatch, capsys):
    res = chat(monkeypatch, capsys, run, "Zoë\nSpeak\n", "--max-new-tokens", "4")
    assert "error: the prompt has 2 character(s) not in this model's char vocabulary" in res.out
    assert res.out.count("> ") == 3


def test_chat_bad_option(run, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert "--top-p must be in (0, 1]" in error(capsys, "chat", str(run), "--top-p", "2")
