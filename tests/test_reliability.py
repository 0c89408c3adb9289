"""Fault injection: what a user can get wrong, and what the machine can do to a run, on every write path.

Each case asserts the contract of the README's "When things go wrong": exit 2 (130 on SIGINT, 143 on SIGTERM), one
line on stderr, no traceback, the inputs byte-identical, no temporaries (``.NAME.tmp-PID``) left, and the earlier
checkpoints and datasets intact. A full disk and a read-only filesystem are injected by making the one place every
write goes through (``lmlab.io.fsync_path``, called before each rename) fail as the kernel would.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmlab.errors import LmlabError
from tests.helpers import assert_one_line_error, on_screen, run_cli

FAST = ["--train.no-progress", "--train.track", "none", "--train.sample-tokens", "0", "--train.eval-every", "0"]
TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog, again and again.\n" for i in range(400))


# -- helpers -----------------------------------------------------------------------------------------------------
def tree_digest(root: Path) -> dict[str, str]:
    """Every file (and link) under ``root`` with its sha256 (a link: its target), to show nothing changed."""
    out = {}
    for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
        rel = str(p.relative_to(root)) if root.is_dir() else p.name
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def temporaries(root: Path) -> list[Path]:
    """What an interrupted atomic write would leave: ``.NAME.tmp-PID``, ``.NAME.old-PID`` (files or directories)."""
    return [p for p in root.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


def fail_writes(monkeypatch, code: int, after: int = 0, only: str = "") -> None:
    """Make every write (of a path containing ``only``) fail with ``code`` (ENOSPC: a full disk; EROFS: a read-only
    filesystem) once ``after`` writes have succeeded."""
    import lmlab.io

    real = lmlab.io.fsync_path
    calls = {"n": 0}

    def fsync(path):
        calls["n"] += only in str(path)
        if calls["n"] > after and only in str(path):
            raise OSError(code, os.strerror(code), str(path))
        return real(path)

    monkeypatch.setattr(lmlab.io, "fsync_path", fsync)


def assert_ends_in_error(result, *fragments: str) -> str:
    """A failure after the work began (the run's header lines are out): exit 2, no traceback, and the last line is
    the one ``lmlab VERB: error: ...`` line with every fragment."""
    code, _, err = result
    no_traceback(err)
    last = on_screen(err).rstrip("\n").split("\n")[-1] + "\n"
    return assert_one_line_error(code, last, *fragments)


def no_traceback(err: str) -> None:
    assert "Traceback" not in err and 'File "' not in err, err


def _ctrl_c_as_in_a_terminal() -> None:
    # a job started in the background (`cmd &`) inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler; the child gets Ctrl-C as a terminal gives it, wherever the tests run
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def lmlab_process(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "lmlab", *args], env=env, text=True,
                            preexec_fn=_ctrl_c_as_in_a_terminal, **kw)  # fmt: skip


@pytest.fixture
def small(tmp_path) -> Path:
    p = tmp_path / "small.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


@pytest.fixture
def corpus(tmp_path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(3):
        (d / f"book{i}.txt").write_text(TEXT[i * 1000 :], encoding="utf-8")
    return d


@pytest.fixture
def run_copy(base, tmp_path) -> Path:
    """A private copy of the session's tiny run (tests here may write into it)."""
    dst = tmp_path / "run"
    shutil.copytree(base, dst, symlinks=True)
    return dst


# -- 1. unwritable outputs: one line naming the path and the reason ----------------------------------------------
def test_prepare_into_proc_is_one_line(small, capsys):
    assert_one_line_error(run_cli(["prepare", str(small), "--out", "/proc/x"], capsys), "/proc")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_prepare_on_a_full_or_read_only_disk(small, tmp_path, monkeypatch, capsys, code):
    before = tree_digest(small)
    fail_writes(monkeypatch, code)
    out = tmp_path / "data"
    assert_one_line_error(run_cli(["prepare", str(small), "--out", str(out)], capsys), str(out), os.strerror(code))
    assert not out.exists() and temporaries(tmp_path) == []
    assert tree_digest(small) == before


def test_a_full_disk_while_replacing_a_dataset_keeps_the_old_one(small, tmp_path, monkeypatch, capsys):
    out = tmp_path / "data"
    assert run_cli(["prepare", str(small), "--out", str(out)], capsys).code == 0
    before = tree_digest(out)
    fail_writes(monkeypatch, errno.ENOSPC)
    assert_one_line_error(run_cli(["prepare", str(small), "--out", str(out), "--overwrite"], capsys), "No space left")
    assert tree_digest(out) == before and temporaries(tmp_path) == []


def test_a_full_disk_during_a_checkpoint_save_keeps_the_earlier_ones(shakespeare_char, tmp_path, monkeypatch, capsys):
    run = tmp_path / "r"
    argv = ["train", str(shakespeare_char), "tiny", "--out", str(run), "--train.max-steps", "4", *FAST]
    assert run_cli([*argv, "--train.save-every", "2", "--train.max-steps", "2"], capsys).code == 0
    good = tree_digest(run / "checkpoints")
    fail_writes(monkeypatch, errno.ENOSPC, only="checkpoints")
    line = assert_ends_in_error(
        run_cli(["train", "--resume", str(run), "--train.max-steps", "4", "--train.no-progress"], capsys),
        "could not save the checkpoint of step 4",
        "No space left on device",
        f"lmlab train --resume {run}",
    )
    assert "earlier checkpoints are intact" in line
    assert tree_digest(run / "checkpoints") == good and temporaries(run) == []
    monkeypatch.undo()
    # the disk has room again: the run resumes from the intact checkpoint and finishes
    assert run_cli(["train", "--resume", str(run), "--train.max-steps", "4", "--train.no-progress"], capsys).code == 0
    assert json.loads((run / "checkpoints" / "step-00000004" / "state.json").read_text())["step"] == 4


def test_a_full_disk_while_logging_is_one_line(shakespeare_char, tmp_path, monkeypatch, capsys):
    import lmlab.training.tracking as tracking

    class FullDisk:  # the metrics file of a disk that fills up after the first row
        def __init__(self, f):
            self.f, self.rows = f, 0

        def write(self, text):
            self.rows += 1
            if self.rows > 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(text)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(tracking, "open", lambda *a, **k: FullDisk(open(*a, **k)), raising=False)
    run = tmp_path / "r"
    argv = ["train", str(shakespeare_char), "tiny", "--out", str(run), "--train.max-steps", "4", *FAST]
    argv += ["--train.log-every", "1", "--train.save-every", "1"]
    assert_ends_in_error(run_cli(argv, capsys), "metrics.jsonl", "No space left")
    assert temporaries(tmp_path) == []
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # the rows before the disk filled are kept
    assert (run / "checkpoints" / "step-00000002").is_dir()  # and the run can be resumed


@pytest.mark.parametrize("verb", ["eval", "attention", "plot"])
def test_out_naming_an_existing_directory(run_copy, tmp_path, capsys, verb):
    target = tmp_path / "somewhere"
    target.mkdir()
    argv = {
        "eval": ["eval", str(run_copy), "--out", str(target), "--batch-size", "2"],
        "attention": ["attention", str(run_copy), "--text", "ROMEO:", "--out", str(target)],
        "plot": ["plot", str(run_copy), "--out", str(target)],
    }[verb]
    assert_one_line_error(run_cli(argv, capsys), str(target), "is a directory", verb=verb)
    assert list(target.iterdir()) == []


def test_eval_in_a_read_only_run_prints_its_scores_first(run_copy, monkeypatch, capsys):
    fail_writes(monkeypatch, errno.EROFS)
    code, out, err = run_cli(["eval", str(run_copy), "--batch-size", "2"], capsys)
    assert_one_line_error(code, err, "eval-val.json", "Read-only file system")
    assert "val_loss" in out or "loss" in out, out  # the scores were computed: they are on screen, not lost
    assert not (run_copy / "eval-val.json").exists() and temporaries(run_copy) == []


def test_export_hf_into_an_unwritable_place(run_copy, capsys):
    assert_one_line_error(run_cli(["export-hf", str(run_copy), "/proc/hf"], capsys), "/proc")


# -- 2. an output never destroys an input -----------------------------------------------------------------------
@pytest.mark.parametrize("where", ["same", "inside"])
def test_prepare_refuses_an_output_over_its_source_directory(corpus, capsys, where):
    before = tree_digest(corpus)
    out = corpus if where == "same" else corpus / "data"
    assert_one_line_error(
        run_cli(["prepare", str(corpus), "--out", str(out), "--overwrite"], capsys), "would destroy the input"
    )
    assert tree_digest(corpus) == before


def test_prepare_refuses_an_output_over_its_source_file(small, capsys):
    before = tree_digest(small)
    assert_one_line_error(
        run_cli(["prepare", str(small), "--out", str(small), "--overwrite"], capsys), "would destroy the input"
    )
    assert tree_digest(small) == before


def test_prepare_overwrite_replaces_only_a_dataset(small, tmp_path, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert_one_line_error(
        run_cli(["prepare", str(small), "--out", str(other), "--overwrite"], capsys), "not a prepared dataset"
    )
    assert (other / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("where", ["same", "inside"])
def test_train_refuses_a_run_inside_its_dataset(shakespeare_char, capsys, where):
    before = tree_digest(shakespeare_char)
    out = shakespeare_char if where == "same" else shakespeare_char / "run"
    argv = ["train", str(shakespeare_char), "tiny", "--out", str(out), "--train.max-steps", "1", *FAST]
    assert_one_line_error(run_cli(argv, capsys), "would destroy the input")
    assert tree_digest(shakespeare_char) == before


def test_export_hf_refuses_its_own_run_and_an_existing_directory(run_copy, tmp_path, capsys):
    before = tree_digest(run_copy)
    assert_one_line_error(run_cli(["export-hf", str(run_copy), str(run_copy)], capsys), "would destroy the input")
    assert_one_line_error(run_cli(["export-hf", str(run_copy), str(run_copy / "hf")], capsys), "would destroy")
    assert tree_digest(run_copy) == before
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "mine.txt").write_text("x")
    assert_one_line_error(run_cli(["export-hf", str(run_copy), str(hf)], capsys), "--overwrite")
    assert (hf / "mine.txt").read_text() == "x"


# -- 3. one writer per run and per dataset -----------------------------------------------------------------------
def test_a_dataset_being_built_is_locked(small, tmp_path, capsys):
    from lmlab.io import DirLock

    out = tmp_path / "data"
    with DirLock(out, "dataset", beside=True):
        assert_one_line_error(
            run_cli(["prepare", str(small), "--out", str(out)], capsys), "in use by process", str(os.getpid())
        )
    assert not out.exists()
    assert run_cli(["prepare", str(small), "--out", str(out)], capsys).code == 0  # released: the next one runs


def test_a_stale_lock_file_of_a_dead_process_does_not_block(small, tmp_path, capsys):
    out = tmp_path / "data"
    (tmp_path / ".data.lock").write_text("999999999\n")  # left by a writer that died: no flock is held on it
    assert run_cli(["prepare", str(small), "--out", str(out)], capsys).code == 0


def test_two_trainings_into_one_run_directory(shakespeare_char, tmp_path):
    run = tmp_path / "r"
    argv = ["train", str(shakespeare_char), "tiny", "--out", str(run), "--train.max-steps", "100000", *FAST]
    first = lmlab_process([*argv, "--train.log-every", "1"], stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        second = lmlab_process(argv, stderr=subprocess.PIPE)
        _, err = second.communicate(timeout=120)
        assert_one_line_error(second.returncode, err, "is in use by process", str(first.pid), verb="train")
        assert first.poll() is None  # the first run carries on
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    steps = [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # one run's rows, none from the refused one


# -- 4. refused starts and resumes write nothing; temporaries never outlive their writer -------------------------
@pytest.mark.parametrize(
    "bad", [["--train.best-metric", "foo"], ["--train.track", "nosuchtracker"], ["--train.lr", "-1"]]
)
def test_a_refused_start_leaves_nothing(shakespeare_char, tmp_path, capsys, bad):
    run = tmp_path / "r"
    argv = ["train", str(shakespeare_char), "tiny", "--out", str(run), "--train.max-steps", "2", *FAST, *bad]
    assert_one_line_error(run_cli(argv, capsys))
    assert not run.exists()


def test_a_damaged_dataset_leaves_no_run(shakespeare_char, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(shakespeare_char, data)
    (data / "meta.json").write_text("{not json")
    run = tmp_path / "r"
    assert_one_line_error(run_cli(["train", str(data), "tiny", "--out", str(run), *FAST], capsys), "meta.json")
    assert not run.exists()


def test_a_refused_resume_leaves_the_config_unchanged(run_copy, capsys):
    before = tree_digest(run_copy)
    assert_one_line_error(
        run_cli(["train", "--resume", str(run_copy), "--train.max-steps", "3", "--train.no-progress"], capsys),
        "--train.max-steps 3",
    )
    assert_one_line_error(
        run_cli(["train", "--resume", str(run_copy), "--train.best-metric", "foo", "--train.no-progress"], capsys)
    )
    assert tree_digest(run_copy) == before


def test_temporaries_of_a_dead_writer_are_removed(small, tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited: nothing of its can still be in use
    stale = tmp_path / f".data.tmp-{pid}"
    stale.mkdir()
    (stale / "train.bin").write_bytes(b"\0" * 100)
    live = tmp_path / f".data.tmp-{os.getppid()}"  # a live process's temporary is not ours to remove
    live.mkdir()
    assert run_cli(["prepare", str(small), "--out", str(tmp_path / "data")], capsys).code == 0
    assert not stale.exists() and live.is_dir()


def test_kill_9_during_prepare_then_the_next_prepare_cleans_up(gutenberg, tmp_path):
    out = tmp_path / "data"
    p = lmlab_process(["prepare", str(gutenberg), "--out", str(out), "--quiet"], stderr=subprocess.DEVNULL)
    tmp = tmp_path / f".data.tmp-{p.pid}"
    deadline = time.time() + 120
    while not tmp.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    p.kill()
    p.wait(timeout=60)
    if not tmp.exists():
        pytest.skip("prepare finished before it could be killed")
    assert not out.exists()
    r = lmlab_process(["prepare", str(gutenberg), "--out", str(out), "--quiet"], stderr=subprocess.PIPE)
    _, err = r.communicate(timeout=300)
    assert r.returncode == 0, err
    assert temporaries(tmp_path) == [] and (out / "meta.json").is_file()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_at_a_random_point_of_prepare(gutenberg, tmp_path, signum, code):
    out = tmp_path / "data"
    before = tree_digest(gutenberg)
    p = lmlab_process(["prepare", str(gutenberg), "--out", str(out)], stderr=subprocess.PIPE)
    time.sleep(random.Random(signum).uniform(0.5, 2.0))  # import, read, train the tokenizer, encode: any of them
    if p.poll() is not None:
        pytest.skip("prepare finished before the signal")
    p.send_signal(signum)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last.startswith("lmlab prepare: ") and ("interrupted" in last or "terminated" in last), err
    no_traceback(err)
    assert not out.exists() and temporaries(tmp_path) == [] and not (tmp_path / ".data.lock").exists()
    assert tree_digest(gutenberg) == before


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_at_a_random_point_of_train_then_resume_gives_the_same_rows(shakespeare_char, tmp_path, signum, code):
    args = [str(shakespeare_char), "tiny", "--train.max-steps", "400", "--train.log-every", "7", *FAST]
    args += ["--train.save-every", "1000"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert lmlab_process(["train", *args, "--out", str(whole)]).wait(timeout=300) == 0

    p = lmlab_process(["train", *args, "--out", str(cut)], stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:  # until the first row: the loop is running
        if (cut / "metrics.jsonl").exists() and (cut / "metrics.jsonl").read_text().count("\n") >= 1:
            break
        time.sleep(0.005)
    time.sleep(random.Random(signum).uniform(0.0, 1.0))  # the first row is out; stop somewhere in a later window
    if p.poll() is not None:
        pytest.skip("the run finished before the signal")
    p.send_signal(signum)
    if signum == signal.SIGINT:
        time.sleep(0.05)
        p.send_signal(signum)  # a second Ctrl-C while saving: still no traceback
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    no_traceback(err)
    assert temporaries(cut) == []
    r = lmlab_process(["train", "--resume", str(cut), "--train.no-progress"], stderr=subprocess.PIPE)
    _, err = r.communicate(timeout=300)
    assert r.returncode == 0, err

    def rows(run):
        out = []
        for line in (run / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            out.append(
                {k: v for k, v in row.items() if k not in ("tok_per_s", "mfu", "elapsed_s", "energy_kwh", "co2_kg")}
            )
        return out

    assert rows(cut) == rows(whole)


def test_a_dangling_latest_link_falls_back_to_the_newest_good_checkpoint(shakespeare_char, tmp_path, capsys):
    run = tmp_path / "r"
    argv = ["train", str(shakespeare_char), "tiny", "--out", str(run), "--train.max-steps", "4", *FAST]
    assert run_cli([*argv, "--train.save-every", "2", "--train.keep-last", "5"], capsys).code == 0
    shutil.rmtree(run / "checkpoints" / "step-00000004")  # `latest` now points at nothing
    with pytest.warns(UserWarning, match="latest points to step-00000004, which is gone; using step-00000002"):
        code, _, err = run_cli(["train", "--resume", str(run), "--train.max-steps", "6", "--train.no-progress"], capsys)
    assert code == 0, err
    assert "steps 2 -> 6" in err and "Traceback" not in err
    assert (run / "checkpoints" / "step-00000006").is_dir()


# -- 5 and 6. what is said matches what happens -------------------------------------------------------------------
def test_a_swapped_tokenizer_is_caught(run_copy, tmp_path, capsys):
    from lmlab.data.tokenizer import train_char

    train_char(["abc"]).save(run_copy / "tokenizer.json")
    assert_one_line_error(run_cli(["sample", str(run_copy), "--max-new-tokens", "2"], capsys), "tokenizer")


@pytest.fixture(scope="module")
def mt(tmp_path_factory, en_fr) -> Path:
    """A translation run (one step is enough: these tests are about what is refused)."""
    from lmlab.api import train

    run = tmp_path_factory.mktemp("mt") / "mt"
    train(en_fr, "seq2seq-tiny", out=run, max_steps=1, eval_every=0, progress=False, track="none", sample_tokens=0)
    return run


def test_chat_on_a_translation_run_is_refused_before_the_first_line(mt, capsys):
    assert_one_line_error(run_cli(["chat", str(mt)], capsys), "translat")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["translate", "{mt}", "hello", "--max-new-tokens", "-3"], "--max-new-tokens"),
        (["translate", "{mt}", "hello", "--length-penalty", "nan"], "--length-penalty"),
        (["eval", "{mt}", "--limit", "-1"], "--limit"),
    ],
)
def test_bad_values_are_refused(argv, fragment, mt, capsys):
    assert_one_line_error(run_cli([a.replace("{mt}", str(mt)) for a in argv], capsys), fragment)


def test_tokens_per_step_that_cannot_be_met(shakespeare_char, tmp_path, capsys):
    argv = ["train", str(shakespeare_char), "tiny", "--out", str(tmp_path / "r"), *FAST]
    assert_one_line_error(run_cli([*argv, "--train.tokens-per-step", "1000"], capsys), "--train.tokens-per-step")
    assert not (tmp_path / "r").exists()


def test_a_utf16_file_and_a_one_line_5mb_file(tmp_path, capsys):
    u16 = tmp_path / "u16.txt"
    u16.write_text(TEXT, encoding="utf-16")
    assert_one_line_error(run_cli(["prepare", str(u16), "--out", str(tmp_path / "a")], capsys), "utf-16")
    assert run_cli(["prepare", str(u16), "--out", str(tmp_path / "a"), "--encoding", "utf-16"], capsys).code == 0
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["encoding"] == "utf-16" and meta["sources"][0]["path"] == str(u16.resolve())
    assert meta["sources"][0]["sha256"] == hashlib.sha256(u16.read_bytes()).hexdigest()
    assert not list((tmp_path / "a").glob(".*"))  # the UTF-8 copy made to cut the file is gone
    le = tmp_path / "le.txt"
    le.write_bytes(TEXT.encode("utf-16-le"))  # no byte-order mark
    assert_one_line_error(run_cli(["prepare", str(le), "--out", str(tmp_path / "c")], capsys), "--encoding utf-16")
    one = tmp_path / "one.txt"
    one.write_text("abcdefghij " * 500_000, encoding="utf-8")  # 5.5 MB, no newline at all
    code, _, err = run_cli(["prepare", str(one), "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    assert meta["splits"]["val"]["tokens"] > 0 and meta["splits"]["train"]["tokens"] > 0


# -- 8. the Python API -------------------------------------------------------------------------------------------
def test_verbs_are_not_shadowed_by_subpackages():
    import pkgutil

    import lmlab

    subpackages = {m.name for m in pkgutil.iter_modules(lmlab.__path__)}
    assert not subpackages & set(lmlab._EXPORTS), subpackages & set(lmlab._EXPORTS)
    lmlab.load, lmlab.plot, lmlab.Trainer  # noqa: B018  (touching them imported their modules)
    import lmlab.api

    assert lmlab.train is lmlab.api.train and lmlab.plot is lmlab.api.plot and callable(lmlab.load)


def test_subpackages_with_an_api_are_reached_without_importing_them():
    code = "import lmlab; print(lmlab.scaling.fit.__module__, lmlab.rag.Index.__name__, 'scaling' in dir(lmlab))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["lmlab.scaling", "Index", "True"]
    import lmlab

    with pytest.raises(AttributeError, match="no attribute 'scalingz'"):
        lmlab.scalingz  # noqa: B018


def test_api_arguments_are_checked_with_a_message_that_names_them(small, shakespeare_char, base, tmp_path):
    import lmlab

    with pytest.raises((LmlabError, TypeError, ValueError), match="vocab_size"):
        lmlab.prepare(str(small), out=str(tmp_path / "a"), tokenizer="bpe", vocab_size="big", quiet=True)
    with pytest.raises((LmlabError, TypeError, ValueError), match=r"n_layerz.*did you mean.*n_layer"):
        lmlab.train(shakespeare_char, "tiny", out=tmp_path / "r", model={"n_layerz": 1}, max_steps=1)
    with pytest.raises((LmlabError, TypeError, ValueError), match="gpu9"):
        lmlab.load(base, device="gpu9")
    assert not (tmp_path / "a").exists() and not (tmp_path / "r").exists()
