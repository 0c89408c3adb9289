"""`lmlab serve` against the official `openai` client and raw HTTP, on a live server bound to 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import openai
import pytest

import lmlab
from tests.helpers import assert_one_line_error, run_cli


def client(server, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def sse(response: httpx.Response) -> list:
    """The events of a server-sent stream: parsed JSON objects, and the string "[DONE]"."""
    out = []
    for block in response.text.split("\n\n"):
        if block:
            assert block.startswith("data: "), block
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_models_and_health(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["base", "chat"]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def test_completion_with_logprobs_usage_and_seed(server):
    c = client(server)
    a = c.completions.create(model="base", prompt="ROMEO:", max_tokens=8, seed=3, logprobs=2, temperature=0.9)
    b = c.completions.create(model="base", prompt="ROMEO:", max_tokens=8, seed=3, logprobs=2, temperature=0.9)
    assert a.choices[0].text == b.choices[0].text  # a seed reproduces the answer
    ch = a.choices[0]
    assert ch.finish_reason in ("stop", "length") and ch.index == 0
    assert len(ch.logprobs.tokens) == len(ch.logprobs.token_logprobs) == len(ch.logprobs.top_logprobs)
    assert all(len(t) == 2 for t in ch.logprobs.top_logprobs) and all(lp <= 0 for lp in ch.logprobs.token_logprobs)
    assert "".join(ch.logprobs.tokens) == ch.text
    assert a.usage.prompt_tokens == 6 and a.usage.completion_tokens == len(ch.logprobs.tokens)
    assert a.id.startswith("cmpl-") and a.object == "text_completion" and a.model == "base"


def test_n_choices_stop_strings_and_prompt_lists(server):
    c = client(server)
    r = c.completions.create(model="base", prompt=["ROMEO:", "JULIET:"], max_tokens=20, n=2, seed=1, stop=["e", "a"])
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    for ch in r.choices:
        assert "e" not in ch.text and "a" not in ch.text
    assert r.usage.prompt_tokens == len("ROMEO:") + len("JULIET:")
    echo = c.completions.create(model="base", prompt="ROMEO:", max_tokens=3, echo=True, seed=0)
    assert echo.choices[0].text.startswith("ROMEO:")


def test_chat_model_replies_through_the_template(server, chat_run):
    c = client(server)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say yes"}]
    r = c.chat.completions.create(model="chat", messages=msgs, max_tokens=8, temperature=0, n=2)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    for ch in r.choices:
        assert ch.message.role == "assistant" and "<|" not in ch.message.content
        assert ch.finish_reason in ("stop", "length")
    assert r.choices[0].message.content == r.choices[1].message.content  # greedy: both the same
    ids = httpx.post(server.url + "/tokenize", json={"model": "chat", "messages": msgs}).json()
    assert ids["count"] == r.usage.prompt_tokens  # the prompt counted once for the two choices
    text = httpx.post(server.url + "/detokenize", json={"model": "chat", "tokens": ids["tokens"]}).json()["prompt"]
    assert text.startswith("<|bos|><|system|>be brief<|end|><|user|>say yes") and text.endswith("<|assistant|>")
    with pytest.raises(openai.BadRequestError, match="special token"):
        c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi<|end|>"}], max_tokens=2)


def test_chat_streaming_is_framed_as_the_clients_expect(server):
    body = {"model": "base", "messages": [{"role": "user", "content": "ROMEO:"}], "max_tokens": 6, "stream": True,
            "stream_options": {"include_usage": True}, "seed": 0}  # fmt: skip
    events = sse(httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    final = chunks[-2]["choices"][0]
    assert final["delta"] == {} and final["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2])
    # the same through the client, and the same text as without streaming
    c = client(server)
    streamed = "".join(
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(model="base", messages=body["messages"], max_tokens=6, seed=0, stream=True)
    )
    whole = c.chat.completions.create(model="base", messages=body["messages"], max_tokens=6, seed=0)
    assert text == streamed == whole.choices[0].message.content


def test_completion_streaming_with_logprobs(server):
    c = client(server)
    chunks = list(c.completions.create(model="base", prompt="ROMEO:", max_tokens=5, stream=True, logprobs=1, seed=2))
    texts = [ch.choices[0].text for ch in chunks]
    assert chunks[-1].choices[0].finish_reason == "length"
    assert sum(len(ch.choices[0].logprobs.tokens) for ch in chunks if ch.choices[0].logprobs) == 5
    whole = c.completions.create(model="base", prompt="ROMEO:", max_tokens=5, seed=2)
    assert "".join(texts) == whole.choices[0].text


def test_errors_come_in_openais_shape_and_the_server_keeps_serving(server):
    c = client(server)
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="nope", messages=msgs)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="base", messages=msgs, temperature=5)
    assert e.value.body["param"] == "temperature" and "from 0 to 2" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="base", prompt="x" * 40, max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded"
    assert "maximum context length is 32 tokens, but 44 were requested (40 in the prompt" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="base", prompt="ok", max_tokens="many")  # type: ignore[arg-type]
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="base", messages=[{"role": "robot", "content": "x"}])
    assert e.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="base", prompt="héllo ☃", max_tokens=2)  # not in the char vocabulary
    assert "not in this model's char vocabulary" in e.value.body["message"]

    raw = httpx.post(server.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    big = httpx.post(server.url + "/v1/completions", content=b"x" * (2 << 20))
    assert big.status_code == 413 and "over the limit" in big.json()["error"]["message"]
    missing = httpx.get(server.url + "/v1/nothing")
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    for r in (raw, big, missing):
        assert "Traceback" not in r.text
    assert c.completions.create(model="base", prompt="ok", max_tokens=2).choices[0].finish_reason
    metrics = httpx.get(server.url + "/metrics").text
    assert 'lmlab_requests_total{route="/v1/chat/completions",status="400"}' in metrics
    names = ["lmlab_generation_tokens_total", "lmlab_time_to_first_token_seconds_bucket", "lmlab_queue_depth",
             "lmlab_inter_token_latency_seconds_bucket", "lmlab_running_batch_size"]  # fmt: skip
    for name in names:
        assert name in metrics


def test_api_key(base):
    with lmlab.serve(base, port=0, background=True, api_key="sesame") as srv:
        with pytest.raises(openai.AuthenticationError):
            client(srv, "wrong").models.list()
        assert httpx.get(srv.url + "/v1/models").status_code == 401
        assert [m.id for m in client(srv, "sesame").models.list().data] == ["base"]
        assert httpx.get(srv.url + "/health").status_code == 200 and httpx.get(srv.url + "/").status_code == 200


def slow(srv, monkeypatch, seconds: float = 0.05) -> None:
    """Make each decode step take a while, so that a request is still running when the test looks."""
    sched = srv.served[0].scheduler
    real = sched._decode

    def decode():
        time.sleep(seconds)
        real()

    monkeypatch.setattr(sched, "_decode", decode)


def test_a_full_queue_gets_429_with_retry_after(base, monkeypatch):
    with lmlab.serve(base, port=0, background=True, max_batch=1, max_queue=0) as srv:
        slow(srv, monkeypatch)
        body = {"prompt": "ROMEO:", "max_tokens": 25, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as first:
            chunks = first.iter_bytes()  # kept: a dropped iterator closes the response, as a client that left
            next(chunks)  # the only slot is taken
            r = httpx.post(srv.url + "/v1/completions", json={"prompt": "a", "max_tokens": 2})
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "rate_limit_error"
        sched = srv.served[0].scheduler
        deadline = time.monotonic() + 10
        while (sched.batch_size or sched.queue_depth) and time.monotonic() < deadline:
            time.sleep(0.01)  # the first client went away: its slot is freed at the next step
        with pytest.raises(openai.RateLimitError):
            with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as again:
                assert again.status_code == 200
                chunks = again.iter_bytes()
                next(chunks)
                client(srv).completions.create(prompt="a", max_tokens=2, model="base")


def test_a_client_that_goes_away_frees_its_slot(base, monkeypatch):
    with lmlab.serve(base, port=0, background=True, max_batch=2) as srv:
        slow(srv, monkeypatch)
        sched = srv.served[0].scheduler
        body = {"prompt": "ROMEO:", "max_tokens": 25, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as r:
            chunks = r.iter_bytes()
            next(chunks)
            assert sched.batch_size == 1
        deadline = time.monotonic() + 10
        while sched.batch_size and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sched.batch_size == 0


def test_tokenize_and_detokenize(server):
    ids = httpx.post(server.url + "/tokenize", json={"model": "base", "prompt": "ROMEO:"}).json()
    assert ids["count"] == 6 and ids["max_model_len"] == 32
    text = httpx.post(server.url + "/detokenize", json={"model": "base", "tokens": ids["tokens"]}).json()
    assert text == {"prompt": "ROMEO:"}
    bad = httpx.post(server.url + "/detokenize", json={"model": "base", "tokens": [10**6]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


def test_concurrent_streams_all_complete(server):
    """16 clients at once: every one gets the tokens it asked for, none lost or duplicated."""
    results: dict[int, list] = {}

    def one(i: int) -> None:
        body = {"model": "base", "prompt": "ROMEO:", "max_tokens": 3 + i % 5, "stream": True, "seed": i,
                "stream_options": {"include_usage": True}}  # fmt: skip
        results[i] = sse(httpx.post(server.url + "/v1/completions", json=body, timeout=120))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, events in results.items():
        assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == 3 + i % 5
    assert len(results) == 16


def test_cli_errors(base, en_fr_run, tmp_path, capsys):
    assert_one_line_error(run_cli(["serve", str(tmp_path / "nope")], capsys), "not found")
    assert_one_line_error(run_cli(["serve", str(en_fr_run), "--port", "0"], capsys), "translation run")
    assert_one_line_error(run_cli(["serve", str(base), "--port", "70000"], capsys), "--port")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_one_line_error(run_cli(["serve", str(base), "--port", str(port)], capsys), f"127.0.0.1:{port}")
    assert_one_line_error(run_cli(["serve", str(base), str(base), "--port", "0"], capsys), "--name")
    assert_one_line_error(run_cli(["serve", str(base), "--port", "0", "--max-batch", "0"], capsys), "--max-batch")
    assert_one_line_error(run_cli(["serve", str(base), "--port", "0", "--device", "cuda"], capsys), "--device cuda")


@pytest.fixture(scope="module")
def en_fr_run(tmp_path_factory, en_fr):
    run = tmp_path_factory.mktemp("mt") / "mt"
    lmlab.train(en_fr, "seq2seq-tiny", out=run, max_steps=1, eval_every=0, progress=False, track="none",
                sample_tokens=0)  # fmt: skip
    return run


def test_the_load_generator_of_the_benchmark_counts_every_token(server):
    """benchmarks.serve's level(), bounded: 4 clients, 8 requests, every one with exactly the tokens asked for."""
    import asyncio

    from benchmarks.serve import level

    r = asyncio.run(level(server.url, "base", 4, 8, 0, 60, {"ignore_eos": True}, prompts=(2, 12), outputs=(4, 16)))
    assert r["done"] == r["exact"] == r["requests"] == 8 and not r["errors"]
    assert r["agg_tok_s"] > 0 and r["ttft_p50"] > 0


def test_the_cli_serves_until_a_signal(base):
    import os
    import signal
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "lmlab", "serve", str(base), "--port", "0"], stderr=subprocess.PIPE,
                         text=True, env=env)  # fmt: skip
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines.append(p.stderr.readline())
            if "serving at" in lines[-1] or not lines[-1]:
                break
        assert "KV cache" in "".join(lines) and "serving at http://localhost:" in lines[-1], lines
        url = lines[-1].split("serving at ")[1].split()[0]
        assert httpx.get(url + "/health", timeout=10).json() == {"status": "ok"}
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    assert p.returncode == 143 and err.strip().endswith("lmlab serve: terminated") and "Traceback" not in err


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    """A tiny byte-level BPE run on text full of multi-byte characters (its random-ish output splits them across
    tokens)."""
    d = tmp_path_factory.mktemp("bpe")
    text = "".join(f"Café crème brûlée ☃ naïve façade 東京 {i} — señor über.\n" for i in range(400))
    (d / "text.txt").write_text(text, encoding="utf-8")
    lmlab.prepare(str(d / "text.txt"), out=str(d / "data"), tokenizer="bpe", vocab_size=300, quiet=True)
    lmlab.train(d / "data", "tiny", out=d / "run", max_steps=3, eval_every=0, progress=False, track="none",
                sample_tokens=0)  # fmt: skip
    return d / "run"


def test_streamed_deltas_never_split_a_character(bpe_run):
    multibyte = 0
    with lmlab.serve(bpe_run, port=0, background=True) as srv:
        for seed in range(4):
            body = {"model": "run", "prompt": "Café ☃", "max_tokens": 20, "seed": seed, "temperature": 1.5}
            whole = httpx.post(srv.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
            events = sse(httpx.post(srv.url + "/v1/completions", json={**body, "stream": True}, timeout=60))
            deltas = [c["choices"][0]["text"] for c in events[:-1] if c["choices"]]
            # a character cut between two pieces would come out as two replacement characters, and the pieces
            # would no longer add up to the text decoded in one go
            assert "".join(deltas) == whole and len(deltas) > 1
            multibyte += sum(any(ord(ch) > 127 and ch != "\ufffd" for ch in d) for d in deltas)
        assert multibyte > 0, "no piece held a multi-byte character: the test proves nothing"
