"""Pairwise judging: for a share of the graded answers the reference model answers the same request too and
the judge compares both answers in both orders; the served answer's win rate is stored as pairwise feedback,
apart from the single grades."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai_stub import OpenAIStub
from test_judge_sampling import MODELS, ask, judge_metrics, serving, wait_for

from router_rl.serve.decision_log import read_logged_bandit_data
from router_rl.serve.settings import SettingsError


@pytest.fixture()
def stub() -> Iterator[OpenAIStub]:
    """Upstreams (``small`` is the reference: its answers say so) and a judge that rates every answer 8 and,
    comparing two, prefers the one that is not the reference's."""
    with OpenAIStub(models=[*MODELS, "judge"], backlog=32) as s:

        def reply(req: dict) -> str:
            text = req["messages"][-1]["content"]
            if req["model"] == "judge":
                if "[The Start of Assistant A's Answer]" in text:
                    a = text.split("[The Start of Assistant A's Answer]")[1].split("[The End of")[0]
                    return "A is the reference's. [[B]]" if "reference" in a else "A is better. [[A]]"
                return "The answer is fine. Rating: [[8]]"
            if req["model"] == "small":
                return f"reference answer to {text}"
            return f"answer to {text}"

        s.reply = reply
        yield s


def pairwise_metrics(http: httpx.Client) -> dict[str, float]:
    return {k: v for k, v in judge_metrics(http).items() if k.startswith("router_rl_judge_pairwise")}


def test_answers_are_compared_with_the_reference_model(tmp_path: Path, stub: OpenAIStub) -> None:
    server, app = serving(
        tmp_path, stub, judge_share=1.0, judge_pairwise_share=1.0, judge_reference_model="small"
    )
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        ids = [ask(http, f"question {i}").headers["x-router-decision-id"] for i in range(3)]
        payload = {
            "model": "router",
            "stream": True,
            "messages": [{"role": "user", "content": "streamed one"}],
        }
        with http.stream("POST", "/v1/chat/completions", json=payload) as r:
            ids.append(r.headers["x-router-decision-id"])
            r.read()
        wait_for(http, "router_rl_judge_pairwise/ok", 4)
        # an answer the reference model served itself is graded but not compared with itself
        r = http.post(
            "/v1/chat/completions",
            json={
                "model": "router",
                "messages": [{"role": "user", "content": "by small"}],
                "router": {"candidates": ["small"]},
            },
        )
        assert r.status_code == 200 and r.headers["x-router-model"] == "small"
        wait_for(http, "router_rl_judge_grades/ok", 5)
        assert pairwise_metrics(http)["router_rl_judge_pairwise/ok"] == 4
        app.state.service.decision_log.flush()
    judging = app.state.judging  # the reference answers and the comparisons came from the judge worker
    assert set(judging.graded_by) == {judging.worker.pid} and judging.graded_by[judging.worker.pid] == 5 + 4
    log = tmp_path / "log.sqlite"
    pairwise = read_logged_bandit_data(log, feedback_source="pairwise", require_feedback=True)
    assert sorted(pairwise.decision_id) == sorted(ids)
    assert list(pairwise.quality) == [1.0] * 4  # the served answer won in both orders
    assert list(pairwise.feedback_source) == ["pairwise"] * 4
    single = read_logged_bandit_data(log, require_feedback=True)  # any: the single grades, never pairwise
    assert len(single) == 5 and set(single.feedback_source) == {"judge"} and set(single.quality) == {0.8}
    references = [q["json"] for q in stub.requests if q["json"]["model"] == "small"]
    assert len(references) == 5  # 4 reference answers + the one small served
    assert all(not q.get("stream") for q in references)  # asked without streaming, the streamed one too
    compares = [q for q in stub.requests if "Assistant A" in q["json"]["messages"][-1]["content"]]
    assert len(compares) == 8  # both orders of each comparison


def test_reference_failures_are_counted(tmp_path: Path, stub: OpenAIStub) -> None:
    server, app = serving(
        tmp_path, stub, judge_share=1.0, judge_pairwise_share=1.0, judge_reference_model="small"
    )
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        stub.fail_next(500, model="small")
        ask(http, "the reference is down")
        wait_for(http, "router_rl_judge_pairwise/reference_error", 1)
        app.state.service.decision_log.flush()
    assert (
        len(
            read_logged_bandit_data(
                tmp_path / "log.sqlite", feedback_source="pairwise", require_feedback=True
            )
        )
        == 0
    )


def test_pairwise_settings(tmp_path: Path, stub: OpenAIStub) -> None:
    from router_rl.serve.settings import ServeSettings

    with pytest.raises(SettingsError, match="judge_reference_model"):
        ServeSettings(judge_pairwise_share=0.5).validate()
    with pytest.raises(SettingsError, match="judge_pairwise_share"):
        ServeSettings(judge_pairwise_share=2.0, judge_reference_model="small").validate()
    with pytest.raises(SettingsError, match="judge_reference_model='gpt-9'.*big, mid, small"):
        serving(tmp_path, stub, judge_share=1.0, judge_pairwise_share=0.5, judge_reference_model="gpt-9")
