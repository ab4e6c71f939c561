"""The judge worker (serve/judge_worker.py): sampled answers are graded in a separate process that stores the
grades itself; a full queue drops and counts, a dead worker is restarted (or grading falls back to the event
loop) while serving goes on, and shutdown drains within its bound, then terminates."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from openai_stub import OpenAIStub
from test_judge_sampling import ask, judge_metrics, serving, stub, wait_for  # noqa: F401 - stub: a fixture

from router_rl.serve.decision_log import read_logged_bandit_data


def metric(app, name: str, **labels: str) -> float:
    value = app.state.service.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def wait_until(predicate, what: str, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)


def test_grades_are_made_and_stored_by_the_worker_process(tmp_path: Path, stub: OpenAIStub) -> None:  # noqa: F811
    server, app = serving(tmp_path, stub, judge_share=1.0)
    judging = app.state.judging
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        ids = [ask(http, f"question {i}").headers["x-router-decision-id"] for i in range(3)]
        wait_for(http, "router_rl_judge_grades/ok", 3)
        worker_pid = judging.worker.pid
        health = http.get("/healthz").json()["judge"]
        assert health["grading"] == "worker" and health["worker_pid"] == worker_pid
        assert metric(app, "router_rl_judge_worker_up") == 1.0
        replica = app.state.service.decision_log.replica
    assert worker_pid != os.getpid()
    assert dict(judging.graded_by) == {worker_pid: 3}  # every grade came back from the worker's pid
    assert not judging.worker.process.is_alive()  # stopped with the server
    log = read_logged_bandit_data(tmp_path / "log.sqlite", feedback_source="judge", require_feedback=True)
    assert sorted(log.decision_id) == sorted(ids) and list(log.quality) == [0.8] * 3
    import sqlite3

    with sqlite3.connect(tmp_path / "log.sqlite") as con:  # written by the worker under the server's name
        assert {r[0] for r in con.execute("SELECT replica FROM feedback")} == {replica}


def test_grades_on_the_event_loop_without_a_worker(tmp_path: Path, stub: OpenAIStub) -> None:  # noqa: F811
    server, app = serving(tmp_path, stub, judge_share=1.0, judge_worker=False)
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        ask(http, "graded here")
        wait_for(http, "router_rl_judge_grades/ok", 1)
        assert http.get("/healthz").json()["judge"]["grading"] == "event_loop"
    assert dict(app.state.judging.graded_by) == {os.getpid(): 1}


def test_grades_wait_for_their_decision_row(tmp_path: Path, stub: OpenAIStub) -> None:  # noqa: F811
    # decisions not awaited before the answer: the worker's feedback still never reaches the log before its
    # decision (an unknown decision would be a log_error)
    server, app = serving(tmp_path, stub, judge_share=1.0, durable_decisions=False)
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        for i in range(5):
            ask(http, f"q {i}")
        m = wait_for(http, "router_rl_judge_grades/ok", 5)
        assert m.get("router_rl_judge_grades/log_error", 0.0) == 0.0
    assert len(read_logged_bandit_data(tmp_path / "log.sqlite", require_feedback=True)) == 5


def test_a_full_queue_drops_and_counts(tmp_path: Path, stub: OpenAIStub) -> None:  # noqa: F811
    # one answer handed over at most, and the judge hangs on it: the next nine are dropped at once
    server, app = serving(tmp_path, stub, judge_share=1.0, judge_queue_size=1)
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        stub.gate.clear()
        for i in range(10):  # every answer comes back while the judge hangs
            assert ask(http, f"q {i}").json()["choices"][0]["message"]["content"] == f"answer to q {i}"
        wait_until(
            lambda: metric(app, "router_rl_judge_skipped_total", reason="queue_full") == 9, "9 dropped"
        )
        assert metric(app, "router_rl_judge_queued") == 1
        stub.gate.set()
        wait_for(http, "router_rl_judge_grades/ok", 1)
        assert ask(http, "once the queue has room").status_code == 200
        m = wait_for(http, "router_rl_judge_grades/ok", 2)
        assert m["router_rl_judge_grades/ok"] == 2 and m["router_rl_judge_skipped/queue_full"] == 9
        app.state.service.decision_log.flush()
    assert len(read_logged_bandit_data(tmp_path / "log.sqlite", require_feedback=True)) == 2


def test_a_dead_worker_is_restarted_and_serving_goes_on(
    tmp_path: Path,
    stub: OpenAIStub,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="router_rl.serve")
    server, app = serving(tmp_path, stub, judge_share=1.0)
    judging = app.state.judging
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        ask(http, "before")
        wait_for(http, "router_rl_judge_grades/ok", 1)
        first = judging.worker.pid
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: metric(app, "router_rl_judge_worker_exits_total") == 1, "the death noticed")
        wait_until(lambda: judging.worker.pid != first, "a new worker")
        for i in range(3):
            ask(http, f"after {i}")  # answered all the same
        wait_for(http, "router_rl_judge_grades/ok", 4)
        second = judging.worker.pid
        assert http.get("/healthz").json()["judge"]["worker_pid"] == second
    assert dict(judging.graded_by) == {first: 1, second: 3} and judging.restarts == 1
    deaths = [r.getMessage() for r in caplog.records if "judge worker" in r.getMessage()]
    assert deaths == [f"judge worker {first} exited with code -9 (0 answers lost): restart 1 of 5"]


def test_past_its_restarts_grading_falls_back_to_the_event_loop(tmp_path: Path, stub: OpenAIStub) -> None:  # noqa: F811
    server, app = serving(tmp_path, stub, judge_share=1.0, judge_worker_max_restarts=0)
    judging = app.state.judging
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        ask(http, "before")
        wait_for(http, "router_rl_judge_grades/ok", 1)
        first = judging.worker.pid
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: judging.worker is None, "the worker given up")
        assert metric(app, "router_rl_judge_worker_up") == 0.0
        ask(http, "after")
        wait_for(http, "router_rl_judge_grades/ok", 2)
        assert http.get("/healthz").json()["judge"]["grading"] == "event_loop"
    assert dict(judging.graded_by) == {first: 1, os.getpid(): 1}


def test_shutdown_drains_the_queue(tmp_path: Path, stub: OpenAIStub) -> None:  # noqa: F811
    server, app = serving(tmp_path, stub, judge_share=1.0, judge_drain_s=60.0)
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        ids = [ask(http, f"question {i}").headers["x-router-decision-id"] for i in range(3)]
    # the server stopped right after the answers: the worker graded what was queued before it exited
    assert not app.state.judging.worker.process.is_alive()
    log = read_logged_bandit_data(tmp_path / "log.sqlite", feedback_source="judge", require_feedback=True)
    assert sorted(log.decision_id) == sorted(ids)
    assert metric(app, "router_rl_judge_grades_total", outcome="ok") == 3


def test_shutdown_terminates_a_worker_past_its_drain_time(tmp_path: Path, stub: OpenAIStub) -> None:  # noqa: F811
    server, app = serving(tmp_path, stub, judge_share=1.0, judge_drain_s=0.0)
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        stub.gate.clear()  # the judge never answers while the server stops
        ask(http, "never graded")
        wait_until(
            lambda: len([r for r in stub.requests if r["json"]["model"] == "judge"]) == 1, "judge called"
        )
    stub.gate.set()
    worker = app.state.judging.worker
    assert worker.process.exitcode == -signal.SIGTERM  # terminated, not waited for
    assert metric(app, "router_rl_judge_skipped_total", reason="lost") == 1
    assert metric(app, "router_rl_judge_worker_exits_total") == 0  # asked to stop: not a death


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"judge_queue_size": 0}, "judge_queue_size"),
        ({"judge_concurrency": 0}, "judge_concurrency"),
        ({"judge_drain_s": -1.0}, "judge_drain_s"),
        ({"judge_worker_max_restarts": -1}, "judge_worker_max_restarts"),
    ],
)
def test_bad_worker_settings(changes: dict, message: str) -> None:
    from router_rl.serve.settings import ServeSettings, SettingsError

    with pytest.raises(SettingsError, match=message):
        ServeSettings(**changes).validate()
