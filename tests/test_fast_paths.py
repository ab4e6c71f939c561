"""The fast decision and update paths give the decisions of the straightforward formulas.

LinUCB and sliding-window LinUCB compute their bonus in float32 from cached triangular factors and redo in
float64 the rows their error bounds cannot certify; linear and neural-linear TS use the float64 factors;
the Thompson propensities skip the factors that cannot matter; the ridge updates run in place. Each is
compared here with the textbook formula on random data: same chosen models, probabilities to ~1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_ndtr

from router_rl.policies.base import greedy_probs
from router_rl.policies.bonus import WidthCache, block_edges, certified_greedy
from router_rl.policies.linucb import LinUCB
from router_rl.policies.ridge import add_bias, add_rows_in_place, woodbury_update
from router_rl.policies.sliding_linucb import SlidingWindowLinUCB
from router_rl.policies.thompson import LinTS, argmax_probabilities, quadrature_nodes

MODELS = [f"m{i}" for i in range(6)]
DIM = 24


def unit(n: int, rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_width(xb: np.ndarray, a_inv: np.ndarray) -> np.ndarray:
    """sqrt(x^T A_k^{-1} x), one arm and one row at a time."""
    return np.array([[np.sqrt(max(row @ a @ row, 0.0)) for a in a_inv] for row in xb])


def reference_scores(policy, x: np.ndarray, cost_weight: float, latency_weight: float = 0.0) -> np.ndarray:
    """q - w c - lambda l + alpha sqrt(x^T A^{-1} x) from theta = A^{-1} b recomputed by a dense inverse."""
    xb = add_bias(x)
    theta = np.einsum("kij,khj->khi", np.linalg.inv(np.linalg.inv(policy.a_inv)), policy.b)
    q, c, lat = np.einsum("bi,khi->hbk", xb, theta)
    return q - cost_weight * c - latency_weight * lat + policy.alpha * reference_width(xb, policy.a_inv)


def reference_argmax_probabilities(mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """The quadrature of every factor, as exp(sum log Phi), masks and all (the formula, unpruned)."""
    sd = np.maximum(sd, 1e-12)
    z = quadrature_nodes()
    t = mean[:, :, None] + sd[:, :, None] * z
    log_cdf = log_ndtr((t[:, :, :, None] - mean[:, None, None, :]) / sd[:, None, None, :])
    log_cdf = np.where(~np.eye(mean.shape[1], dtype=bool)[None, :, None, :], log_cdf, 0.0)
    out = np.exp(log_cdf.sum(axis=3)).mean(axis=2)
    return out / out.sum(axis=1, keepdims=True)


def trained_linucb(seed: int, steps: int = 1500, batch: int = 50, **kwargs) -> LinUCB:
    rng = np.random.default_rng(seed)
    policy = LinUCB(MODELS, DIM, **kwargs)
    w = rng.standard_normal((len(MODELS), DIM)) * 0.3
    for _ in range(steps // batch):
        x = unit(batch, rng)
        a = rng.integers(len(MODELS), size=batch)
        q = (x * w[a]).sum(axis=1) + 0.1 * rng.standard_normal(batch)
        policy.update(x, a, q, rng.random(batch), rng.random(batch))
    return policy


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch", [1, 7, 256])
def test_linucb_fast_decisions_equal_the_formula(seed: int, batch: int) -> None:
    policy = trained_linucb(seed, alpha=0.8)
    rng = np.random.default_rng(100 + seed)
    for _ in range(3):  # the first calls run the dense formula, later ones the cached float32 factors
        x = unit(batch, rng)
        for w in (0.0, 0.3, 2.0):
            fast = policy.probs(x, cost_weight=w, latency_weight=0.1, explore=True)
            np.testing.assert_array_equal(fast, greedy_probs(reference_scores(policy, x, w, 0.1)))
    np.testing.assert_allclose(
        policy.scores(x, cost_weight=0.3, explore=True), reference_scores(policy, x, 0.3), atol=1e-12
    )


def test_linucb_threads_share_the_bonus_and_change_no_decision() -> None:
    """`threads=2` splits the float32 width products into two groups of blocks, run by a pool: the same
    decisions as one thread and as the formula; the widths agree within their error bounds; it pickles."""
    import pickle

    one = trained_linucb(5, alpha=0.8, steps=3000)
    two = pickle.loads(pickle.dumps(one))
    two.threads, two._width_cache = 2, WidthCache(block=6, threads=2)  # 5 blocks of the 25 columns
    rng = np.random.default_rng(9)
    for _ in range(3):
        x = unit(256, rng)
        for w in (0.0, 0.3, 2.0):
            p2 = two.probs(x, cost_weight=w, explore=True)
            np.testing.assert_array_equal(p2, one.probs(x, cost_weight=w, explore=True))
            np.testing.assert_array_equal(p2, greedy_probs(reference_scores(two, x, w)))
    xb = add_bias(unit(64, rng))
    w2, e2 = two.widths(xb, float32=True)
    assert (np.abs(w2 - reference_width(xb, two.a_inv)) <= e2).all()
    cache = two._width_cache
    groups = cache._groups()
    assert cache._pool is not None and len(groups) == 2 and len(cache.edges) == 6
    assert sorted(j for g in groups for j in g) == list(range(5))
    again = pickle.loads(pickle.dumps(two))  # the pool stays behind; the copy starts its own
    assert again._width_cache._pool is None and again.config()["threads"] == 2
    np.testing.assert_array_equal(
        again.probs(x, cost_weight=0.3, explore=True), two.probs(x, cost_weight=0.3, explore=True)
    )
    with pytest.raises(ValueError, match="threads must be >= 1"):
        LinUCB(MODELS, DIM, threads=0)


def test_linucb_ties_and_near_ties_fall_back_to_float64() -> None:
    policy = LinUCB(MODELS, DIM, alpha=1.0)
    x = unit(300, np.random.default_rng(0))
    # at the prior every model has the same estimate and width: all tie, split evenly (after the factors exist)
    for _ in range(2):
        np.testing.assert_array_equal(
            policy.probs(x, cost_weight=0.5, explore=True), np.full((300, 6), 1 / 6)
        )
    # two models whose scores differ by less than the float32 error: exact widths decide, for the contenders only
    mean = np.array([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    w = np.array([[1.0, 1.0 + 1e-9, 1.0], [1.0, 1.5, 1.0], [1.0, 1.0, 1.0]])
    err = np.full((3, 3), 1e-6)
    asked = []

    def exact(rows: np.ndarray, arms: np.ndarray) -> np.ndarray:
        asked.append(list(zip(rows.tolist(), arms.tolist(), strict=True)))
        return np.array([{(0, 0): 1.0, (0, 1): 1.0 + 2e-9, (2, 0): 1.0, (2, 1): 1.0}[p] for p in asked[-1]])

    s = certified_greedy(mean, 1.0, w, err, exact)
    assert asked == [[(0, 0), (0, 1), (2, 0), (2, 1)]]  # row 1 is certain; model 2 is never a contender
    np.testing.assert_array_equal(greedy_probs(s), [[0, 1, 0], [0, 1, 0], [0.5, 0.5, 0]])


def test_width_cache_bounds_hold_and_factors_follow_updates() -> None:
    rng = np.random.default_rng(3)
    policy = trained_linucb(3, steps=600)
    cache = WidthCache(block=5, refactor_rows=10)
    xb = add_bias(unit(40, rng))
    ref = reference_width(xb, policy.a_inv)
    for float32 in (False, True, True):
        w, err = cache.widths(xb, policy.a_inv, float32=float32)
        assert np.all(np.abs(w - ref) <= err + 1e-12)
        assert (err == 0).all() if not float32 else (err < 1e-2 * ref).all()
    # an update of one arm invalidates that arm's factor only; widths follow at once
    policy.update(unit(3, rng), np.array([2, 2, 2]), np.ones(3), np.ones(3), np.ones(3))
    stale = ~(cache.fingerprint(policy.a_inv) == cache._factor_fp).all(axis=1)
    np.testing.assert_array_equal(stale, np.arange(6) == 2)
    w, err = cache.widths(xb, policy.a_inv, float32=True)
    assert np.all(np.abs(w - reference_width(xb, policy.a_inv)) <= err + 1e-12)
    np.testing.assert_array_equal(block_edges(385, 48), np.linspace(0, 385, 10).round().astype(int))


def test_sliding_linucb_fast_decisions_equal_the_formula() -> None:
    rng = np.random.default_rng(5)
    policy = SlidingWindowLinUCB(MODELS, DIM, window=400, min_pulls=0)
    for _ in range(30):
        x = unit(40, rng)
        a = rng.integers(len(MODELS), size=40)
        policy.update(x, a, rng.random(40), rng.random(40), rng.random(40))
    policy.set_available([True, True, False, True, True, True])
    for _ in range(3):
        x = unit(256, rng)
        scores = reference_scores(policy, x, 0.4)
        scores[:, 2] = -np.inf
        np.testing.assert_array_equal(policy.probs(x, cost_weight=0.4, explore=True), greedy_probs(scores))


@pytest.mark.parametrize("seed", [0, 1])
def test_lin_ts_propensities_equal_the_formula(seed: int) -> None:
    rng = np.random.default_rng(seed)
    policy = LinTS(MODELS, DIM, scale=0.5, ridge=3.0)
    for _ in range(20):
        x = unit(50, rng)
        policy.update(x, rng.integers(6, size=50), rng.random(50), rng.random(50), rng.random(50))
    for _ in range(2):
        x = unit(300, rng)
        mean, sd = policy.score_distribution(x, cost_weight=0.2)
        sd_ref = 0.5 * np.sqrt(1 + 0.2**2) * reference_width(add_bias(x), policy.a_inv)
        np.testing.assert_allclose(sd, sd_ref, rtol=1e-12)
        np.testing.assert_allclose(
            policy.probs(x, cost_weight=0.2, explore=True),
            reference_argmax_probabilities(mean, sd_ref),
            rtol=1e-10,
            atol=1e-15,
        )


def test_pruned_quadrature_equals_the_full_one() -> None:
    rng = np.random.default_rng(7)
    for k, spread, sd_scale in [
        (2, 0.1, 0.1),
        (6, 1.0, 0.05),
        (10, 0.3, 0.3),
        (10, 5.0, 0.01),
        (4, 0.0, 0.0),
    ]:
        mean = rng.normal(0, spread, (200, k))
        sd = sd_scale * rng.uniform(0.1, 2.0, (200, k))
        sd[::7, 0] = 0.0  # known values
        mean[::11, 1] = mean[::11, 0]  # exact ties
        np.testing.assert_allclose(
            argmax_probabilities(mean, sd), reference_argmax_probabilities(mean, sd), rtol=1e-10, atol=1e-15
        )


@pytest.mark.parametrize("n", [1, 3, 30, 40])
def test_in_place_rank_n_update_matches_woodbury_and_direct_inverse(n: int) -> None:
    rng = np.random.default_rng(n)
    m = rng.standard_normal((50, 30))
    a = np.eye(30) + m.T @ m
    x = rng.standard_normal((n, 30))
    a_inv = np.linalg.inv(a)
    expected = np.linalg.inv(a + x.T @ x)
    if n <= 30:
        np.testing.assert_allclose(woodbury_update(a_inv, x), expected, atol=1e-12)
    add_rows_in_place(a_inv, x)
    np.testing.assert_allclose(a_inv, expected, atol=1e-12)


def test_training_runs_choose_the_same_models_as_the_formula() -> None:
    """A bandit loop driven by the fast path takes the actions the formula takes at every step."""
    rng = np.random.default_rng(11)
    policy = LinUCB(MODELS, DIM, alpha=0.5)
    w = rng.standard_normal((6, DIM)) * 0.3
    for step in range(40):
        x = unit(256 if step % 5 == 0 else 32, rng)
        fast = policy.probs(x, cost_weight=0.2, explore=True)
        np.testing.assert_array_equal(fast, greedy_probs(reference_scores(policy, x, 0.2)))
        a = fast.argmax(axis=1)
        policy.update(x, a, (x * w[a]).sum(axis=1), np.full(len(a), 0.5), np.zeros(len(a)))


def test_dense_float32_path_of_changed_arms_is_bounded_and_decides_like_the_formula() -> None:
    rng = np.random.default_rng(8)
    policy = trained_linucb(8, steps=900, alpha=1.0)
    xb = add_bias(unit(64, rng))
    never = WidthCache(refactor_rows=10**9)  # no factor ever: every arm on its dense float32 inverse
    w, err = never.widths(xb, policy.a_inv, float32=True)
    ref = reference_width(xb, policy.a_inv)
    assert np.all(np.abs(w - ref) <= err) and (err > 0).all() and (err < 1e-3 * ref).all()
    # mixed: two arms factored, the others dense in float32
    mixed = WidthCache(refactor_rows=10**9)
    mixed._reset(*policy.a_inv.shape[:2])
    fp = mixed.fingerprint(policy.a_inv)
    for arm in (0, 3):
        mixed._refactor(policy.a_inv, arm, fp[arm])
    w, err = mixed.widths(xb, policy.a_inv, float32=True)
    assert np.all(np.abs(w - ref) <= err)
    policy._width_cache = WidthCache(refactor_rows=10**9)
    for _ in range(5):
        x = unit(64, rng)
        np.testing.assert_array_equal(
            policy.probs(x, cost_weight=0.3, explore=True), greedy_probs(reference_scores(policy, x, 0.3))
        )
        a = rng.integers(6, size=64)
        policy.update(x, a, rng.random(64), rng.random(64), rng.random(64))
