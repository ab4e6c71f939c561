"""The decision log (sqlite, WAL) and its reader: logged bandit data for off-policy evaluation and retraining."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from router_rl.serve.decision_log import (
    DecisionLog,
    UnknownDecision,
    connect,
    read_logged_bandit_data,
)


def row(decision_id: str, models: list[str], action: int, *, ts: float, version: str = "v1", **extra) -> dict:
    k = len(models)
    return {
        "decision_id": decision_id,
        "ts": ts,
        "endpoint": "route",
        "policy_version": version,
        "models": json.dumps(models),
        "action": action,
        "model": models[action],
        "propensity": extra.pop("propensity", 1.0),
        "scores": json.dumps([0.1 * i if i != k - 1 else None for i in range(k)]),
        "pred_quality": json.dumps([0.5 + 0.1 * i for i in range(k)]),
        "pred_cost_usd": json.dumps([0.001 * (i + 1) for i in range(k)]),
        "cost_weight": extra.pop("cost_weight", 0.5),
        "cost_scale": 0.01,
        "limits": "{}",
        "prompt_sha256": f"sha-{decision_id}",
        "prompt": extra.pop("prompt", None),
        "embedding": extra.pop("embedding", None),
        "api_key": "anonymous",
    }


def test_log_round_trip_as_logged_bandit_data(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    log = DecisionLog(db)
    m1, m2 = ["a", "b", "c"], ["a", "c", "d"]  # a second policy version drops b and adds d
    emb = [np.full(4, i, dtype=np.float32).tobytes() for i in range(5)]
    log.log_decision(row("d0", m1, 1, ts=1.0, propensity=0.8, prompt="p0", embedding=emb[0]))
    log.log_decision(row("d1", m1, 0, ts=2.0, prompt="p1", embedding=emb[1]))
    log.log_decision(row("d2", m2, 2, ts=3.0, version="v2", prompt="p2", embedding=emb[2]))
    log.log_decision(row("d3", m2, 0, ts=4.0, version="v2", prompt="p3", embedding=emb[3]))
    log.log_decision(row("d4", m2, 1, ts=5.0, version="v2", prompt="p4", embedding=emb[4]))
    log.log_outcome("d1", answered_by="a", status="ok", attempts=1, cost_usd=0.002, latency_s=0.4)
    log.log_outcome("d3", answered_by="c", status="fallback", attempts=2, cost_usd=0.003, latency_s=0.9)
    assert log.add_feedback("d0", 0.9).result(timeout=10)
    assert log.add_feedback("d1", 0.4, cost_usd=0.005).result(timeout=10)
    assert log.add_feedback("d2", 0.7, latency_s=2.0).result(timeout=10)
    with pytest.raises(UnknownDecision):
        log.add_feedback("missing", 0.5).result(timeout=10)
    log.close()

    data = read_logged_bandit_data(db)
    assert data.models == ["a", "b", "c", "d"] and data.n_actions == 4
    assert list(data.decision_id) == ["d0", "d1", "d2", "d4"]  # d3 was answered by a fallback model
    assert data.action.tolist() == [1, 0, 3, 2]  # b, a, d, c in the union's indices
    assert data.propensity.tolist() == [0.8, 1.0, 1.0, 1.0]
    assert data.has_feedback.tolist() == [True, True, True, False]
    np.testing.assert_allclose(data.quality, [0.9, 0.4, 0.7, np.nan])
    np.testing.assert_allclose(data.cost_usd, [np.nan, 0.005, np.nan, np.nan])  # feedback beats measured
    np.testing.assert_allclose(data.latency_s, [np.nan, 0.4, 2.0, np.nan])
    # per-model arrays spread over the union; a model unknown to that policy is NaN
    np.testing.assert_allclose(data.pred_quality[2], [0.5, np.nan, 0.6, 0.7])
    assert np.isnan(data.scores[0, 2])  # an excluded model's score
    assert data.contexts is not None and data.contexts.shape == (4, 4) and data.contexts[2, 0] == 2.0
    assert list(data.prompts) == ["p0", "p1", "p2", "p4"]

    # reward = quality - w * cost / cost_scale, NaN where an input is missing
    np.testing.assert_allclose(data.rewards(), [np.nan, 0.4 - 0.5 * 0.5, np.nan, np.nan])
    np.testing.assert_allclose(data.rewards(cost_weight=0.0), [0.9, 0.4, 0.7, np.nan])

    obp = data.to_obp()
    assert obp["n_rounds"] == 3 and obp["n_actions"] == 4
    assert obp["action"].tolist() == [1, 0, 3] and obp["pscore"].tolist() == [0.8, 1.0, 1.0]
    assert obp["reward"].tolist() == [0.9, 0.4, 0.7] and obp["context"].shape == (3, 4)

    assert len(read_logged_bandit_data(db, include_fallbacks=True)) == 5
    assert list(read_logged_bandit_data(db, policy_version="v1").decision_id) == ["d0", "d1"]
    assert list(read_logged_bandit_data(db, require_feedback=True).decision_id) == ["d0", "d1", "d2"]
    assert list(read_logged_bandit_data(db, since=2.0, until=5.0).decision_id) == ["d1", "d2"]


def test_log_without_prompts_or_embeddings_and_empty_log(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    log = DecisionLog(db)
    log.flush()
    empty = read_logged_bandit_data(db)
    assert len(empty) == 0 and empty.models == [] and empty.to_frame().empty
    log.log_decision(row("x", ["a", "b"], 0, ts=1.0))
    log.close()
    data = read_logged_bandit_data(db)
    assert data.prompts is None and data.contexts is None and data.prompt_sha256.tolist() == ["sha-x"]
    with pytest.raises(FileNotFoundError, match="no decision log"):
        read_logged_bandit_data(tmp_path / "nope.sqlite")


def test_log_is_wal_with_full_sync_and_checks_its_schema_version(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    conn = connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: every commit synced
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(RuntimeError, match="schema version 99"):
        DecisionLog(db)


def test_writer_groups_commits(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "log.sqlite")
    for i in range(300):
        log.log_decision(row(f"d{i}", ["a", "b"], i % 2, ts=float(i)))
    log.flush()
    assert log.n_commits < 300  # grouped transactions, not one fsync per decision
    log.close()
    conn = sqlite3.connect(tmp_path / "log.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 300


def test_export_log_command(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    log = DecisionLog(db)
    for i in range(4):
        log.log_decision(row(f"d{i}", ["a", "b"], i % 2, ts=float(i), prompt=f"p{i}"))
    log.add_feedback("d1", 0.75).result(timeout=10)
    log.close()
    proc = run_cli(["serve", "export-log", str(db), str(tmp_path / "logged.parquet")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "4 decisions (1 with feedback, 2 models)" in proc.stdout
    frame = pd.read_parquet(tmp_path / "logged.parquet")
    assert frame["model"].tolist() == ["a", "b", "a", "b"] and frame["quality"].iloc[1] == 0.75
    assert {"propensity", "score/a", "pred_quality/b", "prompt"} <= set(frame.columns)
    proc = run_cli(["serve", "export-log", str(db), str(tmp_path / "logged.npz")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    arrays = np.load(tmp_path / "logged.npz")
    assert arrays["action"].tolist() == [0, 1, 0, 1] and arrays["models"].tolist() == ["a", "b"]
    proc = run_cli(["serve", "export-log", str(tmp_path / "missing.sqlite"), "x.csv"], cwd=tmp_path)
    assert proc.returncode == 2 and "no decision log" in proc.stderr and "Traceback" not in proc.stderr
