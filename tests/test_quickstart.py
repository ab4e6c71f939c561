"""The README's Quickstart lines as a new user runs them, at debug size: every line must finish."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli


def _runs(cwd: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("router-rl").experiment_id])


def test_train_zero_router_exports_a_constant_head(tmp_path: Path, cache_dir: Path) -> None:
    # README: router-rl train policy=zero_router seed=1
    proc = run_cli(
        ["train", "policy=zero_router", "seed=1", "debug=default", "hydra.run.dir=out"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    from router_rl.export import load_checkpoint
    from router_rl.serve.router import Router

    policy, _ = load_checkpoint(out / "checkpoint")
    router = Router(out / "artifact", device="cpu")
    for w in (0.0, 1.0, 20.0):  # the artifact decides as the trained zero router, whatever the prompt
        (expected,) = np.flatnonzero(policy.probs(np.zeros((1, 384)), cost_weight=w)[0])
        for prompt in ("hi", "Prove that sqrt(2) is irrational."):
            assert router.decide([prompt], cost_weight=w)[0].model == policy.models[expected]
    (run,) = _runs(tmp_path)
    assert run.info.status == "FINISHED" and "eval/zero_router/aiq" in run.data.metrics


def test_train_multirun_quickstart_line(tmp_path: Path, cache_dir: Path) -> None:
    # README: router-rl train -m policy=linucb,zero_router seed=0,1,2
    proc = run_cli(
        ["train", "-m", "policy=linucb,zero_router", "seed=0,1,2", "debug=default", "train.steps=320",
         "evaluation.cost_weights=[0,1]", "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in range(6):
        assert (tmp_path / "sweep" / str(job) / "artifact" / "manifest.json").is_file()
    runs = _runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("router_rl.sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/jobs"] == 6
    assert {r.info.status for r in children} == {"FINISHED"}
    for r in children:
        assert f"eval/{r.data.tags['router_rl.policy']}/aiq" in r.data.metrics


def test_a_policy_without_serving_form_skips_export_and_a_failed_job_ends_the_sweep(
    tmp_path: Path, cache_dir: Path
) -> None:
    proc = run_cli(
        ["train", "-m", "policy=random", "evaluation.folds=1,2", "debug=default", "train.steps=160",
         "evaluation.cost_weights=[0,1]", "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "job 0 (policy=random evaluation.folds=1 " in proc.stderr
    assert "evaluation.folds must be >= 2" in proc.stderr and "1 job(s) of the sweep failed" in proc.stderr
    assert "export skipped: random has no serving form" in proc.stdout
    assert (tmp_path / "sweep" / "1" / "report.json").is_file()
    assert not (tmp_path / "sweep" / "1" / "artifact").exists()
    runs = _runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("router_rl.sweep") == "parent"]
    (child,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"
    assert "eval/random/aiq" in child.data.metrics


def _tiny_custom_data(root: Path, n_prompts: int) -> list[str]:
    rows = ["prompt_id,model,quality,cost_usd"]
    for i in range(n_prompts):
        rows += [f"p{i},small,{0.3 + 0.1 * i:.1f},0.001", f"p{i},large,0.9,0.02"]
    (root / "o.csv").write_text("\n".join(rows) + "\n")
    lines = [json.dumps({"prompt_id": f"p{i}", "prompt": f"question number {i}"}) for i in range(n_prompts)]
    (root / "p.jsonl").write_text("\n".join(lines) + "\n")
    (root / "m.csv").write_text("model,usd_per_1m_input,usd_per_1m_output\nsmall,0.1,0.2\nlarge,5,15\n")
    return ["data=custom", "data.outcomes=o.csv", "data.prompts=p.jsonl", "data.models=m.csv"]


def test_three_prompts_of_collected_data_train_with_defaults(tmp_path: Path, cache_dir: Path) -> None:
    args = _tiny_custom_data(tmp_path, 3)
    proc = run_cli(
        ["train", *args, "train.steps=128", "mlflow.enabled=false", "hydra.run.dir=out"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 prompts: 3-fold cross-fitting (evaluation.folds=5)" in proc.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["scheme"] == "kfold-3" and report["n_prompts"] == 3


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["evaluation.scheme=holdout"], "data.test_fraction"),
        (["evaluation.folds=1"], "evaluation.folds"),
    ],
)
def test_small_data_config_errors_name_their_key(tmp_path: Path, overrides: list[str], key: str) -> None:
    from omegaconf import OmegaConf

    from router_rl.data import load_dataset
    from router_rl.training import evaluation_plan

    _tiny_custom_data(tmp_path, 3)
    data = load_dataset(tmp_path / "o.csv", tmp_path / "p.jsonl", tmp_path / "m.csv")
    cfg = OmegaConf.create({"evaluation": {"scheme": "auto", "folds": 5}, "data": {"split_seed": 0,
                           "valid_fraction": 0.1, "test_fraction": 0.2}})  # fmt: skip
    cfg.merge_with_dotlist(overrides)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        evaluation_plan(data, cfg.evaluation, cfg.data)


def test_train_on_the_bundled_routellm_data(tmp_path: Path, cache_dir: Path) -> None:
    # README: router-rl train data=routellm (two models: RouteLLM's metrics beside AIQ)
    proc = run_cli(
        ["train", "data=routellm", "debug=default", "mlflow.enabled=false", "hydra.run.dir=out"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["dataset"] == "routellm" and report["n_prompts"] == 60  # debug size: cross-fitted, 2 folds
    assert (
        set(report["models"]) == {"gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"}
        and "two_model" in report
    )
    assert (tmp_path / "out" / "artifact" / "manifest.json").is_file()
