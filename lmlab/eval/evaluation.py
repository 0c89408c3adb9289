"""Scores of a run on a split of its dataset (``lmlab eval``, ``lmlab.evaluate``).

Translation runs: BLEU and chrF from ``sacrebleu`` on the detokenized translations against the
reference texts, plus the teacher-forced loss. A source sentence with several translations in the
data is translated once and scored against all of them (multi-reference BLEU, ``bleu``);
``bleu_single_ref`` scores one hypothesis per pair against that pair's own reference, the way a
corpus of single pairs would be scored. Language-model runs: loss, perplexity on the validation split.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from lmlab.errors import LmlabError


def check_same_tokenizer(run: Path, data: Path) -> None:
    for name in ("tokenizer.json", "tokenizer.src.json"):
        a, b = run / name, data / name
        if a.is_file() != b.is_file() or (a.is_file() and a.read_bytes() != b.read_bytes()):
            raise LmlabError(
                f"{data} was tokenized with a different {name} than run {run}; evaluate on the run's own dataset "
                "(--data)"
            )


def eval_translation(run, ds, split, beam, length_penalty, batch_size, limit, checkpoint, device, show):
    from sacrebleu.metrics import BLEU, CHRF

    from lmlab.data.dataset import TranslationData
    from lmlab.data.formats.pairs import source_key
    from lmlab.data.loader import collate
    from lmlab.generation.translation import load_translation_run, translate_texts

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


def eval_lm(run, ds, split, batch_size, checkpoint, device) -> dict[str, Any]:
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
