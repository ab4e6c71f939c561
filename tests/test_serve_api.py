"""The router service over real HTTP on loopback: route, chat (OpenAI client, streaming), fallback, feedback,
metrics, auth, limits, bad input and hot reload. Upstream: the OpenAI-compatible stub."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai_stub import OpenAIStub
from prometheus_client.parser import text_string_to_metric_families

from router_rl.serve.app import create_app
from router_rl.serve.decision_log import read_logged_bandit_data
from router_rl.serve.proxy import relay_line, with_stream_usage
from router_rl.serve.router import Router
from router_rl.serve.settings import ServeSettings
from router_rl.serve.testing import ServerThread, free_port, shared_embedder, toy_artifact
from router_rl.serve.upstreams import Upstream, UpstreamMap, upstream_map

MODELS = ["big", "mid", "small"]
QUALITY = [0.9, 0.8, 0.5]
COST = [0.01, 0.002, 0.0001]  # cost_scale = 0.01: normalised costs 1, 0.2, 0.01
LATENCY = [3.0, 1.0, 0.5]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return toy_artifact(
        tmp_path_factory.mktemp("toy") / "artifact", MODELS, quality=QUALITY, cost_usd=COST, latency_s=LATENCY
    )


@pytest.fixture(scope="module")
def router(toy: Path) -> Router:
    return Router(toy, device="cpu", embedder=shared_embedder())


@pytest.fixture(scope="module")
def module_stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(models=MODELS) as s:
        yield s


@pytest.fixture()
def stub(module_stub: OpenAIStub) -> Iterator[OpenAIStub]:
    """The module's stub with an empty request record; every failure a test queues must be consumed."""
    module_stub.requests.clear()
    yield module_stub
    assert not module_stub._failures, "a queued upstream failure was not consumed"


@contextlib.contextmanager
def serving(router: Router, stub: OpenAIStub | None, tmp_path: Path, **settings) -> Iterator[ServerThread]:
    settings.setdefault("log_db", str(tmp_path / "decisions.sqlite"))
    upstreams = upstream_map(stub.base_url, None) if stub is not None else UpstreamMap()
    app = create_app(router, ServeSettings(**settings), upstreams=upstreams)
    with ServerThread(app) as server:
        server.service = app.state.service  # type: ignore[attr-defined]
        yield server


def client(server: ServerThread, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)


def metric(server: ServerThread, name: str, **labels: str) -> float:
    """The value of one Prometheus sample read over HTTP from /metrics (0 when absent)."""
    text = httpx.get(f"{server.url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------------------------------------ route


def test_route_answers_the_decision_of_the_artifact(router: Router, tmp_path: Path) -> None:
    with serving(router, None, tmp_path) as server:
        r = httpx.post(f"{server.url}/v1/route", json={"prompt": "Prove Fermat's little theorem."})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) >= {"model", "scores", "propensity", "decision_id", "policy_version"}
        # default cost weight 0: the best quality wins; the scores are the predicted qualities
        assert body["model"] == "big" and body["propensity"] == 1.0
        assert body["scores"] == pytest.approx(dict(zip(MODELS, QUALITY, strict=True)), abs=1e-6)
        assert body["policy_version"] == router.artifact.version
        cases = [
            ({"cost_weight": 0.2}, "mid"),  # 0.9-0.2, 0.8-0.04, 0.5-0.002
            ({"cost_weight": 100.0}, "small"),
            ({"candidates": ["mid", "small"]}, "mid"),
            ({"max_cost_usd": 0.005}, "mid"),
            ({"max_cost_usd": 0.0}, "small"),  # nothing fits: the cheapest candidate remains
            ({"latency_budget_s": 0.75}, "small"),
            ({"messages": [{"role": "system", "content": "x"}, *user("hi")], "prompt": None}, "big"),
        ]
        for extra, want in cases:
            payload = {"prompt": "hello", **extra}
            payload = {k: v for k, v in payload.items() if v is not None}
            r = httpx.post(f"{server.url}/v1/route", json=payload)
            assert r.status_code == 200, (extra, r.text)
            assert r.json()["model"] == want, extra
        r = httpx.post(f"{server.url}/v1/route", json={"prompt": "x", "candidates": ["mid"]})
        assert r.json()["scores"]["big"] is None and r.json()["scores"]["small"] is None


def test_route_over_http_equals_router_decide_for_a_trained_artifact(debug_run: dict, tmp_path: Path) -> None:
    trained = Router(debug_run["out"] / "artifact", device="cpu", embedder=shared_embedder())
    from router_rl.data import load_bundled

    prompts = list(load_bundled("arena").prompts[:24])
    with serving(trained, None, tmp_path) as server:
        for w in (0.0, 1.0, 5.0):
            served = [
                httpx.post(f"{server.url}/v1/route", json={"prompt": p, "cost_weight": w}).json()["model"]
                for p in prompts
            ]
            assert served == [d.model for d in trained.decide(prompts, cost_weight=w)], w


# ------------------------------------------------------------------------------------------------ chat


def test_openai_client_chat_names_the_model_that_answered(
    router: Router, stub: OpenAIStub, tmp_path: Path
) -> None:
    with serving(router, stub, tmp_path) as server:
        c = client(server)
        raw = c.chat.completions.with_raw_response.create(model="router-0.2", messages=user("what is 2+2?"))
        completion = raw.parse()
        assert completion.model == "mid" and raw.headers["x-router-model"] == "mid"
        assert completion.choices[0].message.content == "echo: what is 2+2?"
        assert stub.requests[-1]["json"]["model"] == "mid"  # the upstream was asked for the chosen model
        assert "router" not in stub.requests[-1]["json"]
        decision_id = raw.headers["x-router-decision-id"]

        # per-request limits through the OpenAI client's extra_body, and pass-through of other fields
        completion = c.chat.completions.create(
            model="router",
            messages=user("hi"),
            temperature=0.3,
            extra_body={"router": {"candidates": ["small", "mid"], "max_cost_usd": 0.001}},
        )
        assert completion.model == "small"
        assert stub.requests[-1]["json"]["temperature"] == 0.3

        stream = c.chat.completions.create(
            model="router-100", messages=user("stream this answer"), stream=True
        )
        chunks = list(stream)
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == (
            "echo: stream this answer"
        )
        assert {ch.model for ch in chunks} == {"small"}
        assert stub.requests[-1]["json"]["stream"] is True
        assert stub.requests[-1]["json"]["stream_options"] == {"include_usage": True}  # streamed spend counts

    log = read_logged_bandit_data(tmp_path / "decisions.sqlite")
    assert len(log) == 3 and log.decision_id[0] == decision_id
    assert [log.models[a] for a in log.action] == ["mid", "small", "small"]
    assert log.cost_weight.tolist() == [0.2, 0.0, 100.0]
    assert list(log.answered_by) == ["mid", "small", "small"]
    assert np.all(np.isfinite(log.cost_usd)) and np.all(log.cost_usd > 0)  # measured from usage x prices


FAILURES = [
    ((429, {"retry_after": 0.05}), "429"),
    ((500, {}), "5xx"),
    ((503, {}), "5xx"),
    (("timeout", {"delay": 3.0}), "timeout"),
]


# the stub's "malformed" answer is a plain 200 body: for a stream request it is not an event stream either
@pytest.mark.parametrize(
    ("failure", "kind", "stream"),
    [(f, k, s) for f, k in FAILURES for s in (False, True)]
    + [(("malformed", {}), "malformed", False), (("malformed", {}), "malformed", True)],
)
def test_upstream_failure_falls_back_to_the_next_best_model(
    router: Router, stub: OpenAIStub, tmp_path: Path, failure, kind: str, stream: bool
) -> None:
    with serving(router, stub, tmp_path, upstream_timeout_s=1.0) as server:
        stub.fail_next(failure[0], **failure[1])
        raw = client(server).chat.completions.with_raw_response.create(
            model="router", messages=user("hello"), stream=stream
        )
        answered = raw.headers["x-router-model"]
        assert answered == "mid" and raw.headers["x-router-attempts"] == "2"  # big failed, mid is next best
        if stream:
            chunks = list(raw.parse())
            assert {ch.model for ch in chunks} == {"mid"}
        else:
            assert raw.parse().model == "mid"
        assert [r["json"]["model"] for r in stub.requests] == ["big", "mid"]
        assert metric(server, "router_rl_upstream_errors_total", model="big", kind=kind) == 1
        assert metric(server, "router_rl_fallbacks_total", chosen="big") == 1
    full = read_logged_bandit_data(tmp_path / "decisions.sqlite", include_fallbacks=True)
    assert list(full.answered_by) == ["mid"] and full.models[full.action[0]] == "big"
    # a fallback's outcome belongs to another action than the logged one: off-policy data leaves it out
    assert len(read_logged_bandit_data(tmp_path / "decisions.sqlite")) == 0


def test_connection_error_falls_back(router: Router, stub: OpenAIStub, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    upstreams = UpstreamMap({"big": Upstream(dead, "big")}, default=Upstream(stub.base_url, ""))
    app = create_app(router, ServeSettings(log_db=None), upstreams=upstreams)
    with ServerThread(app) as server:
        raw = client(server).chat.completions.with_raw_response.create(model="router", messages=user("hi"))
        assert raw.headers["x-router-model"] == "mid"
        assert metric(server, "router_rl_upstream_errors_total", model="big", kind="connect") == 1


def test_every_upstream_failing_is_a_502_or_429_with_an_error_body(
    router: Router, stub: OpenAIStub, tmp_path: Path
) -> None:
    with serving(router, stub, tmp_path, max_attempts=2) as server:
        for _ in range(2):
            stub.fail_next(500)
        r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "router", "messages": user("x")})
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_failed"
        assert "big: 5xx 500" in r.json()["error"]["message"] and len(stub.requests) == 2
        for _ in range(2):
            stub.fail_next(429)
        r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "router", "messages": user("x")})
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        # a 4xx from the upstream is the caller's problem: passed through, no fallback
        stub.fail_next(400)
        n = len(stub.requests)
        r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "router", "messages": user("x")})
        assert r.status_code == 400 and len(stub.requests) == n + 1 and "error" in r.json()


def test_a_429_pauses_the_model_for_its_retry_after(router: Router, stub: OpenAIStub, tmp_path: Path) -> None:
    with serving(router, stub, tmp_path) as server:
        stub.fail_next(429, retry_after=30)
        c = client(server)
        assert (
            c.chat.completions.with_raw_response.create(model="router", messages=user("a")).headers[
                "x-router-model"
            ]
            == "mid"
        )
        # big is paused: the next request goes straight to mid, without another 429 round trip
        raw = c.chat.completions.with_raw_response.create(model="router", messages=user("b"))
        assert raw.headers["x-router-model"] == "mid" and raw.headers["x-router-attempts"] == "1"


def test_stream_relay_names_the_model_and_hides_usage_the_client_did_not_ask_for() -> None:
    payload, strip = with_stream_usage({"model": "router", "stream": True}, ask=True)
    assert payload["stream_options"] == {"include_usage": True} and strip
    asked = {"stream": True, "stream_options": {"include_usage": False}}
    assert with_stream_usage(asked, ask=True) == (asked, False)  # the client's choice stands
    assert with_stream_usage({"stream": True}, ask=False) == ({"stream": True}, False)

    chunk = {"id": "c", "model": "upstream-name", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    line, usage = relay_line("data: " + json.dumps(chunk), "mid")
    assert json.loads(line[6:])["model"] == "mid" and usage is None
    usage_only = "data: " + json.dumps(
        {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    )
    assert relay_line(usage_only, "mid", strip_usage=True) == (
        None,
        {"prompt_tokens": 3, "completion_tokens": 4},
    )
    assert relay_line(usage_only, "mid", strip_usage=False)[0] is not None
    for passthrough in ("", ": keep-alive", "data: [DONE]", "data: {not json", "event: ping"):
        assert relay_line(passthrough, "mid", strip_usage=True) == (passthrough, None)


# ------------------------------------------------------------------------------------------------ bad input

BAD_REQUESTS = [
    # (path, raw body or JSON, expected status, expected code or param in the message)
    ("/v1/route", b"{not json", 400, "not valid JSON"),
    ("/v1/route", b"[1, 2]", 400, "JSON object"),
    ("/v1/route", b"", 400, "JSON object"),
    ("/v1/route", {}, 400, "exactly one of prompt or messages"),
    ("/v1/route", {"prompt": "a", "messages": user("b")}, 400, "exactly one"),
    ("/v1/route", {"prompt": 42}, 400, "prompt"),
    ("/v1/route", {"prompt": ""}, 400, "empty"),
    ("/v1/route", {"prompt": "x", "cost_weight": "high"}, 400, "cost_weight"),
    ("/v1/route", {"prompt": "x", "cost_weight": -1}, 400, "cost_weight"),
    ("/v1/route", {"prompt": "x", "cost_weight": True}, 400, "cost_weight"),
    ("/v1/route", b'{"prompt": "x", "cost_weight": NaN}', 400, "cost_weight"),
    ("/v1/route", {"prompt": "x", "candidates": []}, 400, "candidates"),
    ("/v1/route", {"prompt": "x", "candidates": ["gpt-5"]}, 400, "unknown candidate"),
    ("/v1/route", {"prompt": "x", "candidates": "big"}, 400, "candidates"),
    ("/v1/route", {"prompt": "x", "latency_budget_s": 0}, 400, "latency_budget_s"),
    ("/v1/route", {"prompt": "x", "surprise": 1}, 400, "surprise"),
    ("/v1/route", {"messages": []}, 400, "messages"),
    ("/v1/route", {"messages": [{"role": "assistant", "content": "hi"}]}, 400, "no user message"),
    ("/v1/route", {"messages": [{"content": "hi"}]}, 400, "role"),
    ("/v1/route", {"prompt": "x" * 40_000}, 400, "prompt_too_long"),
    ("/v1/chat/completions", {"model": "gpt-4", "messages": user("x")}, 404, "model_not_found"),
    ("/v1/chat/completions", {"model": "router-abc", "messages": user("x")}, 404, "model_not_found"),
    ("/v1/chat/completions", {"model": "router--1", "messages": user("x")}, 404, "model_not_found"),
    ("/v1/chat/completions", {"model": "router", "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": "router"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": user("x")}, 400, "model"),
    ("/v1/chat/completions", {"model": "router", "messages": "hello"}, 400, "messages"),
    ("/v1/chat/completions", {"model": "router", "messages": [None]}, 400, "messages"),
    ("/v1/chat/completions", {"model": "router", "messages": user("x"), "stream": "yes"}, 400, "stream"),
    ("/v1/chat/completions", {"model": "router", "messages": user("")}, 400, "empty_prompt"),
    (
        "/v1/chat/completions",
        {"model": "router", "messages": user("x"), "router": {"candidates": ["z"]}},
        400,
        "unknown candidate",
    ),
    (
        "/v1/chat/completions",
        {"model": "router", "messages": user("x"), "router": {"cost_weight": -2}},
        400,
        "cost_weight",
    ),
    ("/v1/feedback", {"decision_id": "x"}, 400, "quality"),
    ("/v1/feedback", {"decision_id": "x", "quality": 1.5}, 400, "quality"),
    ("/v1/feedback", {"decision_id": "x", "quality": "good"}, 400, "quality"),
    ("/v1/feedback", {"decision_id": "no-such-decision", "quality": 0.5}, 404, "decision_not_found"),
    ("/v1/nothing-here", {"a": 1}, 404, "no route"),
]


@pytest.mark.parametrize(("path", "body", "status", "needle"), BAD_REQUESTS)
def test_bad_input_gets_a_4xx_with_an_openai_error_body(
    shared_server: ServerThread, path: str, body, status: int, needle: str
) -> None:
    server = shared_server
    if isinstance(body, bytes):
        r = httpx.post(server.url + path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = httpx.post(server.url + path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert needle in json.dumps(error), error


@pytest.fixture(scope="module")
def shared_server(
    router: Router, module_stub: OpenAIStub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    with serving(router, module_stub, tmp_path_factory.mktemp("shared")) as server:
        yield server


def test_body_size_limit_and_method_errors(router: Router, tmp_path: Path) -> None:
    with serving(router, None, tmp_path, max_body_bytes=2_000) as server:
        r = httpx.post(f"{server.url}/v1/route", json={"prompt": "x" * 5_000})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        def chunks():  # no Content-Length: the limit still holds while the body streams in
            for _ in range(10):
                yield b"x" * 1_000

        r = httpx.post(
            f"{server.url}/v1/route", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413
        r = httpx.get(f"{server.url}/v1/route")
        assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
        assert httpx.post(f"{server.url}/v1/route", json={"prompt": "fine"}).status_code == 200


def test_bearer_tokens_and_spend_per_api_key(router: Router, stub: OpenAIStub, tmp_path: Path) -> None:
    keys = {"team-a": "sk-aaaa", "team-b": "sk-bbbb"}
    with serving(router, stub, tmp_path, api_keys=keys) as server:
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Basic sk-aaaa"}):
            r = httpx.post(f"{server.url}/v1/route", json={"prompt": "x"}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client(server, "sk-wrong").chat.completions.create(model="router", messages=user("x"))
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # probes need no key

        for key, n in (("sk-aaaa", 2), ("sk-bbbb", 1)):
            for _ in range(n):
                client(server, key).chat.completions.create(model="router", messages=user("a" * 400))
        # the stub's usage: 100 prompt tokens, 101 completion tokens; big costs 5 $ per 1M tokens in and out
        one = (100 + 101) * 5.0 / 1e6
        assert metric(server, "router_rl_spend_usd_total", model="big", api_key="team-a") == pytest.approx(
            2 * one
        )
        assert metric(server, "router_rl_spend_usd_total", model="big", api_key="team-b") == pytest.approx(
            one
        )
    log = read_logged_bandit_data(tmp_path / "decisions.sqlite")
    assert log.cost_usd == pytest.approx([one] * 3)


def test_metrics_count_requests_decisions_and_latency(
    router: Router, stub: OpenAIStub, tmp_path: Path
) -> None:
    with serving(router, stub, tmp_path) as server:
        for w in (0.0, 0.0, 100.0):
            httpx.post(f"{server.url}/v1/route", json={"prompt": "x", "cost_weight": w})
        httpx.post(f"{server.url}/v1/route", json={"prompt": 1})
        client(server).chat.completions.create(model="router-0.2", messages=user("x"))
        assert metric(server, "router_rl_requests_total", endpoint="/v1/route", status="200") == 3
        assert metric(server, "router_rl_requests_total", endpoint="/v1/route", status="400") == 1
        assert metric(server, "router_rl_decisions_total", model="big") == 2
        assert metric(server, "router_rl_decisions_total", model="small") == 1
        assert metric(server, "router_rl_decisions_total", model="mid") == 1
        assert metric(server, "router_rl_request_latency_seconds_count", endpoint="/v1/chat/completions") == 1
        assert metric(server, "router_rl_upstream_requests_total", model="mid", outcome="ok") == 1
        assert metric(server, "router_rl_decision_latency_seconds_count") == 4
        assert metric(server, "router_rl_policy_info", version=router.artifact.version) == 1
        assert httpx.get(f"{server.url}/metrics").headers["content-type"].startswith("text/plain")


def test_feedback_is_stored_before_the_answer(router: Router, tmp_path: Path) -> None:
    with serving(router, None, tmp_path) as server:
        ids = [
            httpx.post(f"{server.url}/v1/route", json={"prompt": f"q{i}"}).json()["decision_id"]
            for i in range(3)
        ]
        for i, decision_id in enumerate(ids[:2]):
            r = httpx.post(
                f"{server.url}/v1/feedback",
                json={"decision_id": decision_id, "quality": 0.25 * (i + 1), "cost_usd": 0.5},
            )
            assert r.json() == {"decision_id": decision_id, "stored": True}
            # acknowledged means committed: another connection sees it at once, while the server still runs
            data = read_logged_bandit_data(tmp_path / "decisions.sqlite", require_feedback=True)
            assert decision_id in set(data.decision_id)
        r = httpx.post(f"{server.url}/v1/feedback", json={"decision_id": ids[0], "quality": 1.0})
        assert r.status_code == 200  # the latest feedback wins
    data = read_logged_bandit_data(tmp_path / "decisions.sqlite")
    assert data.quality[:2].tolist() == [1.0, 0.5] and np.isnan(data.quality[2])
    assert data.has_feedback.tolist() == [True, True, False]
    assert data.cost_usd[1] == 0.5


def test_health_models_and_no_upstream(router: Router, tmp_path: Path) -> None:
    with serving(router, None, tmp_path, log_db=None) as server:
        health = httpx.get(f"{server.url}/healthz").json()
        assert health["status"] == "ok" and health["models"] == MODELS and health["device"] == "cpu"
        assert [m.id for m in client(server).models.list()] == ["router"]
        r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "router", "messages": user("x")})
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_upstream"
        r = httpx.post(f"{server.url}/v1/feedback", json={"decision_id": "x", "quality": 1})
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_log"


def test_openapi_documents_every_endpoint(router: Router, tmp_path: Path) -> None:
    with serving(router, None, tmp_path, log_db=None) as server:
        spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {
        "/v1/route",
        "/v1/chat/completions",
        "/v1/feedback",
        "/healthz",
        "/metrics",
        "/admin/reload",
    } <= set(spec["paths"])
    assert "400" in spec["paths"]["/v1/route"]["post"]["responses"]


# ------------------------------------------------------------------------------------------------ reload


def test_hot_reload_swaps_the_policy_without_dropping_requests(router: Router, tmp_path: Path) -> None:
    cheap = toy_artifact(tmp_path / "cheap", MODELS, quality=[0.5, 0.6, 0.9], cost_usd=COST)  # small is best
    broken = tmp_path / "broken"
    shutil.copytree(cheap, broken)
    (broken / "weights.safetensors").write_bytes(b"garbage")
    admin = {"Authorization": "Bearer admin-secret"}
    with serving(router, None, tmp_path, admin_token="admin-secret") as server:
        assert httpx.post(f"{server.url}/admin/reload", json={"artifact": str(cheap)}).status_code == 401
        results: list[tuple[int, str]] = []
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client() as c:
                for i in range(400):  # bounded
                    if stop.is_set():
                        break
                    r = c.post(f"{server.url}/v1/route", json={"prompt": f"p{i}"})
                    results.append((r.status_code, r.json().get("model", "")))

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        r = httpx.post(f"{server.url}/admin/reload", json={"artifact": str(cheap)}, headers=admin, timeout=60)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["previous"] == router.artifact.version != r.json()["policy_version"]
        assert results and all(status == 200 for status, _ in results)
        after = httpx.post(f"{server.url}/v1/route", json={"prompt": "x"}).json()
        assert after["model"] == "small" and after["policy_version"] == r.json()["policy_version"]

        r = httpx.post(f"{server.url}/admin/reload", json={"artifact": str(broken)}, headers=admin)
        assert r.status_code == 400 and "sha256" in r.json()["error"]["message"]
        assert httpx.get(f"{server.url}/healthz").json()["policy_version"] == after["policy_version"]
        assert metric(server, "router_rl_reloads_total", result="ok") == 1
        assert metric(server, "router_rl_reloads_total", result="error") == 1
    with serving(router, None, tmp_path, log_db=None) as server:  # no admin token: reload over HTTP is off
        assert httpx.post(f"{server.url}/admin/reload", json={}).status_code == 403
