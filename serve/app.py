"""The router service: an app factory for FastAPI (tests inject the router, settings, upstreams and log).

Endpoints: ``POST /v1/route``, ``POST /v1/chat/completions`` (OpenAI-compatible, ``router`` or
``router-<cost_weight>`` as the model, streaming passed through), ``POST /v1/feedback``, ``GET /v1/models``,
``GET /healthz``, ``GET /metrics`` (Prometheus) and ``POST /admin/reload`` (hot reload of an artifact,
behind the admin token). Decisions go through the micro-batcher; every decision is logged with its
propensity; every non-2xx answer has an OpenAI-style error body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from router_rl.serve.artifact import ArtifactError, load_artifact
from router_rl.serve.batching import MicroBatcher
from router_rl.serve.budget import SpendPacer, log_reader
from router_rl.serve.decision_log import DecisionLog, LogFull, UnknownDecision
from router_rl.serve.errors import ERROR_RESPONSES, APIError, error_body
from router_rl.serve.jsonbody import StrictJSONRoute
from router_rl.serve.judge_worker import ReferenceSpec, reference_answer
from router_rl.serve.judging import StreamText, answer_text, from_settings
from router_rl.serve.metrics import Metrics
from router_rl.serve.proxy import HEADER_DURABLE, HEADER_MODEL, ChatProxy
from router_rl.serve.registry_watch import RegistrySource, RegistryWatch
from router_rl.serve.router import Router
from router_rl.serve.schemas import (
    MAX_COST_WEIGHT,
    ChatRequest,
    FeedbackRequest,
    FeedbackResponse,
    Limits,
    Message,
    ReloadRequest,
    RouteRequest,
    RouteResponse,
)
from router_rl.serve.service import Service
from router_rl.serve.settings import ServeSettings, SettingsError
from router_rl.serve.sticky import StickyConversations, conversation_key, next_turn_key
from router_rl.serve.upstreams import UpstreamMap, new_client

log = logging.getLogger("router_rl.serve")

# matched with fullmatch: "$" would also match before a trailing newline ("router-0.5\n")
ROUTER_MODEL = re.compile(r"router(?:-(?P<w>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?))?")
DEADLINE = "router_rl.deadline"  # scope key: the request's deadline in event-loop time
# the hard stop of a request comes this long after its deadline, so that the proxy's own answer at the
# deadline (a 504, an error event ending a stream) goes out first
HARD_STOP_GRACE_S = 1.0
ENDPOINTS = (
    "/v1/route",
    "/v1/chat/completions",
    "/v1/feedback",
    "/v1/models",
    "/healthz",
    "/metrics",
    "/admin/reload",
)


# ------------------------------------------------------------------------------------------ helpers


def prompt_of(messages: list[Message], max_chars: int) -> str:
    """The text a chat request is routed on: its last user message's text."""
    for message in reversed(messages):
        if message.role != "user":
            continue
        content = message.content
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = "\n".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
        else:
            text = ""
        if not text.strip():
            raise APIError(
                400, "the last user message has no text to route on", param="messages", code="empty_prompt"
            )
        check_prompt(text, max_chars)
        return text
    raise APIError(400, "messages hold no user message to route on", param="messages", code="no_user_message")


def check_prompt(text: str, max_chars: int) -> None:
    if len(text) > max_chars:
        raise APIError(
            400,
            f"the prompt has {len(text)} characters, more than this router's limit of {max_chars}",
            param="prompt",
            code="prompt_too_long",
        )


def cost_weight_of(model: str) -> float | None:
    """``router`` -> None (the artifact's default), ``router-0.5`` -> 0.5; anything else: 404."""
    match = ROUTER_MODEL.fullmatch(model)
    if match is None:
        raise APIError(
            404,
            f"model {model!r} does not exist here: use 'router' (the artifact's cost weight) or "
            "'router-<cost_weight>', e.g. 'router-0.5'",
            param="model",
            code="model_not_found",
        )
    w = match.group("w")
    if w is None:
        return None
    value = float(w)
    if not (math.isfinite(value) and value <= MAX_COST_WEIGHT):
        raise APIError(
            400,
            f"cost weight {w!r} in the model name is out of range: expected a number in [0, {MAX_COST_WEIGHT:g}]",
            param="model",
            code="invalid_cost_weight",
        )
    return value


def limits_of(body: Limits, models: list[str], cost_weight: float | None = None) -> dict[str, Any]:
    if body.candidates is not None:
        unknown = [m for m in body.candidates if m not in models]
        if unknown:
            raise APIError(
                400,
                f"unknown candidate model(s) {unknown}; this router knows {models}",
                param="candidates",
                code="invalid_candidates",
            )
    return {
        "cost_weight": body.cost_weight if body.cost_weight is not None else cost_weight,
        "candidates": list(dict.fromkeys(body.candidates)) if body.candidates is not None else None,
        "max_cost_usd": body.max_cost_usd,
        "latency_budget_s": body.latency_budget_s,
    }


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    errors = err.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if not loc and first.get("type") in ("model_attributes_type", "dict_type", "missing", "model_type"):
        return "the request body must be a JSON object (Content-Type: application/json)", None
    param = ".".join(loc) or None
    where = f"{param}: " if param else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}{first.get('msg', 'invalid value')}{more}", param


def key_name(keys: list[tuple[str, bytes]], token: str) -> str | None:
    """The name of the API key whose token is ``token``, or None. Every key is compared, each in constant
    time (:func:`hmac.compare_digest`), so the answer's timing tells nothing about which key, or how much of
    one, matched."""
    given = token.encode()
    found = None
    for name, secret in keys:
        if hmac.compare_digest(given, secret):
            found = name
    return found


# ------------------------------------------------------------------------------------------ middleware


class EdgeMiddleware:
    """Pure ASGI middleware at the edge of every HTTP request: request metrics and the in-flight gauge, the
    body-size limit (413, before parsing), the body deadline (408: a client that sends its body slower than
    ``client_body_timeout_s``, or less than its Content-Length, does not hold the request open), and the
    request deadline (``request_timeout_s`` from the head; the proxy answers at the deadline itself, this is the
    hard stop shortly after it: 504 when nothing was sent yet, else the connection is closed, which also ends
    a response a client has stopped reading). A client that leaves before its answer is complete counts as 499.
    """

    def __init__(self, app: Any, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.service.settings
        metrics, limit = self.service.metrics, settings.max_body_bytes
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        state: dict[str, Any] = {"code": None, "complete": False, "left": False}
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        deadline = loop.time() + settings.request_timeout_s
        scope[DEADLINE] = deadline
        metrics.inflight.inc()

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["code"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["complete"] = True
            await send(message)

        async def receive_wrapper() -> dict:
            message = await receive()
            if message["type"] == "http.disconnect" and not state["complete"]:
                state["left"] = True
            return message

        async def refuse(status: int, message: str, code: str) -> None:
            await JSONResponse(
                error_body(status, message, code=code), status_code=status, headers={"Connection": "close"}
            )(scope, receive, send_wrapper)

        try:
            app_receive: Callable = receive_wrapper
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                declared = dict(scope.get("headers") or []).get(b"content-length")
                too_big = False
                if declared is not None:
                    try:
                        too_big = int(declared) > limit
                    except ValueError:
                        too_big = False
                body = b""
                more = not too_big
                body_deadline = min(deadline, loop.time() + settings.client_body_timeout_s)
                while more:
                    try:
                        async with asyncio.timeout_at(body_deadline):
                            message = await receive_wrapper()
                    except TimeoutError:
                        await refuse(
                            408,
                            f"the request body did not arrive within {settings.client_body_timeout_s:g} s "
                            f"({len(body)} bytes came)",
                            "request_timeout",
                        )
                        return
                    if message["type"] == "http.disconnect":
                        return
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                    if len(body) > limit:
                        too_big = True
                        break
                if too_big:
                    await refuse(
                        413,
                        f"the request body is larger than this router's limit of {limit} bytes",
                        "body_too_large",
                    )
                    return
                replayed = False

                async def replay() -> dict:
                    nonlocal replayed
                    if not replayed:
                        replayed = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive_wrapper()

                app_receive = replay
            try:
                async with asyncio.timeout_at(deadline + HARD_STOP_GRACE_S):
                    await self.app(scope, app_receive, send_wrapper)
            except TimeoutError:
                log.warning(
                    "%s %s passed its deadline of %g s; %s",
                    scope.get("method"),
                    path,
                    settings.request_timeout_s,
                    "answered 504" if state["code"] is None else "closing the connection",
                )
                if state["code"] is None:
                    await refuse(
                        504,
                        f"the request took longer than this router's limit of {settings.request_timeout_s:g} s",
                        "deadline_exceeded",
                    )
        finally:
            metrics.inflight.dec()
            if state["left"] and not state["complete"]:
                status = 499  # the client closed the connection before its answer was complete (nginx's code)
            elif state["code"] is None:
                status = 500
            else:
                status = state["code"]
            metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            metrics.request_latency.labels(endpoint=endpoint).observe(time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ the factory


def create_app(
    router: Router | str | Path,
    settings: ServeSettings | None = None,
    *,
    upstreams: UpstreamMap | None = None,
    decision_log: DecisionLog | None = None,
    client: aiohttp.ClientSession | None = None,
    artifact_source: str | None = None,
    resolve: Callable[[str], str] | None = None,
    handle_sighup: bool = False,
    follow: RegistrySource | None = None,
    clock: Callable[[], float] | None = None,
    shadow: Router | None = None,
) -> FastAPI:
    """A FastAPI app serving ``router``.

    Args:
        router: a loaded :class:`Router` (tests share one encoder across apps) or an artifact directory.
        settings: limits, batching, auth, logging (default :class:`ServeSettings`).
        upstreams: where chat requests go (default: built from ``settings.upstream``/``settings.upstreams``).
        decision_log: the decision log (default: opened at ``settings.log_db``; none when that is empty).
        client: the aiohttp session for upstream calls (default: a pooled one from the settings, made at
            startup); the app closes only a session it created.
        artifact_source: what ``/admin/reload`` and SIGHUP reload by default (default: the router's path).
        resolve: maps a reload source to an artifact directory (the CLI resolves ``models:/`` URIs with it).
        handle_sighup: reload the artifact on SIGHUP (the CLI sets it; tests leave it off).
        follow: a registry alias to follow (polled every ``settings.registry_poll_s`` seconds; 0: not).
        clock: unix seconds for the log's rows and the budget pacer (default ``time.time``; tests drive it).
        shadow: a router that decides beside ``router`` and is logged, never served (default: loaded from
            ``settings.shadow`` through ``resolve``, sharing the router's encoder).
    """
    from router_rl.serve.upstreams import upstream_map

    settings = (settings or ServeSettings()).validate()
    if not isinstance(router, Router):
        router = Router(router, device=settings.device, **settings.router_kwargs())
    if upstreams is None:
        upstreams = upstream_map(
            settings.upstream, settings.upstreams, api_key_env=settings.upstream_api_key_env
        )
    if shadow is None and settings.shadow:
        shadow_art = load_artifact((resolve or (lambda s: s))(settings.shadow), device=router.artifact.device)
        mine, theirs = router.artifact.manifest["embedder"], shadow_art.manifest["embedder"]
        if mine != theirs:
            differ = sorted(k for k in {*mine, *theirs} if mine.get(k) != theirs.get(k))
            raise ArtifactError(
                f"--shadow {settings.shadow}: its encoder settings ({', '.join(differ)}) differ from the served "
                "policy's; a shadow decides on the same embedding, so it needs the same encoder"
            )
        shadow = Router(shadow_art, embedder=router.embedder, **settings.router_kwargs())
    own_log = decision_log is None and bool(settings.log_db)
    if own_log:
        decision_log = DecisionLog(settings.log_db, replica=settings.replica_id)  # type: ignore[arg-type]
    metrics = Metrics()
    sticky = (
        StickyConversations(settings.sticky_max_conversations, metrics.registry)
        if settings.sticky_conversations
        else None
    )
    reference_model = settings.judge_reference_model if settings.judge_pairwise_share > 0 else None
    if reference_model is not None and (
        reference_model not in router.models or upstreams.get(reference_model) is None
    ):
        raise SettingsError(
            f"setting judge_reference_model={reference_model!r}: expected one of this artifact's models that "
            f"has an upstream ({', '.join(m for m in router.models if upstreams.get(m) is not None) or 'none'})"
        )

    reference_spec = None
    if reference_model is not None:
        entry = next(m for m in router.artifact.manifest["models"] if m["name"] == reference_model)
        reference_spec = ReferenceSpec(
            model=reference_model,
            upstream=upstreams.get(reference_model),
            usd_per_1m_input=float(entry["usd_per_1m_input"]),
            usd_per_1m_output=float(entry["usd_per_1m_output"]),
            timeout_s=settings.upstream_attempt_timeout_s,
        )

    async def reference(payload: dict[str, Any]) -> tuple[str, float]:
        """The reference model's answer to a chat payload, and its cost (the pairwise judge on this loop)."""
        assert reference_spec is not None and service.client is not None
        return await reference_answer(service.client, reference_spec, payload)

    judging = (
        from_settings(
            settings, decision_log, metrics.registry, reference if reference_spec else None, reference_spec
        )
        if settings.judge_share > 0 and decision_log is not None
        else None
    )
    metrics.set_policy(router.artifact.version)
    metrics.set_encoder(router.embedder.describe)
    service = Service(
        router=router,
        settings=settings,
        upstreams=upstreams,
        metrics=metrics,
        decision_log=decision_log,
        artifact_source=artifact_source or str(router.artifact.path),
        resolve=resolve or (lambda s: s),
        rng=np.random.default_rng(settings.seed),
        clock=clock or time.time,
        shadow=shadow,
    )
    if settings.budget_usd_per_hour > 0 and decision_log is not None:
        service.pacer = SpendPacer(
            log_reader(decision_log.target),
            target_usd_per_hour=settings.budget_usd_per_hour,
            update_s=settings.budget_update_s,
            window_s=settings.budget_window_s,
            step=settings.budget_step,
            max_multiplier=settings.budget_max_multiplier,
            recover_s=settings.budget_recover_s,
            clock=service.clock,
            registry=metrics.registry,
        )
    watch = (
        RegistryWatch(service, follow, interval_s=settings.registry_poll_s, registry=metrics.registry)
        if follow is not None and settings.registry_poll_s > 0
        else None
    )
    proxy = ChatProxy(service)
    missing = [m for m in router.models if upstreams.get(m) is None] if upstreams else []
    if missing:
        log.warning("no upstream for %s: chat requests will not be routed to them", missing)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        service.batcher = MicroBatcher(
            service._batch,
            max_batch=settings.batch_max_size,
            max_wait_s=settings.batch_max_wait_ms / 1000.0,
            max_queue=settings.max_queue,
            on_batch=lambda n, s: (metrics.batch_size.observe(n), metrics.batch_latency.observe(s)),
        )
        await service.batcher.start()
        own_client = client is None
        service.client = client or new_client(
            timeout_s=settings.upstream_timeout_s,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            max_connections=settings.upstream_max_connections,
        )
        import torch

        threads_before = torch.get_num_threads()
        # torch's thread count is set on the thread that runs the encoder (and is process-wide on most builds)
        await loop.run_in_executor(
            service.batcher.executor, torch.set_num_threads, settings.resolved_torch_threads()
        )
        await loop.run_in_executor(service.batcher.executor, service.router.embed, ["warm-up"])
        if handle_sighup:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload_quietly()))
        log.info(
            "router-rl serving policy %s (%d models) on %s; encoder %s",
            router.artifact.version,
            len(router.models),
            router.artifact.device,
            router.embedder.describe,
        )
        if watch is not None:
            watch.start()
        if judging is not None:  # last, so the worker's start-up never slows the server's
            judging.start()
        try:
            yield
        finally:  # uvicorn has stopped accepting and waited for in-flight requests: drain and close
            if watch is not None:
                await watch.stop()
            await service.batcher.stop()
            if own_client:
                await service.client.close()
            if judging is not None:  # the worker drains within judge_drain_s, then is terminated
                await judging.aclose()
            if own_log and service.decision_log is not None:
                await loop.run_in_executor(None, service.decision_log.close)
            torch.set_num_threads(threads_before)

    async def _reload_quietly() -> None:
        with contextlib.suppress(Exception):
            await service.reload()

    app = FastAPI(
        title="router-rl",
        version="1",
        summary="Learned LLM routing: decisions, an OpenAI-compatible proxy, feedback and metrics",
        lifespan=lifespan,
        # the schema and its pages need no key; --no-docs turns them off
        docs_url="/docs" if settings.docs else None,
        redoc_url="/redoc" if settings.docs else None,
        openapi_url="/openapi.json" if settings.docs else None,
    )
    app.router.route_class = StrictJSONRoute  # before any route: every JSON body parsed strictly
    app.state.service = service
    app.state.registry_watch = watch
    app.state.judging = judging

    # ---------------------------------------------------------------- errors: always an OpenAI-style body
    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(err)
        return JSONResponse(error_body(400, message, param=param, code="invalid_request"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = err.detail if isinstance(err.detail, str) else "request failed"
        if err.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return JSONResponse(
            error_body(err.status_code, message), status_code=err.status_code, headers=err.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse(error_body(500, f"internal error ({type(err).__name__})"), status_code=500)

    # ---------------------------------------------------------------- auth
    keys = [(name, token.encode()) for name, token in settings.api_keys.items()]

    async def api_key(request: Request) -> str:
        if not keys:
            return "anonymous"
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        name = key_name(keys, token.strip()) if scheme.lower() == "bearer" else None
        if name is None:
            raise APIError(
                401,
                "missing or unknown API key: send Authorization: Bearer <token>",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return name

    # ---------------------------------------------------------------- endpoints
    @app.post("/v1/route", response_model=RouteResponse, responses=ERROR_RESPONSES)
    async def route(body: RouteRequest, key: str = Depends(api_key)) -> JSONResponse:
        """One routing decision: the model to call, the scores, the propensity and a decision id."""
        if body.prompt is not None:
            prompt = body.prompt
            if not prompt.strip():
                raise APIError(400, "the prompt is empty", param="prompt", code="empty_prompt")
            check_prompt(prompt, settings.max_prompt_chars)
        else:
            if len(body.messages or []) > settings.max_messages:
                raise APIError(400, f"more than {settings.max_messages} messages", param="messages")
            prompt = prompt_of(body.messages or [], settings.max_prompt_chars)
        limits = limits_of(body, service.router.models)
        routed = await service.decide(prompt, limits)
        durable = await service.logged(service.log_decision(routed, prompt, "route", key))
        d = routed.decision
        w = limits["cost_weight"]
        return JSONResponse(
            {
                "model": d.model,
                "scores": d.scores,
                "propensity": d.propensity,
                "decision_id": d.decision_id,
                "policy_version": d.policy_version,
                "cost_weight": float(
                    w if w is not None else routed.router.artifact.manifest.get("default_cost_weight", 0.0)
                ),
                "estimates": d.estimates,
                "durable": durable,
            },
            headers={HEADER_DURABLE: "true" if durable else "false"},
        )

    @app.post("/v1/chat/completions", responses=ERROR_RESPONSES)
    async def chat_completions(request: Request, body: ChatRequest, key: str = Depends(api_key)) -> Response:
        """OpenAI chat completions, routed: the policy picks the model, the request goes to its upstream, and
        on 429, 5xx, timeout or connection error to the next best. ``x-router-model`` names who answered."""
        cost_weight = cost_weight_of(body.model)
        if len(body.messages) > settings.max_messages:
            raise APIError(400, f"more than {settings.max_messages} messages", param="messages")
        prompt = prompt_of(body.messages, settings.max_prompt_chars)
        if not service.upstreams:
            raise APIError(
                503,
                "no upstream configured: start the router with --upstream URL or --upstreams FILE",
                code="no_upstream",
            )
        router = service.router
        limits = limits_of(body.router or Limits(), router.models, cost_weight)
        served = service.upstreams.served(router.models)
        allowed = limits["candidates"] if limits["candidates"] is not None else router.models
        reachable = [m for m in allowed if m in served]
        if not reachable:
            raise APIError(
                400,
                f"none of the candidate models {allowed} has an upstream",
                param="candidates",
                code="no_upstream",
            )
        if len(reachable) < len(router.models):
            limits["candidates"] = reachable
        routed = await service.decide(prompt, limits)
        if sticky is not None:  # the conversation's last model, when this request allows it
            routed.decision = sticky.apply(routed.decision, conversation_key(body.messages))
        future = service.log_decision(routed, prompt, "chat", key)
        payload = body.model_dump(exclude_unset=True, exclude={"router"})
        deadline = (
            request.scope.get(DEADLINE) or asyncio.get_running_loop().time() + settings.request_timeout_s
        )
        forward = proxy.stream if body.stream else proxy.complete
        # the upstream call and the decision's commit overlap; the answer waits for both
        response = await forward(
            routed, payload, key, deadline=deadline, logged=lambda: service.logged(future)
        )
        if sticky is not None and response.status_code < 300:  # the next turn goes to who answered this one
            sticky.remember(next_turn_key(body.messages), response.headers.get(HEADER_MODEL))
        if judging is not None and response.status_code == 200:
            job = None  # (grader, answer): graded once the answer has been sent
            if not body.stream:
                answer = answer_text(response)
                if answer is not None and judging.sample():
                    job = (judging.grade, answer)
            elif isinstance(response, StreamingResponse) and judging.sample():
                text = StreamText()  # gathers the streamed text as it passes; graded after the stream ended
                response.body_iterator = text.relay(response.body_iterator)
                job = (judging.grade_stream, text)
            if job is not None:
                grader, answer = job
                response.background = BackgroundTask(
                    grader,
                    routed.decision.decision_id,
                    prompt,
                    answer,
                    payload=payload,
                    model=response.headers.get(HEADER_MODEL),
                    logged=future,
                )
        return response

    @app.post("/v1/feedback", response_model=FeedbackResponse, responses=ERROR_RESPONSES)
    async def feedback(body: FeedbackRequest, key: str = Depends(api_key)) -> JSONResponse:
        """Store the judged quality of a decision; answers only once the row is committed and synced."""
        if service.decision_log is None:
            raise APIError(
                503, "the decision log is off (--log-db); feedback cannot be stored", code="no_log"
            )
        future = service.decision_log.add_feedback(
            body.decision_id,
            body.quality,
            cost_usd=body.cost_usd,
            latency_s=body.latency_s,
            source="client",  # a client cannot claim to be the judge: the body has no source field
        )
        try:
            await asyncio.wrap_future(future)
        except UnknownDecision:
            raise APIError(
                404,
                f"no decision {body.decision_id!r} in the log",
                param="decision_id",
                code="decision_not_found",
            ) from None
        except LogFull as err:
            raise APIError(503, str(err), code="overloaded", headers={"Retry-After": "1"}) from None
        metrics.feedback.inc()
        return JSONResponse({"decision_id": body.decision_id, "stored": True})

    @app.get("/v1/models")
    async def list_models(key: str = Depends(api_key)) -> JSONResponse:
        """The model names this service answers to (OpenAI's list format)."""
        created = int(service.started_at)
        data = [{"id": "router", "object": "model", "created": created, "owned_by": "router-rl"}]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Liveness and what is being served."""
        r = service.router
        health = {
            "status": "ok",
            "policy_version": r.artifact.version,
            "models": r.models,
            "device": r.artifact.device,
            "encoder": {**r.embedder.describe, "trained_max_seq_length": r.trained_max_seq_length},
            "queue": service.batcher.queued if service.batcher else 0,
            "uptime_s": round(time.time() - service.started_at, 3),
            "decision_log": service.decision_log is not None,
            "durable_decisions": service.decision_log is not None and settings.durable_decisions,
        }
        if service.decision_log is not None:  # the name this replica writes on its log rows
            health["replica"] = service.decision_log.replica
        if watch is not None:
            health["registry"] = watch.describe()
        if service.pacer is not None:
            health["budget"] = service.pacer.describe()
        if judging is not None:
            health["judge"] = judging.describe()
        if service.shadow is not None:
            counts = service.shadow_counts
            decided = counts["agree"] + counts["disagree"]
            health["shadow"] = {
                "policy_version": service.shadow.artifact.version,
                "decisions": decided,
                "agreement": counts["agree"] / decided if decided else None,
                "errors": counts["error"],
            }
        if settings.healthz_log_path and service.decision_log is not None:  # a server path: off by default
            health["decision_log_path"] = service.decision_log.location  # a URL without its password
        return JSONResponse(health)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition (``text/plain``)."""
        metrics.queue.set(service.batcher.queued if service.batcher else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", responses=ERROR_RESPONSES)
    async def admin_reload(request: Request, body: ReloadRequest | None = None) -> JSONResponse:
        """Load another artifact (or re-read the current one) and switch to it without dropping requests."""
        if not settings.admin_token:
            raise APIError(
                403, "reload over HTTP is off: start the router with --admin-token", code="admin_disabled"
            )
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        if not hmac.compare_digest(given, settings.admin_token.encode()) or scheme.lower() != "bearer":
            raise APIError(
                401,
                "missing or wrong admin token",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            result = await service.reload(body.artifact if body else None)
        except (ArtifactError, FileNotFoundError, ValueError) as err:
            raise APIError(400, f"reload refused: {err}", code="bad_artifact") from None
        return JSONResponse(result)

    app.add_middleware(EdgeMiddleware, service=service)
    return app
