"""The chat-completions proxy: send a routed request to the chosen model's upstream, fall back to the next
best on 429, 5xx, timeout, connection error or a malformed answer, relay streams, and account tokens and
dollars per model and API key."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from router_rl.serve.errors import APIError, error_body
from router_rl.serve.router import Router
from router_rl.serve.service import Routed, Service
from router_rl.serve.upstreams import CALL_ERRORS, Attempt, UpstreamResponse, call_json, open_stream

HEADER_MODEL = "x-router-model"
HEADER_DECISION = "x-router-decision-id"
HEADER_POLICY = "x-router-policy-version"
HEADER_ATTEMPTS = "x-router-attempts"
HEADER_DURABLE = "x-router-decision-durable"  # true: the decision's log row was synced before this answer

Logged = Callable[[], Awaitable[bool]]  # waits for the decision's log row; whether it is durable


def with_stream_usage(payload: dict[str, Any], ask: bool) -> tuple[dict[str, Any], bool]:
    """The upstream body of a stream request, asking for token usage (``stream_options.include_usage``) so
    that streamed spend is counted; and whether the usage-only chunk must be kept from the client, who did
    not ask for it."""
    options = payload.get("stream_options")
    if not ask or (isinstance(options, dict) and "include_usage" in options):
        return payload, False
    merged = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return {**payload, "stream_options": merged}, True


def relay_line(line: str, model: str, *, strip_usage: bool = False) -> tuple[str | None, Any]:
    """One line of an upstream's server-sent events, as the client gets it (None: dropped), and the token
    usage it reports. Chunks name ``model``; a usage-only chunk (no choices) is dropped when ``strip_usage``."""
    if not line.startswith("data:"):
        return line, None
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return line, None
    try:
        chunk = json.loads(data)
    except ValueError:
        return line, None
    if not isinstance(chunk, dict):
        return line, None
    usage = chunk.get("usage") or None
    if strip_usage and usage is not None and not chunk.get("choices"):
        return None, usage
    chunk["model"] = model
    return "data: " + json.dumps(chunk, separators=(",", ":")), usage


def usage_cost(router: Router, model: str, usage: Any) -> tuple[int | None, int | None, float | None]:
    """(prompt tokens, completion tokens, dollars) from an OpenAI ``usage`` object and the catalog prices."""
    if not isinstance(usage, dict):
        return None, None, None
    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(p, int) or not isinstance(c, int) or p < 0 or c < 0:
        return None, None, None
    entry = next((m for m in router.artifact.manifest["models"] if m["name"] == model), None)
    if entry is None:
        return p, c, None
    return p, c, (p * float(entry["usd_per_1m_input"]) + c * float(entry["usd_per_1m_output"])) / 1e6


class ChatProxy:
    """Forwards routed chat requests for one :class:`Service`: :meth:`complete` and :meth:`stream`."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.metrics = service.metrics
        self.settings = service.settings

    def _order(self, routed: Routed) -> list[str]:
        """The chosen model, then the other allowed ones by score, models in a 429 pause last."""
        d = routed.decision
        ranked = sorted(
            (m for m, s in d.scores.items() if s is not None and m != d.model),
            key=lambda m: -d.scores[m],  # type: ignore[operator]
        )
        order = [d.model, *ranked]
        now = time.monotonic()
        fresh = [m for m in order if self.service.cooldown.get(m, 0.0) <= now]
        paused = [m for m in order if m not in fresh]
        return (fresh + paused)[: self.settings.max_attempts]

    def _record(self, attempt: Attempt, retry_after: str | None = None) -> None:
        self.metrics.upstream_latency.labels(model=attempt.model).observe(attempt.seconds)
        outcome = "ok" if attempt.ok else ("client_error" if attempt.kind == "client_error" else "error")
        self.metrics.upstream_requests.labels(model=attempt.model, outcome=outcome).inc()
        if not attempt.ok and attempt.kind != "client_error":
            self.metrics.upstream_errors.labels(model=attempt.model, kind=attempt.kind).inc()
        if attempt.kind == "429":
            try:
                pause = min(60.0, float(retry_after)) if retry_after else 1.0
            except ValueError:
                pause = 1.0
            self.service.cooldown[attempt.model] = time.monotonic() + pause

    def _headers(self, routed: Routed, model: str, attempts: int, durable: bool) -> dict[str, str]:
        return {
            HEADER_MODEL: model,
            HEADER_DECISION: routed.decision.decision_id,
            HEADER_POLICY: routed.decision.policy_version,
            HEADER_ATTEMPTS: str(attempts),
            HEADER_DURABLE: "true" if durable else "false",
        }

    def _account(
        self, routed: Routed, model: str, usage: Any, key: str, seconds: float, attempts: int, status: str
    ) -> None:
        p, c, cost = usage_cost(routed.router, model, usage)
        if p is not None and c is not None:
            self.metrics.tokens.labels(model=model, kind="prompt").inc(p)
            self.metrics.tokens.labels(model=model, kind="completion").inc(c)
        if cost is not None:
            label = key if self.settings.metrics_key_names else "all"
            self.metrics.spend.labels(model=model, api_key=label).inc(cost)
        if model != routed.decision.model:
            self.metrics.fallbacks.labels(chosen=routed.decision.model).inc()
        if self.service.decision_log is not None:
            self.service.decision_log.log_outcome(
                routed.decision.decision_id,
                answered_by=model,
                status=status,
                attempts=attempts,
                prompt_tokens=p,
                completion_tokens=c,
                cost_usd=cost,
                latency_s=seconds,
            )

    def _all_failed(self, routed: Routed, attempts: list[Attempt], late: bool, durable: bool) -> APIError:
        """The error when no attempt answered; ``late``: the request's deadline ended the attempts (504)."""
        if self.service.decision_log is not None:
            self.service.decision_log.log_outcome(
                routed.decision.decision_id, status="deadline" if late else "failed", attempts=len(attempts)
            )
        headers = {
            HEADER_DECISION: routed.decision.decision_id,
            HEADER_DURABLE: "true" if durable else "false",
        }
        summary = "; ".join(f"{a.model}: {a.kind}" + (f" {a.status}" if a.status else "") for a in attempts)
        if late:
            return APIError(
                504,
                f"no upstream answered within this router's request deadline of "
                f"{self.settings.request_timeout_s:g} s ({summary or 'no attempt left time'})",
                code="deadline_exceeded",
                headers=headers,
            )
        if attempts and all(a.kind == "429" for a in attempts):
            return APIError(
                429,
                f"every upstream tried is rate-limited ({summary})",
                code="rate_limited",
                headers={"Retry-After": "1", **headers},
            )
        return APIError(
            502, f"every upstream tried failed ({summary})", code="upstream_failed", headers=headers
        )

    def _client_error(
        self, routed: Routed, attempt: Attempt, resp: UpstreamResponse, attempts: int, durable: bool
    ) -> Response:
        if self.service.decision_log is not None:
            self.service.decision_log.log_outcome(
                routed.decision.decision_id,
                answered_by=attempt.model,
                status="client_error",
                attempts=attempts,
            )
        try:
            data = resp.json()
            if not (isinstance(data, dict) and isinstance(data.get("error"), dict)):
                raise ValueError
        except ValueError:
            data = error_body(
                resp.status_code, f"upstream {attempt.model} refused the request: {resp.text[:300]}"
            )
        return JSONResponse(
            data,
            status_code=resp.status_code,
            headers=self._headers(routed, attempt.model, attempts, durable),
        )

    def _attempt_deadline(self, deadline: float) -> float:
        """When the next attempt must end: its own limit, within the request's ``deadline``."""
        return min(deadline, asyncio.get_running_loop().time() + self.settings.upstream_attempt_timeout_s)

    async def complete(
        self, routed: Routed, payload: dict[str, Any], key: str, *, deadline: float, logged: Logged
    ) -> Response:
        """A non-streamed chat completion by ``deadline`` (event-loop time), trying the ranked models in
        turn; ``logged`` is awaited before any answer (whether the decision is durable)."""
        assert self.service.client is not None
        loop = asyncio.get_running_loop()
        tried: list[Attempt] = []
        for model in self._order(routed):
            upstream = self.service.upstreams.get(model)
            if upstream is None:
                continue
            if loop.time() >= deadline:
                break
            attempt, resp, data = await call_json(
                self.service.client,
                upstream,
                {**payload, "model": upstream.model},
                model,
                deadline=self._attempt_deadline(deadline),
            )
            tried.append(attempt)
            self._record(attempt, resp.headers.get("retry-after") if resp is not None else None)
            if attempt.kind == "client_error" and resp is not None:
                return self._client_error(routed, attempt, resp, len(tried), await logged())
            if not attempt.ok or data is None:
                continue
            data["model"] = model
            status = "ok" if model == routed.decision.model else "fallback"
            self._account(routed, model, data.get("usage"), key, attempt.seconds, len(tried), status)
            durable = await logged()
            return JSONResponse(data, headers=self._headers(routed, model, len(tried), durable))
        raise self._all_failed(routed, tried, loop.time() >= deadline, await logged())

    async def stream(
        self, routed: Routed, payload: dict[str, Any], key: str, *, deadline: float, logged: Logged
    ) -> Response:
        """A streamed chat completion: fallback until an upstream starts its stream, then relayed as it
        comes until the attempt's deadline (an error event ends it there: bytes already went out, so it is too
        late to fall back)."""
        assert self.service.client is not None
        loop = asyncio.get_running_loop()
        payload, strip_usage = with_stream_usage(payload, self.settings.stream_usage)
        tried: list[Attempt] = []
        for model in self._order(routed):
            upstream = self.service.upstreams.get(model)
            if upstream is None:
                continue
            if loop.time() >= deadline:
                break
            attempt_deadline = self._attempt_deadline(deadline)
            attempt, resp = await open_stream(
                self.service.client,
                upstream,
                {**payload, "model": upstream.model},
                model,
                deadline=attempt_deadline,
            )
            tried.append(attempt)
            self._record(attempt, resp.headers.get("retry-after") if resp is not None else None)
            if attempt.kind == "client_error" and resp is not None:
                return self._client_error(routed, attempt, resp, len(tried), await logged())
            if not attempt.ok or resp is None:
                continue
            try:
                durable = await logged()
            except BaseException:
                await resp.aclose()
                raise
            relay = Relay(self, routed, resp, model, key, attempt, len(tried), strip_usage, attempt_deadline)
            return StreamingResponse(
                relay.events(),
                media_type="text/event-stream",
                headers={**self._headers(routed, model, len(tried), durable), "Cache-Control": "no-cache"},
            )
        raise self._all_failed(routed, tried, loop.time() >= deadline, await logged())


@dataclass
class Relay:
    """One upstream stream relayed to the client (:meth:`events`), accounted when it ends."""

    proxy: ChatProxy
    routed: Routed
    resp: UpstreamResponse
    model: str
    key: str
    attempt: Attempt
    attempts: int
    strip_usage: bool
    deadline: float  # event-loop time by which the stream must have ended
    status: str = "ok"  # the outcome logged for the decision: ok, fallback, stream_error, deadline_exceeded

    def _error(self, status: str, kind: str, message: str) -> bytes:
        """The OpenAI-style error event that ends a broken stream (no ``[DONE]`` follows it). It opens with a
        blank line, which ends any event the upstream left unfinished."""
        self.status = status
        self.proxy.metrics.upstream_errors.labels(model=self.model, kind=kind).inc()
        event = error_body(502 if kind == "stream" else 504, message, code=status)
        return f"\ndata: {json.dumps(event)}\n\n".encode()

    async def events(self) -> AsyncIterator[bytes]:
        """The upstream's server-sent events as they come, naming the model that answers in every chunk, up
        to its ``data: [DONE]``. A stream that ends without it (the connection closed), breaks, or passes the
        deadline ends with an error event instead and counts as an upstream failure of its model."""
        usage: Any = None
        self.status = "ok" if self.model == self.routed.decision.model else "fallback"
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        lines = aiter(self.resp.aiter_lines())
        done = False
        try:
            while not done:
                try:
                    async with asyncio.timeout_at(self.deadline):
                        raw = await anext(lines)
                except StopAsyncIteration:
                    break
                if not raw.endswith("\n"):  # the connection closed mid-line: drop the fragment
                    break
                line = raw.rstrip("\r\n")
                done = line.startswith("data:") and line[5:].strip() == "[DONE]"
                out, chunk_usage = relay_line(line, self.model, strip_usage=self.strip_usage)
                usage = chunk_usage or usage
                if done:
                    yield b"data: [DONE]\n\n"
                elif out is not None:
                    yield (out + "\n").encode()
            if not done:
                yield self._error(
                    "stream_error",
                    "stream",
                    f"upstream {self.model} closed the stream before its end (no data: [DONE])",
                )
        except CALL_ERRORS as err:  # broke mid-stream or passed the deadline: too late to fall back
            if loop.time() >= self.deadline:
                limit = self.proxy.settings.upstream_attempt_timeout_s
                yield self._error(
                    "deadline_exceeded",
                    "deadline",
                    f"upstream {self.model} did not finish its stream within this router's deadline "
                    f"({limit:g} s per attempt, {self.proxy.settings.request_timeout_s:g} s per request)",
                )
            else:
                yield self._error(
                    "stream_error",
                    "stream",
                    f"upstream {self.model} failed mid-stream ({type(err).__name__})",
                )
        finally:
            await self.resp.aclose()
            self.proxy._account(
                self.routed,
                self.model,
                usage,
                self.key,
                self.attempt.seconds + time.perf_counter() - t0,
                self.attempts,
                self.status,
            )
