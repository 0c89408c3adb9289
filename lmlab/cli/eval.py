"""`lmlab eval RUN --split test`: score a run on a split of its dataset and print the scores."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import tyro

from lmlab.cli import parse


@dataclass
class EvalConfig:
    """Score a run on a split of its dataset: BLEU, chrF and loss for translation runs; loss and perplexity
    for language models; accuracy, macro-F1 and Matthews correlation for classifiers on a labeled --data file;
    pairwise accuracy for reward models on a preference --data file. With --prompts and --reward, a policy's
    responses: mean reward, KL to --reference, the reference's perplexity of them, distinct-2. Writes
    RUN/eval-SPLIT.json (classifiers: eval-classify.json, reward models: eval-reward.json, --prompts:
    eval-prompts.json). With --compare REF (a quantized run against the run it was made from): file sizes,
    perplexity of both and its change, mean KL divergence, top-1 agreement (eval-compare.json)."""

    run: tyro.conf.Positional[str]  # run directory
    split: str | None = None  # translation: test (default) | val | train; language models: val (default) | train
    data: str | None = None  # dataset directory (classifiers: a labeled .tsv/.jsonl); default the run's own
    beam: int = 4  # translation: beam size (1 = greedy)
    length_penalty: float = 1.0  # translation: beam ranks hypotheses by log p / length^this
    batch_size: int = 64  # sentences (or windows) per batch
    limit: int = 0  # translation: score only the first N source sentences of the split (0 = all)
    checkpoint: str | None = None  # best, latest or step-N; default best, else latest
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    out: str | None = None  # JSON file for the scores; default RUN/eval-SPLIT.json
    show: int = 3  # print this many example translations (--prompts: responses)
    prompts: str | None = None  # a prompt file (.txt or .jsonl): score the run's responses with --reward
    reward: str | None = None  # --prompts: a reward-model run, a classifier run (with --reward-label), module:function
    reward_label: str | None = None  # --prompts with a classifier reward: the label whose probability is the reward
    reward_transform: str = "prob"  # --prompts with a classifier reward: prob | logprob
    reference: str | None = None  # --prompts: the run the KL is measured to (default: the run's parent)
    samples: int = 1  # --prompts: responses per prompt
    max_new_tokens: int = 32  # --prompts: most tokens per response
    min_new_tokens: int = 0  # --prompts: no ending token before this many
    temperature: float = 1.0  # --prompts: sampling temperature
    seed: int = 0  # --prompts: sampling seed
    compare: str | None = None  # a reference run (e.g. the one quantized): size, ppl change, KL, top-1 agreement
    per_layer: bool = False  # --compare: each quantized layer's weight and output error too
    compare_tokens: int = 0  # --compare: score at most this many tokens of the split (0 = all)


def main(argv: list[str]) -> None:
    from lmlab.api import evaluate

    cfg = parse(
        EvalConfig,
        args=argv,
        prog="lmlab eval",
        description=EvalConfig.__doc__,
        config=(tyro.conf.PositionalMetavarFromFieldName,),
    )
    policy: dict = {}
    if cfg.compare is not None or cfg.per_layer:
        policy = dict(compare=cfg.compare, per_layer=cfg.per_layer, compare_tokens=cfg.compare_tokens)
    if cfg.prompts is not None or cfg.reward is not None:
        policy |= dict(
            prompts=cfg.prompts, reward=cfg.reward, reward_label=cfg.reward_label,
            reward_transform=cfg.reward_transform, reference=cfg.reference, samples=cfg.samples,
            max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens, temperature=cfg.temperature,
            seed=cfg.seed,
        )  # fmt: skip
    evaluate(
        cfg.run, cfg.split, data=cfg.data, beam=cfg.beam, length_penalty=cfg.length_penalty,
        batch_size=cfg.batch_size, limit=cfg.limit, checkpoint=cfg.checkpoint, device=cfg.device, out=cfg.out,
        show=cfg.show, report=lambda s: _print(cfg, s), **policy,
    )  # fmt: skip


def _print(cfg: EvalConfig, s: dict) -> None:
    """The scores on the terminal: printed before they are saved, so that a failed save loses nothing."""
    if "kl" in s and "top1_agreement" in s:
        from lmlab.eval.compare import format_comparison

        print(f"{cfg.run} against {s['reference']}:")
        print("\n".join(format_comparison(s)))
        return
    if "samples" in s:
        for ex in s["samples"][: cfg.show]:
            print(f"  {ex['prompt']!r} => {ex['response']!r}  reward {ex['reward']:.4f}", file=sys.stderr)
        extra = f"  KL {s['kl']:.3f}  ref ppl {s['ref_ppl']:.2f}" if "kl" in s else ""
        print(
            f"{cfg.run} on {s['prompts']}: reward {s['reward']:.4f} ± {s['reward_se']:.4f}{extra}  ended "
            f"{s['ended']:.2f}  length {s['length']:.1f}  distinct-2 {s['distinct2']:.3f}  [{s['n_responses']:,} "
            "responses]"
        )
        return
    if "pair_accuracy" in s:
        print(
            f"{cfg.run} on {s['data']}: pairwise accuracy {s['pair_accuracy']:.4f} ± {s['pair_accuracy_se']:.4f}  "
            f"margin {s['margin']:.4f}  [{s['n_pairs']:,} pairs]"
        )
        return
    for ex in s.get("examples", []):
        print(f"  {ex['source']}\n    => {ex['translation']}\n    ref {ex['references'][0]}", file=sys.stderr)
    if "accuracy" in s:
        print(
            f"{cfg.run} on {s['data']}: accuracy {s['accuracy']:.4f}  macro-F1 {s['f1']:.4f}  MCC {s['mcc']:.4f}  "
            f"[{s['n_examples']:,} examples]"
        )
    elif "bleu" in s:
        print(
            f"{cfg.run} {s['split']}: BLEU {s['bleu']:.2f}  chrF {s['chrf']:.2f}  "
            f"(single-reference BLEU {s['bleu_single_ref']:.2f})  loss {s['loss']:.4f}  ppl {s['ppl']:.2f}  "
            f"[{s['sentences']:,} sources, {s['pairs']:,} pairs, beam {s['beam']}, {s['seconds']}s]"
        )
    else:
        print(f"{cfg.run} {s['split']}: loss {s['loss']:.4f}  ppl {s['ppl']:.2f}  [{s['seconds']}s]")
