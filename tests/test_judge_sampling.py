"""Judge sampling in serve: answered chat requests graded by an LLM judge (tests/openai_stub.py) after the
answer went out, grades stored as feedback, the hourly budget and judge failures counted, clients untouched."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai_stub import OpenAIStub
from prometheus_client.parser import text_string_to_metric_families

from router_rl.serve.app import create_app
from router_rl.serve.decision_log import read_logged_bandit_data
from router_rl.serve.router import Router
from router_rl.serve.settings import ServeSettings, SettingsError
from router_rl.serve.testing import ServerThread, shared_embedder, toy_artifact
from router_rl.serve.upstreams import upstream_map

MODELS = ["big", "mid", "small"]


@pytest.fixture()
def stub() -> Iterator[OpenAIStub]:
    """Upstream models and the judge (model ``judge``, which rates every answer 8) on one stub server."""
    with OpenAIStub(models=[*MODELS, "judge"], backlog=32) as s:
        s.gate = threading.Event()
        s.gate.set()

        def reply(req: dict) -> str:
            if req["model"] == "judge":
                assert s.gate.wait(30)
                return "The answer is fine. Rating: [[8]]"
            return f"answer to {req['messages'][-1]['content']}"

        s.reply = reply
        yield s


def serving(tmp_path: Path, stub: OpenAIStub, **settings) -> tuple[ServerThread, object]:
    toy = toy_artifact(tmp_path / "toy", MODELS, quality=[0.8, 0.75, 0.6], cost_usd=[0.01, 0.002, 0.0001])
    router = Router(toy, device="cpu", embedder=shared_embedder())
    settings = ServeSettings(
        log_db=str(tmp_path / "log.sqlite"), judge_url=stub.base_url, judge_max_retries=0, **settings
    )
    app = create_app(router, settings, upstreams=upstream_map(stub.base_url, None))
    return ServerThread(app), app


def judge_metrics(http: httpx.Client) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        if family.name.startswith("router_rl_judge"):
            for s in family.samples:
                if s.name.endswith("_total"):
                    label = next(iter(s.labels.values()), "")
                    out[f"{family.name}/{label}" if label else family.name] = s.value
    return out


def wait_for(http: httpx.Client, key: str, value: float, timeout_s: float = 60.0) -> dict[str, float]:
    """Poll the judge metrics until ``key`` reaches ``value``: a bound, not a timing claim (a spawned judge
    worker took over 20 s to import and grade four answers on a 2-core machine running three other jobs)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        m = judge_metrics(http)
        if m.get(key, 0.0) >= value:
            return m
        time.sleep(0.05)
    raise AssertionError(f"{key} did not reach {value}: {judge_metrics(http)}")


def ask(http: httpx.Client, text: str) -> httpx.Response:
    r = http.post(
        "/v1/chat/completions", json={"model": "router", "messages": [{"role": "user", "content": text}]}
    )
    assert r.status_code == 200, r.text
    return r


def test_grades_arrive_after_the_answer_and_become_feedback(tmp_path: Path, stub: OpenAIStub) -> None:
    server, app = serving(tmp_path, stub, judge_share=1.0)
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        stub.gate.clear()  # the judge hangs: answers must come back all the same
        ids = [ask(http, f"question {i}").headers["x-router-decision-id"] for i in range(4)]
        assert judge_metrics(http).get("router_rl_judge_grades/ok", 0.0) == 0.0
        stub.gate.set()
        m = wait_for(http, "router_rl_judge_grades/ok", 4)
        app.state.service.decision_log.flush()
        log = read_logged_bandit_data(tmp_path / "log.sqlite", require_feedback=True)
        assert sorted(log.decision_id) == sorted(ids)
        assert list(log.quality) == [0.8] * 4 and list(log.feedback_source) == ["judge"] * 4
        # a client grades one of them too: both rows stay, the client's wins; a client cannot pose as the judge
        r = http.post("/v1/feedback", json={"decision_id": ids[0], "quality": 0.1})
        assert r.status_code == 200, r.text
        r = http.post("/v1/feedback", json={"decision_id": ids[1], "quality": 0.1, "source": "judge"})
        assert r.status_code == 400 and "source" in r.json()["error"]["message"]
    log = read_logged_bandit_data(tmp_path / "log.sqlite", require_feedback=True)
    by_id = dict(zip(log.decision_id, zip(log.feedback_source, log.quality, strict=True), strict=True))
    assert by_id[ids[0]] == ("client", 0.1) and by_id[ids[1]] == ("judge", 0.8)
    judged = read_logged_bandit_data(tmp_path / "log.sqlite", feedback_source="judge", require_feedback=True)
    assert sorted(judged.decision_id) == sorted(ids) and list(judged.quality) == [0.8] * 4
    clients = read_logged_bandit_data(
        tmp_path / "log.sqlite", feedback_source="client", require_feedback=True
    )
    assert list(clients.decision_id) == [ids[0]]
    judged = [r for r in stub.requests if r["json"]["model"] == "judge"]
    assert len(judged) == 4 and "answer to question" in judged[0]["json"]["messages"][-1]["content"]
    assert m.get("router_rl_judge_skipped/budget", 0.0) == 0.0


def test_budget_and_share_limit_grading(tmp_path: Path, stub: OpenAIStub) -> None:
    # $1 per judge input token: the first grade spends the hour's $0.5 budget, the rest are skipped
    server, _ = serving(
        tmp_path, stub, judge_share=1.0, judge_budget_usd_per_hour=0.5, judge_usd_per_1m_input=1e6
    )
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        ask(http, "first")
        wait_for(http, "router_rl_judge_grades/ok", 1)
        ask(http, "second")
        ask(http, "third")
        m = wait_for(http, "router_rl_judge_skipped/budget", 2)
        assert m["router_rl_judge_grades/ok"] == 1 and m["router_rl_judge_spend_usd"] > 0.5
    server, _ = serving(tmp_path / "share", stub, judge_share=0.25, seed=1)
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        for i in range(40):
            ask(http, f"q {i}")
        m = judge_metrics(http)
        sampled = 40 - m["router_rl_judge_skipped/sampled_out"]
        assert 3 <= sampled <= 18  # binomial(40, 0.25): mean 10, sd 2.7


def test_judge_failures_are_counted_not_served(tmp_path: Path, stub: OpenAIStub) -> None:
    server, app = serving(tmp_path, stub, judge_share=1.0)
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        stub.fail_next(500, model="judge")
        r = ask(http, "graded by a broken judge")
        assert r.json()["choices"][0]["message"]["content"] == "answer to graded by a broken judge"
        wait_for(http, "router_rl_judge_grades/error", 1)
        app.state.service.decision_log.flush()
    assert len(read_logged_bandit_data(tmp_path / "log.sqlite", require_feedback=True)) == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"judge_share": 1.5}, "judge_share"),
        ({"judge_share": 0.1}, "judge_url"),
        ({"judge_share": 0.1, "judge_url": "http://x/v1", "log_db": None}, "without a decision log"),
        ({"judge_budget_usd_per_hour": -1.0}, "judge_budget_usd_per_hour"),
    ],
)
def test_bad_judge_settings(changes: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        ServeSettings(**changes).validate()
