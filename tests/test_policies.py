"""The policy protocol over every policy, and the learners' numbers on problems with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from router_rl.policies.base import Policy, greedy_probs, sample_actions
from router_rl.policies.eps_greedy import EpsilonGreedy
from router_rl.policies.knn import KNNRouter
from router_rl.policies.linucb import LinUCB, ucb_bonus, woodbury_update
from router_rl.policies.mlp import MLPRouter
from router_rl.policies.neural_ts import NeuralLinearTS
from router_rl.policies.oracle import Oracle
from router_rl.policies.random import RandomPolicy
from router_rl.policies.routellm_mf import RouteLLMMF
from router_rl.policies.single import SingleModel
from router_rl.policies.thompson import LinTS
from router_rl.policies.zero_router import ZeroRouter

MODELS = ["cheap", "mid", "frontier"]
DIM = 6
LEARNERS = ("linucb", "zero_router", "eps_greedy", "lin_ts", "neural_ts", "mlp", "knn", "vw")


def make_policies() -> list[Policy]:
    policies = [
        LinUCB(MODELS, DIM, alpha=0.5, ridge=1.0),
        RandomPolicy(MODELS, DIM),
        SingleModel(MODELS, "mid", DIM),
        ZeroRouter(MODELS, DIM, epsilon=0.2),
        EpsilonGreedy(MODELS, DIM, epsilon=0.2, decay=0.01),
        LinTS(MODELS, DIM, scale=0.5),
        LinTS(MODELS, DIM, scale=0.5, propensity="mc", n_draws=200),
        NeuralLinearTS(MODELS, DIM, hidden=[8, 4], epochs=2, train_every=8, device="cpu"),
        MLPRouter(MODELS, DIM, hidden=[8], epochs=2, train_every=8, device="cpu"),
        KNNRouter(MODELS, DIM, k=3),
        RouteLLMMF(MODELS, DIM, rank=4, epochs=2, device="cpu"),
    ]
    try:  # optional peer
        from router_rl.policies.vw import VWPolicy

        policies.append(VWPolicy(MODELS, DIM, cost_weights=[0.0, 1.0]))
    except ImportError:
        pass
    return policies


def contexts(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, DIM))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("policy", make_policies(), ids=lambda p: p.name)
def test_protocol(policy: Policy) -> None:
    assert isinstance(policy, Policy)
    x = contexts(16)
    rng = np.random.default_rng(1)
    for explore in (True, False):
        p = policy.probs(x, cost_weight=0.3, explore=explore)
        assert p.shape == (16, 3)
        np.testing.assert_allclose(p.sum(axis=1), 1.0)
        assert (p >= 0).all()
    actions, prop = sample_actions(policy.probs(x, cost_weight=0.3, explore=True), rng)
    policy.update(x, actions, rng.random(16), rng.random(16), rng.random(16))
    # state round trip: a fresh policy with the state decides the same
    clone = type(policy)(models=MODELS, dim=DIM, **policy.config())
    clone.load_state_dict(policy.state_dict())
    np.testing.assert_allclose(clone.probs(x, cost_weight=0.7), policy.probs(x, cost_weight=0.7))


@pytest.mark.parametrize("policy", [p for p in make_policies() if p.name in LEARNERS], ids=lambda p: p.name)
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"actions": np.array([0, 3])}, r"actions must lie in \[0, 3\)"),
        ({"actions": np.array([0])}, r"actions must be \(2,\)"),
        ({"quality": np.array([0.1, 0.2, 0.3])}, r"feedback arrays must be \(2,\)"),
    ],
)
def test_update_rejects_bad_batches(policy: Policy, bad: dict, message: str) -> None:
    batch = {
        "x": contexts(2),
        "actions": np.array([0, 1]),
        "quality": np.ones(2),
        "cost": np.ones(2),
        "latency": np.ones(2),
    }
    batch.update(bad)
    with pytest.raises(ValueError, match=message):
        policy.update(**batch)


def test_woodbury_matches_direct_inverse() -> None:
    rng = np.random.default_rng(0)
    a = np.eye(5) * 2.0 + 0.1
    x = rng.normal(size=(3, 5))
    np.testing.assert_allclose(woodbury_update(np.linalg.inv(a), x), np.linalg.inv(a + x.T @ x), atol=1e-12)
    one = rng.normal(size=(1, 5))  # rank one: Sherman-Morrison
    np.testing.assert_allclose(
        woodbury_update(np.linalg.inv(a), one), np.linalg.inv(a + one.T @ one), atol=1e-12
    )


def test_ucb_bonus_is_quadratic_form() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3))
    a_inv = np.stack([np.eye(3), 2 * np.eye(3)])
    expected = np.sqrt(np.stack([(x**2).sum(1), 2 * (x**2).sum(1)], axis=1))
    np.testing.assert_allclose(ucb_bonus(x, a_inv), expected)


def test_linucb_learns_context_dependent_quality_and_cost_tradeoff() -> None:
    """Quality of each model is linear in x; the frontier model is best but costly. LinUCB learns both heads
    from bandit feedback and picks per context; raising the cost weight moves choices to cheaper models."""
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=(3, DIM)) * 0.3
    bias = np.array([0.3, 0.5, 0.7])
    costs = np.array([0.01, 0.2, 1.0])
    policy = LinUCB(MODELS, DIM, alpha=0.3, ridge=1.0)
    for _ in range(150):
        x = contexts(32, seed=int(rng.integers(1 << 30)))
        actions, _ = sample_actions(policy.probs(x, cost_weight=0.2, explore=True), rng)
        q = (x @ w_true.T + bias)[np.arange(32), actions] + rng.normal(scale=0.05, size=32)
        policy.update(x, actions, q, costs[actions], np.zeros(32))
    x = contexts(500, seed=99)
    truth = x @ w_true.T + bias
    for w in (0.0, 0.5):
        best = (truth - w * costs).argmax(axis=1)
        chosen = policy.probs(x, cost_weight=w).argmax(axis=1)
        assert (chosen == best).mean() > 0.9, w
    est_q, est_c, _ = policy.estimates(x)
    np.testing.assert_allclose(est_c, np.tile(costs, (500, 1)), atol=0.02)
    assert np.abs(est_q - truth).mean() < 0.03
    share_frontier = lambda w: (policy.probs(x, cost_weight=w).argmax(1) == 2).mean()  # noqa: E731
    assert share_frontier(0.0) > share_frontier(0.5) >= share_frontier(5.0)
    assert share_frontier(5.0) == 0.0


def test_zero_router_walks_the_hull() -> None:
    policy = ZeroRouter(MODELS, epsilon=0.0)
    x = contexts(300)
    actions = np.tile([0, 1, 2], 100)
    quality, cost = np.array([0.4, 0.6, 0.9])[actions], np.array([0.0, 0.1, 1.0])[actions]
    policy.update(x, actions, quality, cost, np.zeros(300))
    picks = {w: int(policy.probs(x[:1], cost_weight=w).argmax()) for w in (0.0, 1.0, 10.0)}
    assert picks == {0.0: 2, 1.0: 1, 10.0: 0}  # 0.9-0 ; 0.6-0.1=0.5 > 0.9-1 ; 0.4 > 0.6-1
    # untried models are tried first while exploring
    fresh = ZeroRouter(MODELS)
    fresh.update(x[:2], np.array([0, 0]), np.ones(2), np.zeros(2), np.zeros(2))
    np.testing.assert_allclose(fresh.probs(x[:1], cost_weight=0.0, explore=True), [[0.0, 0.5, 0.5]])


def test_oracle_best_quality_cheapest_among_ties() -> None:
    quality = np.array([[0.9, 0.9, 0.5], [0.2, 0.3, 0.8]])
    cost = np.array([[0.5, 0.1, 0.01], [0.0, 0.0, 1.0]])
    oracle = Oracle(quality, cost, cost_scale=1.0)
    assert oracle.choose().tolist() == [1, 2]
    assert oracle.choose(cost_weight=1.0).tolist() == [1, 1]  # 0.9-0.1 ; 0.3-0 > 0.8-1


def test_greedy_probs_split_ties_and_sampling_propensities() -> None:
    p = greedy_probs(np.array([[1.0, 1.0, 0.0], [0.0, -np.inf, 2.0]]))
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    actions, prop = sample_actions(np.tile([0.2, 0.3, 0.5], (20000, 1)), np.random.default_rng(0))
    np.testing.assert_allclose(np.bincount(actions, minlength=3) / 20000, [0.2, 0.3, 0.5], atol=0.015)
    np.testing.assert_allclose(prop, np.array([0.2, 0.3, 0.5])[actions])


def test_single_model_rejects_unknown_model() -> None:
    with pytest.raises(ValueError, match="unknown model 'gpt-9'"):
        SingleModel(MODELS, "gpt-9")
