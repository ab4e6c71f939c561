"""Where routed requests go: OpenAI-compatible upstreams per model, called through one pooled httpx client.

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
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

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


def new_client(*, timeout_s: float, connect_timeout_s: float, max_connections: int) -> httpx.AsyncClient:
    """The pooled client every upstream call goes through."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s, pool=connect_timeout_s),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max(8, max_connections // 4)
        ),
        follow_redirects=False,
    )


def _classify_status(status: int) -> str:
    if status == 429:
        return "429"
    if status >= 500:
        return "5xx"
    if status >= 400:
        return "client_error"
    return "ok"


async def call_json(
    client: httpx.AsyncClient, upstream: Upstream, body: dict[str, Any], model: str
) -> tuple[Attempt, httpx.Response | None, dict[str, Any] | None]:
    """A non-streaming chat completion: (attempt, response, parsed body when ok)."""
    t0 = time.perf_counter()
    try:
        resp = await client.post(upstream.chat_url, json=body, headers=upstream.request_headers())
    except httpx.TimeoutException as err:
        return (
            Attempt(model, False, "timeout", time.perf_counter() - t0, detail=type(err).__name__),
            None,
            None,
        )
    except httpx.RequestError as err:
        return (
            Attempt(model, False, "connect", time.perf_counter() - t0, detail=f"{type(err).__name__}: {err}"),
            None,
            None,
        )
    seconds = time.perf_counter() - t0
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
    client: httpx.AsyncClient, upstream: Upstream, body: dict[str, Any], model: str
) -> tuple[Attempt, httpx.Response | None]:
    """Start a streaming chat completion; on success the response is open (the caller closes it)."""
    t0 = time.perf_counter()
    request = client.build_request("POST", upstream.chat_url, json=body, headers=upstream.request_headers())
    try:
        resp = await client.send(request, stream=True)
    except httpx.TimeoutException as err:
        return Attempt(model, False, "timeout", time.perf_counter() - t0, detail=type(err).__name__), None
    except httpx.RequestError as err:
        return Attempt(
            model, False, "connect", time.perf_counter() - t0, detail=f"{type(err).__name__}: {err}"
        ), None
    seconds = time.perf_counter() - t0
    kind = _classify_status(resp.status_code)
    if kind == "ok" and "text/event-stream" not in resp.headers.get("content-type", ""):
        kind = "malformed"
    if kind != "ok":
        detail = ""
        with contextlib.suppress(httpx.HTTPError, UnicodeDecodeError):
            await resp.aread()
            detail = resp.text[:300]
        await resp.aclose()
        return Attempt(model, False, kind, seconds, resp.status_code, detail), resp
    return Attempt(model, True, "ok", seconds, resp.status_code), resp
