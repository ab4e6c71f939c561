"""Metrics against hand-computed values, invalid inputs from a table, and hull/AIQ properties."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from router_rl.metrics import (
    aiq,
    best_single_model,
    cost_at_quality,
    cost_quality_point,
    cumulative_regret,
    headline_cost_fraction,
    nondecreasing_convex_hull,
    oracle_choice,
    oracle_point,
    single_model_points,
    zero_router_aiq,
)

NAN = float("nan")

# Three points on a concave curve: A=(1, 0.2), B=(2, 0.6), C=(4, 0.8); slopes AB = 0.4 > BC = 0.1.
ABC_C = np.array([1.0, 2.0, 4.0])
ABC_Q = np.array([0.2, 0.6, 0.8])


# ---------------------------------------------------------------- cost-quality point, oracle, single models


def test_cost_quality_point_mixes_and_ignores_nan_with_zero_probability() -> None:
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    quality = np.array([[0.2, NAN], [0.4, 0.8]])
    cost = np.array([[1.0, NAN], [2.0, 4.0]])
    # row 0: (1, 0.2); row 1: (0.5*2 + 0.5*4, 0.5*0.4 + 0.5*0.8) = (3, 0.6); mean: (2, 0.4)
    c, q = cost_quality_point(probs, quality, cost)
    assert c == pytest.approx(2.0)
    assert q == pytest.approx(0.4)
    assert isinstance(c, float) and isinstance(q, float)


def test_oracle_tie_breaking() -> None:
    quality = np.array([[0.5, 0.9, 0.9], [0.7, 0.7, NAN], [NAN, 0.3, 0.3 + 1e-13]])
    cost = np.array([[1.0, 5.0, 3.0], [2.0, 1.0, NAN], [1.0, 4.0, 4.0]])
    # row 0: exact tie of models 1 and 2 -> cheaper 2; row 1: tie 0/1 -> cheaper 1 (NaN model 2 never chosen);
    # row 2: 1e-13 apart is a tie within atol=1e-12, equal costs -> lowest index 1.
    np.testing.assert_array_equal(oracle_choice(quality, cost), [2, 1, 1])
    # with atol=0 the 1e-13 better model 2 wins row 2
    np.testing.assert_array_equal(oracle_choice(quality, cost, atol=0.0), [2, 1, 2])
    c, q = oracle_point(quality, cost)
    assert c == pytest.approx((3.0 + 1.0 + 4.0) / 3)
    assert q == pytest.approx((0.9 + 0.7 + 0.3) / 3)


def test_single_model_points_nanmean_per_column() -> None:
    quality = np.array([[0.2, NAN], [0.4, 0.8]])
    cost = np.array([[1.0, NAN], [3.0, 4.0]])
    costs, quals = single_model_points(quality, cost)
    np.testing.assert_allclose(costs, [2.0, 4.0])
    np.testing.assert_allclose(quals, [0.3, 0.8])


# ---------------------------------------------------------------- hull


def test_hull_of_concave_points_is_all_of_them() -> None:
    hc, hq = nondecreasing_convex_hull(ABC_C[::-1], ABC_Q[::-1])  # input order does not matter
    np.testing.assert_array_equal(hc, ABC_C)
    np.testing.assert_array_equal(hq, ABC_Q)


def test_hull_drops_dominated_duplicate_cost_and_below_chord_points() -> None:
    c = np.concatenate([ABC_C, [3.0, 3.5, 2.0, 5.0]])
    q = np.concatenate([ABC_Q, [0.65, 0.5, 0.3, 0.8]])
    # (3, 0.65): under chord B-C, which is 0.7 at cost 3; (3.5, 0.5): worse than cheaper B;
    # (2, 0.3): same cost as B, lower quality; (5, 0.8): same quality as cheaper C.
    hc, hq = nondecreasing_convex_hull(c, q)
    np.testing.assert_array_equal(hc, ABC_C)
    np.testing.assert_array_equal(hq, ABC_Q)


def test_hull_pops_a_vertex_made_non_concave_and_collinear_points() -> None:
    # (2, 0.3) lies under chord (1, 0.2)-(3, 0.8), which is 0.5 at cost 2.
    hc, hq = nondecreasing_convex_hull([1.0, 2.0, 3.0], [0.2, 0.3, 0.8])
    np.testing.assert_array_equal(hc, [1.0, 3.0])
    np.testing.assert_array_equal(hq, [0.2, 0.8])
    # the middle of three collinear points is not a vertex
    hc, hq = nondecreasing_convex_hull([1.0, 2.0, 3.0], [0.2, 0.4, 0.6])
    np.testing.assert_array_equal(hc, [1.0, 3.0])


def test_hull_single_point_and_equal_points() -> None:
    hc, hq = nondecreasing_convex_hull([2.0], [0.5])
    np.testing.assert_array_equal(hc, [2.0])
    np.testing.assert_array_equal(hq, [0.5])
    hc, hq = nondecreasing_convex_hull([2.0, 2.0, 1.0], [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(hc, [1.0])
    np.testing.assert_array_equal(hq, [0.5])


# ---------------------------------------------------------------- AIQ


def test_aiq_three_points_by_hand() -> None:
    # trapezoids: (2-1)(0.2+0.6)/2 = 0.4 and (4-2)(0.6+0.8)/2 = 1.4; flat to 5: 0.8 * (5-4) = 0.8;
    # left of cost 1: zero. Area 2.6, divided by max_cost 5 -> 0.52.
    assert aiq(ABC_C, ABC_Q, max_cost=5.0) == pytest.approx(0.52)
    # max_cost = 4: area 1.8 / 4 = 0.45
    assert aiq(ABC_C, ABC_Q, max_cost=4.0) == pytest.approx(0.45)


def test_aiq_single_point_is_flat_from_its_cost() -> None:
    # zero on [0, 2), 0.5 on [2, 4]: area 1.0 / 4
    assert aiq([2.0], [0.5], max_cost=4.0) == pytest.approx(0.25)
    # a free router: flat from 0
    assert aiq([0.0], [0.5], max_cost=4.0) == pytest.approx(0.5)


def test_aiq_matches_numerical_integration() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = rng.uniform(0.1, 5.0, size=8)
        q = rng.uniform(0.0, 1.0, size=8)
        max_cost = 6.0
        hc, hq = nondecreasing_convex_hull(c, q)
        grid = np.linspace(0.0, max_cost, 400_001)
        f = np.interp(grid, hc, hq, left=0.0, right=hq[-1])
        numeric = float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(grid))) / max_cost
        assert aiq(c, q, max_cost=max_cost) == pytest.approx(numeric, abs=1e-4)


def test_aiq_properties_random() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        m = int(rng.integers(1, 10))
        c = rng.uniform(0.0, 3.0, size=m)
        q = rng.uniform(0.0, 1.0, size=m)
        max_cost = float(c.max()) * float(rng.uniform(1.0, 2.0)) + 1e-9
        a = aiq(c, q, max_cost=max_cost)
        # a router given the zero router's points scores exactly the zero router's AIQ
        assert a == zero_router_aiq(c, q, max_cost=max_cost)
        # the hull is no worse than its best point, never better than the best quality
        assert 0.0 <= a <= q.max() + 1e-12
        # every point lies on or under the hull; the hull is made of input points, rising and concave
        hc, hq = nondecreasing_convex_hull(c, q)
        assert set(zip(hc.tolist(), hq.tolist(), strict=True)) <= set(
            zip(c.tolist(), q.tolist(), strict=True)
        )
        assert np.all(q <= np.interp(c, hc, hq, left=-np.inf) + 1e-12)
        slopes = np.diff(hq) / np.diff(hc)
        assert np.all(slopes > 0) and np.all(np.diff(slopes) < 1e-12)
        # adding a dominated point (costlier than some point and no better) never changes AIQ
        i = int(rng.integers(m))
        dc = float(rng.uniform(c[i], max_cost))
        dq = float(rng.uniform(0.0, q[i]))
        assert aiq(np.append(c, dc), np.append(q, dq), max_cost=max_cost) == pytest.approx(a, abs=1e-12)
        # nor does the point order
        perm = rng.permutation(m)
        assert aiq(c[perm], q[perm], max_cost=max_cost) == pytest.approx(a, abs=1e-12)


# ---------------------------------------------------------------- cost at quality, headline


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (0.1, 1.0),  # below the cheapest point: that point's cost
        (0.2, 1.0),
        (0.4, 1.5),  # 1 + (0.4-0.2)/(0.6-0.2) * (2-1)
        (0.6, 2.0),  # a vertex
        (0.7, 3.0),  # 2 + (0.7-0.6)/(0.8-0.6) * (4-2)
        (0.8, 4.0),
        (0.81, math.inf),  # never reached
    ],
)
def test_cost_at_quality(target: float, expected: float) -> None:
    assert cost_at_quality(ABC_C, ABC_Q, target) == pytest.approx(expected)


def test_headline_cost_fraction_by_hand() -> None:
    single_c = np.array([1.0, 10.0, 8.0])
    single_q = np.array([0.5, 0.8, 0.8])
    # best single: quality 0.8, tie between models 1 and 2 -> cheaper model 2, cost 8
    assert best_single_model(single_c, single_q) == 2
    router_c = np.array([1.0, 3.0, 6.0])
    router_q = np.array([0.5, 0.78, 0.8])
    # target 0.95 * 0.8 = 0.76, on segment (1, 0.5)-(3, 0.78): 1 + 0.26/0.28 * 2 = 20/7; / 8 = 5/14
    assert headline_cost_fraction(router_c, router_q, single_c, single_q, 0.95) == pytest.approx(5 / 14)
    # 1.0 * 0.8 reached at cost 6: 6/8
    assert headline_cost_fraction(router_c, router_q, single_c, single_q, 1.0) == pytest.approx(0.75)
    # a router that never reaches the target
    assert headline_cost_fraction([1.0], [0.5], single_c, single_q, 0.97) == math.inf


def test_cumulative_regret() -> None:
    out = cumulative_regret(np.array([0.5, 0.2, 1.0]), np.array([1.0, 0.2, 1.5]))
    np.testing.assert_allclose(out, [0.5, 0.5, 1.0])
    assert out.shape == (3,)


# ---------------------------------------------------------------- invalid inputs

_P = np.array([[1.0, 0.0], [0.5, 0.5]])
_Q = np.array([[0.2, 0.3], [0.4, 0.8]])
_C = np.array([[1.0, 2.0], [2.0, 4.0]])

INVALID = [
    (cost_quality_point, (_P[:1], _Q, _C), {}, ValueError, r"shapes must match"),
    (cost_quality_point, (np.array([1.0, 0.0]), _Q[:1, :2], _C[:1]), {}, ValueError, r"\(N, K\) array"),
    (cost_quality_point, (np.array([[1.5, -0.5], [0.5, 0.5]]), _Q, _C), {}, ValueError, r"non-negative"),
    (cost_quality_point, (np.array([[0.5, 0.4], [0.5, 0.5]]), _Q, _C), {}, ValueError, r"row 0 sums to 0\.9"),
    (
        cost_quality_point,
        (_P, np.array([[0.2, 0.3], [NAN, 0.8]]), _C),
        {},
        ValueError,
        r"quality is NaN/inf where the router has positive probability .*prompt 1, model 0",
    ),
    (cost_quality_point, (_P, _Q, np.array([[1.0, 2.0], [2.0, NAN]])), {}, ValueError, r"cost_usd is NaN"),
    (
        oracle_choice,
        (np.array([[NAN, NAN], [0.1, 0.2]]), _C),
        {},
        ValueError,
        r"prompt 0 has no finite quality",
    ),
    (
        oracle_choice,
        (_Q, np.array([[1.0, 2.0], [2.0, NAN]])),
        {},
        ValueError,
        r"cost_usd is NaN/inf for a best",
    ),
    (oracle_choice, (_Q, _C), {"atol": -1.0}, ValueError, r"atol must be >= 0"),
    (single_model_points, (np.array([[0.2, NAN], [0.4, NAN]]), _C), {}, ValueError, r"model \(column\) 1"),
    (nondecreasing_convex_hull, ([], []), {}, ValueError, r"non-empty 1-D"),
    (nondecreasing_convex_hull, ([1.0, 2.0], [0.5]), {}, ValueError, r"equal length"),
    (nondecreasing_convex_hull, ([1.0, NAN], [0.5, 0.6]), {}, ValueError, r"finite"),
    (nondecreasing_convex_hull, ([-1.0, 2.0], [0.5, 0.6]), {}, ValueError, r"costs must be >= 0"),
    # the dominated point at cost 5 still counts for max(costs)
    (aiq, ([1.0, 5.0], [0.5, 0.4]), {"max_cost": 3.0}, ValueError, r"max_cost \(3\.0\) must be >= .*5\.0"),
    (aiq, ([0.0], [0.5]), {"max_cost": 0.0}, ValueError, r"max_cost must be finite and > 0"),
    (aiq, ([1.0], [0.5]), {"max_cost": NAN}, ValueError, r"max_cost must be finite"),
    (cost_at_quality, ([1.0], [0.5], NAN), {}, ValueError, r"target_quality must be finite"),
    (
        headline_cost_fraction,
        ([1.0], [0.5], [1.0], [0.5], 0.0),
        {},
        ValueError,
        r"fraction must be in \(0, 1\]",
    ),
    (headline_cost_fraction, ([1.0], [0.5], [1.0], [0.5], 1.2), {}, ValueError, r"fraction must be in"),
    (headline_cost_fraction, ([1.0], [0.5], [0.0], [0.5], 0.9), {}, ValueError, r"has cost 0\.0"),
    (cumulative_regret, ([1.0, 2.0], [1.0]), {}, ValueError, r"1-D of equal length"),
    (cumulative_regret, (np.ones((2, 2)), np.ones((2, 2))), {}, ValueError, r"1-D of equal length"),
    (cumulative_regret, ([1.0, NAN], [1.0, 1.0]), {}, ValueError, r"must be finite"),
]


@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "error", "match"),
    INVALID,
    ids=[f"{t[0].__name__}-{i}" for i, t in enumerate(INVALID)],
)
def test_invalid_inputs(
    fn: Callable[..., object], args: tuple, kwargs: dict, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


# ---------------------------------------------------------------- achievable headline, paired bootstrap
def test_achievable_cost_fraction_uses_only_points_that_ran() -> None:
    from router_rl.metrics import achievable_cost_fraction

    single_c, single_q = np.array([1.0, 4.0]), np.array([0.5, 1.0])  # best single: cost 4, quality 1
    router_c, router_q = np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.9, 0.97])
    # 95% = 0.95: the hull mixes (2, 0.9) and (3, 0.97) at 2 + 0.05/0.07 = 2.714; the cheapest point that
    # ran with q >= 0.95 is (3, 0.97)
    assert headline_cost_fraction(router_c, router_q, single_c, single_q, 0.95) == pytest.approx(
        2.7142857 / 4
    )
    assert achievable_cost_fraction(router_c, router_q, single_c, single_q, 0.95) == (0.75, 2)
    assert achievable_cost_fraction(router_c, router_q, single_c, single_q, 0.9) == (0.5, 1)
    assert achievable_cost_fraction(router_c, router_q, single_c, single_q, 0.99) == (math.inf, -1)


def _router(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(1, 3, n) per-prompt quality and cost of a router at three cost weights: cheap, mid, expensive."""
    cost = np.stack([np.full(n, 1.0), np.full(n, 2.0), np.full(n, 4.0)])[None]
    quality = np.clip(rng.normal([[0.4], [0.6], [0.7]], 0.2, size=(3, n)) + shift, 0, 1)[None]
    return quality, cost


def test_paired_bootstrap_of_a_constant_shift_is_exact_and_tight() -> None:
    from router_rl.metrics import paired_bootstrap_aiq

    rng = np.random.default_rng(0)
    qb, cb = _router(rng, 300)
    qa = qb + 0.05  # A = B + 0.05 on every prompt and weight: the hull shifts up by 0.05 from cost 1 on
    out = paired_bootstrap_aiq(qa, cb, qb, cb, max_cost=4.0, n_boot=200, seed=1)
    assert out["diff"] == pytest.approx(0.05 * (4.0 - 1.0) / 4.0)  # zero left of the cheapest point
    assert out["low"] == pytest.approx(out["diff"]) and out["high"] == pytest.approx(out["diff"])
    assert out["p_value"] < 0.01 and out["n_prompts"] == 300
    # seeds of A are averaged: two seeds whose AIQs straddle B's by +-d give mean difference 0.05 * 3/4
    two = np.concatenate([qb + 0.02, qb + 0.08])
    assert paired_bootstrap_aiq(two, np.repeat(cb, 2, 0), qb, cb, max_cost=4.0, n_boot=50)[
        "diff"
    ] == pytest.approx(0.0375)


def test_paired_bootstrap_interval_covers_the_truth_at_its_level() -> None:
    """Two exchangeable routers (same distribution, independent per prompt): the true difference is 0, so a
    95% interval must cover 0 in about 95% of data sets; 100 data sets: between 87 and 100 (binomial 0.1%)."""
    from router_rl.metrics import paired_bootstrap_aiq

    rng = np.random.default_rng(7)
    covered = 0
    for i in range(100):
        qa, ca = _router(rng, 120)
        qb, cb = _router(rng, 120)
        out = paired_bootstrap_aiq(qa, ca, qb, cb, max_cost=4.0, n_boot=200, seed=i)
        covered += out["low"] <= 0.0 <= out["high"]
    assert 87 <= covered <= 100, covered
    # and a real difference is found: A better by 0.03 at every weight, 400 prompts
    qa, ca = _router(rng, 400, shift=0.03)
    qb, cb = _router(rng, 400)
    qb = qa - 0.03 + rng.normal(0, 0.02, size=qa.shape)  # paired: B tracks A's per-prompt noise
    out = paired_bootstrap_aiq(qa, ca, qb, cb, max_cost=4.0, n_boot=300)
    assert out["low"] > 0 and out["p_value"] < 0.01


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((np.zeros((3, 4)),) * 4, {}, r"\(seeds, weights, prompts\)"),
        (
            (np.zeros((1, 3, 4)), np.zeros((1, 2, 4)), np.zeros((1, 3, 4)), np.zeros((1, 3, 4))),
            {},
            r"shapes differ",
        ),
        ((np.zeros((1, 3, 4)),) * 2 + (np.zeros((1, 3, 5)),) * 2, {}, r"same N > 0 prompts"),
        ((np.zeros((1, 3, 4)),) * 4, {"level": 1.0}, r"0 < level < 1"),
        ((np.full((1, 3, 4), np.nan),) * 4, {}, r"must be finite"),
    ],
)
def test_paired_bootstrap_rejects_bad_inputs(args: tuple, kwargs: dict, message: str) -> None:
    from router_rl.metrics import paired_bootstrap_aiq

    with pytest.raises(ValueError, match=message):
        paired_bootstrap_aiq(*args, max_cost=1.0, **kwargs)
