"""PPO and GRPO (``lmlab.training.rl``): the real CLI for a few steps on a tiny model, what is logged, exact resume,
the references, the rewards, and every failure that must stop with a clear message."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from safetensors.torch import load_file

import lmlab
from lmlab.errors import LmlabError
from lmlab.training.rl import distinct_2, read_prompts
from tests.helpers import ERROR_LINE, assert_one_line_error, on_screen, run_cli

QUIET = ["--train.no-progress", "--train.track", "none"]
REWARDS = """
import math

def vowels(prompt, response):
    return sum(c in "aeiou" for c in response) / max(1, len(response))

def nan(prompt, response):
    return math.nan

def text(prompt, response):
    return "high"
"""


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    d = tmp_path_factory.mktemp("rl")
    (d / "rlrewards.py").write_text(REWARDS)
    sys.path.insert(0, str(d))
    lines = ["ROMEO:", "JULIET:", "KING:", "First Citizen:", "The", "And", "What", "I will", "He", "She", "O"]
    lines.append("My lord")
    (d / "prompts.txt").write_text("\n".join(lines) + "\n")
    yield d / "prompts.txt"
    sys.path.remove(str(d))


def rl(base, method, prompts, out, *extra, capsys=None, reward="rlrewards:vowels"):
    args = ["finetune", str(base), method, "--reward", reward, "--prompts", str(prompts), "--out", str(out),
            "--train.batch-size", "4", "--max-new-tokens", "10", "--train.lr", "1e-3", "--train.eval-every", "2",
            *QUIET]  # fmt: skip
    return run_cli([*args, *extra], capsys)


def assert_last_line_error(res, message):
    """A failure found while training: exit status 2 and the error as the last line (after the run's start)."""
    assert res.code == 2, res.err
    last = on_screen(res.err).rstrip("\n").split("\n")[-1]
    assert ERROR_LINE.fullmatch(last + "\n") and message in last, res.err


def rows(run):
    return [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run):
    latest = run / "checkpoints" / "latest"
    return load_file(str(latest / ("adapter.safetensors" if (latest / "adapter.safetensors").is_file() else
                                   "model.safetensors")))  # fmt: skip


def test_ppo_runs_logs_every_figure_and_its_policy_samples(base, prompts, tmp_path, capsys):
    run = tmp_path / "ppo"
    res = rl(base, "ppo", prompts, run, "--train.max-steps", "4", capsys=capsys)
    assert res.code == 0, res.err
    assert "prompts.txt: 11 training and 1 validation prompts; reward: function rlrewards:vowels" in res.err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["objective"] == "ppo" and cfg["finetune"]["options"]["kl_coef"] == 0.05 and "head" not in cfg
    log = rows(run)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for key in ("reward_mean", "reward_std", "kl", "entropy", "clip_fraction", "value_loss", "explained_variance",
                "response_length", "ended", "kl_coef", "pg_loss", "grad_norm", "lr"):  # fmt: skip
        assert key in log[-1] and math.isfinite(log[-1][key]), key
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the first rollout comes from the reference itself
    assert 0 <= log[-1]["ended"] <= 1 and log[-1]["response_length"] <= 10
    evals = [r for r in log if "val_reward" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for key in ("val_reward", "val_kl", "val_ref_ppl", "val_distinct2", "val_ended", "val_length"):
        assert key in evals[-1]
    samples = [json.loads(s) for s in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and {"prompt", "response", "reward", "step"} <= set(samples[0])
    assert type(lmlab.load(run).model).__name__ == "GPT"  # the run is the policy: sample, chat, serve it
    assert run_cli(["sample", str(run), "--max-new-tokens", "5"], capsys).code == 0
    assert [c["run"] for c in lmlab.lineage(run)] == [str(run), str(base.resolve())]


def test_grpo_runs_with_and_without_a_reference(base, prompts, tmp_path, capsys):
    run = tmp_path / "grpo"
    assert rl(base, "grpo", prompts, run, "--train.max-steps", "2", "--group-size", "3", capsys=capsys).code == 0
    log = rows(run)
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-5) and "kl_loss" in log[0] and "value_loss" not in log[0]
    assert log[-1]["responses"] == 2 * 4 * 3 and log[-1]["tokens"] <= 2 * 4 * 3 * 10  # steps x prompts x group
    free = tmp_path / "grpo-free"
    assert rl(base, "grpo", prompts, free, "--train.max-steps", "2", "--kl-coef", "0", capsys=capsys).code == 0
    assert "kl" not in rows(free)[-1] and "val_kl" not in rows(free)[-1]  # beta = 0: no reference model at all


@pytest.mark.parametrize("method, extra", [
    ("ppo", ["--value", "separate", "--target-kl", "0.5", "--unfinished", "truncate"]),
    ("ppo", ["--lora.r", "4"]),
    ("grpo", ["--no-scale-std"]),
])  # fmt: skip
def test_a_resumed_run_matches_an_uninterrupted_one_bit_for_bit(base, prompts, tmp_path, capsys, method, extra):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert rl(base, method, prompts, straight, "--train.max-steps", "4", *extra, capsys=capsys).code == 0
    assert rl(base, method, prompts, split, "--train.max-steps", "2", *extra, capsys=capsys).code == 0
    assert run_cli(["train", "--resume", str(split), "--train.max-steps", "4", *QUIET], capsys).code == 0
    a, b = weights(straight), weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = rows(straight), rows(split)
    assert ra[-1]["reward_mean"] == rb[-1]["reward_mean"] and ra[-1]["kl_coef"] == rb[-1]["kl_coef"]


def test_the_adaptive_controller_moves_beta_and_lora_keeps_no_copy(base, prompts, tmp_path, capsys):
    run = tmp_path / "adaptive"
    assert rl(base, "ppo", prompts, run, "--train.max-steps", "3", "--target-kl", "100", "--kl-horizon", "10",
              capsys=capsys).code == 0  # fmt: skip
    betas = [r["kl_coef"] for r in rows(run)]
    assert betas[-1] < betas[0] == 0.05 * (1 - 0.2 * 4 / 10)  # far below the target: β shrinks by the clipped error
    lora = tmp_path / "lora"
    assert rl(base, "ppo", prompts, lora, "--train.max-steps", "1", "--lora.r", "4", capsys=capsys).code == 0
    assert rows(lora)[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the reference is the base with adapters off
    assert (lora / "checkpoints" / "latest" / "adapter.safetensors").is_file()


def test_ppo_ptx_mixes_in_a_language_modeling_loss(base, prompts, tmp_path, capsys, shakespeare_char):
    run = tmp_path / "ptx"
    res = rl(base, "ppo", prompts, run, "--train.max-steps", "1", "--ptx-coef", "0.5", "--ptx-data",
             str(shakespeare_char), capsys=capsys)  # fmt: skip
    assert res.code == 0, res.err
    assert math.isfinite(rows(run)[0]["ptx_loss"])


def test_rewards_from_a_classifier_run(base, prompts, tmp_path, capsys, shakespeare):
    lines = [ln.strip() for ln in shakespeare.read_text().splitlines() if 5 < len(ln.strip()) < 25][:120]
    (tmp_path / "l.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{'q' if t.endswith('?') else 'o'}\n"
                                                                   for t in lines))  # fmt: skip
    clf = tmp_path / "clf"
    assert run_cli(["finetune", str(base), "classify", str(tmp_path / "l.tsv"), "--out", str(clf),
                    "--train.max-steps", "2", "--train.batch-size", "8", *QUIET], capsys).code == 0  # fmt: skip
    run = tmp_path / "ppo-clf"
    res = rl(base, "ppo", prompts, run, "--train.max-steps", "1", "--reward-label", "q", capsys=capsys,
             reward=str(clf))  # fmt: skip
    assert res.code == 0, res.err
    assert 0 <= rows(run)[0]["reward_mean"] <= 1  # a probability
    scored = run_cli(["eval", str(run), "--prompts", str(prompts), "--reward", str(clf), "--reward-label", "q",
                      "--samples", "2", "--max-new-tokens", "6"], capsys)  # fmt: skip
    assert scored.code == 0, scored.err
    assert "reward" in scored.out and "KL" in scored.out and "distinct-2" in scored.out
    saved = json.loads((run / "eval-prompts.json").read_text())
    assert saved["n_responses"] == 24 and saved["reference"] == str(base.resolve())
    assert 0 <= saved["reward"] <= 1 and len(saved["samples"]) == 24
    again = lmlab.evaluate(run, prompts=prompts, reward=str(clf), reward_label="q", samples=2, max_new_tokens=6)
    assert again["reward"] == saved["reward"]  # the same seed, the same responses
    assert_one_line_error(rl(base, "ppo", prompts, tmp_path / "n", capsys=capsys, reward=str(clf)),
                          "is a classifier: give the label", "--reward-label")  # fmt: skip
    assert_one_line_error(rl(base, "ppo", prompts, tmp_path / "n2", "--reward-label", "zz", capsys=capsys,
                             reward=str(clf)), "--reward-label 'zz' is not a label")  # fmt: skip


def test_failures_stop_with_one_line(base, prompts, tmp_path, capsys):
    long = tmp_path / "long.txt"
    long.write_text("short\n" + "x" * 30 + "\n" + "\n".join(["a"] * 10) + "\n")
    for extra, reward, message in [  # found while training: the start of the run was printed, the error is last
        (["--train.max-steps", "2"], "rlrewards:nan", "the reward (function rlrewards:nan) is nan"),
        (["--train.max-steps", "1"], "rlrewards:text", "returned str, not a number"),
        (["--train.max-steps", "8", "--max-kl", "0.001", "--train.lr", "0.05"], "rlrewards:vowels",
         "the KL to the reference reached"),
    ]:  # fmt: skip
        assert_last_line_error(rl(base, "ppo", prompts, tmp_path / "x", *extra, capsys=capsys, reward=reward), message)
    cases = [
        (["--train.max-steps", "1"], "rlrewards:missing", "rlrewards has no function missing"),
        (["--train.max-steps", "1"], "nosuchmodule:f", "cannot import nosuchmodule"),
        (["--train.max-steps", "1"], str(tmp_path / "nowhere"), "not a run directory (or a module:function)"),
        (["--train.max-steps", "1"], str(base), "is a language model; give a reward-model run"),
        (["--train.max-steps", "1"], "", "give the reward"),
        (["--kl-coef", "-1"], "rlrewards:vowels", "--kl-coef must be 0 or more"),
        (["--temperature", "0"], "rlrewards:vowels", "--temperature must be positive"),
        (["--ptx-coef", "1"], "rlrewards:vowels", "PPO-ptx takes both --ptx-coef"),
        (["--scratch"], "rlrewards:vowels", "--scratch is for supervised methods"),
        (["--group-size", "2"], "rlrewards:vowels", "--group-size is an option of lmlab finetune RUN grpo"),
    ]  # fmt: skip
    for extra, reward, message in cases:
        assert_one_line_error(rl(base, "ppo", prompts, tmp_path / "x", *extra, capsys=capsys, reward=reward), message)
    kl = rl(base, "ppo", prompts, tmp_path / "kl", "--train.max-steps", "8", "--max-kl", "0.001", "--train.lr", "0.05",
            "--train.save-every", "1", capsys=capsys)  # fmt: skip
    assert_last_line_error(kl, "the last good checkpoint is step-")
    assert_one_line_error(rl(base, "ppo", long, tmp_path / "y", "--max-new-tokens", "10", capsys=capsys),
                          "long.txt:2: the prompt has 30 tokens", "outgrows the model's context (32)")  # fmt: skip
    for extra, message in [(["--group-size", "1"], "--group-size must be at least 2"),
                           (["--target-kl", "1"], "--target-kl is PPO's")]:  # fmt: skip
        assert_one_line_error(rl(base, "grpo", prompts, tmp_path / "z", *extra, capsys=capsys), message)
    assert_one_line_error(run_cli(["finetune", str(base), "grpo", "--reward", "rlrewards:vowels"], capsys),
                          "give the prompts: lmlab finetune RUN grpo --reward REWARD --prompts FILE")  # fmt: skip
    with pytest.raises(LmlabError, match="--value 'both': choose shared or separate"):  # the CLI's choices box says it
        lmlab.finetune(base, "ppo", prompts, reward="rlrewards:vowels", value="both")
    assert_one_line_error(run_cli(["eval", str(base), "--prompts", str(prompts)], capsys),
                          "takes both --prompts FILE and --reward REWARD")  # fmt: skip


def test_prompt_files_and_distinct_2(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n" + json.dumps(
        {"prompt": [{"role": "user", "content": "yo"}]}) + "\n")  # fmt: skip
    got = read_prompts(tmp_path / "p.jsonl")
    assert got[0] == (1, "hi") and got[1] == (2, ({"role": "user", "content": "yo"},))
    (tmp_path / "q.jsonl").write_text(json.dumps({"text": "hi"}) + "\n")
    with pytest.raises(LmlabError, match="q.jsonl:1"):
        read_prompts(tmp_path / "q.jsonl")
    assert distinct_2(["a b c", "a b d"]) == pytest.approx(3 / 4) and distinct_2(["a"]) == 0.0


@pytest.mark.parametrize("option, value, message", [
    ("max_new_tokens", 0, "--max-new-tokens must be at least 1"),
    ("kl_horizon", 0, "--kl-horizon must be at least 1"),
    ("max_kl", 0, "--max-kl must be positive"),
    ("update_epochs", 0, "--update-epochs must be at least 1"),
    ("minibatches", 0, "--minibatches must be at least 1"),
    ("clip", 1.5, "--clip must be in (0, 1)"),
    ("eval_samples", 0, "--eval-samples must be at least 1"),
    ("unfinished", "drop", "--unfinished 'drop': choose penalize or truncate"),
    ("unfinished_penalty", math.inf, "--unfinished-penalty must be a number"),
    ("gamma", 1.5, "--gamma and --lam must be in [0, 1]"),
    ("lam", -0.1, "--gamma and --lam must be in [0, 1]"),
    ("vf_coef", -1, "--vf-coef and --ptx-coef must be 0 or more"),
    ("value_clip", 0, "--value-clip positive"),
    ("target_kl", -1, "--target-kl must be 0 (fixed β) or more"),
    ("reward_transform", "logit", "--reward-transform 'logit': choose prob or logprob"),
    ("top_p", 0, "top_p must be in (0, 1]"),
    ("beam", 4, "--beam is not an option of ppo"),
])  # fmt: skip
def test_every_ppo_option_is_checked(base, prompts, tmp_path, option, value, message):
    import re

    with pytest.raises(LmlabError, match=re.escape(message)):
        lmlab.finetune(base, "ppo", prompts, out=tmp_path / "x", reward="rlrewards:vowels", max_steps=1,
                       progress=False, track="none", **{option: value})  # fmt: skip


def test_a_mismatched_ptx_dataset_or_reference_is_refused(base, prompts, tmp_path, capsys, shakespeare):
    words = tmp_path / "words"
    lmlab.prepare(str(shakespeare), out=str(words), tokenizer="word", vocab_size=200, quiet=True)
    capsys.readouterr()
    assert_one_line_error(rl(base, "ppo", prompts, tmp_path / "p", "--ptx-coef", "1", "--ptx-data", str(words),
                             capsys=capsys), "was prepared with another tokenizer than the policy's")  # fmt: skip
    # a reward model with another tokenizer (words, not characters): the texts are re-tokenized on its side
    word_base, rm = tmp_path / "word-base", tmp_path / "word-rm"
    lmlab.train(words, "tiny", out=word_base, max_steps=2, eval_every=0, progress=False, track="none")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"prompt": "the", "chosen": " king", "rejected": " a"})
                                                  + "\n" for _ in range(20)))  # fmt: skip
    lmlab.finetune(word_base, "reward", tmp_path / "pairs.jsonl", out=rm, max_steps=2, batch_size=4, progress=False,
                   track="none")  # fmt: skip
    capsys.readouterr()
    res = rl(base, "ppo", prompts, tmp_path / "cross", "--train.max-steps", "1", capsys=capsys, reward=str(rm))
    assert res.code == 0, res.err
    assert "reward: reward model" in res.err and math.isfinite(rows(tmp_path / "cross")[0]["reward_mean"])
    other = tmp_path / "other"
    lmlab.train(shakespeare_char_of(base), "tiny", out=other, max_steps=1, eval_every=0, progress=False, track="none",
                model={"n_embd": 16})  # fmt: skip
    capsys.readouterr()
    assert_one_line_error(run_cli(["eval", str(base), "--prompts", str(prompts), "--reward", "rlrewards:vowels",
                                   "--reference", str(other)], capsys), "is not the same architecture")  # fmt: skip


def shakespeare_char_of(run):
    """The dataset directory a run was trained on (its config.json says where)."""
    return json.loads((run / "config.json").read_text())["data"]["path"]
