"""`router-rl eval`: policies and exported artifacts side by side over seeds, with spreads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from router_rl.evaluation import aggregate_reports, to_json


def test_eval_compares_policies_and_an_artifact_over_seeds(debug_run: dict, tmp_path: Path) -> None:
    artifact = debug_run["out"] / "artifact"
    proc = run_cli(
        ["eval", "debug=default", "policies=[linucb,lin_ts,lin_ts_warm,neural_ts,mlp,zero_router]", "evaluation.seeds=[0,1]",
         f"artifacts=[{artifact}]", "hydra.run.dir=out"],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["seeds"] == [0, 1]
    assert set(report["policies"]) == {
        "linucb", "lin_ts", "lin_ts_warm", "neural_ts", "mlp", "zero_router", "artifact"
    }  # fmt: skip
    # neural TS has fit (an optional prior) but is a bandit: it learns from feedback, the MLP from full tables
    assert report["train"]["neural_ts"]["steps"] > 0 and report["train"]["mlp"]["full_information"] == 1.0
    # the warm-started LinTS took a quarter of each training split's prompts with full outcomes as its prior
    n_train = report["n_prompts"] // 2  # two folds
    assert report["train"]["lin_ts_warm"]["warm_start_prompts"] == pytest.approx(round(0.25 * n_train), abs=1)
    assert "warm_start_prompts" not in report["train"]["lin_ts"]
    assert report["policies"]["lin_ts_warm"]["aiq_per_seed"] != report["policies"]["lin_ts"]["aiq_per_seed"]
    # a seeded policy follows the run seed (its config's ${seed}): the MLP's init differs between seeds
    mlp = report["policies"]["mlp"]["aiq_per_seed"]
    assert mlp[0] != mlp[1]
    lin = report["policies"]["linucb"]
    assert len(lin["aiq_per_seed"]) == 2 and lin["aiq"] == pytest.approx(np.mean(lin["aiq_per_seed"]))
    assert lin["aiq_std"] is None or lin["aiq_std"] >= 0
    # the artifact is deterministic: identical in both seeds, so its spread is zero
    assert report["policies"]["artifact"]["aiq_std"] == pytest.approx(0.0)
    assert (tmp_path / "out" / "pareto.png").is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("router-rl").experiment_id])
    assert run.data.tags["router_rl.command"] == "eval"
    assert (
        run.info.run_name == "eval-arena-linucb+lin_ts+lin_ts_warm+neural_ts+mlp+zero_router+artifact-seed0,1"
    )
    assert "eval/linucb/aiq_std" in run.data.metrics


def test_eval_rejects_an_unknown_policy(tmp_path: Path) -> None:
    proc = run_cli(["eval", "debug=default", "policies=[nope]", "mlflow.enabled=false"], cwd=tmp_path)
    assert proc.returncode == 2 and "unknown policy 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_aggregate_reports_means_and_spreads() -> None:
    def report(q: float, aiq: float, frac: float) -> dict:
        pts = [{"cost_weight": 0.0, "quality": q, "cost_usd": 1.0}]
        entry = {"points": pts, "aiq": aiq, "cost_fraction_at_95": frac, "cost_fraction_at_97": float("inf")}
        return {"policies": {"p": entry}, "dataset": "d"}

    out = aggregate_reports([report(0.6, 0.5, 0.2), report(0.8, 0.7, 0.4)], [0, 1])
    p = out["policies"]["p"]
    assert p["points"][0]["quality"] == pytest.approx(0.7)
    assert p["aiq"] == pytest.approx(0.6) and p["aiq_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert p["cost_fraction_at_95"] == pytest.approx(0.3)
    assert p["cost_fraction_at_97"] == float("inf")  # never reached in some seed
    text = to_json(out)
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)["policies"]["p"]["cost_fraction_at_97"] is None


def test_aggregate_reports_keep_every_seeds_points() -> None:
    def report(q: float) -> dict:
        pts = [{"cost_weight": 0.0, "quality": q, "cost_usd": 1.0}]
        entry = {"points": pts, "aiq": q, "cost_fraction_at_95": 0.5, "cost_fraction_at_95_hull": 0.4,
                 "cost_weight_at_95": 0.0}  # fmt: skip
        return {"policies": {"p": entry}, "dataset": "d"}

    p = aggregate_reports([report(0.6), report(0.8)], [0, 1])["policies"]["p"]
    assert [pts[0]["quality"] for pts in p["points_per_seed"]] == [0.6, 0.8]
    assert p["cost_fraction_at_95_hull_per_seed"] == [0.4, 0.4] and p["cost_weight_at_95_per_seed"] == [
        0.0,
        0.0,
    ]


def test_headline_costs_at_a_weight_that_ran_and_on_the_hull() -> None:
    from router_rl.evaluation import headline_costs

    points = [
        {"cost_weight": 1.0, "quality": 0.5, "cost_usd": 1.0},
        {"cost_weight": 0.1, "quality": 0.9, "cost_usd": 2.0},
        {"cost_weight": 0.0, "quality": 0.97, "cost_usd": 3.0},
    ]
    out = headline_costs(points, np.array([1.0, 4.0]), np.array([0.5, 1.0]))
    assert (out["cost_fraction_at_95"], out["cost_weight_at_95"]) == (0.75, 0.0)
    assert out["cost_fraction_at_95_hull"] == pytest.approx((2 + 0.05 / 0.07) / 4)
    assert out["cost_fraction_at_97"] == 0.75 and out["cost_fraction_at_97_hull"] == 0.75


def test_task_mean_table_by_hand() -> None:
    from router_rl.evaluation import task_mean_probs

    tasks = np.array(["a", "a", "b", "b", "a", "b", "c"])
    quality = np.array([[0.9, 0.2], [0.7, 0.4], [0.1, 0.8], [0.3, 0.6], [0, 0], [0, 0], [0, 0]], float)
    cost = np.tile([1.0, 0.1], (7, 1))
    plan = [(np.arange(4), np.arange(4, 7))]  # train on 0-3; test a, b and an unseen task c
    out = task_mean_probs(tasks, quality, cost, plan, [0.0, 0.5])
    # w = 0: a -> model 0 (0.8 vs 0.3), b -> model 1 (0.2 vs 0.7), c -> the overall means 0.5 vs 0.5: a tie
    np.testing.assert_allclose(out[0.0], [[1, 0], [0, 1], [0.5, 0.5]])
    # w = 0.5: a: 0.8 - 0.5 = 0.3 vs 0.3 - 0.05 = 0.25 -> model 0; c: 0.5 - 0.5 < 0.5 - 0.05 -> model 1
    np.testing.assert_allclose(out[0.5], [[1, 0], [0, 1], [0, 1]])


def test_paired_comparisons_against_every_rival() -> None:
    from router_rl.evaluation import paired_comparisons

    rng = np.random.default_rng(0)
    n = 200
    quality = np.stack([rng.uniform(0.0, 0.6, n), rng.uniform(0.4, 1.0, n)], 1)  # model 1 better
    cost = np.tile([0.1, 1.0], (n, 1))
    best = (quality[:, 1] - quality[:, 0] > 0.3).astype(int)
    oracle_like = {w: np.eye(2)[best if w < 1 else np.zeros(n, int)] for w in (0.0, 1.0)}
    cheap = {w: np.tile([1.0, 0.0], (n, 1)) for w in (0.0, 1.0)}
    per_seed = [{"ref": oracle_like, "cheap": cheap}, {"ref": oracle_like, "cheap": cheap}]
    out = paired_comparisons(per_seed, "ref", quality, cost, max_cost=1.0, n_boot=200)
    assert out["reference"] == "ref" and set(out["rivals"]) == {"cheap"}
    vs = out["rivals"]["cheap"]
    assert vs["low"] > 0 and vs["diff"] > 0
    with pytest.raises(ValueError, match="reference router 'nope'"):
        paired_comparisons(per_seed, "nope", quality, cost, max_cost=1.0)


def test_summary_table_without_bootstrap_intervals() -> None:
    """evaluation.bootstrap.n_boot=0 stores ``comparisons: null``; the table then has no interval column."""
    from types import SimpleNamespace

    from router_rl.evaluation import build_report, summary_table

    quality = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    data = SimpleNamespace(
        name="toy", models=("strong", "weak"), n_models=2, quality=quality,
        cost_usd=np.tile([1.0, 0.1], (4, 1)), groups=None,
    )  # fmt: skip
    probs = {w: np.tile([1.0, 0.0], (4, 1)) for w in (0.0, 1.0)}
    rep = build_report(data, np.arange(4), {"r": probs}, scheme="t", split="t", cost_scale=1.0)
    rep["comparisons"] = None
    table = summary_table(rep)
    assert "r" in table and "paired bootstrap" not in table
