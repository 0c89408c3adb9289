"""Floor 0 of the package: files and directories that are never seen half-written, JSON, sha256, locks.

Every write in lmlab goes through here. A file is written to a temporary name beside its target,
flushed and fsynced, then renamed over it (a rename within one directory is atomic on POSIX), so a
crash, Ctrl-C or full disk leaves either the old file or the new one. A directory (a checkpoint, a
prepared dataset) is built the same way: under a temporary name, every file fsynced, then swapped in.

A write that fails (a read-only place, a full disk, a directory where a file should be) raises one LmlabError
naming the path and the reason, never a raw OSError; a temporary left by a killed process is removed by the
next write to the same target. ``check_disjoint`` keeps an output from being, containing or lying inside an
input. This module imports nothing from lmlab but ``errors``, so any module may use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory (a directory's entry list: what makes a rename durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path, tag: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


# what OSError-like failures of writers that do not raise OSError say (safetensors' SafetensorError, torch's
# "PytorchStreamWriter failed writing file"): such an error is the disk's, not a bug
_DISK_WORDS = (
    "No space left", "os error", "Read-only file system", "Permission denied", "Disk quota", "failed writing",
)  # fmt: skip


def write_error(path: str | os.PathLike, e: BaseException) -> LmlabError:
    """The one-line LmlabError for a failed write of ``path`` (the reason from the OSError, or the writer's)."""
    if isinstance(e, OSError) and e.strerror:
        reason = e.strerror
    else:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    hint = "; free some space" if "space" in reason.lower() or "quota" in reason.lower() else ""
    err = LmlabError(f"cannot write {path}: {reason}{hint}")
    err.reason = reason  # type: ignore[attr-defined]  (for a caller that says more about what failed)
    return err


def is_write_failure(e: BaseException) -> bool:
    """Whether ``e`` is a failed write (an OSError, or a writer library's error that wraps one)."""
    if isinstance(e, LmlabError):
        return False
    return isinstance(e, OSError) or any(w in str(e) for w in _DISK_WORDS)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


_TMP_PID = re.compile(r"\.(?:tmp|old)-(\d+)")


def remove_dead_temporaries(path: str | os.PathLike) -> None:
    """Remove the temporaries that a killed writer of ``path`` left beside it (``.NAME.tmp-PID…``, ``.NAME.old-PID``)
    when process PID is gone. A live writer's temporaries are left alone."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return
    for prefix in {f".{path.name}.", f".{path.stem}.tmp-"}:
        for stale in parent.glob(glob_escape(prefix) + "*"):
            m = _TMP_PID.search(stale.name)
            if m is None or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
                continue
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    stale.unlink()


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def check_disjoint(out: str | os.PathLike, inputs, *, what: str = "--out") -> None:
    """Refuse an output that is, contains, or lies inside one of ``inputs`` (files or directories), so that writing
    (or replacing) it can never destroy what it is made from. ``--overwrite`` does not change this."""
    o = Path(out).resolve()
    for inp in inputs:
        if inp is None:
            continue
        i = Path(inp).resolve()
        if o == i:
            rel = "is"
        elif i.is_relative_to(o):
            rel = "contains"
        elif o.is_relative_to(i) and (i.is_dir() or not i.exists()):
            rel = "lies inside"
        else:
            continue
        raise LmlabError(f"{what} {out} {rel} the input {inp}; writing it would destroy the input: choose an output "
                         "outside the inputs")  # fmt: skip


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; when the block ends without an error the file written there is
    fsynced and renamed over ``path``. On an error nothing is left behind and ``path`` is untouched.

    For writers that want a file name (``safetensors``, ``torch.save``, ``fig.savefig``). The temporary name
    keeps ``path``'s suffix, since some writers choose their format by it."""
    path = Path(path)
    if path.is_dir():
        raise LmlabError(f"{path} is a directory; give a file name (e.g. {path / ('out' + (path.suffix or '.txt'))})")
    if not path.parent.is_dir():
        raise LmlabError(f"cannot write {path}: its directory {path.parent} does not exist")
    remove_dead_temporaries(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if is_write_failure(e):
            raise write_error(path, e) from None
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (newlines as given)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON (one trailing newline) to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike, *, what: str = "", fix: str = "") -> Any:
    """The JSON in ``path``; a missing or damaged file is an LmlabError naming ``what`` it is and how to ``fix`` it."""
    path = Path(path)
    name = what or str(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmlabError(f"{name} not found ({path}){'; ' + fix if fix else ''}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmlabError(f"{path} is damaged ({type(e).__name__}){'; ' + fix if fix else ''}") from None


def symlink(path: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make ``path`` a relative symlink to ``target`` (a name in the same directory), replacing any old one
    atomically."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(Path(target).name, tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, on_swap: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yields an empty temporary directory beside ``path``; when the block ends without an error every file in
    it is fsynced and the directory is renamed to ``path``, replacing an existing one (which is moved aside,
    then removed). On an error the temporary directory is removed and ``path`` is untouched.

    ``on_swap(tmp)`` runs after the files are durable and before the rename (a manifest written last, say)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LmlabError(f"{path} exists and is not a directory; choose another output or remove it")
    remove_dead_temporaries(path)
    tmp = _tmp_name(path)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=False)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        yield tmp
        if on_swap is not None:
            on_swap(tmp)
        for p in tmp.rglob("*"):
            if p.is_file():
                fsync_path(p)
        fsync_path(tmp)
        old = None
        if path.exists():
            old = _tmp_name(path, "old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_path(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        if is_write_failure(e):
            raise write_error(path, e) from None
        if isinstance(e, LmlabError) and hasattr(e, "reason") and str(tmp) in str(e):
            # a write inside the temporary failed: name the file as the user will know it, not its temporary
            err = LmlabError(str(e).replace(str(tmp), str(path)))
            err.reason = e.reason  # type: ignore[attr-defined]
            raise err from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale(parent: str | os.PathLike, name_glob: str) -> None:
    """Remove what a killed writer left under ``parent``: temporary files and directories matching ``name_glob``."""
    for stale in Path(parent).glob(name_glob):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _describe_process(pid: str) -> str:
    """'process PID (its command line)' for a lock's holder, as far as this system tells."""
    if not pid.isdigit():
        return "another lmlab process"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        cmd = ""
    return f"process {pid}" + (f" ({cmd[:100]})" if cmd else "")


class DirLock:
    """An exclusive advisory lock on a directory (``flock`` on ``DIR/.lock``): one writer at a time.

    Held while a process writes a run directory; a second writer gets an LmlabError at once instead of two
    processes interleaving checkpoints. The kernel drops the lock when the holder exits, even on SIGKILL, so a
    crash never leaves a stale lock behind. On systems without ``fcntl`` it does nothing."""

    def __init__(self, directory: str | os.PathLike, what: str = "directory", *, beside: bool = False) -> None:
        """``beside``: the lock file is ``.NAME.lock`` next to the directory, for a directory that is built elsewhere
        and swapped in whole (a dataset); it is removed on release."""
        self.directory, self.what, self.beside = Path(directory), what, beside
        self.lock_file = (
            self.directory.with_name(f".{self.directory.name}.lock") if beside else self.directory / ".lock"
        )
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; a single writer is the user's to keep
            return self
        while True:
            try:
                self.lock_file.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise write_error(self.directory, e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                break
            try:  # a lock file removed by its last holder after we opened it: lock the new one instead
                same = os.fstat(fd).st_ino == os.stat(self.lock_file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                fd = self._claim(fd)
                return self
            os.close(fd)
        holder = _describe_process(os.read(fd, 32).decode("utf-8", "replace").strip())
        os.close(fd)
        raise LmlabError(
            f"{self.what} {self.directory} is in use by {holder}; wait for it to finish (or stop it) before "
            "writing to it"
        )

    def _claim(self, fd: int) -> int:
        # who holds it, for the message a second writer gets (a lock left by a dead process is not held: the
        # kernel released it, so the next writer takes it over and rewrites this line)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return fd

    def release(self) -> None:
        if self._fd is not None:
            if self.beside:
                with contextlib.suppress(OSError):
                    self.lock_file.unlink()
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
