"""End to end: `router-rl train debug=default` in a fresh directory, then export and route from what it wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from router_rl.export import load_checkpoint
from router_rl.serve.artifact import ArtifactError, load_artifact
from router_rl.serve.manifest import seal_manifest
from router_rl.serve.router import Router


def test_train_writes_report_plot_artifact_and_logs_to_mlflow(debug_run: dict) -> None:
    out: Path = debug_run["out"]
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"] == "arena" and report["scheme"] == "kfold-2"
    assert report["n_prompts"] == 60
    assert set(report["policies"]) == {"blend", "random", "zero_router"}
    assert len(report["models"]) == 16
    for name, entry in report["policies"].items():
        assert len(entry["points"]) == 4, name
        assert 0.0 <= entry["aiq"] <= 1.0
        for p in entry["points"]:
            assert set(p) == {"cost_weight", "quality", "cost_usd"}
    # the oracle dominates every single model's quality; random is the models' average
    qualities = [m["quality"] for m in report["models"].values()]
    assert report["oracle"]["quality"] >= max(qualities)
    random_q = report["policies"]["random"]["points"][0]["quality"]
    assert random_q == pytest.approx(np.mean(qualities), abs=1e-9)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "artifact" / "manifest.json").is_file()
    assert "arena | all (cross-fitted) split | kfold-2 | 60 prompts" in debug_run["stdout"]

    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{debug_run['cwd'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("router-rl")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == report["run_id"]
    assert run.data.params["policy.alpha"] == "1.0" and run.data.params["train.steps"] == "800"
    assert run.data.metrics["eval/blend/aiq"] == pytest.approx(report["policies"]["blend"]["aiq"])
    # the default warm-starts on every training prompt and replays none of them as bandit feedback
    assert (
        run.data.metrics["train/blend/steps"] == 0
        and run.data.metrics["train/blend/warm_start_prompts"] == 30
    )
    assert "train/reward_mean/fold0" not in run.data.metrics
    # the exported blend's weight, chosen out of fold, and why: in report.json, MLflow and one printed line
    chosen = report["final_policy"]
    assert chosen["mlp_weight"] in chosen["stacking"]["grid"] and chosen["stacking"]["rows"] == 60
    assert run.data.metrics["final/mlp_weight"] == chosen["mlp_weight"]
    assert (
        f"[router-rl] blend: mlp_weight {chosen['mlp_weight']:g} (auto: out of fold over 60 rows"
        in (debug_run["stdout"])
    )
    assert load_artifact(out / "artifact", device="cpu").mlp_weight == chosen["mlp_weight"]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "pareto.png", "config.yaml", "checkpoint", "router_artifact"} <= arts
    del mlflow


def test_replaying_the_labelled_prompts_logs_learning_curves(tmp_path: Path) -> None:
    proc = run_cli(
        ["train", "debug=default", "hydra.run.dir=out", "policy.warm_start.replay=true"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["train"]["blend"]["steps"] == 800 and report["train"]["blend"]["warm_start_prompts"] == 30
    assert (tmp_path / "out" / "learning_curves.png").is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(report["run_id"])
    assert "train/reward_mean/fold0" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "train/cumulative_regret/fold0")
    assert len(history) >= 2 and history[-1].value >= history[0].value


def test_artifact_round_trip_matches_in_process_decisions(debug_run: dict) -> None:
    out: Path = debug_run["out"]
    policy, meta = load_checkpoint(out / "checkpoint")
    router = Router(out / "artifact", device="cpu")
    from router_rl.data import load_bundled

    prompts = list(load_bundled("arena").prompts[:40])
    x = router.embed(prompts)
    for w in (0.0, 0.2, 1.0, 5.0):
        in_process = policy.probs(x, cost_weight=w).argmax(axis=1)
        served = [router.models.index(d.model) for d in router.decide(prompts, cost_weight=w)]
        assert served == in_process.tolist(), w
    decision = router.decide(prompts[:1])[0]
    assert decision.propensity == 1.0 and decision.model in router.models
    assert meta["cost_weight"] == router.artifact.manifest["default_cost_weight"]


def test_route_command_prints_the_decision(debug_run: dict) -> None:
    proc = run_cli(
        [
            "route",
            str(debug_run["out"] / "artifact"),
            "Prove that there are infinitely many primes.",
            "--json",
        ],
        cwd=debug_run["cwd"],
    )
    assert proc.returncode == 0, proc.stderr
    decision = json.loads(proc.stdout)
    assert decision["model"] in decision["scores"] and decision["propensity"] == 1.0
    manifest = json.loads((debug_run["out"] / "artifact" / "manifest.json").read_text())
    assert decision["cost_weight"] == manifest["default_cost_weight"]  # as POST /v1/route answers
    assert "Loading weights" not in proc.stderr and "\r" not in proc.stderr  # no library progress bars
    proc = run_cli(
        ["route", str(debug_run["out"] / "artifact"), "hi", "--cost-weight", "2", "--json"],
        cwd=debug_run["cwd"],
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)["cost_weight"] == 2.0
    proc = run_cli(
        ["route", str(debug_run["out"] / "artifact"), "hi", "--candidates", "claude-1", "llama-13b"],
        cwd=debug_run["cwd"],
    )
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("model: claude-1") or first.startswith("model: llama-13b")


def test_export_from_checkpoint_and_from_mlflow_run(debug_run: dict, tmp_path: Path) -> None:
    cwd, out = debug_run["cwd"], debug_run["out"]
    report = json.loads((out / "report.json").read_text())
    proc = run_cli(["export", "--checkpoint", str(out / "checkpoint"), "--out", str(tmp_path / "a")], cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(["export", "--run-id", report["run_id"], "--out", str(tmp_path / "b")], cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    a, b = load_artifact(tmp_path / "a", device="cpu"), load_artifact(tmp_path / "b", device="cpu")
    assert a.manifest["files"] == b.manifest["files"]  # same weights, byte for byte
    assert a.manifest["training_run_id"] == report["run_id"]
    proc = run_cli(["export", "--run-id", "no-such-run", "--out", str(tmp_path / "c")], cwd=cwd)
    assert proc.returncode == 2 and "no-such-run" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "weights.safetensors").write_bytes(b"garbage"), r"7 bytes, the manifest records \d+"),
        (lambda p: _flip_last_byte(p / "weights.safetensors"), "sha256 .* does not match"),
        (lambda p: _edit_manifest(p, default_cost_weight=0.5, seal=False), "the manifest was modified"),
        (
            lambda p: (p / "weights.safetensors").unlink(),
            "weights.safetensors listed in the manifest is missing",
        ),
        (lambda p: (p / "manifest.json").unlink(), "no manifest.json"),
        (lambda p: (p / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda p: _edit_manifest(p, format_version=99), "format_version 99 is not supported"),
        (lambda p: _edit_manifest(p, policy_kind="transformer"), "policy_kind 'transformer' is unknown"),
        (lambda p: _edit_manifest(p, format="something-else"), "format is 'something-else'"),
    ],
)
def test_corrupted_or_incompatible_artifact_is_refused(
    debug_run: dict, tmp_path: Path, damage, message: str
) -> None:
    art = tmp_path / "artifact"
    shutil.copytree(debug_run["out"] / "artifact", art)
    damage(art)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(art, device="cpu")
    proc = run_cli(["route", str(art), "hello"], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "error:" in proc.stderr


def _edit_manifest(path: Path, seal: bool = True, **changes) -> None:
    """Change manifest fields; ``seal``: recompute its manifest_sha256, so that the field checks are reached."""
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(seal_manifest(manifest) if seal else manifest))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
