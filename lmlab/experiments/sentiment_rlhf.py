"""The DPO paper's controlled-sentiment task (Rafailov et al. 2023, §6.1) at the size of two CPU cores.

A small GPT is trained on movie-review text (SST-2's training sentences, one document each) and is the starting
policy ("SFT" in the paper: a model of the domain's text). The reward is the positive-class probability of a
sentiment classifier fine-tuned from that model with ``lmlab finetune ... classify`` on labeled SST-2 sentences.
Prompts are the first three words of reviews the language model never saw (training prompts) and of SST-2 dev
sentences (the evaluation prompts). From the same starting policy:

- **PPO** and **GRPO** (``lmlab finetune SFT ppo|grpo --reward CLS --reward-label 1``);
- **DPO**: four continuations per training prompt sampled from the starting policy and ranked by the classifier
  (six pairs per prompt, as in the paper), then ``lmlab finetune SFT dpo``; and a second round on samples of the
  round-1 policy, against the same reference (``--ref-run SFT``: iterated DPO, so the KL does not compound).

Every policy is then scored the same way (``lmlab eval RUN --prompts --reward --reference SFT``, one sample per
evaluation prompt, the same seed): mean reward, KL to the starting policy per response, the starting policy's
perplexity of the responses (are they still language?) and distinct-2. Writes ``sentiment-rlhf.{md,json,png}``: the
table, a reward-vs-KL plot (PPO and GRPO as curves over their evaluations, DPO as one point per round) and samples.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmlab import io
from lmlab.errors import LmlabError
from lmlab.experiments.common import Workspace, pick_size, require, spec_hash

LABEL = "1"  # SST-2's positive class


@dataclass(frozen=True)
class Size:
    lm_steps: int  # language-model steps on the review sentences
    vocab_size: int
    classifier_examples: int  # labeled SST-2 sentences the reward classifier is fine-tuned on
    classifier_epochs: float
    train_prompts: int  # reviews held out of the LM's text whose first words are the training prompts
    val_prompts: int  # SST-2 dev sentences whose first words are the evaluation prompts
    max_new_tokens: int
    min_new_tokens: int  # every policy writes at least this many tokens (TRL's sentiment example fixes lengths too)
    ppo_steps: int
    ppo_batch: int
    grpo_steps: int
    grpo_batch: int  # prompts per GRPO step (each sampled group_size times)
    group_size: int
    ppo_lr: float
    ppo_kl: float  # β of PPO's per-token KL penalty
    grpo_lr: float
    grpo_kl: float  # β of GRPO's KL term
    dpo_samples: int  # continuations per prompt that the classifier ranks
    dpo_rounds: int
    dpo_epochs: float
    dpo_lr: float
    dpo_beta: float
    dpo_batch: int  # prompts per DPO step (each with its ranked continuations)
    eval_every: int


SIZES = {
    "full": Size(lm_steps=2500, vocab_size=2048, classifier_examples=8000, classifier_epochs=1, train_prompts=2500,
                 val_prompts=200, max_new_tokens=24, min_new_tokens=8, ppo_steps=300, ppo_batch=16, grpo_steps=200,
                 grpo_batch=8, group_size=4, ppo_lr=2e-4, ppo_kl=0.05, grpo_lr=1e-4, grpo_kl=0.1, dpo_samples=4,
                 dpo_rounds=2, dpo_epochs=2, dpo_lr=1e-4, dpo_beta=0.1, dpo_batch=16, eval_every=25),
    "quick": Size(lm_steps=800, vocab_size=2048, classifier_examples=4000, classifier_epochs=1, train_prompts=1000,
                  val_prompts=100, max_new_tokens=20, min_new_tokens=8, ppo_steps=150, ppo_batch=16, grpo_steps=100,
                  grpo_batch=8, group_size=4, ppo_lr=2e-4, ppo_kl=0.05, grpo_lr=1e-4, grpo_kl=0.1, dpo_samples=4,
                  dpo_rounds=2, dpo_epochs=2, dpo_lr=1e-4, dpo_beta=0.1, dpo_batch=16, eval_every=25),
    "test": Size(lm_steps=4, vocab_size=300, classifier_examples=40, classifier_epochs=1, train_prompts=16,
                 val_prompts=4, max_new_tokens=6, min_new_tokens=2, ppo_steps=2, ppo_batch=4, grpo_steps=2,
                 grpo_batch=2, group_size=2, ppo_lr=2e-4, ppo_kl=0.05, grpo_lr=1e-4, grpo_kl=0.1, dpo_samples=2,
                 dpo_rounds=2, dpo_epochs=1, dpo_lr=1e-4, dpo_beta=0.1, dpo_batch=4, eval_every=1),
}  # fmt: skip
PROMPT_WORDS = 3
MIN_WORDS = 6  # a review cut into a prompt has at least this many words, so a continuation is expected


def make_data(train: Path, dev: Path, sz: Size, root: Path) -> dict[str, Path]:
    """The LM's text (SST-2 train sentences, one a line, less the prompt reviews), the prompt files and the
    classifier's labeled subset; written once (atomically) per size."""
    key = spec_hash(str(train.resolve()), str(dev.resolve()), sz.train_prompts, sz.val_prompts,
                    sz.classifier_examples)  # fmt: skip
    d = root / "data" / f"sentiment-{key}"
    paths = {n: d / f for n, f in (("text", "reviews.txt"), ("train_prompts", "prompts-train.txt"),
                                   ("val_prompts", "prompts-val.txt"), ("labeled", "classifier.tsv"))}  # fmt: skip
    if all(p.is_file() for p in paths.values()):
        return paths
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, line in enumerate(train.read_text(encoding="utf-8").splitlines()[1:], start=2):
        sentence, _, label = line.rpartition("\t")
        if not sentence.strip():
            raise LmlabError(f"{train.name}:{n}: expected 'sentence<TAB>label'")
        rows.append((sentence.strip(), label.strip()))
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    long = [i for i in order if len(rows[i][0].split()) >= MIN_WORDS]
    if len(long) < sz.train_prompts or len(rows) - sz.train_prompts < sz.classifier_examples:
        raise LmlabError(f"{train} has too few sentences for this size ({sz.train_prompts} prompts, "
                         f"{sz.classifier_examples} labeled)")  # fmt: skip
    held = set(long[: sz.train_prompts])
    dev_lines = [ln.rpartition("\t")[0].strip() for ln in dev.read_text(encoding="utf-8").splitlines()[1:]]
    dev_long = [s for s in dev_lines if len(s.split()) >= MIN_WORDS][: sz.val_prompts]
    if len(dev_long) < sz.val_prompts:
        raise LmlabError(f"{dev} has {len(dev_long)} sentences of {MIN_WORDS}+ words; this size needs "
                         f"{sz.val_prompts}")  # fmt: skip
    cut = lambda s: " ".join(s.split()[:PROMPT_WORDS])  # noqa: E731
    labeled = [i for i in order if i not in held][: sz.classifier_examples]
    io.write_text(paths["text"], "".join(rows[i][0] + "\n" for i in range(len(rows)) if i not in held))
    io.write_text(paths["train_prompts"], "".join(cut(rows[i][0]) + "\n" for i in long[: sz.train_prompts]))
    io.write_text(paths["val_prompts"], "".join(cut(s) + "\n" for s in dev_long))
    io.write_text(paths["labeled"], "sentence\tlabel\n" + "".join(f"{rows[i][0]}\t{rows[i][1]}\n" for i in labeled))
    return paths


def policy_scores(ws: Workspace, run: Path, prompts: Path, reward: Path, reference: Path, *, samples: int,
                  seed: int, sz: Size, checkpoint: str = "latest") -> dict[str, Any]:  # fmt: skip
    """``lmlab eval RUN --prompts ... --reward ... --reference ...`` (reused while its inputs are the same)."""
    from lmlab import checkpoint as ckpt

    which = ckpt.find_checkpoint(run / "checkpoints", checkpoint).name
    key = spec_hash(str(prompts), str(reward), str(reference), samples, seed, sz.max_new_tokens, sz.min_new_tokens,
                    which)  # fmt: skip
    out = run / f"eval-prompts-{key}.json"
    if not out.is_file():
        ws.lmlab(["eval", run, "--prompts", prompts, "--reward", reward, "--reward-label", LABEL, "--reference",
                  reference, "--samples", samples, "--seed", seed, "--max-new-tokens", sz.max_new_tokens,
                  "--min-new-tokens", sz.min_new_tokens,
                  "--checkpoint", checkpoint, "--out", out, "--device", ws.device, "--show", 0])  # fmt: skip
    return io.read_json(out)


def rankings(scored: dict[str, Any], k: int, path: Path) -> Path:
    """The classifier's ranking of each prompt's k sampled continuations, best first (duplicates merged; a prompt
    whose continuations are all the same is left out), as preference records for DPO."""
    if path.is_file():
        return path
    s = scored["samples"]
    records = []
    for i in range(0, len(s), k):
        group: dict[str, float] = {}
        for x in s[i : i + k]:
            group.setdefault(x["response"], x["reward"])
        if len(group) >= 2:
            records.append({"prompt": s[i]["prompt"], "responses": sorted(group, key=lambda r: -group[r])})
    if not records:
        raise LmlabError("every prompt's sampled continuations were identical; there is nothing to rank")
    io.write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return path


def curve(run: Path) -> list[tuple[float, float]]:
    """(val_kl, val_reward) at each of an RL run's evaluations."""
    from lmlab.training.tracking import read_metrics

    return [(r["val_kl"], r["val_reward"]) for r in read_metrics(run / "metrics.jsonl") if "val_kl" in r]


def run(
    out: str | Path = "runs/experiments",
    *,
    quick: bool = False,
    size: str | None = None,
    seed: int = 0,
    train: str | Path = "../shared/data/sentiment/sst2/train.tsv",
    dev: str | Path = "../shared/data/sentiment/sst2/dev.tsv",
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, Any]:
    """Controlled sentiment generation: PPO, GRPO and DPO from one starting policy, rewarded by a sentiment
    classifier; writes sentiment-rlhf.md, .json and .png in the workspace.

    Args:
        out: the workspace: datasets, runs, commands.txt and the results (reused when run again).
        quick: the small size (under 10 minutes on 2 CPU cores) instead of the full one (about 30).
        size: full, quick or test (a few steps, for the tests); overrides --quick.
        seed: the seed of every training run and of the sampled evaluations.
        train: SST-2's train.tsv: the LM's text, the training prompts and the classifier's labeled sentences.
        dev: SST-2's dev.tsv: the evaluation prompts (the first words of its sentences).
        device: where to train: auto, cpu, cuda or mps.
        quiet: do not show the steps' own output.
    """
    name, sz = pick_size(SIZES, size, quick)
    train = require(train, "SST-2's train.tsv", "--train")
    dev = require(dev, "SST-2's dev.tsv", "--dev")
    with Workspace(out, device=device, quiet=quiet) as ws:
        files = make_data(train, dev, sz, ws.root)
        data = ws.prepared("reviews", [files["text"].resolve(), "--tokenizer", "bpe", "--vocab-size", sz.vocab_size,
                                       "--documents", "lines"])  # fmt: skip
        seed_args = ["--train.seed", seed]
        sft = ws.trained("sentiment/lm", ["train", data, "baby", "--train.max-steps", sz.lm_steps,
                                          "--train.batch-size", 32 if name != "test" else 4, *seed_args])  # fmt: skip
        cls = ws.trained("sentiment/classifier", ["finetune", sft.path, "classify", files["labeled"].resolve(),
                                                  "--val", dev.resolve(), "--epochs", sz.classifier_epochs,
                                                  "--train.lr", 2e-3, *seed_args])  # fmt: skip
        prompts = ["--prompts", files["train_prompts"].resolve(), "--val", files["val_prompts"].resolve()]
        lengths = ["--max-new-tokens", sz.max_new_tokens, "--min-new-tokens", sz.min_new_tokens]
        reward = ["--reward", cls.path, "--reward-label", LABEL, *lengths]
        rl = ["--train.eval-every", sz.eval_every, *seed_args]
        ppo = ws.trained("sentiment/ppo", ["finetune", sft.path, "ppo", *reward, *prompts, *rl,
                                           "--train.max-steps", sz.ppo_steps, "--train.batch-size", sz.ppo_batch,
                                           "--train.lr", sz.ppo_lr, "--kl-coef", sz.ppo_kl])  # fmt: skip
        grpo = ws.trained("sentiment/grpo", ["finetune", sft.path, "grpo", *reward, *prompts, *rl,
                                             "--train.max-steps", sz.grpo_steps, "--train.batch-size", sz.grpo_batch,
                                             "--group-size", sz.group_size, "--train.lr", sz.grpo_lr,
                                             "--kl-coef", sz.grpo_kl])  # fmt: skip
        policy, dpo_steps = sft, []
        for r in range(1, sz.dpo_rounds + 1):
            sampled = policy_scores(
                ws,
                policy.path,
                files["train_prompts"].resolve(),
                cls.path,
                sft.path,
                samples=sz.dpo_samples,
                seed=seed + 100 * r,
                sz=sz,
            )
            where = ws.root / "data" / f"rankings-{spec_hash(sampled['run'], sampled['checkpoint'])}-round{r}.jsonl"
            ranked = rankings(sampled, sz.dpo_samples, where)
            argv = ["finetune", policy.path, "dpo", ranked.resolve(), "--beta", sz.dpo_beta, "--epochs",
                    sz.dpo_epochs, "--train.lr", sz.dpo_lr, "--ref-run", sft.path, "--train.batch-size", sz.dpo_batch,
                    *seed_args]  # fmt: skip
            policy = ws.trained(f"sentiment/dpo-round{r}", argv)
            dpo_steps.append((policy, sampled))
        rows = [("start", "starting policy (LM on reviews)", sft, None)]
        rows += [("ppo", "PPO", ppo, ppo), ("grpo", "GRPO", grpo, grpo)]
        rows += [(f"dpo{r}", f"DPO round {r}" + (" (as in the paper)" if r == 1 else " (iterated)"), step, None)
                 for r, (step, _) in enumerate(dpo_steps, start=1)]  # fmt: skip
        table = []
        for key, label, step, rl_step in rows:
            m = policy_scores(ws, step.path, files["val_prompts"].resolve(), cls.path, sft.path, samples=1,
                              seed=seed, sz=sz)  # fmt: skip
            table.append({
                "row": key, "label": label, "run": str(step.path), "seconds": step.seconds,
                **{k: m[k] for k in ("reward", "reward_se", "kl", "ref_ppl", "distinct2", "ended", "length")},
                "samples": m["samples"][:4], "curve": curve(rl_step.path) if rl_step else None,
            })  # fmt: skip
        start_ppl = table[0]["ref_ppl"]
        for row in table[1:]:
            row["goal_reward"] = row["reward"] >= 0.9
            row["goal_ppl"] = row["ref_ppl"] <= 2 * start_ppl
        final = [table[1], table[2], table[-1]]  # PPO, GRPO, DPO's last round
        results = {
            "experiment": "sentiment-rlhf", "size": name, "settings": asdict(sz), "seed": seed,
            "train": str(train.resolve()), "dev": str(dev.resolve()), "classifier": str(cls.path),
            "classifier_dev_accuracy": _best_accuracy(cls.path), "rows": table,
            "goal_met": all(r["goal_reward"] and r["goal_ppl"] for r in final),
        }  # fmt: skip
        md = _markdown(results)
        js, mdp = ws.write_results("sentiment-rlhf", results, md)
        png = _plot(ws.root / "sentiment-rlhf.png", table, name)
        ws.say(f"wrote {mdp}, {js} and {png}")
        print(md)
        return results


def _best_accuracy(run: Path) -> float | None:
    from lmlab.experiments.common import best_metrics

    return best_metrics(run).get("val_accuracy")


def _plot(path: Path, table: list[dict[str, Any]], size: str) -> Path:
    from lmlab.figures import pyplot, save_png

    fig, ax = pyplot().subplots(figsize=(6.4, 4.4))
    colors = {"ppo": "#4c72b0", "grpo": "#55a868"}
    for row in table:
        if row["curve"]:
            xs, ys = zip(*row["curve"])
            ax.plot(xs, ys, "-o", ms=3, color=colors[row["row"]], alpha=0.8, label=f"{row['label']} (evaluations)")
    dpo = [r for r in table if r["row"].startswith("dpo")]
    if dpo:
        ax.plot([r["kl"] for r in dpo], [r["reward"] for r in dpo], "--D", color="#c44e52", label="DPO rounds")
    start = table[0]
    ax.scatter([start["kl"]], [start["reward"]], marker="*", s=140, color="black", zorder=3, label=start["label"])
    ax.axhline(0.9, color="gray", lw=0.8, ls=":", label="goal: reward 0.9")
    ax.set_xlabel("KL to the starting policy (nats per response)")
    ax.set_ylabel("mean reward: P(positive) under the classifier")
    ax.set_title(f"Controlled sentiment: reward vs KL ({size} size)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_png(fig, path)


def _markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    start_ppl = r["rows"][0]["ref_ppl"]
    lines = [
        f"Controlled sentiment generation ({r['size']} size, seed {r['seed']}); {s['val_prompts']} evaluation prompts "
        "(SST-2 dev), one sampled continuation each (temperature 1), the same seed for every policy",
        "",
        "| policy | mean reward | KL to start (nats) | ref. perplexity | distinct-2 | ended | length | goals |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in r["rows"]:
        goals = ""
        if "goal_reward" in row:
            goals = ("reward ≥ 0.9 " + ("met" if row["goal_reward"] else "missed") + "; ppl ≤ 2× "
                     + ("met" if row["goal_ppl"] else "missed"))  # fmt: skip
        lines.append(
            f"| {row['label']} | {row['reward']:.3f} ± {row['reward_se']:.3f} | {row['kl']:.2f} | "
            f"{row['ref_ppl']:.1f} ({row['ref_ppl'] / start_ppl:.2f}×) | {row['distinct2']:.3f} | {row['ended']:.2f} | "
            f"{row['length']:.1f} | {goals} |"
        )
    acc = r["classifier_dev_accuracy"]
    lines += [
        "",
        "Reward: P(positive) of a classifier fine-tuned from the starting LM on "
        f"{s['classifier_examples']} labeled SST-2 sentences (dev accuracy {acc:.3f}). "
        if acc is not None
        else "",
        f"Starting policy: `baby` trained {s['lm_steps']} steps on SST-2's training sentences (BPE {s['vocab_size']}, "
        f"one document a sentence). PPO: {s['ppo_steps']} steps of {s['ppo_batch']} prompts; GRPO: {s['grpo_steps']} "
        f"steps of {s['grpo_batch']} prompts × {s['group_size']}; lr {s['ppo_lr']:g} / {s['grpo_lr']:g}, β "
        f"{s['ppo_kl']:g} / {s['grpo_kl']:g}; the last checkpoint scored. Every policy writes "
        f"{s['min_new_tokens']} to {s['max_new_tokens']} tokens. DPO: "
        f"{s['dpo_samples']} continuations per training prompt ranked by the classifier, β {s['dpo_beta']:g}, "
        f"{s['dpo_epochs']:g} epoch(s) at lr {s['dpo_lr']:g} per round; round 2 samples from round 1's policy, "
        "with the starting policy as the reference.",
        f"Goals (PPO, GRPO, DPO's last round): mean reward ≥ 0.9 and reference perplexity within 2× the starting "
        f"policy's: {'met' if r['goal_met'] else 'missed'}.",
        "",
        "Samples (the first evaluation prompts):",
        "",
    ]
    for row in r["rows"]:
        lines.append(f"- **{row['label']}**: " + "; ".join(
            f"{json.dumps(x['prompt'], ensure_ascii=False)} → {json.dumps(x['response'], ensure_ascii=False)} "
            f"({x['reward']:.2f})" for x in row["samples"][:3]))  # fmt: skip
    return "\n".join(lines) + "\n"
