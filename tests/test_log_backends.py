"""Decision-log backends: ``--log-db`` URLs, the same log on sqlite and on a real PostgreSQL server, rows
attributed to the replica that wrote them, feedback found whichever replica took it, old sqlite logs migrated.

The PostgreSQL cases need a server: ``.ci/run`` starts one and exports ROUTER_RL_TEST_PG_URL (an admin URL;
each test gets a database of its own). Without the variable they skip, saying so."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_serve_log import row

from router_rl.serve.decision_log import DecisionLog, UnknownDecision, read_logged_bandit_data
from router_rl.serve.log_backends import (
    SCHEMA_VERSION,
    LogURLError,
    default_replica_id,
    open_backend,
    parse_log_url,
)
from router_rl.serve.settings import ServeSettings, SettingsError

PG_ENV = "ROUTER_RL_TEST_PG_URL"
needs_postgres = pytest.mark.skipif(
    not os.environ.get(PG_ENV),
    reason=f"{PG_ENV} is unset: no PostgreSQL server to test against (.ci/run starts one and sets it)",
)


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, empty database on the server at ``admin_url``; dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"rr_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = admin_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def pg_url() -> Iterator[str]:
    admin = os.environ.get(PG_ENV)
    if not admin:
        pytest.skip(
            f"{PG_ENV} is unset: no PostgreSQL server to test against (.ci/run starts one and sets it)"
        )
    with fresh_database(admin) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=needs_postgres)])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.sqlite'}"
        return
    with fresh_database(os.environ[PG_ENV]) as url:
        yield url


@pytest.mark.parametrize(
    ("value", "kind", "where"),
    [
        ("decisions.sqlite", "sqlite", "decisions.sqlite"),  # a bare path, as before
        ("logs/decisions.sqlite", "sqlite", "logs/decisions.sqlite"),
        ("sqlite:///decisions.sqlite", "sqlite", "decisions.sqlite"),  # relative to the working directory
        ("sqlite:////var/lib/rr/log.sqlite", "sqlite", "/var/lib/rr/log.sqlite"),
        ("postgresql://rr@db.internal:5432/router", "postgresql", "postgresql://rr@db.internal:5432/router"),
        ("postgres://rr@db:5432/router", "postgresql", "postgresql://rr@db:5432/router"),
        ("postgresql+psycopg://rr@db/router", "postgresql", "postgresql://rr@db/router"),
        ("postgresql://rr:s3cret@db:5432/router", "postgresql", "postgresql://rr:***@db:5432/router"),
    ],
)
def test_log_db_urls(value: str, kind: str, where: str) -> None:
    target = parse_log_url(value)
    assert target.kind == kind and target.location == where
    assert "s3cret" not in target.location


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "--log-db is empty"),
        ("sqlite://", "sqlite:///relative/path"),
        ("sqlite:///:memory:", "the log must outlive the process"),
        ("mysql://rr:s3cret@db/router", "unknown database scheme 'mysql'"),
        ("postgresql:///router", "no host"),
    ],
)
def test_bad_log_db_urls_say_what_is_expected(value: str, message: str) -> None:
    with pytest.raises(LogURLError, match=message) as info:
        parse_log_url(value)
    assert "s3cret" not in str(info.value)
    with pytest.raises(SettingsError, match="setting log_db") as info:
        ServeSettings(log_db=value or "x://").validate()
    assert "s3cret" not in str(info.value)


def test_round_trip_on_each_backend(log_url: str) -> None:
    """The same writes read back the same logged bandit data, whichever database holds them."""
    log = DecisionLog(log_url, replica="r1")
    emb = np.arange(4, dtype=np.float32).tobytes()
    log.log_decision(row("d0", ["a", "b", "c"], 1, ts=1.0, propensity=0.8, prompt="p0", embedding=emb))
    log.log_decision(row("d1", ["a", "b", "c"], 0, ts=2.0, prompt="p1", embedding=emb))
    log.log_decision(
        row("d1", ["a", "b", "c"], 2, ts=9.0, prompt="dup", embedding=emb)
    )  # a repeated id: kept once
    log.log_outcome("d1", answered_by="a", status="ok", attempts=1, cost_usd=0.002, latency_s=0.4)
    assert log.add_feedback("d0", 0.9).result(timeout=30)
    assert log.add_feedback("d0", 0.6, cost_usd=0.01).result(timeout=30)  # the latest feedback wins
    with pytest.raises(UnknownDecision):
        log.add_feedback("missing", 0.5).result(timeout=30)
    log.close()
    data = read_logged_bandit_data(log_url)
    assert list(data.decision_id) == ["d0", "d1"] and data.models == ["a", "b", "c"]
    assert data.action.tolist() == [1, 0] and data.propensity.tolist() == [0.8, 1.0]
    np.testing.assert_allclose(data.quality, [0.6, np.nan])
    np.testing.assert_allclose(data.cost_usd, [0.01, 0.002])
    assert list(data.prompts) == ["p0", "p1"] and data.contexts[1].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert list(data.replica) == ["r1", "r1"]
    assert list(read_logged_bandit_data(log_url, require_feedback=True).decision_id) == ["d0"]


def test_two_replicas_share_one_log(log_url: str) -> None:
    """Decisions on one writer, feedback on the other: found, and every row says which replica wrote it."""
    a, b = DecisionLog(log_url, replica="replica-a"), DecisionLog(log_url, replica="replica-b")
    try:
        acked = [a.log_decision(row(f"a{i}", ["x", "y"], i % 2, ts=float(i))) for i in range(20)]
        acked += [b.log_decision(row(f"b{i}", ["x", "y"], 1, ts=100.0 + i)) for i in range(5)]
        assert all(f.result(timeout=30) for f in acked)
        a.log_outcome("a0", answered_by="x", status="ok", attempts=1, cost_usd=0.004)
        b.log_outcome("b0", answered_by="y", status="ok", attempts=1, cost_usd=0.001)
        a.flush()
        b.flush()
        for i in range(20):  # the decisions replica-a made, judged through replica-b
            assert b.add_feedback(f"a{i}", 0.5).result(timeout=30)
        assert a.add_feedback("b0", 1.0).result(timeout=30)
    finally:
        a.close()
        b.close()
    data = read_logged_bandit_data(log_url, require_feedback=True)
    assert len(data) == 21
    by = dict(zip(data.decision_id, data.replica, strict=True))
    assert {by[f"a{i}"] for i in range(20)} == {"replica-a"} and by["b0"] == "replica-b"
    # spend and feedback per replica, straight from the tables
    from router_rl.serve.log_backends import open_backend

    db = open_backend(log_url, read_only=True)
    try:
        spend = dict(db.fetchall("SELECT replica, SUM(cost_usd) FROM decisions GROUP BY replica"))
        taken = dict(db.fetchall("SELECT replica, COUNT(*) FROM feedback GROUP BY replica"))
    finally:
        db.close()
    assert spend == pytest.approx({"replica-a": 0.004, "replica-b": 0.001})
    assert taken == {"replica-b": 20, "replica-a": 1}


def test_default_replica_is_host_and_pid(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "log.sqlite")
    log.log_decision(row("d0", ["a", "b"], 0, ts=1.0)).result(timeout=30)
    log.close()
    assert default_replica_id().endswith(f":{os.getpid()}")
    assert list(read_logged_bandit_data(tmp_path / "log.sqlite").replica) == [default_replica_id()]


# the version-1 tables (before the replica column), as router-rl wrote them
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE decisions (decision_id TEXT PRIMARY KEY, ts REAL NOT NULL, endpoint TEXT NOT NULL,
    policy_version TEXT NOT NULL, models TEXT NOT NULL, action INTEGER NOT NULL, model TEXT NOT NULL,
    propensity REAL NOT NULL, scores TEXT NOT NULL, pred_quality TEXT NOT NULL, pred_cost_usd TEXT NOT NULL,
    cost_weight REAL NOT NULL, cost_scale REAL NOT NULL, limits TEXT NOT NULL, prompt_sha256 TEXT NOT NULL,
    prompt TEXT, embedding BLOB, api_key TEXT, answered_by TEXT, status TEXT, attempts INTEGER,
    prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL, latency_s REAL);
CREATE INDEX decisions_ts ON decisions (ts);
CREATE TABLE feedback (decision_id TEXT PRIMARY KEY REFERENCES decisions (decision_id), quality REAL NOT NULL,
    cost_usd REAL, latency_s REAL, ts REAL NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO decisions (decision_id, ts, endpoint, policy_version, models, action, model, propensity, scores,
    pred_quality, pred_cost_usd, cost_weight, cost_scale, limits, prompt_sha256)
    VALUES ('old', 1.0, 'route', 'v1', '["a", "b"]', 0, 'a', 1.0, '[0.1, 0.2]', '[0.5, 0.6]', '[0.1, 0.2]',
            0.5, 0.01, '{}', 'sha');
INSERT INTO feedback VALUES ('old', 0.7, NULL, NULL, 2.0);
"""


def test_a_version_1_sqlite_log_is_migrated_in_place(tmp_path: Path) -> None:
    db = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript(V1_SCHEMA)
    conn.close()
    log = DecisionLog(db, replica="new")
    log.log_decision(row("fresh", ["a", "b"], 1, ts=3.0)).result(timeout=30)
    assert log.add_feedback("old", 0.9).result(timeout=30)  # an old decision still takes feedback
    log.close()
    data = read_logged_bandit_data(db)
    assert list(data.decision_id) == ["old", "fresh"] and list(data.replica) == ["", "new"]
    np.testing.assert_allclose(data.quality, [0.9, np.nan])
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    conn.close()
    assert list(data.feedback_source) == ["client", ""]


@needs_postgres
def test_postgres_log_survives_a_lost_connection(pg_url: str) -> None:
    """The server closes the writer's session (a failover, a restart): the group fails, the next reconnects."""
    import psycopg

    log = DecisionLog(pg_url, replica="r")
    try:
        assert log.log_decision(row("before", ["a", "b"], 0, ts=1.0)).result(timeout=30)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        outcomes = []
        for i in range(3):
            try:
                outcomes.append(
                    log.log_decision(row(f"after{i}", ["a", "b"], 1, ts=2.0 + i)).result(timeout=30)
                )
            except psycopg.Error:
                outcomes.append(False)
        assert outcomes[-1] is True  # at most the first write after the loss fails (and says so)
    finally:
        log.close()
    stored = set(read_logged_bandit_data(pg_url).decision_id)
    assert "before" in stored and "after2" in stored


def test_unreachable_postgres_is_one_clear_error() -> None:
    from router_rl.serve.testing import free_port

    url = f"postgresql://rr:s3cret@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(
        ConnectionError, match=r"cannot connect to the decision log postgresql://rr:\*\*\*@"
    ) as info:
        DecisionLog(url)
    assert "s3cret" not in str(info.value) and "\n" not in str(info.value)


# the version-2 tables (a replica column, feedback keyed by decision_id alone), as router-rl wrote them
V2_TABLES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE decisions (decision_id TEXT PRIMARY KEY,{seq} ts {real} NOT NULL, endpoint TEXT NOT NULL,
    policy_version TEXT NOT NULL, models TEXT NOT NULL, action INTEGER NOT NULL, model TEXT NOT NULL,
    propensity {real} NOT NULL, scores TEXT NOT NULL, pred_quality TEXT NOT NULL, pred_cost_usd TEXT NOT NULL,
    cost_weight {real} NOT NULL, cost_scale {real} NOT NULL, limits TEXT NOT NULL, prompt_sha256 TEXT NOT NULL,
    prompt TEXT, embedding {blob}, api_key TEXT, answered_by TEXT, status TEXT, attempts INTEGER,
    prompt_tokens BIGINT, completion_tokens BIGINT, cost_usd {real}, latency_s {real}, replica TEXT);
CREATE INDEX decisions_ts ON decisions (ts);
CREATE TABLE feedback (decision_id TEXT PRIMARY KEY REFERENCES decisions (decision_id),
    quality {real} NOT NULL, cost_usd {real}, latency_s {real}, ts {real} NOT NULL, replica TEXT);
INSERT INTO meta VALUES ('schema_version', '2');
INSERT INTO decisions (decision_id, ts, endpoint, policy_version, models, action, model, propensity, scores,
    pred_quality, pred_cost_usd, cost_weight, cost_scale, limits, prompt_sha256, replica)
    VALUES ('old0', 1.0, 'route', 'v1', '["a", "b"]', 0, 'a', 1.0, '[0.1, 0.2]', '[0.5, 0.6]', '[0.1, 0.2]',
            0.5, 0.01, '{{}}', 'sha0', 'r-old'),
           ('old1', 2.0, 'route', 'v1', '["a", "b"]', 1, 'b', 0.5, '[0.1, 0.2]', '[0.5, 0.6]', '[0.1, 0.2]',
            0.5, 0.01, '{{}}', 'sha1', 'r-old');
INSERT INTO feedback VALUES ('old0', 0.7, 0.004, NULL, 3.0, 'r-old');
"""


def write_v2_log(log_url: str) -> None:
    """A version-2 log at ``log_url`` with two decisions and one feedback row."""
    target = parse_log_url(log_url)
    if target.kind == "sqlite":
        conn = sqlite3.connect(target.path)
        conn.executescript(V2_TABLES.format(seq="", real="REAL", blob="BLOB"))
        conn.close()
        return
    import psycopg

    script = V2_TABLES.format(
        seq=" seq BIGINT GENERATED ALWAYS AS IDENTITY,", real="DOUBLE PRECISION", blob="BYTEA"
    )
    with psycopg.connect(log_url, autocommit=True) as conn:
        for statement in filter(None, (s.strip() for s in script.split(";"))):
            conn.execute(statement)


def test_a_version_2_log_gets_feedback_sources_and_keeps_its_rows(log_url: str) -> None:
    """Old feedback becomes 'client'; afterwards a judge's grade and a client's of one decision both stay."""
    write_v2_log(log_url)
    before = read_logged_bandit_data(log_url)  # read before any server opened it: no source column yet
    assert list(before.feedback_source) == ["client", ""]
    np.testing.assert_allclose(before.quality, [0.7, np.nan])
    log = DecisionLog(log_url, replica="new")
    try:
        assert log.add_feedback("old1", 0.2, source="judge").result(timeout=30)
        assert log.add_feedback("old0", 0.1, source="judge").result(timeout=30)  # besides the client's
        with pytest.raises(ValueError, match="feedback source 'admin'"):
            log.add_feedback("old0", 0.5, source="admin")
    finally:
        log.close()
    data = read_logged_bandit_data(log_url)
    assert list(data.decision_id) == ["old0", "old1"] and list(data.replica) == ["r-old", "r-old"]
    assert list(data.feedback_source) == ["client", "judge"]  # the client's grade wins over the judge's
    np.testing.assert_allclose(data.quality, [0.7, 0.2])
    np.testing.assert_allclose(data.cost_usd, [0.004, np.nan])
    judge = read_logged_bandit_data(log_url, feedback_source="judge")
    np.testing.assert_allclose(judge.quality, [0.1, 0.2])
    assert list(judge.feedback_source) == ["judge", "judge"]
    client = read_logged_bandit_data(log_url, feedback_source="client", require_feedback=True)
    assert list(client.decision_id) == ["old0"] and list(client.feedback_source) == ["client"]
    db = open_backend(log_url, read_only=True)
    try:
        assert db.fetchall("SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
        rows = db.fetchall("SELECT decision_id, source, quality FROM feedback ORDER BY decision_id, source")
    finally:
        db.close()
    assert rows == [("old0", "client", 0.7), ("old0", "judge", 0.1), ("old1", "judge", 0.2)]


def test_feedback_sources_on_each_backend(log_url: str) -> None:
    """Each source keeps its latest grade; the reader picks the client's, or the source asked for."""
    log = DecisionLog(log_url, replica="r")
    try:
        for i in range(3):
            log.log_decision(row(f"d{i}", ["a", "b"], i % 2, ts=float(i)))
        assert log.add_feedback("d0", 0.9, source="judge").result(timeout=30)
        assert log.add_feedback("d0", 0.8, source="judge").result(timeout=30)  # the judge's latest
        assert log.add_feedback("d1", 0.3, source="judge").result(timeout=30)
        assert log.add_feedback("d1", 0.6).result(timeout=30)  # a client's (the default source)
        assert log.add_feedback("d2", 0.4, source="client").result(timeout=30)
    finally:
        log.close()
    data = read_logged_bandit_data(log_url)
    assert list(data.feedback_source) == ["judge", "client", "client"]
    np.testing.assert_allclose(data.quality, [0.8, 0.6, 0.4])
    judge = read_logged_bandit_data(log_url, feedback_source="judge", require_feedback=True)
    assert list(judge.decision_id) == ["d0", "d1"]
    np.testing.assert_allclose(judge.quality, [0.8, 0.3])
    client = read_logged_bandit_data(log_url, feedback_source="client")
    assert list(client.feedback_source) == ["", "client", "client"] and not client.has_feedback[0]
    with pytest.raises(ValueError, match="feedback_source 'human'"):
        read_logged_bandit_data(log_url, feedback_source="human")


def test_shadow_rows_and_spend_reads_on_each_backend(log_url: str) -> None:
    """Shadow decisions land beside their decisions; the budget pacer's spend read prices every row."""
    import json

    from router_rl.serve.budget import log_reader, priced_spend

    log = DecisionLog(log_url, replica="r")
    try:
        for i in range(3):
            log.log_decision(row(f"d{i}", ["a", "b", "c"], i, ts=10.0 + i))
        log.log_shadow(
            {
                "decision_id": "d1",
                "ts": 11.0,
                "policy_version": "cand",
                "models": json.dumps(["c", "a"]),
                "action": 0,
                "model": "c",
                "propensity": 1.0,
                "scores": json.dumps([0.9, 0.1]),
                "pred_quality": json.dumps([0.9, 0.5]),
                "pred_cost_usd": json.dumps([0.003, 0.001]),
            }
        )
        log.log_outcome("d0", answered_by="a", status="ok", attempts=1, cost_usd=0.05)
        log.flush()
        assert log.add_feedback("d1", 0.5, cost_usd=0.02).result(timeout=30)
    finally:
        log.close()
    data = read_logged_bandit_data(log_url)
    assert data.shadow_action.tolist() == [-1, 2, -1] and list(data.shadow_policy_version) == ["", "cand", ""]
    np.testing.assert_allclose(data.shadow_scores[1], [0.1, np.nan, 0.9])
    spend = priced_spend(log_reader(parse_log_url(log_url))(11.0))  # d1 and d2: reported, then predicted
    assert sorted(spend) == [(11.0, 0.02), (12.0, pytest.approx(0.003))]
