"""Schema fuzzing: bodies generated from the app's own OpenAPI schema (every POST endpoint, every field given
arbitrary JSON, unknown fields, raw bytes) never get a 500, and every error has an OpenAI-style body."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai_stub import OpenAIStub

from router_rl.serve.app import create_app
from router_rl.serve.router import Router
from router_rl.serve.settings import ServeSettings
from router_rl.serve.testing import ServerThread, shared_embedder, toy_artifact
from router_rl.serve.upstreams import upstream_map

MODELS = ["big", "mid", "small"]
ADMIN = "fuzz-admin"
EXAMPLES = 60  # per endpoint and strategy; derandomized, so the run is the same every time


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("fuzz")
    art = toy_artifact(root / "artifact", MODELS, quality=[0.9, 0.8, 0.5], cost_usd=[0.01, 0.002, 0.0001])
    router = Router(art, device="cpu", embedder=shared_embedder())
    with OpenAIStub(models=MODELS) as stub:
        settings_ = ServeSettings(log_db=str(root / "log.sqlite"), admin_token=ADMIN, max_body_bytes=200_000)
        app = create_app(router, settings_, upstreams=upstream_map(stub.base_url, None))
        with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
            spec = client.get("/openapi.json").json()
            yield {"client": client, "spec": spec, "root": Path(root)}


def request_fields(spec: dict, path: str) -> list[str]:
    """The property names of the JSON body schema of ``POST path`` (following $ref and anyOf)."""
    body = spec["paths"][path]["post"].get("requestBody", {}).get("content", {}).get("application/json", {})
    schema = body.get("schema", {})
    for option in [schema, *schema.get("anyOf", [])]:
        ref = option.get("$ref")
        if ref:
            return list(spec["components"]["schemas"][ref.rsplit("/", 1)[1]].get("properties", {}))
    return []


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", ""]) | json_values},
        optional={"content": st.text(max_size=60) | json_values},
    ),
    max_size=3,
)
field_values = {
    "prompt": st.text(max_size=80) | json_values,
    "messages": messages | json_values,
    "model": st.sampled_from(["router", "router-0.5", "router-1e3", "router-", "gpt-4", ""]) | json_values,
    "candidates": st.lists(st.sampled_from([*MODELS, "nope"]), max_size=4) | json_values,
    "cost_weight": st.floats(allow_nan=False, allow_infinity=False) | json_values,
    "quality": st.floats(min_value=-1, max_value=2) | json_values,
    "stream": st.booleans() | json_values,
}


def check(response: httpx.Response) -> None:
    assert response.status_code < 500 or response.status_code in (502, 503), (
        response.status_code,
        response.text,
    )
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert set(error) == {"message", "type", "param", "code"}


def test_every_post_endpoint_is_fuzzed(server: dict) -> None:
    posts = {p for p, ops in server["spec"]["paths"].items() if "post" in ops}
    assert posts == {"/v1/route", "/v1/chat/completions", "/v1/feedback", "/admin/reload"}
    for path in posts - {"/admin/reload"}:
        assert request_fields(server["spec"], path), path


prompts = st.text(min_size=1, max_size=80).filter(str.strip)
limits = st.fixed_dictionaries(
    {},
    optional={
        "cost_weight": st.floats(min_value=0, max_value=1e6),
        "candidates": st.lists(st.sampled_from(MODELS), min_size=1, max_size=3),
        "max_cost_usd": st.floats(min_value=0, max_value=1),
        "latency_budget_s": st.floats(min_value=0.01, max_value=10),
    },
)


def valid_bodies(path: str, decision_ids: list[str]) -> st.SearchStrategy[dict]:
    """Bodies the endpoint accepts, to be mutated field by field."""
    if path == "/v1/route":
        return st.tuples(prompts, limits).map(lambda t: {"prompt": t[0], **t[1]})
    if path == "/v1/chat/completions":
        return st.tuples(st.sampled_from(["router", "router-0.5", "router-20"]), prompts, limits).map(
            lambda t: {"model": t[0], "messages": [{"role": "user", "content": t[1]}], "router": t[2]}
        )
    if path == "/v1/feedback":
        return st.tuples(st.sampled_from(decision_ids), st.floats(min_value=0, max_value=1)).map(
            lambda t: {"decision_id": t[0], "quality": t[1]}
        )
    return st.just({})


def mutate(body: dict, mutations: list[tuple[str, str, object]]) -> dict:
    out = dict(body)
    for op, field, value in mutations:
        if op == "del":
            out.pop(field, None)
        else:
            out[field] = value
    return out


@pytest.mark.parametrize("path", ["/v1/route", "/v1/chat/completions", "/v1/feedback", "/admin/reload"])
def test_schema_guided_bodies_never_get_a_500(server: dict, path: str) -> None:
    fields = request_fields(server["spec"], path)
    decision_ids = [
        server["client"].post("/v1/route", json={"prompt": f"seed {i}"}).json()["decision_id"]
        for i in range(3)
    ] + ["no-such-decision"]
    mutation = st.tuples(
        st.sampled_from(["set", "set", "del"]),
        st.sampled_from([*fields, "unknown_field"]),
        st.one_of(*(field_values[f] for f in fields if f in field_values), json_values),
    )
    strategy = st.tuples(valid_bodies(path, decision_ids), st.lists(mutation, max_size=2)).map(
        lambda t: mutate(*t)
    )
    seen: set[int] = set()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=strategy)
    def run(body: dict) -> None:
        if path == "/admin/reload" and isinstance(body.get("artifact"), str):
            body["artifact"] = str(server["root"] / "no-artifact-here" / body["artifact"][:20])
        headers = {"Authorization": f"Bearer {ADMIN}"} if path == "/admin/reload" else {}
        response = server["client"].post(path, json=body, headers=headers)
        check(response)
        seen.add(response.status_code)

    run()
    # both accepted and refused bodies: the fuzzing reaches the handlers' logic, not only the validator
    assert 200 in seen and seen - {200}, seen


@pytest.mark.parametrize("path", ["/v1/route", "/v1/chat/completions", "/v1/feedback"])
def test_arbitrary_json_and_bytes_never_get_a_500(server: dict, path: str) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(raw=json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200))
    def run(raw: bytes) -> None:
        check(server["client"].post(path, content=raw, headers={"Content-Type": "application/json"}))

    run()
