"""RouteLLM's two-model metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from router_rl.routellm_metrics import apgr, cpt, pgr, pgr_curve, two_model_summary


def test_pgr() -> None:
    np.testing.assert_allclose(pgr([0.6, 0.7, 0.8], q_weak=0.6, q_strong=0.8), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="q_strong > q_weak"):
        pgr(0.5, q_weak=0.8, q_strong=0.8)


def test_random_router_has_apgr_one_half_and_cpt_equal_to_target() -> None:
    # a random router's PGR equals its strong share: the diagonal, area 1/2
    shares = np.linspace(0.1, 0.9, 9)
    assert apgr(shares, shares) == pytest.approx(0.5)
    assert cpt(shares, shares, 0.5) == pytest.approx(0.5)
    assert cpt(shares, shares, 0.8) == pytest.approx(0.8)


def test_hand_computed_curve() -> None:
    # points (0.2, 0.6), (0.5, 0.9) + ends (0,0), (1,1):
    # area = 0.2*0.3 + 0.3*0.75 + 0.5*0.95 = 0.06 + 0.225 + 0.475 = 0.76
    assert apgr([0.5, 0.2], [0.9, 0.6]) == pytest.approx(0.76)
    # PGR 0.5 is reached on the first segment: 0.2 * 0.5/0.6 = 0.1667
    assert cpt([0.2, 0.5], [0.6, 0.9], 0.5) == pytest.approx(0.2 * 0.5 / 0.6)
    # PGR 0.8 on the second: 0.2 + 0.3 * (0.8-0.6)/(0.9-0.6) = 0.4
    assert cpt([0.2, 0.5], [0.6, 0.9], 0.8) == pytest.approx(0.4)


def test_curve_is_running_maximum_and_rejects_bad_shares() -> None:
    s, p = pgr_curve(np.array([0.3, 0.6]), np.array([0.7, 0.4]))
    np.testing.assert_allclose(s, [0.0, 0.3, 0.6, 1.0])
    np.testing.assert_allclose(p, [0.0, 0.7, 0.7, 1.0])  # a worse point at a larger share is lifted
    with pytest.raises(ValueError, match="lie in \\[0, 1\\]"):
        apgr([1.5], [0.2])
    with pytest.raises(ValueError, match="target PGR"):
        cpt([0.5], [0.5], 0.0)


def test_summary_from_qualities() -> None:
    out = two_model_summary(np.array([0.2, 0.5]), np.array([0.66, 0.69]), q_weak=0.6, q_strong=0.7)
    assert out["apgr"] == pytest.approx(0.76)
    assert out["cpt80"] == pytest.approx(0.4)


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
