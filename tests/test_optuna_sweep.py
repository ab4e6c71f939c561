"""Hydra's Optuna sweeper on the objective `router-rl train` returns (the trained policy's AIQ): the study's
trials are MLflow runs nested under one parent, which records the study's best value and parameters."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import run_cli

ALPHA, RIDGE = (0.05, 4.0), (1.0, 300.0)  # configs/experiment/optuna_linucb.yaml's search space


def _seeded_tpe_trials(n: int, seed: int = 0) -> list[tuple[float, float]]:
    """What the experiment's sampler (TPE, seed, 8 random startup trials) asks first, outside Hydra."""
    import warnings

    # optuna 2.10 (the sweeper's pin) on SQLAlchemy 2 warns of a deprecation at import
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)
    )
    asked = []
    for _ in range(n):
        trial = study.ask()
        alpha = trial.suggest_float("policy.alpha", *ALPHA, log=True)
        ridge = trial.suggest_float("policy.ridge", *RIDGE, log=True)
        study.tell(trial, 0.0)
        asked.append((alpha, ridge))
    return asked


def test_optuna_study_maximises_aiq_with_trials_as_nested_mlflow_runs(
    tmp_path: Path, cache_dir: Path
) -> None:
    proc = run_cli(
        ["train", "-m", "experiment=optuna_linucb", "debug=default", "hydra.sweeper.n_trials=2",
         "evaluation.baselines=[]", "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    trials = []
    for num in (0, 1):
        cfg = yaml.safe_load((sweep / str(num) / ".hydra" / "config.yaml").read_text())
        report = json.loads((sweep / str(num) / "report.json").read_text())
        trials.append((cfg["policy"]["alpha"], cfg["policy"]["ridge"], report["policies"]["linucb"]["aiq"]))
    # the trials are the seeded sampler's, inside the search space
    assert [t[:2] for t in trials] == _seeded_tpe_trials(2)
    assert all(ALPHA[0] <= a <= ALPHA[1] and RIDGE[0] <= r <= RIDGE[1] for a, r, _ in trials)
    # the study maximised what each job returned: its report's AIQ
    study = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert study["best_value"] == max(aiq for *_, aiq in trials)
    best = study["best_params"]
    assert (best["policy.alpha"], best["policy.ridge"], study["best_value"]) in trials

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("router-rl").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("router_rl.sweep") == "parent"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["router_rl.sweeper"] == "OptunaSweeper"
    assert parent.data.metrics["sweep/best_value"] == study["best_value"]
    assert parent.data.params["best.policy.alpha"] == str(best["policy.alpha"])
    assert parent.data.params["best.policy.ridge"] == str(best["policy.ridge"])
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["optimization_results.yaml"]
    children = sorted(
        (r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
        key=lambda r: r.info.run_name,
    )
    assert [r.info.run_name for r in children] == ["optuna-linucb-0", "optuna-linucb-1"]
    for run, (alpha, ridge, aiq) in zip(children, trials, strict=True):
        assert run.info.status == "FINISHED"
        assert (run.data.params["policy.alpha"], run.data.params["policy.ridge"]) == (str(alpha), str(ridge))
        assert run.data.metrics["eval/linucb/aiq"] == aiq
