"""A real OpenAI-compatible HTTP server on loopback for tests: it answers, streams, fails and stalls on cue.

    with OpenAIStub() as stub:                 # binds 127.0.0.1 on a free port, serves in a thread
        stub.base_url                          # "http://127.0.0.1:PORT/v1"
        stub.reply = lambda req: "Rating: [[7]]"   # the assistant text for a request (default: echoes)
        stub.fail_next(429, retry_after=0.1)   # the next request gets a 429 (queue several)
        stub.fail_next(500); stub.fail_next("timeout", delay=2.0); stub.fail_next("malformed")
        stub.fail_next(500, model="big")       # ... the next request for model "big"
        stub.requests                          # every request received: {"path", "headers", "json", "t"}
        stub.chunk_delay = 0.05                # seconds between streamed chunks (default 0: no pause)

Streaming (``"stream": true``) answers with server-sent events in OpenAI's chunk format, ending with
``data: [DONE]``. Usage is reported as prompt/completion tokens estimated as characters / 4.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class OpenAIStub:
    """An OpenAI-compatible chat-completions server for tests (``/v1/chat/completions``, ``/v1/models``)."""

    def __init__(
        self, *, models: list[str] | None = None, host: str = "127.0.0.1", port: int = 0, backlog: int = 5
    ) -> None:
        self.models = models or ["stub-model"]
        self.reply: Callable[[dict[str, Any]], str] = lambda req: (
            f"echo: {req['messages'][-1].get('content', '')}"
        )
        self.requests: list[dict[str, Any]] = []
        self.chunk_delay = 0.0  # seconds slept before each streamed chunk after the first (0: none)
        self._failures: deque[tuple[Any, dict[str, Any]]] = deque()
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: with Nagle's algorithm on, the body waits for the
            # client's delayed ACK of the headers (~40 ms on Linux) on every keep-alive request
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # keep test output clean
                return None

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/").endswith("/models"):
                    self._send(
                        200, {"object": "list", "data": [{"id": m, "object": "model"} for m in stub.models]}
                    )
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    req = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    self._send(
                        400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}}
                    )
                    return
                with stub._lock:
                    stub.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "json": req, "t": time.monotonic()}
                    )
                    failure = next(
                        (f for f in stub._failures if f[1].get("model") in (None, req.get("model"))), None
                    )
                    if failure is not None:
                        stub._failures.remove(failure)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                if failure is not None:
                    kind, opts = failure
                    if kind == "timeout":
                        time.sleep(opts.get("delay", 5.0))
                    elif kind == "malformed":
                        data = b"{this is not json"
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        return
                    else:
                        headers = {"Retry-After": str(opts["retry_after"])} if "retry_after" in opts else None
                        self._send(
                            int(kind), {"error": {"message": f"stub failure {kind}", "type": "stub"}}, headers
                        )
                        return
                text = stub.reply(req)
                model = req.get("model", stub.models[0])
                prompt_tokens = sum(_tokens(str(m.get("content", ""))) for m in req.get("messages", []))
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": _tokens(text)}
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                cid, created = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())
                if req.get("stream"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Cache-Control", "no-cache")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    pieces = [text[i : i + 8] for i in range(0, len(text), 8)] or [""]
                    for i, piece in enumerate(pieces):
                        if i and stub.chunk_delay:
                            time.sleep(stub.chunk_delay)
                        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                        chunk = {
                            "id": cid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                        }
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                    last = {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                        "usage": usage,
                    }
                    self.wfile.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(
                    200,
                    {
                        "id": cid,
                        "object": "chat.completion",
                        "created": created,
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": usage,
                    },
                )

        # backlog: the listen queue; raise it for many concurrent clients (a full queue drops SYNs, which the
        # client retransmits after ~1 s)
        def handle_error(server: ThreadingHTTPServer, request: Any, client_address: Any) -> None:
            # a client that gave up (its timeout passed while a stalled answer was pending) closes the socket:
            # the late write fails with a broken pipe, which is expected here, not a server error
            if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                return
            ThreadingHTTPServer.handle_error(server, request, client_address)

        server_cls = type(
            "StubServer",
            (ThreadingHTTPServer,),
            {"request_queue_size": int(backlog), "handle_error": handle_error},
        )
        self._server = server_cls((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def fail_next(self, kind: int | str, **opts: Any) -> None:
        """Queue a failure for the next request: an HTTP status (``retry_after=`` adds the header),
        ``"timeout"`` (sleep ``delay`` seconds, then answer normally) or ``"malformed"`` (a 200 that is not JSON).
        ``model=NAME`` saves it for the next request for that model."""
        with self._lock:
            self._failures.append((kind, opts))

    def __enter__(self) -> OpenAIStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
