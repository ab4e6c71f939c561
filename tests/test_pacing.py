"""The budgeted episode env, the primal-dual budget pacer over a bandit, and a PPO smoke run."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from test_envs import MODELS, make_data

from router_rl.envs import BudgetedRoutingEnv, make_budgeted_vector_env
from router_rl.policies.base import Policy
from router_rl.policies.linucb import LinUCB
from router_rl.policies.pacing import BudgetPacer, episode_context, run_episode
from router_rl.policies.random import RandomPolicy

SPEND_TOLERANCE = 0.03
"""The documented tolerance (docs/simulator.md): in a soft-budget episode the pacer's spend stays below
(1 + SPEND_TOLERANCE) x budget."""

LINUCB = {"_target_": "router_rl.policies.linucb.LinUCB", "alpha": 0.3, "ridge": 1.0}


@pytest.fixture(scope="module")
def big():
    return make_data(200)


def env_of(big, **kwargs) -> BudgetedRoutingEnv:
    data, emb = big
    return BudgetedRoutingEnv(data=data, embeddings=emb, **kwargs)


# ---------------------------------------------------------------------- the env
def test_budgeted_episode_observation_and_info(big):
    env = env_of(big, n_requests=5, budget_usd=0.01, tiers="default")
    obs, info = env.reset(seed=0)
    assert set(obs) == {"embedding", "context", "budget_left", "budget_per_request", "time_left", "load"}
    assert obs["budget_per_request"][0] == pytest.approx(0.01 / 5 / env.cost_scale)
    assert obs["budget_left"][0] == 1.0 and obs["time_left"][0] == 1.0 and obs["context"].sum() == 1
    assert info["budget_usd"] == 0.01 and info["requests_left"] == 5
    spent = 0.0
    for i in range(5):
        obs, r, terminated, truncated, info = env.step(np.int64(0))
        spent += info["cost_usd"]
        assert info["spent_usd"] == pytest.approx(spent) and info["requests_left"] == 4 - i
        assert obs["time_left"][0] == pytest.approx((4 - i) / 5)
        assert obs["budget_left"][0] == pytest.approx((0.01 - spent) / 0.01, abs=1e-6)
        assert r == pytest.approx(info["quality"] - info["sla_penalty"])
        assert terminated == (i == 4) and not truncated
    with pytest.raises(RuntimeError, match="finished episode"):
        env.step(0)


def test_hard_budget_drops_requests_once_spent(big):
    env = env_of(big, n_requests=60, budget_share=0.05)
    env.reset(seed=0)
    statuses, costs = [], []
    while True:
        *_, terminated, _, info = env.step(np.int64(2))  # always the most expensive model
        statuses.append(info["status"])
        costs.append(info["cost_usd"])
        if terminated:
            break
    first_drop = statuses.index("dropped")
    assert set(statuses[first_drop:]) == {"dropped"}
    assert sum(costs[: first_drop - 1]) < env.budget_usd <= sum(costs)
    assert info["spent_usd"] - env.budget_usd <= max(costs)  # at most one request over


def test_soft_budget_charges_the_overspend_at_the_end(big):
    env = env_of(big, n_requests=10, budget_usd=0.001, budget_mode="soft", overspend_penalty=0.5)
    env.reset(seed=0)
    for _ in range(10):
        _, r, terminated, _, info = env.step(np.int64(2))
    over = (info["spent_usd"] - 0.001) / 0.001
    assert terminated and info["status"] == "ok"
    assert r == pytest.approx(info["quality"] - 0.5 * 10 * over)


def test_load_observation_rises_with_own_traffic(big):
    env = env_of(big, n_requests=40, simulator={"concurrency": 2, "queue_size": 2, "arrival_rate": 2.0})
    obs, _ = env.reset(seed=0)
    loads = []
    for _ in range(39):
        obs, *_ = env.step(np.int64(2))
        loads.append(obs["load"].copy())
    loads = np.array(loads)
    assert loads[:, 2].max() == 1.0 and loads[:, :2].max() == 0.0


def test_budgeted_vector_env_resets_in_the_same_step(big):
    data, emb = big
    envs = make_budgeted_vector_env(3, data=data, embeddings=emb, n_requests=4)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, infos = envs.reset(seed=0)
    np.testing.assert_array_equal(infos["step"], [0, 1, 2])
    for _ in range(4):
        obs, _, terminated, _, infos = envs.step(np.zeros(3, dtype=np.int64))
    assert terminated.all()
    np.testing.assert_array_equal(infos["final_info"]["requests_left"], [0, 0, 0])
    np.testing.assert_array_equal(obs["time_left"], np.ones((3, 1)))  # the next episodes have begun
    np.testing.assert_array_equal(infos["step"], [12, 13, 14])
    envs.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_requests": 0}, "n_requests"),
        ({"budget_usd": -1.0}, "budget_usd"),
        ({"budget_mode": "maybe"}, "budget_mode"),
        ({"budget_share": np.inf}, "budget_share"),
        ({"latency_slo_s": 0.0}, "latency_slo_s"),
    ],
)
def test_budgeted_env_rejects_bad_arguments(big, kwargs, match):
    with pytest.raises(ValueError, match=match):
        env_of(big, **kwargs)


# ---------------------------------------------------------------------- the pacer
def test_pacer_protocol_state_and_config_round_trip():
    pacer = BudgetPacer(MODELS, 4, base=LINUCB, target_cost=0.1)
    assert isinstance(pacer, Policy)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4))
    for _ in range(3):
        p = pacer.probs(x, cost_weight=0.2, explore=True)
        np.testing.assert_allclose(p.sum(axis=1), 1.0)
        pacer.update(x, rng.integers(0, 3, 8), rng.random(8), rng.random(8), rng.random(8))
    assert pacer.multiplier > 0  # random costs average 0.5 > the 0.1 target: mu went up
    clone = BudgetPacer(models=MODELS, dim=4, **pacer.config())
    clone.load_state_dict(pacer.state_dict())
    assert clone.multiplier == pacer.multiplier and isinstance(clone.base, LinUCB)
    np.testing.assert_allclose(clone.probs(x, cost_weight=0.3), pacer.probs(x, cost_weight=0.3))
    head = pacer.linear_head()  # serving at cost weight w decides as the pacer at w
    q, c = head["theta_quality"], head["theta_cost"]
    xb = np.concatenate([x, np.ones((8, 1))], axis=1)
    np.testing.assert_array_equal(
        (xb @ q.T - 0.3 * xb @ c.T).argmax(1), pacer.probs(x, cost_weight=0.3).argmax(1)
    )
    factory = BudgetPacer(MODELS, 4, base=lambda models, dim: RandomPolicy(models, dim))
    assert factory.config()["base"]["_target_"] == "router_rl.policies.random.RandomPolicy"
    with pytest.raises(ValueError, match="_target_"):
        BudgetPacer(MODELS, 4, base={"alpha": 1.0})


def test_dual_step_moves_the_multiplier_toward_the_target():
    pacer = BudgetPacer(MODELS, 2, base=LINUCB, target_cost=0.2, step_size=0.1)
    x = np.zeros((10, 2))
    pacer.update(x, np.zeros(10, dtype=int), np.ones(10), np.full(10, 0.6), np.zeros(10))
    assert pacer.multiplier == pytest.approx(0.1 * 10 * (0.6 - 0.2) / 0.2)
    pacer.update(x, np.zeros(10, dtype=int), np.ones(10), np.zeros(10), np.zeros(10))
    assert pacer.multiplier == pytest.approx(2.0 - 0.1 * 10 * 0.2 / 0.2)
    pacer.update(x, np.zeros(10, dtype=int), np.ones(10), np.zeros(10), np.zeros(10))
    pacer.update(x, np.zeros(10, dtype=int), np.ones(10), np.zeros(10), np.zeros(10))
    assert pacer.multiplier == 0.0  # projected at 0


@pytest.mark.parametrize("share", [0.05, 0.15, 0.3])
def test_pacer_keeps_a_soft_budget_within_tolerance(big, share):
    """No hard cap: the pacer alone keeps the spend within the documented tolerance, and uses the budget."""
    env = env_of(big, n_requests=200, budget_share=share, budget_mode="soft")
    pacer = BudgetPacer(MODELS, 8, base=LINUCB)
    rng = np.random.default_rng(0)
    ratios = [run_episode(env, pacer, rng, seed=0 if i == 0 else None)["spend_ratio"] for i in range(5)]
    assert max(ratios) <= 1 + SPEND_TOLERANCE
    assert min(ratios) >= 0.9
    unpaced = run_episode(env, LinUCB(MODELS, 8, alpha=0.3, ridge=1.0), rng, seed=1)["spend_ratio"]
    assert unpaced > 1.3  # what the pacing prevents


def test_episode_context_concatenates_embedding_and_context(big):
    env = env_of(big, n_requests=3, tiers="default")
    obs, _ = env.reset(seed=0)
    x = episode_context(obs)
    assert x.shape == (1, 8 + 3) and x[0, 8:].sum() == 1.0


# ---------------------------------------------------------------------- deep RL on the budgeted env
def test_ppo_smoke_trains_on_the_budgeted_env(big):
    sb3 = pytest.importorskip("stable_baselines3")
    import torch
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    torch.set_num_threads(1)
    data, emb = big
    env = gym.make("router_rl/BudgetedRouting-v0", data=data, embeddings=emb, n_requests=20, tiers="default")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(env.unwrapped)
    model = sb3.PPO("MultiInputPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    assert model.num_timesteps == 256
    obs, _ = env.reset(seed=3)
    action, _ = model.predict(obs, deterministic=True)
    assert env.action_space.contains(np.int64(action))
