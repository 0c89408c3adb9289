"""`lmlab serve RUN [RUN ...]`: an OpenAI-compatible HTTP API and a chat page (``lmlab.serving``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import tyro

from lmlab.cli import parse


@dataclass
class ServeConfig:
    """Serve runs over HTTP in the OpenAI API's shape (/v1/models, /v1/completions, /v1/chat/completions, with
    streaming), with continuous batching, Prometheus /metrics and a chat page at /. Point the openai client at
    http://HOST:PORT/v1, or a browser at http://HOST:PORT/."""

    runs: tyro.conf.Positional[tuple[str, ...]]  # run directories; the model names are their directory names
    host: str = "127.0.0.1"  # address to listen on (0.0.0.0: every interface; give --api-key then)
    port: int = 8000  # port to listen on (0: any free one)
    api_key: str | None = None  # require Authorization: Bearer KEY on the API (default: $LMLAB_API_KEY, if set)
    name: tuple[str, ...] = ()  # model names, one per run, instead of the directory names
    max_batch: int = 16  # most requests decoded together per model (the KV cache is allocated for this many)
    max_queue: int = 64  # most requests waiting for a slot; more get 429 with Retry-After
    checkpoint: str | None = None  # best, latest or step-N; default best, else latest
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "warning"  # uvicorn's log (info: access log)


def main(argv: list[str]) -> None:
    from lmlab.api import serve

    cfg = parse(ServeConfig, args=argv, prog="lmlab serve", description=ServeConfig.__doc__)
    serve(
        list(cfg.runs), host=cfg.host, port=cfg.port, api_key=cfg.api_key or os.environ.get("LMLAB_API_KEY") or None,
        names=cfg.name, max_batch=cfg.max_batch, max_queue=cfg.max_queue, checkpoint=cfg.checkpoint,
        device=cfg.device, log_level=cfg.log_level,
    )  # fmt: skip
