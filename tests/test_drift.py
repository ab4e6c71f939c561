"""Drift scenarios do what they say, and the forgetting bandit with forced exploration adapts to them."""

from __future__ import annotations

import numpy as np
import pytest
from test_envs import MODELS, make_data

from router_rl.envs import RoutingEnv, make_vector_env, step_outcomes
from router_rl.envs.scenarios import Scenario
from router_rl.policies.base import Policy, sample_actions
from router_rl.policies.linucb import LinUCB, woodbury_update
from router_rl.policies.sliding_linucb import SlidingWindowLinUCB, woodbury_downdate


@pytest.fixture
def data():
    return make_data()[0]


@pytest.fixture
def embeddings():
    return make_data()[1]


# ---------------------------------------------------------------------- scenarios
@pytest.mark.parametrize(
    ("event", "match"),
    [
        ("price_cut", "expected a mapping"),
        ({"kind": "flood", "model": "small", "at": 1}, "kind must be one of"),
        ({"kind": "outage", "model": "huge", "at": 1}, "model 'huge' is not one of"),
        ({"kind": "outage", "model": "small", "at": -1}, "'at' must be a request index"),
        (
            {"kind": "outage", "model": "small", "at": 5, "until": 5},
            "'until' must be null or an integer > at",
        ),
        ({"kind": "price_cut", "model": "small", "at": 1, "factor": 0}, "'factor' must be a number > 0"),
        ({"kind": "quality_drop", "model": "small", "at": 1, "factor": 1.5}, r"in \[0, 1\]"),
        ({"kind": "new_model", "model": "small", "at": 1, "factor": 0.5}, "unknown keys"),
    ],
)
def test_scenario_rejects_bad_events(event, match):
    with pytest.raises(ValueError, match=match):
        Scenario([event], MODELS)


def test_scenario_schedule():
    s = Scenario(
        [
            {"kind": "price_cut", "model": "large", "at": 10, "factor": 0.5},
            {"kind": "price_cut", "model": "large", "at": 20, "factor": 0.5},
            {"kind": "quality_drop", "model": "medium", "at": 5, "factor": 0.2},
            {"kind": "outage", "model": "small", "at": 3, "until": 8},
            {"kind": "new_model", "model": "medium", "at": 2},
        ],
        MODELS,
    )
    np.testing.assert_allclose(s.price_factor(9), [1, 1, 1])
    np.testing.assert_allclose(s.price_factor(10), [1, 1, 0.5])
    np.testing.assert_allclose(s.price_factor(25), [1, 1, 0.25])  # factors multiply
    np.testing.assert_allclose(s.quality_factor(4), [1, 1, 1])
    np.testing.assert_allclose(s.quality_factor(5), [1, 0.2, 1])
    assert s.available(1).tolist() == [True, False, True]
    assert s.available(3).tolist() == [False, True, True]
    assert s.available(8).tolist() == [True, True, True]
    assert s.released(1).tolist() == [True, False, True] and s.released(4).tolist() == [True, True, True]
    assert s.change_points() == [2, 3, 5, 8, 10, 20]


def drift_rollout(data, embeddings, scenario, action, steps=40, num_envs=4, **kwargs):
    """Always choose ``action`` in a vector env; returns the per-request outcomes ordered by request index."""
    envs = make_vector_env(num_envs, data=data, embeddings=embeddings, scenario=scenario, **kwargs)
    envs.reset(seed=0)
    rows = []
    for _ in range(steps // num_envs):
        infos = envs.step(np.full(num_envs, action))[4]
        out = step_outcomes(infos)
        for i in range(num_envs):
            rows.append(
                {key: infos["final_info"][key][i] for key in ("step", "status", "served_by")}
                | {key: out[key][i] for key in ("prompt_index", "quality", "cost_usd", "latency_s")}
            )
    envs.close()
    return sorted(rows, key=lambda r: r["step"])


def test_price_cut_and_quality_drop_apply_from_their_request_on(data, embeddings):
    scenario = [
        {"kind": "price_cut", "model": "large", "at": 17, "factor": 0.25},
        {"kind": "quality_drop", "model": "large", "at": 23, "factor": 0.5},
    ]
    rows = drift_rollout(data, embeddings, scenario, action=2)
    assert [r["step"] for r in rows] == list(range(40))  # request indices count the whole vector env
    for r in rows:
        p = r["prompt_index"]
        assert r["cost_usd"] == pytest.approx(data.cost_usd[p, 2] * (0.25 if r["step"] >= 17 else 1.0))
        assert r["quality"] == pytest.approx(data.quality[p, 2] * (0.5 if r["step"] >= 23 else 1.0))


def test_outage_sends_requests_to_the_fallback_until_it_ends(data, embeddings):
    scenario = [{"kind": "outage", "model": "large", "at": 10, "until": 30}]
    rows = drift_rollout(data, embeddings, scenario, action=2, simulator={"fallback": {"large": "small"}})
    for r in rows:
        p = r["prompt_index"]
        if 10 <= r["step"] < 30:
            assert (r["status"], r["served_by"]) == ("fallback", "small")
            assert r["quality"] == data.quality[p, 0] and r["cost_usd"] == data.cost_usd[p, 0]
        else:
            assert (r["status"], r["served_by"]) == ("ok", "large")
    failed = drift_rollout(data, embeddings, scenario, action=2)  # no fallback: the request fails
    assert {(r["status"], r["quality"]) for r in failed if 10 <= r["step"] < 30} == {("failed", 0.0)}


def test_new_model_exists_only_from_its_release(data, embeddings):
    rows = drift_rollout(data, embeddings, [{"kind": "new_model", "model": "medium", "at": 21}], action=1)
    assert {r["status"] for r in rows if r["step"] < 21} == {"failed"}
    assert {r["status"] for r in rows if r["step"] >= 21} == {"ok"}


def test_expected_outcomes_follow_the_regime(data, embeddings):
    env = RoutingEnv(
        data=data,
        embeddings=embeddings,
        cost_weight=1.0,
        scenario=[
            {"kind": "price_cut", "model": "large", "at": 5, "factor": 0.5},
            {"kind": "outage", "model": "medium", "at": 5},
        ],
        simulator={
            "fallback": {"medium": "small"},
            "latency_priors": "catalog",
            "regions": ["x"],
            "rtt_s": [[0]],
        },
    )
    q0, c0, _ = env.expected_outcomes(0)
    q5, c5, lat5 = env.expected_outcomes(5)
    np.testing.assert_allclose(c5[:, 2], 0.5 * c0[:, 2])
    np.testing.assert_allclose(q5[:, 1], q0[:, 0])  # the outage: medium's requests get small's answers
    assert env.expected_rewards(5).shape == (len(data.prompt_ids), 3)


# ---------------------------------------------------------------------- the sliding-window bandit
def test_downdate_inverts_the_update():
    rng = np.random.default_rng(0)
    a = np.eye(5) * 3.0
    x = rng.normal(size=(4, 5))
    up = woodbury_update(np.linalg.inv(a), x)
    np.testing.assert_allclose(woodbury_downdate(up, x[:2]), np.linalg.inv(a + x[2:].T @ x[2:]), atol=1e-12)


def test_sliding_window_equals_a_fresh_fit_on_the_window():
    rng = np.random.default_rng(0)
    models, dim = ["a", "b", "c"], 4
    policy = SlidingWindowLinUCB(models, dim, bias_ridge=0.01, window=30, refresh_every=1000)
    xs, acts, ys = [], [], []
    for _ in range(12):
        x = rng.normal(size=(7, dim))
        a = rng.integers(0, 3, size=7)
        y = rng.random((3, 7))
        policy.update(x, a, *y)
        xs.append(x), acts.append(a), ys.append(y)
    x, a, y = np.concatenate(xs)[-30:], np.concatenate(acts)[-30:], np.concatenate(ys, axis=1)[:, -30:]
    fresh = LinUCB(models, dim, ridge=30.0, bias_ridge=0.01)
    fresh.update(x, a, *y)
    np.testing.assert_allclose(policy.theta(), fresh.theta(), atol=1e-8)
    np.testing.assert_allclose(policy.a_inv, fresh.a_inv, atol=1e-10)


def test_sliding_window_protocol_and_state_round_trip():
    policy = SlidingWindowLinUCB(["a", "b", "c"], 4, window=20, min_pulls=2)
    assert isinstance(policy, Policy)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4))
    forced = policy.probs(x, cost_weight=0.1, explore=True)
    np.testing.assert_allclose(forced, 1 / 3)  # every model is new: forced, uniformly
    for _ in range(5):
        a, _ = sample_actions(policy.probs(x, cost_weight=0.1, explore=True), rng)
        policy.update(x, a, rng.random(6), rng.random(6), rng.random(6))
    clone = SlidingWindowLinUCB(models=["a", "b", "c"], dim=4, **policy.config())
    clone.load_state_dict(policy.state_dict())
    np.testing.assert_allclose(
        clone.probs(x, cost_weight=0.4, explore=True), policy.probs(x, cost_weight=0.4, explore=True)
    )
    assert set(policy.linear_head()) == {"theta_quality", "theta_cost", "theta_latency", "a_inv"}


def test_a_released_model_is_forced_then_judged_on_its_merit():
    policy = SlidingWindowLinUCB(["old", "new"], 2, min_pulls=5, alpha=0.0)
    policy.set_available(["old"])
    x = np.ones((4, 2))
    np.testing.assert_allclose(policy.probs(x, cost_weight=0.0, explore=True), [[1.0, 0.0]] * 4)
    policy.update(np.ones((6, 2)), np.zeros(6, dtype=int), np.full(6, 0.5), np.zeros(6), np.zeros(6))
    policy.set_available([True, True])
    np.testing.assert_allclose(policy.probs(x, cost_weight=0.0, explore=True), [[0.0, 1.0]] * 4)
    policy.update(x[:3], np.ones(3, dtype=int), np.full(3, 0.9), np.zeros(3), np.zeros(3))
    np.testing.assert_allclose(policy.probs(x, cost_weight=0.0, explore=True)[:, 1], 1.0)  # 3 < 5 pulls
    policy.update(x[:2], np.ones(2, dtype=int), np.full(2, 0.9), np.zeros(2), np.zeros(2))
    np.testing.assert_allclose(policy.probs(x, cost_weight=0.0, explore=False)[:, 1], 1.0)  # better: greedy
    with pytest.raises(ValueError, match="unknown models"):
        policy.set_available(["nope"])
    with pytest.raises(ValueError, match="at least one True"):
        policy.set_available([False, False])


def steps_to_adapt(policy, data, embeddings, at: int, steps: int, batch: int = 8) -> int:
    """Decisions after a silent quality drop of the best model until the policy picks the new best model for
    80% of the prompts over 5 consecutive batches (``steps`` if it never does)."""
    scenario = [{"kind": "quality_drop", "model": "large", "at": at, "factor": 0.3}]
    envs = make_vector_env(batch, data=data, embeddings=embeddings, scenario=scenario)
    truth = envs.envs[0].unwrapped
    best_before, best_after = (truth.expected_rewards(t).argmax(axis=1) for t in (0, at))
    obs, _ = envs.reset(seed=0)
    rng, hits = np.random.default_rng(0), []
    for i in range(steps // batch):
        actions, _ = sample_actions(policy.probs(obs, cost_weight=0.0, explore=True), rng)
        obs_next, _, _, _, infos = envs.step(actions)
        out = step_outcomes(infos)
        policy.update(obs, actions, out["quality"], out["cost"], out["latency_s"])
        obs = obs_next
        after = infos["final_info"]["step"] >= at
        best = np.where(after, best_after[out["prompt_index"]], best_before[out["prompt_index"]])
        hits.append(np.mean(actions == best))
        if (i + 1) * batch > at + 5 * batch and np.mean(hits[-5:]) >= 0.8:
            return (i + 1) * batch - at
    return steps


def test_forgetting_adapts_faster_to_a_silent_quality_drop(data, embeddings):
    data.quality[:, 2] = 0.95  # "large" is clearly best until it silently drops to 0.285
    data.quality[:, 1] = 0.6
    kw = dict(alpha=0.2, ridge=1.0, bias_ridge=0.01)
    sliding = steps_to_adapt(
        SlidingWindowLinUCB(MODELS, 8, window=200, min_pulls=2, **kw), data, embeddings, 800, 2400
    )
    plain = steps_to_adapt(LinUCB(MODELS, 8, **kw), data, embeddings, 800, 2400)
    assert sliding < 400 and sliding < plain / 2, (sliding, plain)
