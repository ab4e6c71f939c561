"""Shadow mode: a candidate decides beside the served policy on every routed request, on the same embedding,
logged to ``shadow_decisions`` linked to the served decision and never served; ``router-rl learn`` reports
the shadow's agreement and its off-policy value from the same log."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_learn import COST, EPSILON, MODELS, TRUE_QUALITY, champion, write_log

from router_rl.learn import learn
from router_rl.serve.app import create_app
from router_rl.serve.artifact import ArtifactError, load_artifact
from router_rl.serve.decision_log import DecisionLog, read_logged_bandit_data
from router_rl.serve.log_backends import SCHEMA_VERSION
from router_rl.serve.router import Router
from router_rl.serve.settings import ServeSettings
from router_rl.serve.testing import ServerThread, shared_embedder, toy_artifact


def test_the_shadow_decides_beside_the_served_policy_and_is_never_served(tmp_path: Path) -> None:
    served = toy_artifact(tmp_path / "served", MODELS, quality=[0.9, 0.6, 0.5], cost_usd=COST)
    shadow = toy_artifact(tmp_path / "shadow", MODELS, quality=[0.5, 0.6, 0.9], cost_usd=COST)
    log_db = tmp_path / "log.sqlite"
    settings = ServeSettings(log_db=str(log_db), log_embeddings=True, shadow=str(shadow))
    app = create_app(Router(served, device="cpu", embedder=shared_embedder()), settings)
    ids = []
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        for i in range(40):
            d = http.post("/v1/route", json={"prompt": f"question number {i}"}).json()
            assert d["model"] == "big"  # the served policy's choice, never the shadow's
            assert "shadow" not in json.dumps(d)
            ids.append(d["decision_id"])
            http.post(
                "/v1/feedback", json={"decision_id": d["decision_id"], "quality": 0.9, "cost_usd": COST[0]}
            )
        limited = http.post("/v1/route", json={"prompt": "only two", "candidates": ["big", "mid"]}).json()
        health = http.get("/healthz").json()
        metrics = http.get("/metrics").text
    assert health["shadow"]["policy_version"] == load_artifact(shadow, device="cpu").version
    assert health["shadow"]["decisions"] == 41 and health["shadow"]["agreement"] == 0.0
    assert 'router_rl_shadow_decisions_total{result="disagree"} 41.0' in metrics
    data = read_logged_bandit_data(log_db)
    by_id = dict(zip(data.decision_id, data.shadow_action, strict=True))
    assert [data.models[by_id[i]] for i in ids] == ["small"] * 40  # linked to the served decision ids
    assert data.models[by_id[limited["decision_id"]]] == "mid"  # under the request's own candidates
    assert set(data.shadow_policy_version) == {health["shadow"]["policy_version"]}
    assert (data.shadow_propensity == 1.0).all() and (data.action == 0).all()
    np.testing.assert_allclose(data.shadow_scores[0], [0.5, 0.6, 0.9], atol=1e-6)  # its own scores
    # learn reports the shadow from the same log
    rep = learn(str(log_db), served, tmp_path / "out").ope
    assert rep["shadow"]["agreement"] == 0.0 and rep["shadow"]["n_shadowed"] == 41
    assert rep["shadow"]["n_evaluated"] == 40  # the graded rows
    # it always chose small, which was never served: this log cannot value it, and says so
    assert rep["shadow"]["estimates"] is None and "never takes any logged action" in rep["shadow"]["error"]


def test_a_shadow_must_share_the_encoder(tmp_path: Path) -> None:
    served = toy_artifact(tmp_path / "served", MODELS, quality=[0.9, 0.6, 0.5], cost_usd=COST)
    other = toy_artifact(
        tmp_path / "other", MODELS, quality=[0.5, 0.6, 0.9], cost_usd=COST, max_seq_length=128
    )
    router = Router(served, device="cpu", embedder=shared_embedder())
    with pytest.raises(
        ArtifactError, match=r"--shadow .*other: its encoder settings \(max_seq_length\) differ"
    ):
        create_app(router, ServeSettings(log_db=None, shadow=str(other)))


def add_shadow(log: Path, choose: int) -> None:
    """A shadow that always chose model ``choose`` beside every logged decision."""
    data = read_logged_bandit_data(log)
    writer = DecisionLog(log, replica="r")
    for did, ts in zip(data.decision_id, data.timestamp, strict=True):
        writer.log_shadow(
            {
                "decision_id": str(did),
                "ts": float(ts),
                "policy_version": "shadow-v",
                "models": json.dumps(MODELS),
                "action": choose,
                "model": MODELS[choose],
                "propensity": 1.0,
                "scores": json.dumps([1.0 if k == choose else 0.0 for k in range(3)]),
                "pred_quality": json.dumps([0.5] * 3),
                "pred_cost_usd": json.dumps(COST),
            }
        )
    writer.close()


def test_learn_reports_the_shadows_agreement_and_value(tmp_path: Path) -> None:
    art = champion(tmp_path, dim=16)
    log, _ = write_log(tmp_path / "log.db", 1500, seed=7, dim=16)
    assert "shadow" not in learn(str(log), art, tmp_path / "plain").ope  # no shadow rows, no report
    add_shadow(log, choose=0)  # always big: the truly best model (quality 0.9), which the log plays ~10%
    rep = learn(str(log), art, tmp_path / "out").ope
    shadow = rep["shadow"]
    data = read_logged_bandit_data(log)
    assert shadow["policy_versions"] == ["shadow-v"] and shadow["n_shadowed"] == 1500
    assert shadow["agreement"] == pytest.approx(float((data.action == 0).mean()))
    assert shadow["agreement"] == pytest.approx(EPSILON / 3, abs=0.03)
    assert shadow["n_evaluated"] == 1500  # every graded row: the shadow was not fitted on any of them
    for est in ("ips", "snips", "dr"):
        e = shadow["estimates"][est]
        assert e["ci_low"] <= TRUE_QUALITY[0] <= e["ci_high"], (est, e)
    assert shadow["estimates"]["dr"]["value"] > rep["champion"]["dr"]["ci_high"]  # better than the champion


def test_a_version_3_log_gets_the_shadow_table(tmp_path: Path) -> None:
    log, _ = write_log(tmp_path / "log.db", 5, seed=1, dim=16)
    conn = sqlite3.connect(log)
    conn.execute("DROP TABLE shadow_decisions")
    conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    assert read_logged_bandit_data(log).shadow_action is None  # read as it is, before any server opened it
    DecisionLog(log).close()
    conn = sqlite3.connect(log)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    assert conn.execute("SELECT COUNT(*) FROM shadow_decisions").fetchone() == (0,)
    conn.close()
    add_shadow(log, choose=2)
    assert (read_logged_bandit_data(log).shadow_action == 2).all()
