"""Fault suite of the serving path: bad requests (a table of body -> status, code and field), a batch whose
cache counters move under it, upstreams that die mid-stream or drip their answer, clients that are slow to
send (raw sockets against a real server), a client that stops reading, and SIGKILL with decisions in flight.

Everything runs on loopback with small deadlines, so each case ends in seconds; the bounds asserted on time
are generous (several times the deadline), so a slow machine does not fail them, and a missing deadline does
(without one, the cases below wait for the client's own timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import socketserver
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from openai_stub import OpenAIStub
from prometheus_client.parser import text_string_to_metric_families

from router_rl.serve.app import create_app
from router_rl.serve.router import Router
from router_rl.serve.settings import ServeSettings
from router_rl.serve.testing import ServerThread, free_port, shared_embedder, toy_artifact
from router_rl.serve.upstreams import UpstreamMap, upstream_map

MODELS = ["big", "mid", "small"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return toy_artifact(
        tmp_path_factory.mktemp("toy") / "artifact",
        MODELS,
        quality=[0.9, 0.8, 0.5],
        cost_usd=[0.01, 0.002, 0.0001],
        latency_s=[3.0, 1.0, 0.5],
    )


@pytest.fixture(scope="module")
def router(toy: Path) -> Router:
    return Router(toy, device="cpu", embedder=shared_embedder())


@pytest.fixture(scope="module")
def cached_router(toy: Path) -> Router:
    """A router whose encoder keeps an in-memory LRU of embeddings (the serving default)."""
    return Router(toy, device="cpu", encoder_backend="torch", embedding_cache_size=64)


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(models=MODELS) as s:
        yield s


@contextlib.contextmanager
def serving(router: Router, base_url: str | None, tmp_path: Path, **settings) -> Iterator[ServerThread]:
    settings.setdefault("log_db", str(tmp_path / "decisions.sqlite"))
    upstreams = upstream_map(base_url, None) if base_url else UpstreamMap()
    app = create_app(router, ServeSettings(**settings), upstreams=upstreams)
    with ServerThread(app) as server:
        server.service = app.state.service  # type: ignore[attr-defined]
        yield server


def metric(url: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------------------------------- bad requests

CHAT = '"model": "router", "messages": [{"role": "user", "content": "hi"}]'
# (path, raw body, status, error code, param): raw JSON text, so NaN, 1e400 and lone \ud800 escapes go out as a
# client would send them. None: any code / no param expected.
BAD_REQUESTS = [
    ("/v1/route", r'{"prompt": "hi \ud800"}', 400, "invalid_unicode", "prompt"),
    ("/v1/route", r'{"prompt": "\udc00 low half first\ud83d"}', 400, "invalid_unicode", "prompt"),
    ("/v1/route", r'{"messages": [{"role": "user", "content": "a\udfff"}]}', 400, "invalid_unicode", "messages.0.content"),
    (
        "/v1/route",
        r'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]}',
        400,
        "invalid_unicode",
        "messages.0.content.0.text",
    ),
    ("/v1/route", b'{"prompt": "raw surrogate \xed\xa0\x80"}', 400, "invalid_json", None),
    ("/v1/route", b'{"prompt": "latin-1 \xe9"}', 400, "invalid_json", None),
    ("/v1/route", '{"prompt": "x", "cost_weight": 1e308}', 400, "invalid_request", "cost_weight"),
    ("/v1/route", '{"prompt": "x", "cost_weight": 1e400}', 400, "invalid_number", "cost_weight"),
    ("/v1/route", '{"prompt": "x", "cost_weight": NaN}', 400, "invalid_number", "cost_weight"),
    ("/v1/route", '{"prompt": "x", "cost_weight": -1}', 400, "invalid_request", "cost_weight"),
    ("/v1/route", '{"prompt": "x", "max_cost_usd": Infinity}', 400, "invalid_number", "max_cost_usd"),
    ("/v1/route", '{"prompt": "x", "max_cost_usd": -0.5}', 400, "invalid_request", "max_cost_usd"),
    ("/v1/route", '{"prompt": "x", "latency_budget_s": -Infinity}', 400, "invalid_number", "latency_budget_s"),
    ("/v1/route", '{"prompt": "x", "cost_weight": 1' + "0" * 5000 + "}", 400, "invalid_json", None),
    ("/v1/route", "[" * 100_000 + "]" * 100_000, 400, "invalid_json", None),
    ("/v1/route", '{"prompt": "x", "messages": [{"role": "user", "content": "y"}]}', 400, None, None),
    ("/v1/chat/completions", "{" + CHAT + ', "temperature": NaN}', 400, "invalid_number", "temperature"),
    ("/v1/chat/completions", "{" + CHAT + ', "n": 1e400}', 400, "invalid_number", "n"),
    (
        "/v1/chat/completions",
        "{" + CHAT + ', "tools": [{"type": "function", "function": {"parameters": {"max": -Infinity}}}]}',
        400,
        "invalid_number",
        "tools.0.function.parameters.max",
    ),
    ("/v1/chat/completions", "{" + CHAT + r', "user": "\ud800"}', 400, "invalid_unicode", "user"),
    ("/v1/chat/completions", "{" + CHAT + r', "metadata": {"\udbff": 1}}', 400, "invalid_unicode", r"metadata.\udbff"),
    ("/v1/chat/completions", '{"model": "router-1e39", "messages": [{"role": "user", "content": "hi"}]}', 400, "invalid_cost_weight", "model"),
    ("/v1/chat/completions", '{"model": "router-1e308", "messages": [{"role": "user", "content": "hi"}]}', 400, "invalid_cost_weight", "model"),
    ("/v1/chat/completions", '{"model": "router-0.5\\n", "messages": [{"role": "user", "content": "hi"}]}', 404, "model_not_found", "model"),
    ("/v1/chat/completions", '{"model": "router\\n", "messages": [{"role": "user", "content": "hi"}]}', 404, "model_not_found", "model"),
    ("/v1/chat/completions", '{"model": "router", "messages": [{"role": "user", "content": "hi"}], "router": {"cost_weight": 2e6}}', 400, "invalid_request", "router.cost_weight"),
    ("/v1/feedback", '{"decision_id": "d", "quality": NaN}', 400, "invalid_number", "quality"),
    ("/v1/feedback", '{"decision_id": "d", "quality": 0.5, "cost_usd": 1e999}', 400, "invalid_number", "cost_usd"),
]  # fmt: skip


def test_bad_requests_get_a_4xx_that_names_the_field(
    router: Router, stub: OpenAIStub, tmp_path: Path
) -> None:
    stub.requests.clear()
    with (
        serving(router, stub.base_url, tmp_path) as server,
        httpx.Client(base_url=server.url, timeout=30) as c,
    ):
        for path, raw, status, code, param in BAD_REQUESTS:
            content = raw if isinstance(raw, bytes) else raw.encode()
            r = c.post(path, content=content, headers={"Content-Type": "application/json"})
            case = (path, raw[:80])
            assert r.status_code == status, (case, r.status_code, r.text[:300])
            error = r.json()["error"]
            assert error["message"] and error["type"], case
            if code is not None:
                assert error["code"] == code, (case, error)
            if param is not None:
                assert error["param"] == param, (case, error)
                assert error["message"].startswith(param) or param in error["message"], (case, error)
        # nothing reached the upstream: NaN and 1e400 were never forwarded as invalid JSON
        assert stub.requests == []
        # no false alarm: surrogate pairs and escaped backslashes are valid text; numbers at the bounds pass
        for body in (
            r'{"prompt": "smile \ud83d\ude00"}',
            r'{"prompt": "the escape \\ud800 written out"}',
            '{"prompt": "x", "cost_weight": 1e6, "max_cost_usd": 0, "latency_budget_s": 1e9}',
        ):
            r = c.post("/v1/route", content=body.encode(), headers={"Content-Type": "application/json"})
            assert r.status_code == 200, (body, r.text)
        r = c.post(
            "/v1/route",
            content=rb'{"prompt": "smile \ud83d\ude00", "cost_weight": 1e6}',
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 200 and r.json()["model"] == "small" and r.json()["propensity"] == 1.0
        r = c.post(
            "/v1/chat/completions", json={"model": "router-1e6", "messages": user("hi"), "temperature": 0.5}
        )
        assert r.status_code == 200 and r.headers["x-router-model"] == "small"
        assert stub.requests[-1]["json"]["temperature"] == 0.5
        assert metric(server.url, "router_rl_requests_total", status="500") == 0


# ------------------------------------------------------------------------------------------- batch counters


def test_batch_counts_cache_hits_from_its_own_lookups(
    cached_router: Router, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared LRU counters move while a batch encodes (inline cache hits on the event loop): here they
    move by 50 inside every encoder pass. The batch's hit and miss counts stay its own, and no request fails
    (a negative miss count used to fail the batch, and each request then answered 400)."""
    router = cached_router
    memory = router.embedder.memory_cache
    assert memory is not None
    encode = router.embedder.encode

    def encode_while_the_loop_hits(texts):  # what concurrent inline decisions do to the shared counter
        memory.hits += 50
        return encode(texts)

    monkeypatch.setattr(router.embedder, "encode", encode_while_the_loop_hits)
    with serving(router, None, tmp_path) as server:
        hit0 = metric(server.url, "router_rl_embedding_cache_total", result="hit")
        miss0 = metric(server.url, "router_rl_embedding_cache_total", result="miss")
        prompts = [f"fresh prompt {i} for the counters {time.time_ns()}" for i in range(6)]
        for p in prompts:
            r = httpx.post(f"{server.url}/v1/route", json={"prompt": p}, timeout=30)
            assert r.status_code == 200, r.text
        # the same prompts again in one batch, bypassing the inline path: all hits
        routed = server.service._batch([(p, {}) for p in prompts])
        assert [r.decision.model for r in routed] == ["big"] * len(prompts)
        assert metric(server.url, "router_rl_embedding_cache_total", result="miss") - miss0 == len(prompts)
        assert metric(server.url, "router_rl_embedding_cache_total", result="hit") - hit0 == len(prompts)
        assert metric(server.url, "router_rl_requests_total", endpoint="/v1/route", status="400") == 0


# ------------------------------------------------------------------------------------------- scripted upstreams


class ScriptedUpstream:
    """A raw TCP "upstream" on loopback: it reads each request (head and Content-Length body), then hands
    the socket to ``script(sock, request_json)``, which writes whatever bytes it likes and returns; the
    connection is then closed. Records every request."""

    def __init__(self, script: Callable[[socket.socket, dict], None]) -> None:
        self.script = script
        self.requests: list[dict] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock = self.request
                sock.settimeout(30)
                data = b""
                while b"\r\n\r\n" not in data:
                    more = sock.recv(65536)
                    if not more:
                        return
                    data += more
                head, _, body = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(body) < length:
                    body += sock.recv(65536)
                req = json.loads(body or b"{}")
                outer.requests.append(req)
                with contextlib.suppress(OSError):
                    outer.script(sock, req)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"


def sse_chunk(text: str) -> bytes:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


DYING_STREAMS = {
    # (what the upstream sends, then after a pause what it sends before it closes the connection)
    # the connection closes right after a complete event: HTTP-wise a normal end, but no [DONE]
    "closed_between_events": (SSE_HEAD + sse_chunk("Hello"), sse_chunk(" wor")),
    # the connection closes in the middle of an event's line
    "closed_mid_line": (SSE_HEAD + sse_chunk("Hello"), b'data: {"id": "c", "choi'),
    # chunked transfer encoding cut inside a chunk: the client library sees a payload error
    "chunked_cut": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked(sse_chunk("Hello")),
        b"400\r\ndata: {",
    ),
}


@pytest.mark.parametrize("how", sorted(DYING_STREAMS))
def test_a_stream_that_dies_before_done_ends_with_an_error_event(
    router: Router, tmp_path: Path, how: str
) -> None:
    def die(sock: socket.socket, req: dict) -> None:
        first, last = DYING_STREAMS[how]
        sock.sendall(first)
        time.sleep(0.3)  # the first event is relayed before the end (aiohttp drops data read after an error)
        sock.sendall(last)

    with ScriptedUpstream(die) as upstream, serving(router, upstream.base_url, tmp_path) as server:
        with httpx.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            json={"model": "router", "messages": user("hi"), "stream": True},
            timeout=30,
        ) as r:
            assert r.status_code == 200
            text = r.read().decode()
        events = [e for e in text.split("\n\n") if e.strip()]
        assert json.loads(events[0].strip()[5:])["choices"][0]["delta"]["content"] == "Hello"
        last = json.loads(events[-1].strip()[5:])
        assert last["error"]["code"] == "stream_error" and "big" in last["error"]["message"], last
        assert "data: [DONE]" not in [e.strip() for e in events]
        assert all(e.strip().startswith("data: {") for e in events)  # no fragment of the cut line is relayed
        assert metric(server.url, "router_rl_upstream_errors_total", model="big", kind="stream") == 1
        server.service.decision_log.flush()
        with contextlib.closing(sqlite3.connect(tmp_path / "decisions.sqlite")) as conn:
            assert conn.execute("SELECT status FROM decisions").fetchall() == [("stream_error",)]


def test_a_complete_stream_still_ends_with_done(router: Router, stub: OpenAIStub, tmp_path: Path) -> None:
    with serving(router, stub.base_url, tmp_path) as server:
        with httpx.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            json={"model": "router", "messages": user("hello there"), "stream": True},
            timeout=30,
        ) as r:
            text = r.read().decode()
        assert text.endswith("data: [DONE]\n\n") and '"error"' not in text
        assert metric(server.url, "router_rl_upstream_errors_total", model="big", kind="stream") == 0


# ------------------------------------------------------------------------------------------- deadlines


def drip(first: bytes, every_s: float = 0.2, limit_s: float = 60.0) -> Callable[[socket.socket, dict], None]:
    """A script that sends ``first``, then one byte every ``every_s`` (faster than any read timeout, so only
    a total deadline ends it) for up to ``limit_s``."""

    def script(sock: socket.socket, req: dict) -> None:
        sock.sendall(first)
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            time.sleep(every_s)
            sock.sendall(b" ")

    return script


DRIP_JSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"


@pytest.mark.parametrize(
    ("attempt_s", "request_s"),
    [(1.0, 2.5), (100.0, 1.5)],
    ids=["attempt_deadline", "request_deadline"],
)
def test_a_dripping_upstream_is_cut_at_the_deadlines(
    router: Router, tmp_path: Path, attempt_s: float, request_s: float
) -> None:
    """Non-streamed: each attempt ends at its deadline and falls back; the request ends with a 504 at its
    own deadline. Streamed: bytes already went out, so the stream ends with an error event at the deadline.
    The read timeout (2 s) never fires: a byte comes every 0.2 s."""
    settings = {
        "upstream_timeout_s": 2.0,
        "upstream_attempt_timeout_s": attempt_s,
        "request_timeout_s": request_s,
    }
    with (
        ScriptedUpstream(drip(DRIP_JSON)) as upstream,
        serving(router, upstream.base_url, tmp_path, **settings) as server,
    ):
        t0 = time.monotonic()
        r = httpx.post(
            f"{server.url}/v1/chat/completions", json={"model": "router", "messages": user("x")}, timeout=20
        )
        elapsed = time.monotonic() - t0
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded", r.text
        assert request_s - 0.5 <= elapsed <= request_s + 3.0, elapsed
        tried = [req["model"] for req in upstream.requests]
        assert tried == (["big", "mid", "small"] if attempt_s < request_s else ["big"]), tried
        assert "x-router-decision-id" in r.headers

    first = SSE_HEAD + sse_chunk("Hel")
    with (
        ScriptedUpstream(drip(first + b"data: {")) as upstream,
        serving(router, upstream.base_url, tmp_path, **settings) as server,
    ):
        t0 = time.monotonic()
        with httpx.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            json={"model": "router", "messages": user("x"), "stream": True},
            timeout=20,
        ) as r:
            assert r.status_code == 200
            text = r.read().decode()
        elapsed = time.monotonic() - t0
        limit = min(attempt_s, request_s)
        assert limit - 0.5 <= elapsed <= limit + 3.0, elapsed
        events = [e.strip() for e in text.split("\n\n") if e.strip()]
        assert json.loads(events[0][5:])["choices"][0]["delta"]["content"] == "Hel"
        error = json.loads(events[-1][5:])["error"]
        assert error["code"] == "deadline_exceeded" and "data: [DONE]" not in events, text
        assert metric(server.url, "router_rl_upstream_errors_total", model="big", kind="deadline") == 1


# ------------------------------------------------------------------------------------------- slow clients

SLOW = {"client_header_timeout_s": 1.0, "client_body_timeout_s": 1.0, "keep_alive_timeout_s": 1.0}


def _until_closed(sock: socket.socket, limit_s: float = 8.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took (the test's
    own bound ``limit_s`` ends the wait: a server without deadlines fails the assertion on time)."""
    t0 = time.monotonic()
    sock.settimeout(limit_s)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data, time.monotonic() - t0


def _read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length (head and body)."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(v)
        for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
        if k.lower() == b"content-length"
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _slow_client(
    port: int, parts: list[bytes], pause_s: float = 0.0, read_first: bool = False
) -> tuple[bytes, float]:
    """Send ``parts`` with ``pause_s`` between them (stopping when the server answers or closes), then wait for
    the server to close: (what it sent, seconds from the start, or from the first answer with ``read_first``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        t0 = time.monotonic()
        for part in parts:
            with contextlib.suppress(OSError):  # the server may close while we still send
                sock.sendall(part)
            if pause_s and select.select([sock], [], [], pause_s)[0]:
                break  # the server answered or closed: stop sending
        if read_first:  # a complete request: read its answer, then idle on the keep-alive connection
            assert _read_response(sock).startswith(b"HTTP/1.1 200")
            t0 = time.monotonic()
        data, _ = _until_closed(sock)
        return data, time.monotonic() - t0


SLOW_CLIENTS = {
    # (parts sent, pause between them, read a first answer, expected start of what the server sends)
    "idle_connection": ([], 0.0, False, b""),
    "partial_request_line": ([b"POST /v1/rou"], 0.0, False, b"HTTP/1.1 408"),
    "partial_headers": ([b"POST /v1/route HTTP/1.1\r\nHost: x\r\nContent-Type: appl"], 0.0, False, b"HTTP/1.1 408"),
    "headers_one_byte_at_a_time": ([bytes([b]) for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n"], 0.15, False, b"HTTP/1.1 408"),
    "partial_body": (
        [b"POST /v1/route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
         b'{"prompt": "'],
        0.0, False, b"HTTP/1.1 408",
    ),
    "inflated_content_length": (
        [b"POST /v1/route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
         b'{"prompt": "hello"}'],
        0.0, False, b"HTTP/1.1 408",
    ),
    "idle_keep_alive": ([b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"], 0.0, True, b""),
}  # fmt: skip


def test_slow_clients_are_cut_off_at_the_deadlines(router: Router, tmp_path: Path) -> None:
    """Raw sockets against a real server: every slow client is disconnected about a second (the deadlines)
    after it started waiting, with 408 when part of a request had come; the server keeps serving."""
    with serving(router, None, tmp_path, **SLOW) as server:
        results: dict[str, tuple[bytes, float]] = {}

        def run(name: str) -> None:
            parts, pause, read_first, _ = SLOW_CLIENTS[name]
            results[name] = _slow_client(server.port, parts, pause, read_first)

        threads = [threading.Thread(target=run, args=(name,)) for name in SLOW_CLIENTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        for name, (*_, expected) in SLOW_CLIENTS.items():
            data, seconds = results[name]
            assert 0.5 <= seconds <= 4.0, (name, seconds, data[:200])
            assert data.startswith(expected) if expected else data == b"", (name, data[:200])
            if expected:
                body = json.loads(data.partition(b"\r\n\r\n")[2])
                assert body["error"]["code"] == "request_timeout", (name, body)
        assert metric(server.url, "router_rl_requests_total", endpoint="/v1/route", status="408") == 2
        assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_a_client_that_stops_reading_is_dropped_at_the_request_deadline(
    router: Router, tmp_path: Path
) -> None:
    """A stream far larger than the socket buffers to a client that never reads: the server's writes block,
    so only the deadline on the whole request ends it (the connection is closed; nothing is left in flight)."""
    line = sse_chunk("x" * 500_000)

    def flood(sock: socket.socket, req: dict) -> None:
        sock.sendall(SSE_HEAD)
        for _ in range(100):  # 50 MB
            sock.sendall(line)
        sock.sendall(b"data: [DONE]\n\n")

    with (
        ScriptedUpstream(flood) as upstream,
        serving(router, upstream.base_url, tmp_path, request_timeout_s=1.5) as server,
    ):
        body = json.dumps({"model": "router", "messages": user("x"), "stream": True}).encode()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        try:
            t0 = time.monotonic()
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            # in flight: the stream, and the /metrics request that reads the gauge
            deadline = time.monotonic() + 15
            while metric(server.url, "router_rl_inflight_requests") > 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            elapsed = time.monotonic() - t0
            assert metric(server.url, "router_rl_inflight_requests") == 1
            assert 1.0 <= elapsed <= 6.0, elapsed
        finally:
            sock.close()


def test_a_client_that_leaves_counts_as_499(router: Router, tmp_path: Path) -> None:
    with serving(router, None, tmp_path) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"POST /v1/route HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
            time.sleep(0.3)
        deadline = time.monotonic() + 10
        while metric(server.url, "router_rl_requests_total", endpoint="/v1/route", status="499") == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert metric(server.url, "router_rl_requests_total", endpoint="/v1/route", status="500") == 0


# ------------------------------------------------------------------------------------------- small things


def test_keys_are_compared_in_constant_time_over_all_keys(
    router: Router, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hmac

    calls: list[bytes] = []
    compare = hmac.compare_digest

    def counted(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counted)
    keys = {"team-a": "sk-aaaa", "team-b": "sk-bbbb", "team-c": "sk-cccc"}
    with serving(router, None, tmp_path, api_keys=keys, admin_token="admin-secret") as server:
        for token, status in (
            ("sk-aaaa", 200),
            ("sk-cccc", 200),
            ("sk-bbb", 401),
            ("sk-bbbbx", 401),
            ("sk-", 401),
        ):
            calls.clear()
            r = httpx.post(
                f"{server.url}/v1/route", json={"prompt": "x"}, headers={"Authorization": f"Bearer {token}"}
            )
            assert r.status_code == status, (token, r.text)
            assert sorted(calls) == sorted(t.encode() for t in keys.values()), token  # every key, every time
        calls.clear()
        r = httpx.post(f"{server.url}/admin/reload", json={}, headers={"Authorization": "Bearer admin-secre"})
        assert r.status_code == 401 and calls == [b"admin-secret"]


def test_docs_metrics_labels_and_log_path_are_settings(
    router: Router, stub: OpenAIStub, tmp_path: Path
) -> None:
    keys = {"team-a": "sk-a"}
    auth = {"Authorization": "Bearer sk-a"}
    with serving(router, stub.base_url, tmp_path, api_keys=keys) as server:  # the defaults
        assert httpx.get(f"{server.url}/docs").status_code == 200
        spec = httpx.get(f"{server.url}/openapi.json").json()
        health = httpx.get(f"{server.url}/healthz").json()
        assert health["decision_log"] is True and "decision_log_path" not in health
        assert str(tmp_path) not in json.dumps(health)
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "router", "messages": user("hi")},
            headers=auth,
        )
        assert r.status_code == 200
        assert metric(server.url, "router_rl_spend_usd_total", api_key="team-a") > 0
    # /metrics is text, not JSON; the route body says that exactly one of prompt and messages is given
    metrics_doc = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics_doc) == ["text/plain"]
    assert "exactly one of" in spec["components"]["schemas"]["RouteRequest"]["description"]
    hidden = {"docs": False, "metrics_key_names": False, "healthz_log_path": True}
    with serving(router, stub.base_url, tmp_path, api_keys=keys, **hidden) as server:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx.get(f"{server.url}{path}").status_code == 404, path
        assert httpx.get(f"{server.url}/healthz").json()["decision_log_path"] == str(
            tmp_path / "decisions.sqlite"
        )
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "router", "messages": user("hi")},
            headers=auth,
        )
        assert r.status_code == 200
        text = httpx.get(f"{server.url}/metrics").text
        assert "team-a" not in text and metric(server.url, "router_rl_spend_usd_total", api_key="all") > 0


# ------------------------------------------------------------------------------------------- SIGKILL


def test_sigkill_loses_no_acknowledged_decision(toy: Path, tmp_path: Path) -> None:
    """A real `router-rl serve` and SIGKILL with decisions in flight: every decision id a client received
    is in the log afterwards.

    Phase 1: 100 decisions at concurrency 16. Phase 2 stalls the log's disk deterministically: the test holds
    the database's write lock (as a slow fsync would keep the writer busy) while 48 more decisions are sent,
    then kills the server. A decision answered before its row was committed is lost then; a durable one is
    not answered until its row is committed, so those 48 are still in flight (unanswered) at the kill."""
    db = tmp_path / "decisions.sqlite"
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router_rl.cli", "serve", str(toy), "--port", str(port), "--log-db", str(db),
             "--log-level", "warning"],
            env=os.environ.copy(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    acked: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)

        async def fire(first: int, n: int, concurrency: int, stop: asyncio.Event | None = None) -> int:
            """``n`` decisions; the ids answered go to ``acked``; returns how many got no answer."""
            failed = 0
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(first, first + n):
                queue.put_nowait(i)
            async with httpx.AsyncClient(timeout=30) as client:

                async def worker() -> None:
                    nonlocal failed
                    while not queue.empty():
                        i = queue.get_nowait()
                        try:
                            r = await client.post(
                                f"{url}/v1/route", json={"prompt": f"decision {i} of the kill"}
                            )
                        except httpx.HTTPError:
                            failed += 1
                            continue
                        assert r.status_code == 200, r.text
                        assert (
                            r.json()["durable"] is True and r.headers["x-router-decision-durable"] == "true"
                        )
                        acked.append(r.json()["decision_id"])

                await asyncio.gather(*(worker() for _ in range(concurrency)))
            return failed

        assert asyncio.run(fire(0, 100, 16)) == 0 and len(acked) == 100

        async def stalled() -> int:
            with contextlib.closing(sqlite3.connect(db, timeout=30, isolation_level=None)) as lock:
                lock.execute("BEGIN IMMEDIATE")  # the writer's next commit waits for this lock
                task = asyncio.ensure_future(fire(1000, 48, 48))
                # a non-durable server answers all 48 at once; a durable one answers none: wait for either,
                # with a generous bound for the second
                end = time.monotonic() + 3.0
                while len(acked) < 148 and time.monotonic() < end:
                    await asyncio.sleep(0.05)
                os.kill(proc.pid, signal.SIGKILL)  # with 48 decisions in flight (or answered, undurably)
                failed = await task
                lock.execute("ROLLBACK")
            return failed

        failed = asyncio.run(stalled())
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) + failed == 148
    with contextlib.closing(sqlite3.connect(db)) as conn:
        stored = {row[0] for row in conn.execute("SELECT decision_id FROM decisions")}
    lost = [d for d in acked if d not in stored]
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged decisions lost"
    assert failed == 48  # durable: nothing was answered while the log could not commit
