"""experiments/production_loop.py end to end at a tiny size: a replay of a few hundred prompts through the real
``router-rl serve`` learns, promotes through /admin/reload, and its bookkeeping agrees with the decision log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))


def test_judged_mean_is_the_clipped_normal_mean() -> None:
    from production_loop import judged_mean

    q = np.array([0.0, 0.3, 1.0])
    np.testing.assert_allclose(judged_mean(q, 0.0), (1 + 9 * q) / 10)
    draws = np.clip(
        1 + 9 * q[:, None] + 10 * 0.2 * np.random.default_rng(0).standard_normal((3, 200_000)), 1, 10
    )
    np.testing.assert_allclose(judged_mean(q, 0.2), draws.mean(axis=1) / 10, atol=2e-3)
    assert judged_mean(q, 0.2)[0] > 0.1 and judged_mean(q, 0.2)[2] < 1.0  # clipping pulls the ends inwards


@pytest.mark.usefixtures("cache_dir")
def test_a_tiny_replay_learns_promotes_and_keeps_its_books(tmp_path: Path) -> None:
    from production_loop import main

    out = tmp_path / "loop"
    args = [
        "--override",
        "data.max_prompts=500",
        "embedder.distill.max_vocab=1400",
        "embedder.distill.dim=32",
        "embedder.distill.fit=null",
        "--train-steps",
        "200",
        "--n-prompts",
        "240",
        "--every",
        "80",
        "--seeds",
        "0",
        "--judge-noise",
        "0",
        "--margin",
        "-1.0",  # promote every candidate: the reload path and the realised values get exercised
        "--out",
        str(out),
        "--workdir",
        str(tmp_path / "work"),
    ]
    main(args)
    result = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".md").read_text().startswith("# Production loop")
    assert out.with_suffix(".png").stat().st_size > 10_000
    loop, static = result["seeds"]["0"]["loop"], result["seeds"]["0"]["static"]
    assert [w["n"] for w in loop["windows"]] == [80, 80, 80]
    for w in loop["windows"] + static["windows"]:
        assert w["graded"] == 80 * (w["window"] + 1)  # the server's judge graded every answer
        for key in ("quality", "cost_usd", "spend_usd", "reward", "regret", "oracle_reward"):
            assert np.isfinite(w[key])
        assert w["regret"] >= 0 and w["reward"] <= w["oracle_reward"]
        # noise 0: the logged judged reward (the stub judge's grade through serve's judging, the cost the server
        # measured from the upstream's usage) is the recorded table's judged reward exactly
        assert w["logged_judged_value"] == pytest.approx(w["served_judged_value"], abs=1e-6)
    # the same start policy, seed and traffic: identical until the first promotion takes effect
    assert loop["windows"][0]["reward"] == static["windows"][0]["reward"]
    assert len({w["policy_version"] for w in static["windows"]}) == 1
    learns = loop["learns"]
    assert [c["after_window"] for c in learns] == [0, 1] and all(c["promoted"] for c in learns)
    for c in learns:
        assert c["ci_low"] <= c["estimate"] <= c["ci_high"]
        assert c["all_estimates"]["candidate"]["dr"]["value"] == c["estimate"]
        # the promoted candidate serves the next window: its version is logged there, and the greedy choices
        # recomputed from its heads on the logged contexts are the ones the server logged
        nxt = loop["windows"][c["after_window"] + 1]
        assert nxt["policy_version"] == c["candidate_version"]
        assert c["served_greedy_agrees"] == 1.0 and c["realised_window"] == c["after_window"] + 1
    assert (
        learns[1]["champion_version"] == learns[0]["candidate_version"]
    )  # learn continues from the new champion
    for c in learns:  # the prediction interval for the next window's mean: the CI widened by sqrt(1 + n / m)
        assert c["n_next"] == 80
        # learn's default split: the decision's estimates on 70% of the held-out rows, the value on the rest
        v = c["value"]
        assert v["selection_free"] and c["n_decision"] + v["n"] == c["n_evaluated"]
        assert c["all_estimates"]["candidate"]["dr"]["n"] == c["n_decision"]
        widen = np.sqrt(1 + c["n_decision"] / 80)
        assert c["prediction"][1] - c["prediction"][0] == pytest.approx((c["ci_high"] - c["ci_low"]) * widen)
        d, dp = c["difference"], c["difference_prediction"]
        assert dp[1] - dp[0] == pytest.approx((d[2] - d[1]) * widen) and dp[0] <= d[0] <= dp[1]
        vp, widen_v = c["value_prediction"], np.sqrt(1 + v["n"] / 80)
        assert vp[1] - vp[0] == pytest.approx((v["ci_high"] - v["ci_low"]) * widen_v)
    b = result["summary"]["b_ope"]
    assert b["n_promotions"] == 2 and b["inside_interval"] == sum(
        c["ci_low"] <= c["realised"] <= c["ci_high"] for c in learns
    )
    assert b["inside_prediction"] == sum(
        c["prediction"][0] <= c["realised"] <= c["prediction"][1] for c in learns
    )
    assert b["inside_prediction"] >= b["inside_interval"]
    # target (b) is scored on the selection-free prediction intervals
    assert b["scored_on"].startswith("selection-free") and b["selection_free_promotions"] == 2
    assert b["selection_free_inside_prediction"] == sum(
        c["value_prediction"][0] <= c["realised"] <= c["value_prediction"][1] for c in learns
    )
    assert b["scored_share_inside_prediction"] == b["selection_free_inside_prediction"] / 2
    # --rescore recomputes the same intervals and summary from the written result
    from production_loop import rescore

    again = rescore(out.with_suffix(".json"))
    assert json.dumps(again["summary"]["b_ope"], sort_keys=True) == json.dumps(b, sort_keys=True)
    assert again["seeds"]["0"]["loop"]["learns"][0]["prediction"] == learns[0]["prediction"]
    assert result["stub"]["judged"] == result["stub"]["answered"] == 2 * 240
