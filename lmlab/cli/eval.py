"""`lmlab eval RUN --split test`: score a run on a split of its dataset and print the scores."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import tyro


@dataclass
class EvalConfig:
    """Score a run on a split of its dataset: BLEU, chrF and loss for translation runs; loss and perplexity
    for language models; accuracy, macro-F1 and Matthews correlation for classifiers on a labeled --data file.
    Writes RUN/eval-SPLIT.json (classifiers: RUN/eval-classify.json)."""

    run: tyro.conf.Positional[str]  # run directory
    split: str = "test"  # translation: test | val | train; language models: val | train
    data: str | None = None  # dataset directory (classifiers: a labeled .tsv/.jsonl); default the run's own
    beam: int = 4  # translation: beam size (1 = greedy)
    length_penalty: float = 1.0  # translation: beam ranks hypotheses by log p / length^this
    batch_size: int = 64  # sentences (or windows) per batch
    limit: int = 0  # translation: score only the first N source sentences of the split (0 = all)
    checkpoint: str | None = None  # best, latest or step-N; default best, else latest
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    out: str | None = None  # JSON file for the scores; default RUN/eval-SPLIT.json
    show: int = 3  # print this many example translations


def main(argv: list[str]) -> None:
    from lmlab.api import evaluate

    cfg = tyro.cli(
        EvalConfig,
        args=argv,
        prog="lmlab eval",
        description=EvalConfig.__doc__,
        config=(tyro.conf.PositionalMetavarFromFieldName,),
    )
    s = evaluate(
        cfg.run, cfg.split, data=cfg.data, beam=cfg.beam, length_penalty=cfg.length_penalty,
        batch_size=cfg.batch_size, limit=cfg.limit, checkpoint=cfg.checkpoint, device=cfg.device, out=cfg.out,
        show=cfg.show,
    )  # fmt: skip
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
