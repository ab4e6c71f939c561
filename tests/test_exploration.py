"""Bonus-softmax exploration: exact propensities, the LinUCB width from the artifact's inverse designs, the
request's limits respected, and the served decisions logged with the probability they were drawn with."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import numpy as np
import pytest

from router_rl.serve.app import create_app
from router_rl.serve.artifact import LINEAR_TENSORS, load_artifact, write_linear_artifact
from router_rl.serve.decision_log import read_logged_bandit_data
from router_rl.serve.exploration import bonus_softmax_probs, explore_softmax, posterior_inverse
from router_rl.serve.router import Router
from router_rl.serve.settings import ServeSettings, SettingsError
from router_rl.serve.testing import ServerThread, shared_embedder, toy_artifact

MODELS = ["big", "mid", "small"]
QUALITY = [0.8, 0.75, 0.6]
COST = [0.01, 0.002, 0.0001]


def test_bonus_softmax_probs_numbers() -> None:
    p = bonus_softmax_probs(
        np.array([0.5, 0.0, -np.inf]), np.array([0.0, 1.0, 5.0]), bonus=0.5, temperature=0.5
    )
    # exponents 1.0 and 1.0: the width bonus makes the worse-scored model as likely; the excluded one is 0
    np.testing.assert_allclose(p, [0.5, 0.5, 0.0])
    p = bonus_softmax_probs(np.array([1.0, 0.0, np.nan]), np.zeros(3), bonus=1.0, temperature=1.0)
    np.testing.assert_allclose(p, [math.e / (1 + math.e), 1 / (1 + math.e), 0.0])
    p = bonus_softmax_probs(np.array([1e4, 0.0]), np.zeros(2), bonus=0.0, temperature=1e-3)  # no overflow
    np.testing.assert_allclose(p, [1.0, 0.0])


@pytest.mark.parametrize(
    ("scores", "temperature", "message"),
    [
        ([0.1, 0.2], 0.0, "temperature must be > 0"),
        ([-np.inf, np.nan], 1.0, "no model is allowed"),
    ],
)
def test_bonus_softmax_refuses(scores: list[float], temperature: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bonus_softmax_probs(np.array(scores), np.zeros(2), bonus=1.0, temperature=temperature)


def artifact_with_designs(tmp_path: Path, dim: int = 384) -> Path:
    """The toy artifact plus ``a_inv``: small for big and mid (well known), large for small (barely tried)."""
    toy = load_artifact(toy_artifact(tmp_path / "toy", MODELS, quality=QUALITY, cost_usd=COST), device="cpu")
    a_inv = np.stack([np.eye(dim + 1) * 1e-4, np.eye(dim + 1) * 1e-4, np.eye(dim + 1) * 1.0])
    return write_linear_artifact(
        tmp_path / "designs",
        models=toy.manifest["models"],
        tensors={**{n: toy.tensors[n].numpy() for n in LINEAR_TENSORS}, "a_inv": a_inv},
        embedder=toy.manifest["embedder"],
        cost_scale=toy.cost_scale,
    )


def test_explore_softmax_uses_the_posterior_width_and_logs_exact_propensities(tmp_path: Path) -> None:
    art = load_artifact(artifact_with_designs(tmp_path), device="cpu")
    assert posterior_inverse(art).shape == (3, 385, 385)
    router = Router(art, device="cpu", embedder=shared_embedder())
    x = router.embed(["what is the capital of France?"])
    (greedy,) = router.decide_embedded(x)
    assert greedy.model == "big"
    rng = np.random.default_rng(0)
    draws = [explore_softmax(greedy, x[0], art, bonus=0.2, temperature=0.1, rng=rng) for _ in range(4000)]
    # width of small: sqrt(|x|^2 + 1) = sqrt(2); big and mid: ~0.014
    w = np.array([1e-2 * math.sqrt(2), 1e-2 * math.sqrt(2), math.sqrt(2)])
    want = np.exp((np.array(QUALITY) + 0.2 * w) / 0.1)
    want /= want.sum()
    for d in draws:
        assert d.propensity == pytest.approx(want[MODELS.index(d.model)], rel=1e-6)
        assert d.scores == greedy.scores and d.decision_id == greedy.decision_id
    freq = np.array([sum(d.model == m for d in draws) for m in MODELS]) / len(draws)
    assert (np.abs(freq - want) <= 4 * np.sqrt(want * (1 - want) / len(draws))).all(), (freq, want)
    # without the designs' bonus small would be drawn far less often
    plain = np.exp(np.array(QUALITY) / 0.1)
    assert want[2] > 3 * plain[2] / plain.sum()


def test_settings_refuse_bad_exploration() -> None:
    for changes, name in [
        ({"explore_softmax_temperature": -1.0}, "explore_softmax_temperature"),
        ({"explore_bonus": -0.1}, "explore_bonus"),
        ({"explore_epsilon": 0.1, "explore_softmax_temperature": 0.1}, "one exploration at a time"),
    ]:
        with pytest.raises(SettingsError, match=name):
            ServeSettings(**changes).validate()


def test_served_exploration_respects_limits_and_logs_propensities(tmp_path: Path) -> None:
    """max_cost_usd forbids big: exploring never serves it; every logged propensity is the softmax of the two
    allowed scores (no designs in the artifact: a plain softmax), and both allowed models are drawn."""
    toy = toy_artifact(tmp_path / "toy", MODELS, quality=QUALITY, cost_usd=COST)
    router = Router(toy, device="cpu", embedder=shared_embedder())
    settings = ServeSettings(
        log_db=str(tmp_path / "log.sqlite"), explore_softmax_temperature=0.1, log_embeddings=True, seed=3
    )
    app = create_app(router, settings)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        chosen = []
        for i in range(40):
            r = http.post("/v1/route", json={"prompt": f"question {i}", "max_cost_usd": 0.005})
            assert r.status_code == 200, r.text
            chosen.append(r.json()["model"])
        app.state.service.decision_log.flush()
    assert "big" not in chosen and set(chosen) == {"mid", "small"}
    log = read_logged_bandit_data(tmp_path / "log.sqlite")
    p_mid = 1 / (1 + math.exp(-(0.75 - 0.6) / 0.1))
    want = [p_mid if log.models[a] == "mid" else 1 - p_mid for a in log.action]
    np.testing.assert_allclose(log.propensity, want, rtol=1e-5)
    assert log.contexts is not None and log.contexts.shape == (40, 384)


def test_explored_log_feeds_learn(tmp_path: Path) -> None:
    """Served softmax exploration with logged embeddings and posted feedback is data `router-rl learn` uses:
    every model is tried, so the candidate's importance weights are finite and its ESS well above 1."""
    from router_rl.learn import learn

    toy = toy_artifact(tmp_path / "toy", MODELS, quality=QUALITY, cost_usd=COST)
    router = Router(toy, device="cpu", embedder=shared_embedder())
    settings = ServeSettings(
        log_db=str(tmp_path / "log.sqlite"), explore_softmax_temperature=0.1, log_embeddings=True, seed=5
    )
    truth = {"big": 0.3, "mid": 0.4, "small": 0.9}  # the deployed policy prefers big; small is best
    app = create_app(router, settings)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        for i in range(60):
            d = http.post("/v1/route", json={"prompt": f"question {i}"}).json()
            r = http.post(
                "/v1/feedback", json={"decision_id": d["decision_id"], "quality": truth[d["model"]]}
            )
            assert r.status_code == 200, r.text
    # 18 held-out rows: too few to split off a selection-free estimate, so every one of them evaluates
    rep = learn(f"sqlite:///{tmp_path / 'log.sqlite'}", toy, tmp_path / "out", estimate_split=0).ope
    assert rep["contexts"] == "logged embeddings" and rep["n_evaluated"] == 18
    assert min(rep["updates"].values()) > 0  # every model was explored
    assert rep["ess"]["candidate"] > 1.0
    # the candidate learned small's quality from the explored rows and serves it
    assert rep["agreement"] < 1.0 and rep["candidate"]["dr"]["value"] > rep["champion"]["dr"]["value"]
