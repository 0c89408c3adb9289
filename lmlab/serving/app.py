"""The HTTP server: OpenAI's API shape over the continuous-batching scheduler, plus a chat page.

Routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with ``stream``),
``POST /tokenize``, ``POST /detokenize``, ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /`` (the chat
page). With an API key every ``/v1`` route and the tokenizer routes need ``Authorization: Bearer KEY``.

Every error reaches the client as OpenAI's ``{"error": {...}}`` object with a 4xx status that says whose fault
it is (a 500 only for a bug, its traceback in the server's log, never in the response); the server keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from lmlab.errors import LmlabError
from lmlab.generation.scheduler import Handle, QueueFull, Scheduler
from lmlab.serving import protocol
from lmlab.serving.protocol import ApiError

MAX_BODY_BYTES = 1 << 20  # larger request bodies get 413


@dataclass
class Served:
    """One model the server offers: its name (the API's ``model``), run, scheduler and prompt style."""

    name: str
    run: Any  # lmlab.runs.Run
    scheduler: Scheduler
    template: bool  # a chat model (lmlab's chat template) rather than a base model that continues text
    created: int

    @property
    def tokenizer(self):
        return self.run.tokenizer

    @property
    def context(self) -> int:
        return self.run.model.config.block_size


class Metrics:
    """The Prometheus metrics of one app (its own registry, so several apps in one process do not mix)."""

    def __init__(self, served: list[Served]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("lmlab_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.tokens_in = Counter("lmlab_prompt_tokens", "prompt tokens received", ["model"], registry=r)
        self.tokens_out = Counter("lmlab_generation_tokens", "tokens generated", ["model"], registry=r)
        ttft_buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        itl_buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
        self.ttft = Histogram("lmlab_time_to_first_token_seconds", "time from request to first token", ["model"],
                              buckets=ttft_buckets, registry=r)  # fmt: skip
        self.itl = Histogram("lmlab_inter_token_latency_seconds", "time between a request's tokens", ["model"],
                             buckets=itl_buckets, registry=r)  # fmt: skip
        queue = Gauge("lmlab_queue_depth", "requests waiting for a slot", ["model"], registry=r)
        batch = Gauge("lmlab_running_batch_size", "requests in the decode batch", ["model"], registry=r)
        for s in served:
            queue.labels(s.name).set_function(lambda s=s: s.scheduler.queue_depth)
            batch.labels(s.name).set_function(lambda s=s: s.scheduler.batch_size)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def create_app(served: list[Served], *, api_key: str | None = None, max_body: int = MAX_BODY_BYTES):
    """The FastAPI app serving ``served`` (their schedulers must be started)."""
    by_name = {s.name: s for s in served}
    metrics = Metrics(served)
    app = FastAPI(title="lmlab", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served, app.state.metrics = by_name, metrics

    def error_response(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return error_response(ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", code=code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e):
        return error_response(ApiError(400, str(e)))

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):
        traceback.print_exception(e, file=sys.stderr)
        return error_response(ApiError(500, "internal server error (the server's log has the details)",
                                       type="server_error"))  # fmt: skip

    app.add_middleware(_Guard, api_key=api_key, max_body=max_body, metrics=metrics)

    async def read_json(request: Request) -> dict:
        raw = await request.body()
        if len(raw) > max_body:
            raise ApiError(413, f"request body of {len(raw)} bytes is over the limit of {max_body}",
                           code="body_too_large")  # fmt: skip
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        return body

    def pick(body: dict) -> Served:
        name = body.get("model")
        if name is None and len(by_name) == 1:
            return served[0]
        if not isinstance(name, str):
            raise ApiError(400, "model is required (GET /v1/models lists them)", param="model")
        if name not in by_name:
            raise ApiError(404, f"the model {name!r} does not exist; this server has {', '.join(by_name)}",
                           param="model", code="model_not_found")  # fmt: skip
        return by_name[name]

    # -- routes -------------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        failed = [s.name for s in served if s.scheduler.failure is not None]
        if failed:
            return JSONResponse({"status": "error", "failed": failed}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(resources.files("lmlab.serving").joinpath("chat.html").read_text(encoding="utf-8"))

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(s) for s in served]}

    @app.get("/v1/models/{name}")
    async def model(name: str):
        return _model_card(pick({"model": name}))

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await read_json(request)
        s = pick(body)
        ids = _chat_ids(s, protocol.messages(body)) if "messages" in body else _text_ids(s, _one_prompt(body))
        return {"tokens": ids, "count": len(ids), "max_model_len": s.context}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body = await read_json(request)
        s = pick(body)
        ids = body.get("tokens")
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise ApiError(400, "tokens must be a list of token ids", param="tokens")
        bad = [t for t in ids if not 0 <= t < s.tokenizer.vocab_size]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary of {s.tokenizer.vocab_size}",
                           param="tokens")  # fmt: skip
        return {"prompt": s.tokenizer.decode(ids, skip_special_tokens=False)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_json(request)
        s = pick(body)
        opts = protocol.sampling(body, s.tokenizer.vocab_size, chat=False)
        echo = protocol._boolean(body, "echo")
        prompts = [_text_ids(s, p) if isinstance(p, str) else _check_ids(s, p) for p in protocol.prompts(body)]
        for ids in prompts:
            _check_fits(s, ids, opts.max_tokens)
        jobs = [(ids, opts.max_tokens, ()) for ids in prompts]
        return await _run(request, s, opts, jobs, chat=False, echo=echo)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_json(request)
        s = pick(body)
        opts = protocol.sampling(body, s.tokenizer.vocab_size, chat=True)
        ids = _chat_ids(s, protocol.messages(body))
        max_new = opts.max_tokens if opts.max_tokens is not None else s.context - len(ids)
        _check_fits(s, ids, max_new)
        stops = (s.tokenizer.token_to_id("<|end|>"),) if s.template else ()
        return await _run(request, s, opts, [(ids, max_new, stops)], chat=True, echo=False)

    # -- generation -----------------------------------------------------------------------------------------
    async def _run(request, s: Served, opts, jobs, *, chat: bool, echo: bool):
        loop = asyncio.get_running_loop()
        sink: asyncio.Queue = asyncio.Queue()  # every choice's events, as (choice index, event)
        handles: list[Handle] = []
        try:
            for ids, max_new, stops in jobs:
                for _ in range(opts.n):
                    i = len(handles)
                    seed = None if opts.seed is None else opts.seed + i
                    handles.append(s.scheduler.submit(
                        ids, opts.request(max_new, seed), stop_token_ids=stops, loop=loop, sink=sink, tag=i,
                        ignore_eos=opts.ignore_eos,
                    ))  # fmt: skip
        except QueueFull as e:
            for h in handles:
                h.cancel()
            raise ApiError(429, str(e), code="queue_full", type="rate_limit_error",
                           headers={"Retry-After": "1"}) from None  # fmt: skip
        except LmlabError as e:
            for h in handles:
                h.cancel()
            raise ApiError(400, str(e), param=str(e).split()[0], code="invalid_value") from None
        metrics.tokens_in.labels(s.name).inc(sum(len(ids) for ids, _, _ in jobs))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        base = {"id": rid, "created": created, "model": s.name}
        events = _merged(sink, handles, s)
        if opts.stream:
            return StreamingResponse(
                _sse(events, handles, base, s, opts, jobs, chat=chat, echo=echo), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )  # fmt: skip
        watcher = asyncio.create_task(_watch_disconnect(request, handles))
        try:
            choices = [_Choice(s.tokenizer, opts.logprobs) for _ in handles]
            async for batch in events:
                for i, ev in batch:
                    choices[i].add(ev)
        finally:
            watcher.cancel()
            for h in handles:
                h.cancel()
        out_tokens = sum(len(c.tokens) for c in choices)
        prompt_tokens = sum(len(ids) for ids, _, _ in jobs)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": out_tokens,
                 "total_tokens": prompt_tokens + out_tokens}  # fmt: skip
        if chat:
            body = {**base, "object": "chat.completion", "choices": [
                {"index": i, "message": {"role": "assistant", "content": c.text},
                 "logprobs": c.chat_logprobs() if opts.logprobs else None, "finish_reason": c.finish_reason}
                for i, c in enumerate(choices)]}  # fmt: skip
        else:
            body = {**base, "object": "text_completion", "choices": []}
            for i, c in enumerate(choices):
                ids = jobs[i // opts.n][0]
                prefix = s.tokenizer.decode(ids, skip_special_tokens=True) if echo else ""
                body["choices"].append({"index": i, "text": prefix + c.text, "finish_reason": c.finish_reason,
                                        "logprobs": c.completion_logprobs() if opts.logprobs else None})  # fmt: skip
        body["usage"] = usage
        return body

    async def _merged(sink: asyncio.Queue, handles: list[Handle], s: Served) -> AsyncIterator[list[tuple[int, Any]]]:
        """The choices' events as they come, in batches: everything that arrived since the last look (a busy
        server sends one chunk for several tokens rather than falling behind); metrics on the way."""
        live = len(handles)
        last = [h.submitted for h in handles]
        first = [True] * len(handles)
        ttft, itl, out = metrics.ttft.labels(s.name), metrics.itl.labels(s.name), metrics.tokens_out.labels(s.name)
        while live:
            items = [await sink.get()]
            while not sink.empty():
                items.append(sink.get_nowait())
            now = time.perf_counter()
            batch = []
            for i, ev in items:
                if isinstance(ev, BaseException):  # the scheduler failed: the response fails with it
                    raise ev
                if ev.finish_reason is not None:
                    live -= 1
                if ev.finish_reason == "cancelled":
                    continue
                (ttft if first[i] else itl).observe(now - last[i])
                first[i], last[i] = False, now
                batch.append((i, ev))
            if batch:
                out.inc(len(batch))
                yield batch

    async def _sse(events, handles, base, s: Served, opts, jobs, *, chat: bool, echo: bool):
        obj = "chat.completion.chunk" if chat else "text_completion"
        counts = [0] * len(handles)
        try:
            if chat:
                for i in range(len(handles)):
                    yield _data({**base, "object": obj, "choices": [
                        {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None}]})  # fmt: skip
            elif echo:
                for i in range(len(handles)):
                    text = s.tokenizer.decode(jobs[i // opts.n][0], skip_special_tokens=True)
                    yield _data({**base, "object": obj, "choices": [
                        {"index": i, "text": text, "logprobs": None, "finish_reason": None}]})  # fmt: skip
            async for batch in events:
                by_choice: dict[int, list] = {}
                for i, ev in batch:
                    by_choice.setdefault(i, []).append(ev)
                for i, evs in by_choice.items():
                    counts[i] += len(evs)
                    c = _Choice(s.tokenizer, opts.logprobs)
                    for ev in evs:
                        c.add(ev)
                    lp = None
                    if opts.logprobs and c.pieces:  # not for a stop token: it is not part of the text
                        lp = c.chat_logprobs() if chat else c.completion_logprobs()
                    if c.text or lp:
                        if chat:
                            choice = {"index": i, "delta": {"content": c.text}, "logprobs": lp, "finish_reason": None}
                        else:
                            choice = {"index": i, "text": c.text, "logprobs": lp, "finish_reason": None}
                        yield _data({**base, "object": obj, "choices": [choice]})
                    if c.finish_reason is not None:
                        end = {"index": i, "logprobs": None, "finish_reason": c.finish_reason}
                        end.update({"delta": {}} if chat else {"text": ""})
                        yield _data({**base, "object": obj, "choices": [end]})
            if opts.include_usage:
                prompt_tokens = sum(len(ids) for ids, _, _ in jobs)
                out = sum(counts)
                yield _data(
                    {
                        **base,
                        "object": obj,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": out,
                            "total_tokens": prompt_tokens + out,
                        },
                    }
                )
            yield b"data: [DONE]\n\n"
        except LmlabError as e:  # the scheduler failed mid-stream: say so in the stream, then end it
            yield _data(ApiError(500, str(e), type="server_error").body())
        finally:
            for h in handles:
                h.cancel()

    return app


class _Guard:
    """The API key and body-size checks, and the request counter by route and status: a plain ASGI middleware
    (Starlette's BaseHTTPMiddleware wraps streaming responses in a way that cut long streams short when another
    request arrived, and costs a task per chunk)."""

    def __init__(self, app, *, api_key: str | None, max_body: int, metrics: Metrics) -> None:
        self.app, self.key, self.max_body, self.metrics = app, api_key, max_body, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in _ROUTES else "other"
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        status = {"code": 500}

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            error = None
            if self.key is not None and (path.startswith("/v1") or path in ("/tokenize", "/detokenize")):
                given = headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {self.key}".encode()):
                    error = ApiError(401, "invalid or missing API key: send Authorization: Bearer KEY",
                                     code="invalid_api_key")  # fmt: skip
            declared = headers.get("content-length", "")
            if error is None and declared.isdigit() and int(declared) > self.max_body:
                error = ApiError(413, f"request body of {declared} bytes is over the limit of {self.max_body}",
                                 code="body_too_large")  # fmt: skip
            if error is not None:
                await JSONResponse(error.body(), status_code=error.status, headers=error.headers)(
                    scope, receive, counted
                )
            else:
                await self.app(scope, receive, counted)
        finally:
            self.metrics.requests.labels(route, str(status["code"])).inc()


_ROUTES = {"/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/tokenize",
           "/detokenize"}  # fmt: skip


def _data(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


async def _watch_disconnect(request, handles: list[Handle]) -> None:
    """Cancel a non-streaming request's generations when its client goes away."""
    while True:
        await asyncio.sleep(0.05)
        if await request.is_disconnected():
            for h in handles:
                h.cancel()
            return


def _model_card(s: Served) -> dict:
    return {"id": s.name, "object": "model", "created": s.created, "owned_by": "lmlab", "max_model_len": s.context,
            "chat_template": s.template}  # fmt: skip


def _one_prompt(body: dict) -> str:
    p = body.get("prompt")
    if not isinstance(p, str):
        raise ApiError(400, "prompt must be a string (or give messages)", param="prompt")
    return p


def _text_ids(s: Served, text: str) -> list[int]:
    from lmlab.generation.text import encode_prompt

    try:
        return encode_prompt(s.tokenizer, text)
    except LmlabError as e:
        raise ApiError(400, str(e), param="prompt") from None


def _chat_ids(s: Served, messages: list[dict[str, str]]) -> list[int]:
    """A chat model's prompt through the chat template; a base model's: the messages' texts as one text."""
    from lmlab.data.chat import render
    from lmlab.generation.text import encode_prompt

    try:
        if s.template:
            return render(s.tokenizer, messages, generation_prompt=True).ids
        return encode_prompt(s.tokenizer, "".join(m["content"] for m in messages))
    except LmlabError as e:
        raise ApiError(400, str(e), param="messages") from None


def _check_ids(s: Served, ids: list[int]) -> list[int]:
    bad = [t for t in ids if not 0 <= t < s.tokenizer.vocab_size]
    if bad:
        raise ApiError(400, f"prompt: token id {bad[0]} is outside the vocabulary of {s.tokenizer.vocab_size}",
                       param="prompt")  # fmt: skip
    return ids


def _check_fits(s: Served, ids: list[int], max_new: int | None) -> None:
    want = len(ids) + (max_new or 0)
    if len(ids) >= s.context or want > s.context:
        raise ApiError(
            400,
            f"this model's maximum context length is {s.context} tokens, but {want} were requested ({len(ids)} in "
            f"the prompt, {max_new or 0} for the completion); shorten the prompt or lower max_tokens",
            param="messages" if max_new is None else "max_tokens",
            code="context_length_exceeded",
        )


class _Choice:
    """One choice's tokens, text and log-probabilities, as its events come."""

    def __init__(self, tokenizer, logprobs: bool) -> None:
        self._tok = tokenizer
        self._want_logprobs = logprobs  # each token's own text is decoded only when log-probabilities are asked
        self.tokens: list[int] = []
        self.text = ""
        self.logprobs: list[float | None] = []
        self.tops: list[list[tuple[int, float]] | None] = []
        self.pieces: list[str] = []
        self.finish_reason: str | None = None

    def add(self, ev) -> None:
        self.tokens.append(ev.token)
        self.text += ev.text
        if ev.finish_reason is not None:
            self.finish_reason = ev.finish_reason
        if not self._want_logprobs or isinstance(ev.stop, int):
            return  # a stop token is not part of the text, nor of its log-probabilities
        self.logprobs.append(ev.logprob)
        self.tops.append(ev.top_logprobs)
        self.pieces.append(self._piece(ev.token))

    def _piece(self, tid: int) -> str:
        return self._tok.decode([tid], skip_special_tokens=False)

    def chat_logprobs(self) -> dict:
        content = []
        for piece, lp, tops in zip(self.pieces, self.logprobs, self.tops):
            content.append({
                "token": piece, "logprob": lp, "bytes": list(piece.encode()),
                "top_logprobs": [{"token": self._piece(t), "logprob": v, "bytes": list(self._piece(t).encode())}
                                 for t, v in (tops or [])],
            })  # fmt: skip
        return {"content": content}

    def completion_logprobs(self) -> dict:
        offsets, at = [], 0
        for piece in self.pieces:
            offsets.append(at)
            at += len(piece)
        return {
            "tokens": self.pieces,
            "token_logprobs": self.logprobs,
            "top_logprobs": [{self._piece(t): v for t, v in (tops or [])} for tops in self.tops],
            "text_offset": offsets,
        }
