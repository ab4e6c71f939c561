"""Sticky conversations: later turns stay on the model that answered the last one, move when it fails or the
request's limits exclude it, are logged with propensity 1, and are counted in /metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai_stub import OpenAIStub
from prometheus_client.parser import text_string_to_metric_families

from router_rl.serve.app import create_app
from router_rl.serve.decision_log import read_logged_bandit_data
from router_rl.serve.router import Router
from router_rl.serve.schemas import Message
from router_rl.serve.settings import ServeSettings, SettingsError
from router_rl.serve.sticky import conversation_key, next_turn_key
from router_rl.serve.testing import ServerThread, shared_embedder, toy_artifact
from router_rl.serve.upstreams import upstream_map

MODELS = ["big", "mid", "small"]


def msgs(*pairs: tuple[str, str]) -> list[Message]:
    return [Message(role=r, content=c) for r, c in pairs]


def test_keys_follow_the_conversation_not_the_answers() -> None:
    first = msgs(("system", "be brief"), ("user", "hi"))
    assert conversation_key(msgs(("user", "hi"))) is None  # a first turn continues nothing
    second = [
        *first,
        Message(role="assistant", content="any answer text"),
        Message(role="user", content="more"),
    ]
    assert conversation_key(second) == next_turn_key(first)
    other = [*msgs(("system", "be brief"), ("user", "hello")), *second[2:]]
    assert conversation_key(other) != conversation_key(second)


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(models=MODELS) as s:
        yield s


def serve(tmp_path: Path, stub: OpenAIStub, **settings) -> tuple[ServerThread, object]:
    toy = toy_artifact(tmp_path / "toy", MODELS, quality=[0.8, 0.75, 0.6], cost_usd=[0.01, 0.002, 0.0001])
    router = Router(toy, device="cpu", embedder=shared_embedder())
    # epsilon = 1: without stickiness every turn's model is a fresh uniform draw
    settings = ServeSettings(log_db=str(tmp_path / "log.sqlite"), explore_epsilon=1.0, seed=11, **settings)
    app = create_app(router, settings, upstreams=upstream_map(stub.base_url, None))
    return ServerThread(app), app


def chat(http: httpx.Client, conversation: list[dict], **router: object) -> str:
    body = {"model": "router", "messages": conversation, **({"router": router} if router else {})}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    conversation.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})
    return r.headers["x-router-model"]


def sticky_counts(http: httpx.Client) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        if family.name == "router_rl_sticky_decisions":
            for s in family.samples:
                if s.name.endswith("_total"):
                    out[s.labels["sticky"]] = s.value
    return out


def test_conversations_stick_and_move_on_failure_or_limits(tmp_path: Path, stub: OpenAIStub) -> None:
    server, app = serve(tmp_path, stub, sticky_conversations=True)
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        convs, firsts = [], []
        for c in range(6):
            conv = [{"role": "user", "content": f"conversation {c}, turn 0"}]
            firsts.append(chat(http, conv))
            for t in range(1, 4):
                conv.append({"role": "user", "content": f"conversation {c}, turn {t}"})
                assert chat(http, conv) == firsts[c]  # every later turn on the first turn's model
            convs.append(conv)
        assert len(set(firsts)) > 1  # the first turns were drawn, not fixed
        assert sticky_counts(http) == {"true": 18.0, "false": 6.0}

        # the conversation's model fails: the fallback answers, and the conversation moves to it
        conv, model = convs[0], firsts[0]
        stub.fail_next(500, model=model)
        conv.append({"role": "user", "content": "after a failure"})
        moved = chat(http, conv)
        assert moved != model
        conv.append({"role": "user", "content": "and then"})
        assert chat(http, conv) == moved

        # limits that exclude the conversation's model: the policy decides (among the allowed)
        conv.append({"role": "user", "content": "cheaper please"})
        others = [m for m in MODELS if m != moved]
        assert chat(http, conv, candidates=others) in others
        app.state.service.decision_log.flush()
    log = read_logged_bandit_data(tmp_path / "log.sqlite", include_fallbacks=True)
    assert (log.propensity == 1.0).sum() >= 18  # sticky decisions are deterministic given the conversation


def test_without_stickiness_turns_are_redrawn(tmp_path: Path, stub: OpenAIStub) -> None:
    server, _ = serve(tmp_path, stub)
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        conv = [{"role": "user", "content": "turn 0"}]
        models = {chat(http, conv)}
        for t in range(1, 8):
            conv.append({"role": "user", "content": f"turn {t}"})
            models.add(chat(http, conv))
        assert len(models) > 1
        assert sticky_counts(http) == {}


def test_sticky_table_size_is_checked() -> None:
    with pytest.raises(SettingsError, match="sticky_max_conversations"):
        ServeSettings(sticky_max_conversations=0).validate()
