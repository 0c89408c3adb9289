"""`lmlab eval RUN --split test`: score a run on a split of its dataset.

Translation runs: BLEU and chrF from ``sacrebleu`` on the detokenized translations against the
reference texts, plus the teacher-forced loss. A source sentence with several translations in the
data is translated once and scored against all of them (multi-reference BLEU, ``bleu``);
``bleu_single_ref`` scores one hypothesis per pair against that pair's own reference, the way a
corpus of single pairs would be scored. Language-model runs: loss, perplexity on the validation split.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import tyro

from lmlab.errors import LmlabError


@dataclass
class EvalConfig:
    """Score a run on a split of its dataset: BLEU, chrF and loss for translation runs; loss and perplexity
    for language models. Writes RUN/eval-SPLIT.json."""

    run: tyro.conf.Positional[str]  # run directory
    split: str = "test"  # translation: test | val | train; language models: val | train
    data: str | None = None  # dataset directory; default the one the run was trained on
    beam: int = 4  # translation: beam size (1 = greedy)
    length_penalty: float = 1.0  # translation: beam ranks hypotheses by log p / length^this
    batch_size: int = 64  # sentences (or windows) per batch
    limit: int = 0  # translation: score only the first N source sentences of the split (0 = all)
    checkpoint: str | None = None  # best, latest or step-N; default best, else latest
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    out: str | None = None  # JSON file for the scores; default RUN/eval-SPLIT.json
    show: int = 3  # print this many example translations


def evaluate(
    run: str | Path,
    split: str = "test",
    *,
    data: str | Path | None = None,
    beam: int = 4,
    length_penalty: float = 1.0,
    batch_size: int = 64,
    limit: int = 0,
    checkpoint: str | None = None,
    device: str = "auto",
    out: str | Path | None = None,
    show: int = 0,
) -> dict[str, Any]:
    """Scores of run ``run`` on ``split`` of its dataset (or ``data``), also written to RUN/eval-SPLIT.json."""
    from lmlab.data.loader import load_dataset
    from lmlab.runs import read_config, write_json
    from lmlab.runtime import pick_device

    run = Path(run)
    cfg = read_config(run)
    data_path = Path(data) if data is not None else Path(cfg.get("data", {}).get("path", ""))
    if not str(data_path) or not data_path.is_dir():
        raise LmlabError(f"the dataset of run {run} ({data_path}) is not there; pass its directory with --data")
    ds = load_dataset(data_path)
    _check_same_tokenizer(run, ds.path)
    dev = pick_device(device)
    t0 = time.perf_counter()
    if cfg["model"].get("arch") == "seq2seq":
        scores = _eval_translation(run, ds, split, beam, length_penalty, batch_size, limit, checkpoint, dev, show)
    else:
        scores = _eval_lm(run, ds, split, batch_size, checkpoint, dev)
    scores["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(Path(out) if out is not None else run / f"eval-{split}.json", scores)
    return scores


def _check_same_tokenizer(run: Path, data: Path) -> None:
    for name in ("tokenizer.json", "tokenizer.src.json"):
        a, b = run / name, data / name
        if a.is_file() != b.is_file() or (a.is_file() and a.read_bytes() != b.read_bytes()):
            raise LmlabError(
                f"{data} was tokenized with a different {name} than run {run}; evaluate on the run's own dataset "
                "(--data)"
            )


def _eval_translation(run, ds, split, beam, length_penalty, batch_size, limit, checkpoint, device, show):
    from sacrebleu.metrics import BLEU, CHRF

    from lmlab.data.translation import TranslationData, collate, source_key
    from lmlab.translation import load_translation_run, translate_texts

    data = TranslationData(ds.path, ds.meta)
    pairs = data.pairs(split)
    if not pairs:
        raise LmlabError(f"the {split} split of {ds.path} is empty")
    tr = load_translation_run(run, checkpoint, device)
    model, tok = tr.model, tr.tgt_tokenizer

    # one entry per distinct source sentence, with every reference translation the split has for it
    refs: dict[str, list[str]] = {}
    first: dict[str, str] = {}
    for src, tgt in pairs:
        key = source_key(src)
        refs.setdefault(key, []).append(tgt)
        first.setdefault(key, src)
    keys = list(refs)[: limit or None]
    chosen = set(keys)
    pairs = [p for p in pairs if source_key(p[0]) in chosen]
    hyps = translate_texts(
        model, tr.src_tokenizer, tok, [first[k] for k in keys], beam=beam, length_penalty=length_penalty,
        batch_size=batch_size, warn=lambda m: None,
    )  # fmt: skip
    hyp_of = dict(zip(keys, hyps))
    n_refs = max(len(refs[k]) for k in keys)
    streams = [[refs[k][i] if i < len(refs[k]) else None for k in keys] for i in range(n_refs)]
    bleu_metric = BLEU()
    bleu = bleu_metric.corpus_score(hyps, streams)
    chrf = CHRF().corpus_score(hyps, streams)
    single = BLEU().corpus_score([hyp_of[source_key(s)] for s, _ in pairs], [[t for _, t in pairs]])

    # teacher-forced loss, weighted by target tokens, over every pair of the chosen sources
    tgt_ids = tok.encode_batch([t for _, t in pairs])
    src_ids = tr.src_tokenizer.encode_batch([s for s, _ in pairs])
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            b = collate(
                src_ids[start : start + batch_size], tgt_ids[start : start + batch_size], bos_id=tok.bos_id,
                eos_id=tok.eos_id, pad_id=tok.pad_id, max_len=model.config.block_size, device=device,
            )  # fmt: skip
            n = int((b.tgt_out != -100).sum())
            total += float(model(b.src, b.tgt_in, b.tgt_out, src_mask=b.src_mask).loss) * n
            count += n
    loss = total / max(count, 1)
    scores = {
        "split": split,
        "bleu": round(bleu.score, 2),
        "chrf": round(chrf.score, 2),
        "bleu_single_ref": round(single.score, 2),
        "loss": round(loss, 4),
        "ppl": round(math.exp(min(loss, 50.0)), 3),
        "sentences": len(keys),
        "pairs": len(pairs),
        "beam": beam,
        "length_penalty": length_penalty,
        "bleu_signature": str(bleu_metric.get_signature()),
        "checkpoint": tr.checkpoint.name,
        "examples": [{"source": first[k], "translation": hyp_of[k], "references": refs[k]} for k in keys[:show]],
    }
    return scores


def _eval_lm(run, ds, split, batch_size, checkpoint, device) -> dict[str, Any]:
    from lmlab.data.loader import BatchLoader
    from lmlab.runs import load

    if split not in ("val", "train"):
        raise LmlabError(f"language-model datasets have train and val splits, not {split!r}; use --split val")
    loaded = load(run, checkpoint=checkpoint, device=device)
    model = loaded.model
    loader = BatchLoader(
        ds.tokens(split), batch_size, model.config.block_size, shuffle=False, device=device, name=split
    )
    total = 0.0
    with torch.no_grad():
        for _ in range(loader.batches_per_epoch):
            x, y = next(loader)
            total += float(model(x, y).loss)
    loss = total / loader.batches_per_epoch
    return {"split": split, "loss": round(loss, 4), "ppl": round(math.exp(min(loss, 50.0)), 3)}


def cli(argv: list[str]) -> None:
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
    if "bleu" in s:
        print(
            f"{cfg.run} {s['split']}: BLEU {s['bleu']:.2f}  chrF {s['chrf']:.2f}  "
            f"(single-reference BLEU {s['bleu_single_ref']:.2f})  loss {s['loss']:.4f}  ppl {s['ppl']:.2f}  "
            f"[{s['sentences']:,} sources, {s['pairs']:,} pairs, beam {s['beam']}, {s['seconds']}s]"
        )
    else:
        print(f"{cfg.run} {s['split']}: loss {s['loss']:.4f}  ppl {s['ppl']:.2f}  [{s['seconds']}s]")
