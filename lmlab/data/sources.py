"""Where text comes from: files, directories, globs, and named datasets downloaded once and verified."""

from __future__ import annotations

import glob as globlib
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lmlab.errors import LmlabError, did_you_mean
from lmlab.io import sha256_file


@dataclass(frozen=True)
class NamedDataset:
    name: str
    url: str
    sha256: str
    filename: str
    description: str


NAMED_DATASETS: dict[str, NamedDataset] = {
    d.name: d
    for d in [
        NamedDataset(
            "shakespeare",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            "input.txt",
            "tiny Shakespeare: 1.1 MB of plays, 65 distinct characters (Karpathy's char-rnn)",
        ),
    ]
}


def cache_dir() -> Path:
    """``$LMLAB_CACHE``, default ``~/.cache/lmlab``."""
    return Path(os.environ.get("LMLAB_CACHE") or Path.home() / ".cache" / "lmlab")


def local_copy_env(name: str) -> str:
    """The environment variable that points a named dataset at a local copy: ``LMLAB_<NAME>_FILE``."""
    return f"LMLAB_{name.upper().replace('-', '_')}_FILE"


def _looks_like_path(source: str) -> bool:
    return any(c in source for c in "/\\.*?[") or source.startswith("~")


def resolve_source(source: str, source_file: str | None = None) -> tuple[str, list[Path]]:
    """(a short name for the corpus, its files in a fixed order) for a file, directory, glob or named dataset."""
    if any(c in source for c in "*?["):
        files = sorted(Path(p) for p in globlib.glob(os.path.expanduser(source), recursive=True) if Path(p).is_file())
        if not files:
            raise LmlabError(f"the pattern {source!r} matches no files")
        stem = Path(source.split("*")[0].rstrip("/") or ".").resolve().name
        return stem or "corpus", files
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise LmlabError(f"directory {path} has no files")
        return path.resolve().name, files
    if path.is_file():
        return path.stem, [path]
    if source in NAMED_DATASETS:
        return source, [fetch_named(source, source_file)]
    if path.exists():
        raise LmlabError(f"{path} is neither a regular file nor a directory")
    if _looks_like_path(source):
        raise LmlabError(f"source {source!r} not found: no such file or directory")
    raise LmlabError(
        f"unknown named dataset {source!r}{did_you_mean(source, NAMED_DATASETS)}; known: "
        f"{', '.join(NAMED_DATASETS)} (or give a path to a text file, directory or glob)"
    )


def fetch_named(name: str, source_file: str | None = None) -> Path:
    """Path of a named dataset: a local copy if given (``source_file`` or ``LMLAB_<NAME>_FILE``),
    else the cached download, else download it into the cache. Every path is checked against the sha256."""
    ds = NAMED_DATASETS[name]
    local = source_file or os.environ.get(local_copy_env(name))
    if local:
        path = Path(local).expanduser()
        if not path.is_file():
            raise LmlabError(f"local copy of {name} not found: {path} (from --source-file or ${local_copy_env(name)})")
        digest = sha256_file(path)
        if digest != ds.sha256:
            raise LmlabError(
                f"{path} is not the published {name} file (sha256 {digest[:12]}…, expected {ds.sha256[:12]}…); "
                f"to use it anyway, give it as a plain file: lmlab prepare {path}"
            )
        return path
    target = cache_dir() / name / ds.filename
    if target.is_file() and sha256_file(target) == ds.sha256:
        return target
    return _download(ds, target)


def _download(ds: NamedDataset, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    hint = f"download a copy by other means and pass it with --source-file PATH (or set ${local_copy_env(ds.name)})"
    try:
        h = hashlib.sha256()
        with urllib.request.urlopen(ds.url, timeout=30) as r, open(tmp, "wb") as f:
            while block := r.read(1 << 20):
                h.update(block)
                f.write(block)
        if h.hexdigest() != ds.sha256:
            raise LmlabError(
                f"download of {ds.name} from {ds.url} has sha256 {h.hexdigest()[:12]}…, expected {ds.sha256[:12]}…; "
                f"the file changed or was corrupted in transit: try again, or {hint}"
            )
        os.replace(tmp, target)
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise LmlabError(f"could not download {ds.name} from {ds.url} ({reason}); no network? {hint}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target
