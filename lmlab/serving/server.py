"""Loading runs into schedulers and running the app under uvicorn: in the foreground (``lmlab serve``) or on a
background thread (``Server``: tests, notebooks, benchmarks)."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError
from lmlab.serving.app import Served, create_app


def load_served(
    runs: Sequence[str | os.PathLike],
    *,
    names: Sequence[str] = (),
    max_batch: int = 16,
    max_queue: int = 64,
    device: str = "auto",
    checkpoint: str | None = None,
) -> list[Served]:
    """Load each run and start its scheduler. Model names are the run directories' names unless ``names``."""
    from lmlab import runs as runlib
    from lmlab.generation.chat import uses_template
    from lmlab.generation.scheduler import Scheduler
    from lmlab.generation.text import banned_special_ids, detokenizer_for
    from lmlab.runtime import pick_device

    if isinstance(runs, str | os.PathLike) or not runs:
        raise LmlabError("give at least one run directory to serve")
    names = list(names)
    if names and len(names) != len(runs):
        raise LmlabError(f"--name: give one name per run ({len(runs)}), got {len(names)}")
    names = names or [Path(r).resolve().name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LmlabError(f"two runs would be served as {dupes[0]!r}: give each a name with --name")
    for option, value, low in (("--max-batch", max_batch, 1), ("--max-queue", max_queue, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise LmlabError(f"{option} must be an integer >= {low}, got {value!r}")
    dev = pick_device(device, "--device")
    served: list[Served] = []
    try:
        for name, path in zip(names, runs):
            cfg = runlib.read_config(path)
            arch = cfg["model"].get("arch")
            if arch != "gpt":
                what = "a translation" if arch == "seq2seq" else f"an {arch}" if arch in ("rnn", "lstm") else arch
                raise LmlabError(f"{path} is {what} run; lmlab serve serves GPT language models (lmlab sample and "
                                 "lmlab chat talk to recurrent ones)")  # fmt: skip
            if cfg.get("head"):
                raise LmlabError(f"{path} is a classifier or reward-model run: it scores text, it does not write it "
                                 "(lmlab classify, lmlab score)")  # fmt: skip
            run = runlib.load(path, checkpoint=checkpoint, device=dev)
            if run.tokenizer is None:
                raise LmlabError(f"{path} has no tokenizer.json: a server needs it to read and write text")
            sched = Scheduler(
                run.model, max_batch=max_batch, max_queue=max_queue, eos_id=run.tokenizer.eos_id,
                detokenizer=detokenizer_for(run.tokenizer), banned_ids=banned_special_ids(run.tokenizer),
            ).start()  # fmt: skip
            served.append(Served(name, run, sched, uses_template(cfg), int(time.time())))
    except BaseException:
        for s in served:
            s.scheduler.close()
        raise
    return served


def describe(served: list[Served]) -> list[str]:
    lines = []
    for s in served:
        m = s.run.model
        kind = "chat model" if s.template else "base model (plain completion)"
        lines.append(
            f"{s.name}: {kind}, {m.num_params() / 1e6:.2f}M parameters, context {s.context}; KV cache "
            f"{s.scheduler.memory_bytes / 2**20:.1f} MiB for {s.scheduler.max_batch} slots "
            f"(+{s.scheduler.max_queue} queued)"
        )
    return lines


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Server:
    """The app under uvicorn on a background thread; ``with Server(served) as srv: srv.url``."""

    def __init__(self, served: list[Served], *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 log_level: str = "warning") -> None:  # fmt: skip
        import uvicorn

        self.served = served
        self.host, self.port = host, port  # 0: uvicorn binds a free port, read back once it started
        self.app = create_app(served, api_key=api_key)
        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level=log_level, access_log=False,
                                lifespan="off")  # fmt: skip
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> Server:
        self._thread = threading.Thread(target=self.server.run, name="lmlab-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise LmlabError(f"the server did not start on {self.url}")
            time.sleep(0.01)
        if not self.port:
            self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        for s in self.served:
            s.scheduler.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def serve_forever(
    runs: Sequence[str | os.PathLike],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    names: Sequence[str] = (),
    max_batch: int = 16,
    max_queue: int = 64,
    device: str = "auto",
    checkpoint: str | None = None,
    log_level: str = "warning",
) -> None:
    """Serve until Ctrl-C or SIGTERM (uvicorn finishes the open requests, then this returns)."""
    import uvicorn

    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise LmlabError(f"--port must be from 0 to 65535, got {port!r}")
    try:  # refuse a port in use before loading anything
        with socket.socket() as sock:
            sock.bind((host, port))
            port = port or sock.getsockname()[1]
    except OSError as e:
        raise LmlabError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    served = load_served(runs, names=names, max_batch=max_batch, max_queue=max_queue, device=device,
                         checkpoint=checkpoint)  # fmt: skip
    try:
        app = create_app(served, api_key=api_key)
        for line in describe(served):
            print(line, file=sys.stderr)
        where = f"http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}"
        print(f"serving at {where} (chat page: {where}/, API: {where}/v1){'; API key required' if api_key else ''}",
              file=sys.stderr, flush=True)  # fmt: skip
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="off")
        uvicorn.Server(config).run()
    finally:
        for s in served:
            s.scheduler.close()
