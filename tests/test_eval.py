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
