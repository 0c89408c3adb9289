"""Text files or a named dataset -> a dataset directory of token shards (``lmlab prepare``, ``lmlab.prepare``).

    DATA/train.bin   tokens of the training split, uint16 or uint32, documents separated by <|eos|>
    DATA/val.bin     tokens of the validation split
    DATA/tokenizer.json
    DATA/meta.json   vocabulary size, dtype, token counts, sources with sha256, tokenizer kind, version

The corpus is streamed: files are read in blocks cut at line ends, encoded a batch of blocks at a
time (HF ``tokenizers`` spreads a batch over every core), and appended to the shards, so memory
stays bounded whatever the corpus size. The directory is built under a temporary name and renamed
into place at the end, so a failure or Ctrl-C never leaves a partial dataset behind.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from lmlab import __version__
from lmlab.data import tokenizer as toklib
from lmlab.data.formats import holdout
from lmlab.data.formats.chat import Format as ChatFormat
from lmlab.data.formats.chat import read_conversations
from lmlab.data.formats.pairs import SPLITS as PAIR_SPLITS
from lmlab.data.formats.pairs import read_pairs, source_key, split_pairs
from lmlab.data.sources import resolve_source
from lmlab.errors import LmlabError, did_you_mean
from lmlab.io import DirLock, atomic_dir, check_disjoint, sha256_file, write_error, write_json

BLOCK_BYTES = 1 << 14  # read files in 16 KiB blocks cut at the last newline: small pieces balance encode_batch best
MAX_REPORTED_LINES = 10  # malformed pair lines named in a warning or error
LINE_SEARCH_BYTES = 1 << 20  # how far to look for a line end at the train/val cut
BATCH_BYTES = 8 << 20  # encode this much text per encode_batch call: hundreds of pieces keep every core busy


@dataclass
class PrepareConfig:
    """Tokenize a corpus into a dataset directory (train.bin, val.bin, tokenizer.json, meta.json)."""

    source: tyro.conf.Positional[
        str
    ]  # a text file, a directory or glob of text files, or a named dataset (shakespeare)
    out: str | None = None  # output dataset directory; default data/<source name>-<tokenizer>
    tokenizer: str = "char"  # char | bpe | word | path to an existing tokenizer.json (or a dir holding one)
    vocab_size: int = 8192  # bpe / word: vocabulary size, special tokens included
    min_frequency: int = 2  # bpe / word: ignore merges or words seen fewer times (rare words become <unk>)
    val_fraction: float = 0.1  # share of the corpus held out for validation
    seed: int = 1337  # chooses the validation documents when the split is by document
    source_file: str | None = None  # local copy of a named dataset, used instead of downloading
    encoding: str = "utf-8"  # text encoding of the source files (e.g. latin-1)
    errors: Literal["strict", "replace"] = "strict"  # undecodable bytes: stop with an error, or replace them
    min_val_tokens: int = 65  # refuse a corpus whose validation split is shorter (65 = one window of block 64)
    tokenizer_sample_mb: float = 512.0  # bpe / word: train the tokenizer on at most this many MB of text
    overwrite: bool = False  # replace an existing output directory
    quiet: bool = False  # no progress bar and no summary
    task: Literal["lm", "translation", "sft"] = "lm"  # lm: text; translation: TSV pairs; sft: conversations
    format: ChatFormat = "auto"  # sft: the records' format (auto = detect it from the first record)
    documents: Literal["files", "lines"] = "files"  # lm: each file is a document, or each non-empty line is one
    columns: tuple[int, int] = (0, 1)  # translation: 0-based columns of the source and the target (1 0 = reverse)
    separate_tokenizers: bool = False  # translation: one tokenizer per language instead of one joint tokenizer
    test_fraction: float = 0.05  # translation: share of source sentences held out for the test split
    strict: bool = False  # translation: refuse malformed pair lines instead of skipping them with a warning

    def __post_init__(self) -> None:
        from lmlab.config import check_types

        check_types(self)
        if not 0.0 < self.val_fraction < 1.0:
            raise LmlabError(f"--val-fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if self.min_val_tokens < 2:
            raise LmlabError(f"--min-val-tokens must be at least 2, got {self.min_val_tokens}")
        if self.min_frequency < 1:
            raise LmlabError(f"--min-frequency must be at least 1, got {self.min_frequency}")
        if self.tokenizer_sample_mb <= 0:
            raise LmlabError(f"--tokenizer-sample-mb must be positive, got {self.tokenizer_sample_mb}")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise LmlabError(
                f"--encoding {self.encoding!r} is not a known text encoding (try utf-8 or latin-1)"
            ) from None


@dataclass(frozen=True)
class Segment:
    """A byte range of one source file that goes to one split."""

    path: Path
    start: int
    end: int
    split: str  # "train" | "val"


@dataclass
class PreparedDataset:
    path: Path
    meta: dict[str, Any]


def run(cfg: PrepareConfig) -> PreparedDataset:
    """Build the dataset directory ``cfg`` describes (``lmlab.prepare`` is the keyword-argument front)."""
    if cfg.task == "translation":
        return prepare_translation(cfg)
    if cfg.task == "sft":
        return prepare_sft(cfg)
    if cfg.task != "lm":
        raise LmlabError(f"--task: unknown value {cfg.task!r}; choose lm, translation or sft")
    if cfg.documents not in ("files", "lines"):
        raise LmlabError(f"--documents: unknown value {cfg.documents!r}; choose files or lines")
    t0 = time.perf_counter()
    name, files = resolve_source(cfg.source, cfg.source_file)
    kind, existing = _tokenizer_choice(cfg.tokenizer)
    if existing is None:
        toklib.check_vocab_size(kind, cfg.vocab_size)
    out = _output_dir(cfg, name, kind, existing, files)
    for path in files:
        _check_text_file(path, cfg.encoding)
    with DirLock(out, "dataset", beside=True), atomic_dir(out) as tmp:
        read_cfg, work, original, source_sha = cfg, files, {}, {}
        if not _ascii_compatible(cfg.encoding):
            work, original, source_sha = _to_utf8(files, cfg, tmp / ".utf8")
            read_cfg = dataclasses.replace(cfg, encoding="utf-8", errors="strict")
        segments, unit = plan_split(work, cfg.val_fraction, cfg.seed)
        if existing is not None:
            tok = existing
        else:
            tok = _train_tokenizer(kind, segments, read_cfg)
        dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
        counts, hashes = _encode_all(tok, segments, tmp, dtype, read_cfg)
        if original:  # the sources as they are on disk, not their UTF-8 copies
            shutil.rmtree(tmp / ".utf8")
            segments = [dataclasses.replace(s, path=original[s.path]) for s in segments]
            hashes = {original[p]: source_sha[original[p]] for p in hashes}
        if not counts.pop("nonblank"):
            raise LmlabError(f"the corpus ({cfg.source}) is empty: no non-whitespace text in {len(files)} file(s)")
        for split in ("val", "train"):
            if counts[split] < cfg.min_val_tokens:
                raise LmlabError(
                    f"corpus too small: the {split} split has {counts[split]} tokens, fewer than one window of "
                    f"--min-val-tokens {cfg.min_val_tokens}; use a larger corpus"
                    + (", a larger --val-fraction" if split == "val" else "")
                    + " or a smaller --min-val-tokens"
                )
        tok.save(tmp / "tokenizer.json")
        meta = _meta(cfg, name, tok, dtype, counts, hashes, files, segments, unit)
        write_json(tmp / "meta.json", meta)
    if not cfg.quiet:
        elapsed = time.perf_counter() - t0
        mb = sum(s.end - s.start for s in segments) / 1e6
        print(
            f"prepared {out}: {tok.kind} tokenizer, vocab {tok.vocab_size}, {meta['dtype']}; "
            f"train {counts['train']:,} tokens, val {counts['val']:,} tokens; "
            f"{mb:.1f} MB of text from {len(files)} file(s) in {elapsed:.1f}s",
            file=sys.stderr,
        )
    return PreparedDataset(out, meta)


def _output_dir(cfg: PrepareConfig, name: str, kind: str, existing: Any, files: list[Path]) -> Path:
    """The dataset directory to build: never one that is, contains or lies inside an input (the sources, the
    --tokenizer file), --overwrite or not; an existing one only with --overwrite; its parent made."""
    out = Path(cfg.out) if cfg.out else Path("data") / f"{name}-{kind if existing is None else 'custom'}"
    source = Path(cfg.source).expanduser()
    inputs = [source if source.is_dir() else None, *files, cfg.tokenizer if existing is not None else None]
    check_disjoint(out, inputs)
    if out.exists() and not cfg.overwrite:
        raise LmlabError(f"output directory {out} exists; pass --overwrite to replace it or choose --out")
    if out.is_dir() and any(out.iterdir()) and not (out / "meta.json").is_file():
        raise LmlabError(f"{out} exists and is not a prepared dataset; --overwrite replaces only a dataset: choose "
                         "another --out")  # fmt: skip
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(out.parent, e) from None
    return out


def _tokenizer_choice(spec: str) -> tuple[str, toklib.Tokenizer | None]:
    if spec in toklib.KINDS:
        return spec, None
    path = Path(spec)
    if spec.endswith(".json") or path.exists():
        tok = toklib.load_tokenizer(path)
        return tok.kind, tok
    raise LmlabError(
        f"--tokenizer {spec!r} is neither a kind{did_you_mean(spec, toklib.KINDS)} ({', '.join(toklib.KINDS)}) "
        "nor an existing tokenizer.json"
    )


def _check_text_file(path: Path, encoding: str = "utf-8") -> None:
    """Refuse a binary file: one with NUL characters in its first 8 KB, read in ``encoding`` (UTF-16 text is full
    of NUL bytes, none of them a NUL character)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError as e:
        raise LmlabError(f"cannot read {path}: {e.strerror}") from None
    if "\x00" in head.decode(encoding, errors="ignore"):
        # UTF-16: a byte-order mark, or (mostly Latin text) NUL bytes in every other position and not between
        odd, even = head[1::2], head[0::2]
        half = max(1, len(head) // 2)
        alternating = max(odd.count(0), even.count(0)) > half / 2 and min(odd.count(0), even.count(0)) < half / 20
        if head[:2] in (b"\xff\xfe", b"\xfe\xff") or alternating:
            raise LmlabError(f"{path} looks like UTF-16 text, not {encoding}: pass --encoding utf-16")
        raise LmlabError(
            f"{path} is not a text file (it contains NUL bytes); give text files only, e.g. a glob like 'dir/*.txt'"
        )


def plan_split(files: list[Path], val_fraction: float, seed: int) -> tuple[list[Segment], str]:
    """Split into train/val on document boundaries when there are enough documents, else on line boundaries.

    With at least 2/val_fraction files, a seeded random choice of whole files is held out. With fewer,
    the last ``val_fraction`` of each file (cut at a line end) is held out, which for a single file such
    as tiny Shakespeare is the same held-out tail as nanoGPT's.
    """
    sizes = [p.stat().st_size for p in files]
    if len(files) >= math.ceil(2 / val_fraction):
        order = list(range(len(files)))
        random.Random(seed).shuffle(order)
        n_val = max(1, round(len(files) * val_fraction))
        val = set(order[:n_val])
        return [Segment(p, 0, s, "val" if i in val else "train") for i, (p, s) in enumerate(zip(files, sizes))], (
            "document"
        )
    segments = []
    for p, s in zip(files, sizes):
        cut = _line_cut(p, s, int(s * (1 - val_fraction)))
        segments += [Segment(p, 0, cut, "train"), Segment(p, cut, s, "val")]
    return segments, "line"


def _line_cut(path: Path, size: int, target: int) -> int:
    """The byte offset just after the first newline at or after ``target`` (else before it), else a char start."""
    with open(path, "rb") as f:
        f.seek(target)
        ahead = f.read(LINE_SEARCH_BYTES)
        # a line end is taken only where it keeps the two parts near their planned sizes: a file of one long line
        # (its only newline at the end) is cut inside the line, not after it (which would leave validation empty)
        slack = max(1, min(target, size - target) // 2)
        i = ahead.find(b"\n")
        if i >= 0 and i + 1 <= slack:
            return target + i + 1
        lo = max(0, target - LINE_SEARCH_BYTES)
        f.seek(lo)
        behind = f.read(target - lo)
        i = behind.rfind(b"\n")
        if i >= 0 and target - (lo + i + 1) <= slack:
            return lo + i + 1
        # no line end nearby: cut at a character start (skip UTF-8 continuation bytes)
        while ahead and (ahead[0] & 0xC0) == 0x80 and target < size:
            ahead, target = ahead[1:], target + 1
        return target


def _ascii_compatible(encoding: str) -> bool:
    """Whether a newline is the one byte 0x0A in ``encoding`` (as in UTF-8 and latin-1, not UTF-16 or UTF-32): the
    byte-level splitting and blocking here need that."""
    return "\n".encode(encoding) == b"\n"


def _to_utf8(files: list[Path], cfg: PrepareConfig, workdir: Path) -> tuple[list[Path], dict, dict]:
    """UTF-8 copies of sources in an encoding that is not ASCII-compatible (UTF-16, UTF-32), so that they can be cut
    into train/val on line boundaries like any other; with the original of each copy and the originals' sha256.
    Copying is simpler than teaching every byte offset here about 2- and 4-byte code units, and such corpora are
    rare enough that the extra pass does not matter."""
    workdir.mkdir()
    copies, original, sha = [], {}, {}
    for i, path in enumerate(files):
        h = hashlib.sha256()
        copy = workdir / f"{i:06d}.txt"
        with open(copy, "w", encoding="utf-8", newline="") as f:
            for text in iter_text(Segment(path, 0, path.stat().st_size, "train"), cfg.encoding, cfg.errors, h):
                f.write(text)
        copies.append(copy)
        original[copy] = path
        sha[path] = h.hexdigest()
    return copies, original, sha


def iter_text(seg: Segment, encoding: str, errors: str, hasher: Any = None) -> Iterator[str]:
    """Decoded text of a segment, in blocks of about BLOCK_BYTES cut after a newline where there is one."""
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    with open(seg.path, "rb") as f:
        f.seek(seg.start)
        pos, carry = seg.start, b""
        while pos < seg.end:
            raw = f.read(min(BLOCK_BYTES, seg.end - pos))
            if not raw:
                break
            if hasher is not None:
                hasher.update(raw)
            offset = pos - len(carry)  # file offset of data[0]
            pos += len(raw)
            data = carry + raw
            if pos < seg.end:
                cut = data.rfind(b"\n") + 1 or len(data)
                data, carry = data[:cut], data[cut:]
            else:
                carry = b""
            try:
                text = decoder.decode(data, final=pos >= seg.end)
            except UnicodeDecodeError as e:
                raise LmlabError(
                    f"{seg.path} is not valid {encoding} text (bad byte at offset {offset + e.start}); "
                    "give the right --encoding (e.g. latin-1) or pass --errors replace"
                ) from None
            if text:
                yield text


def _train_tokenizer(kind: str, segments: list[Segment], cfg: PrepareConfig) -> toklib.Tokenizer:
    if kind == "char":
        # the char vocabulary comes from all text, validation included, so no character is unknown there
        texts = (t for s in segments for t in iter_text(s, cfg.encoding, cfg.errors))
        return toklib.train_char(texts)
    budget = int(cfg.tokenizer_sample_mb * 1e6)

    def sample() -> Iterator[str]:  # train the tokenizer on the training split only
        seen = 0
        for s in segments:
            if s.split != "train":
                continue
            for t in iter_text(s, cfg.encoding, cfg.errors):
                yield t
                seen += len(t)
                if seen >= budget:
                    return

    train = toklib.train_bpe if kind == "bpe" else toklib.train_word
    with _progress(cfg.quiet, None, f"train {kind} tokenizer"):
        return train(sample(), cfg.vocab_size, cfg.min_frequency)


class _progress:
    """A tqdm bar on stderr (bytes read, MB/s, tokens), or nothing when quiet."""

    def __init__(self, quiet: bool, total: int | None, desc: str):
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, leave=False)

    def __enter__(self) -> _progress:
        return self

    def update(self, nbytes: int, tokens: int) -> None:
        if self.bar is not None:
            self.bar.update(nbytes)
            self.bar.set_postfix_str(f"{tokens:,} tokens", refresh=False)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()


def _encode_all(
    tok: toklib.Tokenizer, segments: list[Segment], tmp: Path, dtype: type, cfg: PrepareConfig
) -> tuple[dict[str, int], dict[Path, str]]:
    counts = {"train": 0, "val": 0, "nonblank": 0, "train_bytes": 0, "val_bytes": 0}
    hashers: dict[Path, Any] = {}
    eos = np.array([tok.eos_id], dtype=dtype)
    total = sum(s.end - s.start for s in segments)
    files = {split: open(tmp / f"{split}.bin", "wb") for split in ("train", "val")}  # noqa: SIM115
    batch: list[tuple[str, str, bool]] = []  # (split, text, last block of its segment)
    batch_bytes = 0

    def flush() -> None:
        nonlocal batch, batch_bytes
        if not batch:
            return
        ids = tok.encode_batch([t for _, t, _ in batch])
        for (split, text, last), seq in zip(batch, ids):
            arr = np.asarray(seq, dtype=dtype)
            arr.tofile(files[split])
            counts[split] += len(arr)
            counts[f"{split}_bytes"] += len(text.encode("utf-8"))
            if last:
                eos.tofile(files[split])
                counts[split] += 1
            if not counts["nonblank"] and not text.isspace():
                counts["nonblank"] = 1  # the corpus has some text that is not whitespace
        bar.update(batch_bytes, counts["train"] + counts["val"])
        batch, batch_bytes = [], 0

    try:
        with _progress(cfg.quiet, total, "encode") as bar:
            for seg in segments:
                hasher = hashers.setdefault(seg.path, hashlib.sha256())
                if seg.start == seg.end:
                    continue
                block = None
                for text in iter_text(seg, cfg.encoding, cfg.errors, hasher):
                    if cfg.documents == "lines":  # blocks end at line ends, so no line is cut (but one > 16 KiB)
                        batch += [(seg.split, line, True) for line in text.split("\n") if line.strip()]
                        batch_bytes += len(text)
                        if batch_bytes >= BATCH_BYTES:
                            flush()
                        continue
                    if block is not None:
                        batch.append((seg.split, block, False))
                    block = text
                    batch_bytes += len(text)
                    if batch_bytes >= BATCH_BYTES:
                        flush()
                if block is not None:
                    batch.append((seg.split, block, True))
            flush()
    finally:
        for f in files.values():
            f.close()
    return counts, {p: h.hexdigest() for p, h in hashers.items()}


def _meta(cfg, name, tok, dtype, counts, hashes, files, segments, unit) -> dict[str, Any]:
    splits_of: dict[Path, set[str]] = {}
    for s in segments:
        if s.end > s.start:
            splits_of.setdefault(s.path, set()).add(s.split)
    tok_info = tok.describe()
    if tok.kind == "char":
        tok_info["num_chars"] = len(tok.chars or ())
    return {
        "lmlab_version": __version__,
        "task": "lm",
        "name": name,
        "vocab_size": tok.vocab_size,
        "dtype": np.dtype(dtype).name,
        "eos_id": tok.eos_id,
        "tokenizer": tok_info,
        "splits": {split: {"tokens": counts[split], "bytes": counts[f"{split}_bytes"]} for split in ("train", "val")},
        "split": {"unit": unit, "val_fraction": cfg.val_fraction, "seed": cfg.seed},
        "documents": cfg.documents,
        "sources": [
            {
                "path": str(p.resolve()),
                "bytes": p.stat().st_size,
                "sha256": hashes.get(p, ""),
                "splits": sorted(splits_of.get(p, ())),
            }
            for p in files
        ],
        "encoding": cfg.encoding,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ---------------------------------------------------------------------------------------------
# --task translation: tab-separated sentence pairs
#
#     DATA/{train,val,test}.src.bin   source tokens of every pair, concatenated (uint16 or uint32)
#     DATA/{train,val,test}.src.idx   int64 offsets (pairs + 1): pair i is bin[idx[i]:idx[i+1]]
#     DATA/{train,val,test}.tgt.bin   target tokens, the same way
#     DATA/{train,val,test}.tgt.idx
#     DATA/{train,val,test}.tsv       the pairs as text (source TAB target): references for lmlab eval
#     DATA/tokenizer.json             the joint tokenizer, or the target's with --separate-tokenizers
#     DATA/tokenizer.src.json         the source's, with --separate-tokenizers
#     DATA/meta.json                  "task": "translation", vocabularies, split sizes, malformed lines
#
# Token files hold the sentences without BOS/EOS; the loader adds them. The split is leak-free by source
# sentence (lmlab.data.formats.pairs.split_pairs).


def prepare_translation(cfg: PrepareConfig) -> PreparedDataset:
    """Build a translation dataset directory from ``cfg`` (a ``PrepareConfig`` with ``task="translation"``)."""
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
    kind, existing = _tokenizer_choice(cfg.tokenizer)
    if existing is not None and cfg.separate_tokenizers:
        raise LmlabError("--separate-tokenizers trains two tokenizers: give a kind (bpe, char, word) as --tokenizer")
    if existing is None:
        toklib.check_vocab_size(kind, cfg.vocab_size)
    out = _output_dir(cfg, name, kind, existing, files)
    for path in files:
        _check_text_file(path, cfg.encoding)

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

    with DirLock(out, "dataset", beside=True), atomic_dir(out) as tmp:
        src_tok, tgt_tok = _tokenizers(kind, existing, splits, read.pairs, cfg)
        dtype = np.uint16 if max(src_tok.vocab_size, tgt_tok.vocab_size) <= 2**16 else np.uint32
        counts = {split: _write_split(tmp, split, splits[split], src_tok, tgt_tok, dtype) for split in PAIR_SPLITS}
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
        write_json(tmp / "meta.json", meta)
    if not cfg.quiet:
        vocab = (
            f"joint {tgt_tok.kind} vocab {tgt_tok.vocab_size}"
            if src_tok is tgt_tok
            else f"{src_tok.kind} vocabs {src_tok.vocab_size} (source) / {tgt_tok.vocab_size} (target)"
        )
        sizes = ", ".join(f"{s} {counts[s]['pairs']:,} pairs" for s in PAIR_SPLITS)
        print(f"prepared {out}: {vocab}; {sizes} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return PreparedDataset(out, meta)


def _tokenizers(kind, existing, splits, all_pairs, cfg) -> tuple[toklib.Tokenizer, toklib.Tokenizer]:
    """(source, target) tokenizers: the same object when joint. Trained on the training split only,
    except char vocabularies, which take every character so that none is unknown at test time."""
    if existing is not None:
        return existing, existing
    pairs = all_pairs if kind == "char" else splits["train"]

    def train(texts: list[str]) -> toklib.Tokenizer:
        return _train_on_texts(kind, texts, cfg)

    if cfg.separate_tokenizers:
        return train([s for s, _ in pairs]), train([t for _, t in pairs])
    joint = train([s for s, _ in pairs] + [t for _, t in pairs])
    return joint, joint


def _train_on_texts(kind: str, texts: list[str], cfg: PrepareConfig) -> toklib.Tokenizer:
    """A new tokenizer of ``kind`` trained on ``texts`` (held in memory: sentence pairs, conversations)."""
    if kind == "char":
        return toklib.train_char(texts)
    fn = toklib.train_bpe if kind == "bpe" else toklib.train_word
    return fn(texts, cfg.vocab_size, cfg.min_frequency)


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
# --task sft: conversations to train a chat model on from scratch (lmlab train DATA PRESET)
#
#     DATA/{train,val}.jsonl   the conversations, one {"messages": [...]} a line (read by the sft objective)
#     DATA/tokenizer.json      trained on the training conversations' text (char: on all of it)
#     DATA/meta.json           "task": "sft", the source's format, conversations and rendered tokens per split
#
# The conversations are kept as text, not token files: the objective renders them through the one chat template
# when a run starts (ids and loss mask together), as fine-tuning does with the same files.


def prepare_sft(cfg: PrepareConfig) -> PreparedDataset:
    """Build a conversation dataset directory from ``cfg`` (a ``PrepareConfig`` with ``task="sft"``): a JSONL or
    JSON file of instruction data in any format ``lmlab finetune RUN sft`` reads."""
    from lmlab.data.chat import render

    t0 = time.perf_counter()
    name, files = resolve_source(cfg.source, cfg.source_file)
    if len(files) != 1:
        raise LmlabError(f"--task sft takes one JSONL or JSON file of conversations; {cfg.source} is "
                         f"{len(files)} files")  # fmt: skip
    kind, existing = _tokenizer_choice(cfg.tokenizer)
    if existing is None:
        toklib.check_vocab_size(kind, cfg.vocab_size)
    out = _output_dir(cfg, Path(name).stem, kind, existing, files)
    fmt, convs = read_conversations(files[0], cfg.format)
    train, val = holdout(convs, cfg.val_fraction, cfg.seed, files[0], "conversation")
    with DirLock(out, "dataset", beside=True), atomic_dir(out) as tmp:
        if existing is not None:
            tok = existing
        else:
            # char vocabularies take every character, so that none is unknown in validation
            tok = _train_on_texts(kind, [m["content"] for c in (convs if kind == "char" else train)
                                         for m in c.messages], cfg)  # fmt: skip
        counts = {}
        for split, part in (("train", train), ("val", val)):
            tokens = sum(len(render(tok, c.messages, where=f"{files[0].name}:{c.line}").ids) for c in part)
            counts[split] = {"conversations": len(part), "tokens": tokens}
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as f:
                f.writelines(json.dumps({"messages": list(c.messages)}, ensure_ascii=False) + "\n" for c in part)
        tok.save(tmp / "tokenizer.json")
        meta = {
            "lmlab_version": __version__,
            "task": "sft",
            "name": name,
            "vocab_size": tok.vocab_size,
            "dtype": np.dtype(np.uint16 if tok.vocab_size <= 2**16 else np.uint32).name,
            "eos_id": tok.eos_id,
            "tokenizer": tok.describe(),
            "format": fmt,
            "splits": counts,
            "split": {"unit": "conversation", "val_fraction": cfg.val_fraction, "seed": cfg.seed},
            "sources": [{"path": str(files[0].resolve()), "bytes": files[0].stat().st_size,
                         "sha256": sha256_file(files[0])}],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }  # fmt: skip
        write_json(tmp / "meta.json", meta)
    if not cfg.quiet:
        sizes = ", ".join(f"{s} {counts[s]['conversations']:,} conversations ({counts[s]['tokens']:,} tokens)"
                          for s in ("train", "val"))  # fmt: skip
        print(f"prepared {out}: {fmt} records, {tok.kind} tokenizer, vocab {tok.vocab_size}; {sizes} in "
              f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)  # fmt: skip
    return PreparedDataset(out, meta)
