"""RouteLLM's two-model metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from router_rl.routellm_metrics import apgr, cpt, pgr, two_model_summary


def test_pgr() -> None:
    np.testing.assert_allclose(pgr([0.6, 0.7, 0.8], q_weak=0.6, q_strong=0.8), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="q_strong > q_weak"):
        pgr(0.5, q_weak=0.8, q_strong=0.8)


def test_random_router_has_apgr_one_half_and_cpt_equal_to_target() -> None:
    # a random router's PGR equals its strong share: the diagonal, mean 1/2 over [0.1, 0.9]
    shares = np.linspace(0.1, 0.9, 9)
    q = 0.6 + 0.2 * shares
    assert apgr(shares, q, 0.6, 0.8) == pytest.approx(0.5)
    assert cpt(shares, q, 0.6, 0.8, 0.5) == pytest.approx(0.5)
    assert cpt(shares, q, 0.6, 0.8, 0.8) == pytest.approx(0.8)


def test_hand_computed_example_as_routellm_evaluates_it() -> None:
    """q_weak 0.6, q_strong 0.8; points (share, quality), given out of order: (0.5, 0.72), (0.2, 0.66),
    (0.9, 0.79). Sorted by share, PGR = 0.3, 0.6, 0.95. RouteLLM's code: AUC = trapz(q, s) =
    0.3 * (0.66 + 0.72) / 2 + 0.4 * (0.72 + 0.79) / 2 = 0.207 + 0.302 = 0.509; weak AUC 0.6 * 0.7 = 0.42,
    strong AUC 0.8 * 0.7 = 0.56; APGR = (0.509 - 0.42) / (0.56 - 0.42) = 0.63571 (the mean PGR over the
    reached shares 0.2..0.9, not the area over 0..1 with added end points, which would be 0.7005)."""
    s, q = np.array([0.5, 0.2, 0.9]), np.array([0.72, 0.66, 0.79])
    assert apgr(s, q, 0.6, 0.8) == pytest.approx((0.509 - 0.42) / 0.14)
    # CPT(50%): quality 0.7 = 0.66 + 2/3 of the way to 0.72 -> share 0.2 + 2/3 * 0.3 = 0.4
    assert cpt(s, q, 0.6, 0.8, 0.5) == pytest.approx(0.4)
    # CPT(80%): quality 0.76 between 0.72 and 0.79 -> 0.5 + (0.04 / 0.07) * 0.4 = 0.72857
    assert cpt(s, q, 0.6, 0.8, 0.8) == pytest.approx(0.5 + 0.4 * 0.04 / 0.07)
    out = two_model_summary(s, q, 0.6, 0.8)
    assert (out["share_min"], out["share_max"]) == (0.2, 0.9)
    assert out["apgr"] == pytest.approx(0.635714, abs=1e-6)


def test_a_curve_that_stops_short_and_dips_is_not_lifted() -> None:
    # a router reaching only shares 0..0.5: PGR 0, 0.8, 0.6 at shares 0, 0.25, 0.5: mean over [0, 0.5] =
    # (0.25 * 0.4 + 0.25 * 0.7) / 0.5 = 0.55 (no (1, 1) end point, no running maximum)
    s, q = np.array([0.0, 0.25, 0.5]), 0.6 + 0.2 * np.array([0.0, 0.8, 0.6])
    assert apgr(s, q, 0.6, 0.8) == pytest.approx(0.55)
    # a target above every point: numpy.interp returns the last share (RouteLLM's code does the same)
    assert cpt(s, q, 0.6, 0.8, 0.9) == pytest.approx(0.5)
    # one share only (0/0 in RouteLLM's code): the mean PGR of the points
    assert apgr([0.3, 0.3], [0.64, 0.68], 0.6, 0.8) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="lie in \\[0, 1\\]"):
        apgr([1.5], [0.7], 0.6, 0.8)
    with pytest.raises(ValueError, match="target PGR"):
        cpt([0.5], [0.7], 0.6, 0.8, 0.0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        apgr([], [], 0.6, 0.8)


def test_two_model_figures_per_source_benchmark() -> None:
    from types import SimpleNamespace

    from router_rl.evaluation import aggregate_reports, build_report

    # strong model (column 0) right everywhere; weak right on prompt 2 only; groups A = {0, 1}, B = {2, 3}
    quality = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    cost = np.tile([1.0, 0.1], (4, 1))
    data = SimpleNamespace(
        name="toy", models=("strong", "weak"), n_models=2, quality=quality, cost_usd=cost,
        groups=np.array(["A/x/1", "A/x/2", "B", "B"], dtype=object),
    )  # fmt: skip
    strong_on_first = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    rep = build_report(
        data, np.arange(4), {"r": {0.5: strong_on_first}}, scheme="t", split="t", cost_scale=1.0
    )
    groups = rep["two_model"]["by_group"]  # per benchmark: the first two parts of the label
    assert set(groups) == {"A/x", "B"}
    a, b = groups["A/x"], groups["B"]
    assert a["n_prompts"] == 2 and b["n_prompts"] == 2
    assert (a["q_strong"], a["q_weak"], b["q_weak"]) == (1.0, 0.0, 0.5)
    # A: the router calls the strong model on half its prompts and recovers half the gap
    assert a["routers"]["r"]["points"][0] == {"cost_weight": 0.5, "strong_share": 0.5, "pgr": 0.5}
    # B: never the strong model, quality 0.5 = the weak model's: no gap recovered
    assert b["routers"]["r"]["points"][0] == {"cost_weight": 0.5, "strong_share": 0.0, "pgr": 0.0}
    both = aggregate_reports([rep, rep], [0, 1])["two_model"]["by_group"]
    assert both["A/x"]["routers"]["r"]["apgr_std"] == 0.0
    assert both["A/x"]["routers"]["r"]["apgr"] == a["routers"]["r"]["apgr"]
