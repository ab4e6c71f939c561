"""Where routed requests go: OpenAI-compatible upstreams per model, called through one pooled aiohttp session.

``--upstream URL`` sends every model to one base URL under its catalog name (typically the gateway, which
knows every model). ``--upstreams FILE`` (YAML or JSON) maps models one by one::

    default:                          # optional: models not listed below
      base_url: http://127.0.0.1:4000/v1
      api_key_env: LITELLM_API_KEY    # the key is read from this environment variable at startup
    models:
      gpt-4-1106-preview:
        base_url: https://api.openai.com/v1
        model: gpt-4-1106-preview     # the upstream's name for it (default: the catalog name)
        api_key_env: OPENAI_API_KEY
      mixtral-8x7b-instruct-v0.1:
        base_url: http://127.0.0.1:8000/v1
        model: mistralai/Mixtral-8x7B-Instruct-v0.1

A model with no upstream is never chosen for chat requests (it can still be returned by ``/v1/route``).
An attempt fails over to the next-best model on 429, any 5xx, a timeout, a connection error, or a 2xx body
that is not a chat completion; any other 4xx is the caller's mistake and is returned as it is.

The client is aiohttp: on loopback it adds 0.5 ms to a call where httpx added 1.8 ms (measured against the
tests' stub on the shared 2-core machine), and the proxy's own overhead is what a routed chat request pays
on top of the embedding.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

FAILOVER_KINDS = ("429", "5xx", "timeout", "connect", "malformed")


class UpstreamConfigError(ValueError):
    """A bad upstreams file or option, named with the file and key."""


@dataclass(frozen=True)
class Upstream:
    """One model's OpenAI-compatible endpoint."""

    base_url: str
    model: str
    api_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def chat_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/chat/completions"

    def request_headers(self) -> dict[str, str]:
        out = {"Content-Type": "application/json", **self.headers}
        if self.api_key:
            out["Authorization"] = f"Bearer {self.api_key}"
        return out


@dataclass
class UpstreamMap:
    """Catalog model -> :class:`Upstream`; ``default`` (base URL, key) serves unlisted models by their own name."""

    models: dict[str, Upstream] = field(default_factory=dict)
    default: Upstream | None = None

    def get(self, model: str) -> Upstream | None:
        if model in self.models:
            return self.models[model]
        if self.default is not None:
            return Upstream(self.default.base_url, model, self.default.api_key, self.default.headers)
        return None

    def served(self, models: list[str]) -> list[str]:
        return [m for m in models if self.get(m) is not None]

    def __bool__(self) -> bool:
        return bool(self.models) or self.default is not None


def _key_from_env(var: str | None, where: str, environ: Mapping[str, str]) -> str | None:
    if var is None:
        return None
    if not isinstance(var, str):
        raise UpstreamConfigError(f"{where}.api_key_env: expected the name of an environment variable")
    return environ.get(var)  # unset: no key (a local gateway may need none)


def _entry(raw: Any, where: str, name: str | None, environ: Mapping[str, str]) -> Upstream:
    if not isinstance(raw, dict):
        raise UpstreamConfigError(
            f"{where}: expected a mapping with base_url (and model, api_key_env, headers)"
        )
    unknown = set(raw) - {"base_url", "model", "api_key_env", "headers"}
    if unknown:
        raise UpstreamConfigError(
            f"{where}: unknown key(s) {sorted(unknown)}; expected base_url, model, api_key_env, headers"
        )
    base = raw.get("base_url")
    if not isinstance(base, str) or not base.startswith(("http://", "https://")):
        raise UpstreamConfigError(
            f"{where}.base_url: {base!r} is not an http(s) URL such as http://127.0.0.1:4000/v1"
        )
    model = raw.get("model", name or "")
    if not isinstance(model, str):
        raise UpstreamConfigError(f"{where}.model: expected a string")
    headers = raw.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise UpstreamConfigError(f"{where}.headers: expected a mapping of strings")
    return Upstream(base, model, _key_from_env(raw.get("api_key_env"), where, environ), headers)


def load_upstreams_file(path: str | Path, environ: Mapping[str, str] | None = None) -> UpstreamMap:
    """Read an upstreams file (YAML or JSON, see the module docstring)."""
    env = os.environ if environ is None else environ
    p = Path(path)
    if not p.is_file():
        raise UpstreamConfigError(f"{p}: upstreams file not found")
    text = p.read_text()
    try:
        if p.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as err:  # yaml and json raise their own error types
        raise UpstreamConfigError(
            f"{p}: not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'} ({err})"
        ) from None
    if not isinstance(raw, dict) or not (set(raw) <= {"default", "models"}) or not raw:
        raise UpstreamConfigError(f"{p}: expected a mapping with 'models' and/or 'default'")
    models_raw = raw.get("models") or {}
    if not isinstance(models_raw, dict):
        raise UpstreamConfigError(f"{p}: models must map model names to {{base_url, model, api_key_env}}")
    models = {
        str(name): _entry(entry, f"{p}: models.{name}", str(name), env) for name, entry in models_raw.items()
    }
    default = _entry(raw["default"], f"{p}: default", None, env) if raw.get("default") is not None else None
    return UpstreamMap(models, default)


def upstream_map(
    upstream: str | None,
    upstreams_file: str | None,
    *,
    api_key_env: str = "ROUTER_RL_UPSTREAM_API_KEY",
    environ: Mapping[str, str] | None = None,
) -> UpstreamMap:
    """The map for ``--upstream`` and/or ``--upstreams`` (the file's entries win; ``--upstream`` is its default)."""
    env = os.environ if environ is None else environ
    mapping = load_upstreams_file(upstreams_file, env) if upstreams_file else UpstreamMap()
    if upstream:
        if mapping.default is not None:
            raise UpstreamConfigError("both --upstream and the upstreams file's default are set; keep one")
        mapping.default = Upstream(upstream, "", env.get(api_key_env))
    return mapping


# ------------------------------------------------------------------------------------------- calling


@dataclass
class Attempt:
    """One upstream call: its model, how it ended and how long it took to the response headers."""

    model: str
    ok: bool
    kind: str  # ok | 429 | 5xx | timeout | connect | malformed | client_error
    seconds: float
    status: int | None = None
    detail: str = ""


# errors of an upstream call or of reading its body: the connection broke, timed out, or sent garbage
CALL_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ValueError)


def new_client(*, timeout_s: float, connect_timeout_s: float, max_connections: int) -> aiohttp.ClientSession:
    """The pooled session every upstream call goes through (create it inside the running event loop).

    ``timeout_s`` bounds each wait for data (the response headers, then every chunk of a stream);
    ``connect_timeout_s`` bounds getting a connection, from the pool or a new one.
    """
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_connect=connect_timeout_s, sock_read=timeout_s
        ),
        connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0),
        read_bufsize=1 << 20,  # a server-sent event line may be long (a tool call's arguments in one chunk)
        trust_env=False,
    )


class UpstreamResponse:
    """An upstream's answer as the proxy uses it: status, headers, the body (read) or its lines (a stream)."""

    def __init__(self, raw: aiohttp.ClientResponse, body: bytes | None = None) -> None:
        self._raw = raw
        self.status_code = raw.status
        self.headers = raw.headers  # case-insensitive
        self.content = body

    @property
    def text(self) -> str:
        return (self.content or b"").decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content or b"")

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The lines of a streamed body, each with its line break; the last one lacks it when the body ended
        mid-line (the connection closed)."""
        async for raw in self._raw.content:
            yield raw.decode("utf-8")

    async def aclose(self) -> None:
        self._raw.release()


def _classify_status(status: int) -> str:
    if status == 429:
        return "429"
    if status >= 500:
        return "5xx"
    if status >= 400:
        return "client_error"
    return "ok"


def _failed(model: str, t0: float, err: BaseException) -> Attempt:
    kind = "timeout" if isinstance(err, asyncio.TimeoutError) else "connect"
    return Attempt(model, False, kind, time.perf_counter() - t0, detail=f"{type(err).__name__}: {err}"[:300])


async def call_json(
    client: aiohttp.ClientSession,
    upstream: Upstream,
    body: dict[str, Any],
    model: str,
    *,
    deadline: float | None = None,
) -> tuple[Attempt, UpstreamResponse | None, dict[str, Any] | None]:
    """A non-streaming chat completion: (attempt, response, parsed body when ok). ``deadline`` (event-loop
    time) bounds the whole call, connect to last byte: an upstream that drips its answer slower than the
    read timeout cannot hold it longer (a ``timeout`` attempt)."""
    t0 = time.perf_counter()
    try:
        async with (
            asyncio.timeout_at(deadline),
            client.post(upstream.chat_url, json=body, headers=upstream.request_headers()) as raw,
        ):
            seconds = time.perf_counter() - t0  # to the response headers, as for streams
            resp = UpstreamResponse(raw, await raw.read())
    except CALL_ERRORS as err:
        return _failed(model, t0, err), None, None
    kind = _classify_status(resp.status_code)
    if kind != "ok":
        return Attempt(model, False, kind, seconds, resp.status_code, resp.text[:300]), resp, None
    try:
        data = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return Attempt(model, False, "malformed", seconds, resp.status_code, "body is not JSON"), resp, None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        return (
            Attempt(model, False, "malformed", seconds, resp.status_code, "no choices in the body"),
            resp,
            None,
        )
    return Attempt(model, True, "ok", seconds, resp.status_code), resp, data


async def open_stream(
    client: aiohttp.ClientSession,
    upstream: Upstream,
    body: dict[str, Any],
    model: str,
    *,
    deadline: float | None = None,
) -> tuple[Attempt, UpstreamResponse | None]:
    """Start a streaming chat completion, its response headers by ``deadline`` (event-loop time); on
    success the response is open (the caller reads it under the same deadline, and closes it)."""
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout_at(deadline):
            raw = await client.post(upstream.chat_url, json=body, headers=upstream.request_headers())
    except CALL_ERRORS as err:
        return _failed(model, t0, err), None
    seconds = time.perf_counter() - t0
    kind = _classify_status(raw.status)
    if kind == "ok" and "text/event-stream" not in raw.headers.get("content-type", ""):
        kind = "malformed"
    if kind != "ok":
        body_bytes = b""
        try:
            async with asyncio.timeout_at(deadline):
                body_bytes = await raw.read()
        except CALL_ERRORS:
            pass
        finally:
            raw.release()
        resp = UpstreamResponse(raw, body_bytes)
        return Attempt(model, False, kind, seconds, resp.status_code, resp.text[:300]), resp
    return Attempt(model, True, "ok", seconds, raw.status), UpstreamResponse(raw)
