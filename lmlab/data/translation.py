"""Translation data: tab-separated sentence pairs -> a dataset directory, batches of padded pairs, and the
training task of an encoder–decoder.

    DATA/{train,val,test}.src.bin   source tokens of every pair, concatenated (uint16 or uint32)
    DATA/{train,val,test}.src.idx   int64 offsets (pairs + 1): pair i is bin[idx[i]:idx[i+1]]
    DATA/{train,val,test}.tgt.bin   target tokens, the same way
    DATA/{train,val,test}.tgt.idx
    DATA/{train,val,test}.tsv       the pairs as text (source TAB target): references for lmlab eval
    DATA/tokenizer.json             the joint tokenizer, or the target's with --separate-tokenizers
    DATA/tokenizer.src.json         the source's, with --separate-tokenizers
    DATA/meta.json                  "task": "translation", vocabularies, split sizes, malformed lines

Pairs are split by *source sentence*: every pair of one source (compared case-folded, whitespace
collapsed) goes to the same split, chosen by a seeded shuffle, so no test source is seen in training
and all of a test source's reference translations are available to the BLEU score. Token files hold
the sentences without BOS/EOS; the loader adds them.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from lmlab import __version__
from lmlab.data import tokenizer as toklib
from lmlab.data.loader import restore_cursor
from lmlab.errors import LmlabError

SPLITS = ("train", "val", "test")
POOL_BATCHES = 100  # batches whose pairs are sorted by length together: little padding, still a random mix
MAX_REPORTED_LINES = 10


@dataclass
class PairFile:
    """Sentence pairs read from tab-separated files, with the lines that could not be read as pairs."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)  # "file:line: reason"
    sha256: dict[Path, str] = field(default_factory=dict)


def read_pairs(
    files: Sequence[Path], columns: tuple[int, int] = (0, 1), encoding: str = "utf-8", errors: str = "strict"
) -> PairFile:
    """(source, target) from columns ``columns`` of tab-separated lines; blank lines are skipped.

    A line without a tab, with fewer columns than ``columns`` needs, or with an empty (whitespace-only)
    source or target is malformed: it is recorded with its line number and left out.
    """
    out = PairFile()
    need = max(columns) + 1
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise LmlabError(f"cannot read {path}: {e.strerror}") from None
        out.sha256[path] = hashlib.sha256(raw).hexdigest()
        try:
            text = raw.decode(encoding, errors)
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise LmlabError(
                f"{path}:{line} is not valid {encoding} text; give the right --encoding (e.g. latin-1) "
                "or pass --errors replace"
            ) from None
        # split at "\n" only, so line numbers are those an editor shows (splitlines also cuts at U+2028 etc.)
        for n, line in enumerate(text.split("\n"), start=1):
            line = line.removesuffix("\r")
            if not line.strip():
                continue
            cells = line.split("\t")
            if len(cells) < need:
                why = "no tab" if len(cells) == 1 else f"{len(cells)} columns, column {need - 1} is missing"
                out.malformed.append(f"{path.name}:{n}: {why}")
                continue
            src, tgt = cells[columns[0]].strip(), cells[columns[1]].strip()
            if not src or not tgt:
                out.malformed.append(f"{path.name}:{n}: empty {'source' if not src else 'target'}")
                continue
            out.pairs.append((src, tgt))
    return out


def source_key(text: str) -> str:
    """What makes two sources "the same sentence" for the split: case and spacing do not count."""
    return " ".join(text.split()).casefold()


def split_pairs(
    pairs: Sequence[tuple[str, str]], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[tuple[str, str]]]:
    """Seeded train/val/test split by source sentence; within a split, pairs come in shuffled source order."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for pair in pairs:
        groups.setdefault(source_key(pair[0]), []).append(pair)
    keys = list(groups)  # first-seen order: a function of the file alone
    n = len(keys)
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    if n - n_test - n_val < 1:
        raise LmlabError(
            f"only {n} distinct source sentences: too few for a train, a validation and a test split; "
            "give more pairs or smaller --val-fraction / --test-fraction"
        )
    order = np.random.default_rng(seed).permutation(n)
    parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    return {split: [p for i in parts[split] for p in groups[keys[i]]] for split in SPLITS}


# ---------------------------------------------------------------------------------------------
# lmlab prepare --task translation


def prepare_translation(cfg: Any) -> Any:
    """Build a translation dataset directory from ``cfg`` (a ``PrepareConfig`` with ``task="translation"``)."""
    from lmlab.data.prepare import (
        PreparedDataset,
        _check_text_file,
        _fsync_dir_files,
        _move_into_place,
        _tokenizer_choice,
        _write_json,
    )
    from lmlab.data.sources import resolve_source

    t0 = time.perf_counter()
    columns = tuple(cfg.columns)
    if len(columns) != 2 or min(columns) < 0 or columns[0] == columns[1]:
        raise LmlabError(f"--columns takes two different 0-based column numbers (source target), got {columns}")
    if not 0.0 < cfg.test_fraction < 1.0 or cfg.val_fraction + cfg.test_fraction >= 1.0:
        raise LmlabError(
            f"--test-fraction must be in (0, 1) and leave room for training with --val-fraction, "
            f"got test {cfg.test_fraction}, val {cfg.val_fraction}"
        )
    name, files = resolve_source(cfg.source, cfg.source_file)
    for path in files:
        _check_text_file(path)
    kind, existing = _tokenizer_choice(cfg.tokenizer)
    if existing is not None and cfg.separate_tokenizers:
        raise LmlabError("--separate-tokenizers trains two tokenizers: give a kind (bpe, char, word) as --tokenizer")
    if existing is None:
        toklib.check_vocab_size(kind, cfg.vocab_size)
    out = Path(cfg.out) if cfg.out else Path("data") / f"{name}-{kind if existing is None else 'custom'}"
    if out.exists() and not cfg.overwrite:
        raise LmlabError(f"output directory {out} exists; pass --overwrite to replace it or choose --out")

    read = read_pairs(files, columns, cfg.encoding, cfg.errors)
    if read.malformed:
        shown = "; ".join(read.malformed[:MAX_REPORTED_LINES])
        more = (
            f" and {len(read.malformed) - MAX_REPORTED_LINES} more" if len(read.malformed) > MAX_REPORTED_LINES else ""
        )
        if cfg.strict:
            raise LmlabError(
                f"{len(read.malformed)} malformed pair line(s) ({shown}{more}); fix them, or drop --strict to skip them"
            )
        print(
            f"warning: skipped {len(read.malformed)} malformed pair line(s): {shown}{more} (--strict refuses them)",
            file=sys.stderr,
        )
    if not read.pairs:
        raise LmlabError(f"{cfg.source} has no sentence pairs (tab-separated source and target per line)")
    splits = split_pairs(read.pairs, cfg.val_fraction, cfg.test_fraction, cfg.seed)

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LmlabError(f"cannot create {out.parent}: {e.strerror}") from None
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        src_tok, tgt_tok = _tokenizers(kind, existing, splits, read.pairs, cfg)
        dtype = np.uint16 if max(src_tok.vocab_size, tgt_tok.vocab_size) <= 2**16 else np.uint32
        counts = {split: _write_split(tmp, split, splits[split], src_tok, tgt_tok, dtype) for split in SPLITS}
        tgt_tok.save(tmp / "tokenizer.json")
        if src_tok is not tgt_tok:
            src_tok.save(tmp / "tokenizer.src.json")
        meta = {
            "lmlab_version": __version__,
            "task": "translation",
            "name": name,
            "vocab_size": tgt_tok.vocab_size,
            "src_vocab_size": src_tok.vocab_size,
            "joint_tokenizer": src_tok is tgt_tok,
            "dtype": np.dtype(dtype).name,
            "bos_id": tgt_tok.bos_id,
            "eos_id": tgt_tok.eos_id,
            "pad_id": tgt_tok.pad_id,
            "tokenizer": tgt_tok.describe(),
            "src_tokenizer": src_tok.describe(),
            "columns": list(columns),
            "splits": counts,
            "split": {
                "unit": "source sentence",
                "val_fraction": cfg.val_fraction,
                "test_fraction": cfg.test_fraction,
                "seed": cfg.seed,
            },
            "malformed": {"count": len(read.malformed), "lines": read.malformed[:100]},
            "sources": [{"path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": read.sha256[p]} for p in files],
            "encoding": cfg.encoding,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_json(tmp / "meta.json", meta)
        _fsync_dir_files(tmp)
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not cfg.quiet:
        vocab = (
            f"joint {tgt_tok.kind} vocab {tgt_tok.vocab_size}"
            if src_tok is tgt_tok
            else f"{src_tok.kind} vocabs {src_tok.vocab_size} (source) / {tgt_tok.vocab_size} (target)"
        )
        sizes = ", ".join(f"{s} {counts[s]['pairs']:,} pairs" for s in SPLITS)
        print(f"prepared {out}: {vocab}; {sizes} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return PreparedDataset(out, meta)


def _tokenizers(kind, existing, splits, all_pairs, cfg) -> tuple[toklib.Tokenizer, toklib.Tokenizer]:
    """(source, target) tokenizers: the same object when joint. Trained on the training split only,
    except char vocabularies, which take every character so that none is unknown at test time."""
    if existing is not None:
        return existing, existing
    pairs = all_pairs if kind == "char" else splits["train"]

    def train(texts: list[str]) -> toklib.Tokenizer:
        if kind == "char":
            return toklib.train_char(texts)
        fn = toklib.train_bpe if kind == "bpe" else toklib.train_word
        return fn(texts, cfg.vocab_size, cfg.min_frequency)

    if cfg.separate_tokenizers:
        return train([s for s, _ in pairs]), train([t for _, t in pairs])
    joint = train([s for s, _ in pairs] + [t for _, t in pairs])
    return joint, joint


def _write_split(tmp: Path, split: str, pairs, src_tok, tgt_tok, dtype) -> dict[str, int]:
    counts = {"pairs": len(pairs), "sources": len({source_key(s) for s, _ in pairs})}
    for side, tok, texts in (("src", src_tok, [s for s, _ in pairs]), ("tgt", tgt_tok, [t for _, t in pairs])):
        ids = tok.encode_batch(texts) if texts else []
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((t for x in ids for t in x), dtype=dtype, count=int(offsets[-1]))
        flat.tofile(tmp / f"{split}.{side}.bin")
        offsets.tofile(tmp / f"{split}.{side}.idx")
        counts[f"{side}_tokens"] = int(offsets[-1])
    counts["tokens"] = counts["src_tokens"] + counts["tgt_tokens"]
    with open(tmp / f"{split}.tsv", "w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{s}\t{t}\n" for s, t in pairs)
    return counts


# ---------------------------------------------------------------------------------------------
# Reading a prepared translation dataset


class SplitTokens(NamedTuple):
    src: np.ndarray  # flat source tokens (memory-mapped)
    src_offsets: np.ndarray  # (pairs + 1,)
    tgt: np.ndarray
    tgt_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.src_offsets) - 1


class TranslationData:
    """A prepared translation dataset: token files per split, tokenizers, and the text of the pairs."""

    def __init__(self, path: str | Path, meta: dict[str, Any]) -> None:
        if meta.get("task") != "translation":
            raise LmlabError(f"{path} is a {meta.get('task', 'lm')} dataset, not a translation dataset")
        self.path, self.meta = Path(path), meta

    @classmethod
    def load(cls, path: str | Path) -> TranslationData:
        from lmlab.data.loader import load_dataset

        ds = load_dataset(path)
        return cls(ds.path, ds.meta)

    @cached_property
    def tgt_tokenizer(self) -> toklib.Tokenizer:
        return toklib.load_tokenizer(self.path / "tokenizer.json")

    @cached_property
    def src_tokenizer(self) -> toklib.Tokenizer:
        separate = self.path / "tokenizer.src.json"
        return toklib.load_tokenizer(separate) if separate.is_file() else self.tgt_tokenizer

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise LmlabError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")

    def tokens(self, split: str) -> SplitTokens:
        self._check_split(split)
        dtype = np.dtype(self.meta["dtype"])
        arrays = []
        for side in ("src", "tgt"):
            for ext, dt in (("bin", dtype), ("idx", np.dtype(np.int64))):
                path = self.path / f"{split}.{side}.{ext}"
                if not path.is_file():
                    raise LmlabError(f"{path} is missing; prepare the dataset again with lmlab prepare")
                arrays.append(np.memmap(path, dtype=dt, mode="r") if path.stat().st_size else np.zeros(0, dt))
        toks = SplitTokens(*arrays)
        expected = self.meta.get("splits", {}).get(split, {})
        if expected and (len(toks) != expected["pairs"] or len(toks.src) != expected["src_tokens"]):
            raise LmlabError(f"the {split} split of {self.path} does not match meta.json; prepare it again")
        return toks

    def pairs(self, split: str) -> list[tuple[str, str]]:
        """The split's (source, target) texts, in token-file order."""
        self._check_split(split)
        path = self.path / f"{split}.tsv"
        if not path.is_file():
            raise LmlabError(f"{path} is missing; prepare the dataset again with lmlab prepare")
        rows = path.read_text(encoding="utf-8").split("\n")[:-1]
        return [tuple(r.split("\t", 1)) for r in rows]  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Batches


class PairBatch(NamedTuple):
    """A batch of pairs, right-padded: what ``Seq2Seq.forward`` takes."""

    src: torch.Tensor  # (B, S) source tokens + EOS, then PAD
    src_mask: torch.Tensor  # (B, S) True = real source token
    tgt_in: torch.Tensor  # (B, T) BOS + target, then PAD: the decoder input
    tgt_out: torch.Tensor  # (B, T) target + EOS, then -100: what each position predicts


def collate(
    srcs: Sequence[Sequence[int]],
    tgts: Sequence[Sequence[int]],
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_len: int,
    device: str | torch.device = "cpu",
) -> PairBatch:
    """Pad token lists into a :class:`PairBatch`; each side is cut to ``max_len`` tokens (EOS/BOS included)."""
    B = len(srcs)
    src_rows = [list(s[: max_len - 1]) + [eos_id] for s in srcs]
    tgt_rows = [list(t[: max_len - 1]) for t in tgts]
    S = max(len(r) for r in src_rows)
    T = max(len(r) for r in tgt_rows) + 1
    src = torch.full((B, S), pad_id, dtype=torch.long)
    tgt_in = torch.full((B, T), pad_id, dtype=torch.long)
    tgt_out = torch.full((B, T), -100, dtype=torch.long)
    for i, (s, t) in enumerate(zip(src_rows, tgt_rows)):
        src[i, : len(s)] = torch.tensor(s)
        tgt_in[i, : len(t) + 1] = torch.tensor([bos_id, *t])
        tgt_out[i, : len(t) + 1] = torch.tensor([*t, eos_id])
    src_mask = torch.arange(S)[None, :] < torch.tensor([len(s) for s in src_rows])[:, None]
    device = torch.device(device)
    return PairBatch(*(x.to(device) for x in (src, src_mask, tgt_in, tgt_out)))


class PairLoader:
    """Yields :class:`PairBatch` es of ``batch_size`` pairs forever, epoch after epoch.

    Each epoch takes the pairs in a seeded random order (``shuffle=True``) or in file order, cuts the
    order into pools of POOL_BATCHES batches, sorts each pool by length (so a batch holds pairs of
    similar length and little padding) and visits the batches in a random order (seeded by the seed and
    epoch when shuffling, fixed otherwise). Rank r of W takes every W-th batch. Everything is a function
    of (seed, epoch, batch index), so the cursor is two integers and a resumed run sees exactly the
    batches it would have seen.
    """

    def __init__(
        self,
        tokens: SplitTokens,
        batch_size: int,
        max_len: int,
        *,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        name: str = "train",
    ) -> None:
        if batch_size < 1 or max_len < 2:
            raise LmlabError(f"batch_size must be >= 1 and block_size >= 2, got {batch_size} and {max_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.tokens = tokens
        self.batch_size, self.max_len = batch_size, max_len
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.device = torch.device(device)
        self.name = name
        n = len(tokens)
        self.batches_per_epoch = (n // batch_size) // world_size
        if self.batches_per_epoch == 0:
            per_rank = f" per rank ({world_size} ranks)" if world_size > 1 else ""
            raise LmlabError(
                f"the {name} split has {n:,} pairs: fewer than one batch of {batch_size}{per_rank}; "
                "use a smaller --train.batch-size or more data"
            )
        src_len = np.diff(np.asarray(tokens.src_offsets))
        tgt_len = np.diff(np.asarray(tokens.tgt_offsets))
        # sort key: longer side first, then the other side, so both paddings stay small
        self._length_key = np.maximum(src_len, tgt_len) * (int(tgt_len.max(initial=0)) + 1) + np.minimum(
            src_len, tgt_len
        )
        self.epoch = 0
        self.batch_in_epoch = 0
        self._plan_epoch = -1
        self._plan: np.ndarray | None = None  # (batches_per_epoch, batch_size) pair indices for this rank

    def __iter__(self) -> PairLoader:
        return self

    def _make_plan(self) -> None:
        if self._plan_epoch == self.epoch:
            return
        n, B = len(self.tokens), self.batch_size
        rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
        order = rng.permutation(n) if rng is not None else np.arange(n)
        order = order[: n // B * B]  # the last partial batch waits for another epoch's shuffle
        pool = POOL_BATCHES * B
        for start in range(0, len(order), pool):
            chunk = order[start : start + pool]
            order[start : start + pool] = chunk[np.argsort(self._length_key[chunk], kind="stable")]
        batches = order.reshape(-1, B)
        # batches in random order: a new one each epoch when shuffling; else a fixed one, so that the first
        # eval_steps batches of the validation split are a fair sample of every length at every evaluation
        batches = batches[(rng or np.random.default_rng(0)).permutation(len(batches))]
        self._plan = batches[self.rank :: self.world_size][: self.batches_per_epoch]
        self._plan_epoch = self.epoch

    def __next__(self) -> PairBatch:
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
        self._make_plan()
        assert self._plan is not None
        idx = self._plan[self.batch_in_epoch]
        self.batch_in_epoch += 1
        t = self.tokens
        srcs = [t.src[t.src_offsets[i] : t.src_offsets[i + 1]].tolist() for i in idx]
        tgts = [t.tgt[t.tgt_offsets[i] : t.tgt_offsets[i + 1]].tolist() for i in idx]
        return collate(
            srcs, tgts, bos_id=self.bos_id, eos_id=self.eos_id, pad_id=self.pad_id, max_len=self.max_len,
            device=self.device,
        )  # fmt: skip

    # -- the cursor --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int | bool]:
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "block_size": self.max_len,
            "num_pairs": len(self.tokens),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_cursor(self, state)


# ---------------------------------------------------------------------------------------------
# The training task and the trainer's hooks


def fit_model_config(ds: Any, model_cfg: Any) -> Any:
    """The model config for training on ``ds``: refuses an architecture that does not fit the dataset's
    task and takes the source vocabulary from a dataset with separate tokenizers."""
    import dataclasses

    if ds.task != "translation":
        raise LmlabError(
            f"{ds.path} is a {ds.task} dataset, but model.arch 'seq2seq' is an encoder–decoder for translation; "
            "prepare sentence pairs with lmlab prepare PAIRS.tsv --task translation, or train a gpt/rnn/lstm preset"
        )
    if model_cfg.arch != "seq2seq":
        raise LmlabError(
            f"{ds.path} is a translation dataset; train an encoder–decoder on it (lmlab train {ds.path} "
            f"seq2seq-base), not model.arch {model_cfg.arch!r}"
        )
    src_vocab = int(ds.meta["src_vocab_size"])
    if ds.meta.get("joint_tokenizer", True):
        # one vocabulary: share the embedding (0), or ask for a separate table of the same size
        if model_cfg.src_vocab_size not in (0, src_vocab):
            raise LmlabError(
                f"--model.src-vocab-size {model_cfg.src_vocab_size} does not match the dataset's joint vocabulary "
                f"({src_vocab}); leave it at 0 to share the embedding, or set {src_vocab} for a separate one"
            )
        return model_cfg
    if model_cfg.src_vocab_size not in (0, src_vocab):
        raise LmlabError(
            f"--model.src-vocab-size {model_cfg.src_vocab_size} does not match the dataset's source vocabulary "
            f"({src_vocab}); leave it at 0 to take the dataset's"
        )
    return dataclasses.replace(model_cfg, src_vocab_size=src_vocab)


class TranslationTask:
    """Teacher-forced next-token prediction of the target given the source (the trainer's task protocol)."""

    def __init__(self, ds: Any, model_cfg: Any) -> None:
        self.data = TranslationData(ds.path, ds.meta)
        self.block_size = model_cfg.block_size
        train = self.data.meta["splits"]["train"]
        # real tokens per pair (BOS/EOS included), so the trainer's tokens/s counts no padding
        self.tokens_per_sequence = max(1, round(train["tokens"] / max(1, train["pairs"])) + 2)
        tok = self.data.tgt_tokenizer
        self.bos_id, self.eos_id, self.pad_id = tok.bos_id, tok.eos_id, tok.pad_id

    def loader(self, split: str, batch_size: int, seed: int, rank: int, world_size: int, device) -> PairLoader:
        return PairLoader(
            self.data.tokens(split),
            batch_size,
            self.block_size,
            bos_id=self.bos_id,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            shuffle=split == "train",
            seed=seed,
            rank=rank,
            world_size=world_size,
            device=device,
            name=split,
        )

    def loss(self, model: torch.nn.Module, batch: PairBatch) -> torch.Tensor:
        return model(batch.src, batch.tgt_in, batch.tgt_out, src_mask=batch.src_mask).loss

    def eval_metrics(self, mean_loss: float) -> dict[str, float]:
        return {"val_loss": mean_loss, "val_ppl": math.exp(min(mean_loss, 50.0))}

    @torch.no_grad()
    def sample_text(self, model: torch.nn.Module, n_tokens: int, rt: Any) -> str:
        """Greedy translations of the first two validation sources: what the trainer shows at each evaluation."""
        if n_tokens <= 0:
            return ""
        from lmlab.translation import translate_texts

        sources = [s for s, _ in self.data.pairs("val")[:2]]
        was_training = model.training
        model.eval()
        try:
            with rt.autocast():
                hyps = translate_texts(
                    model, self.data.src_tokenizer, self.data.tgt_tokenizer, sources, beam=1, max_new_tokens=n_tokens
                )
        finally:
            model.train(was_training)
        return " | ".join(f"{s} => {h}" for s, h in zip(sources, hyps))
