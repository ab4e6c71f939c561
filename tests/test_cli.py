"""The command line as a user meets it: help, --cfg job, multirun, and clear errors for user mistakes."""

from __future__ import annotations

from pathlib import Path

import yaml
from conftest import run_cli


def test_top_level_and_train_help(tmp_path: Path) -> None:
    proc = run_cli(["--help"], cwd=tmp_path)
    assert proc.returncode == 0 and "train" in proc.stdout and "route" in proc.stdout
    proc = run_cli(["train", "--help"], cwd=tmp_path)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    (i,) = [n for n, line in enumerate(lines) if line.startswith("policy=blend ")]
    policies = " ".join(lines[i + 1 : i + 4]).split("options:", 1)[1].split("embedder=")[0]
    assert {"linucb", "random", "zero_router", "routellm_mf"} <= set(policies.replace(",", " ").split())
    assert "options: arena, custom, routellm" in proc.stdout


def test_cfg_job_prints_the_composed_config(tmp_path: Path) -> None:
    proc = run_cli(["train", "--cfg", "job", "policy=zero_router", "seed=3"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["seed"] == 3 and cfg["policy"]["_target_"].endswith("ZeroRouter")


def test_bad_user_data_gives_one_line_error(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "o.csv").write_text("prompt_id,model,quality,cost_usd\np1,m1,1.7,0.1\n")
    (tmp_path / "p.csv").write_text("prompt_id,prompt\np1,hello\n")
    (tmp_path / "m.csv").write_text("model,usd_per_1m_input,usd_per_1m_output\nm1,1,2\n")
    proc = run_cli(
        [
            "train",
            "data=custom",
            "data.outcomes=o.csv",
            "data.prompts=p.csv",
            "data.models=m.csv",
            "mlflow.enabled=false",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "o.csv" in proc.stderr and "quality" in proc.stderr and "line 2" in proc.stderr


def test_missing_custom_paths_are_named(tmp_path: Path) -> None:
    proc = run_cli(["train", "data=custom", "mlflow.enabled=false"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "data.outcomes" in proc.stderr or "outcomes" in proc.stderr


def test_multirun_in_parallel_with_nested_mlflow_runs(tmp_path: Path, cache_dir: Path) -> None:
    proc = run_cli(
        ["train", "-m", "debug=default", "policy=linucb,zero_router", "train.steps=160", "data.max_prompts=24",
         "evaluation.cost_weights=[0,1]", "export.enabled=false", "hydra.sweep.dir=sweep",
         "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "UserWarning" not in proc.stderr
    assert (tmp_path / "sweep" / "0" / "report.json").is_file()
    assert (tmp_path / "sweep" / "1" / "report.json").is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("router-rl").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("router_rl.sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["router_rl.policy"] for r in children) == ["linucb", "zero_router"]
    assert parent.data.metrics["sweep/jobs"] == 2
    best = max(r.data.metrics["eval/linucb/aiq"] for r in children if "eval/linucb/aiq" in r.data.metrics)
    assert parent.data.metrics["sweep/best/eval/linucb/aiq"] == best


def test_train_help_shows_each_key_with_its_documentation() -> None:
    from router_rl.config_help import render_help

    text = render_help("train", [])
    lines = text.splitlines()
    steps = next(line for line in lines if line.strip().startswith("steps: 10000"))
    assert steps.endswith("# bandit interactions (decisions with feedback) per training run")
    assert any(line.startswith("seed: 0") and "# seeds the splits" in line for line in lines)
    (policy,) = [i for i, line in enumerate(lines) if line.startswith("policy=blend")]
    assert "the learner" in lines[policy] and "options: blend, eps_greedy, knn," in lines[policy + 1]
    # the chosen option's own keys and comments: kNN's, and a global experiment file's overrides
    knn = render_help("train", ["policy=knn"])
    assert "policy=knn" in knn and "_target_: router_rl.policies.knn.KNNRouter" in knn
    block = knn.split("\npolicy:\n", 1)[1].split("\n", 5)[:4]  # _target_, k, epsilon, max_memory
    assert block[1].startswith("  k: 20") and block[1].endswith("# neighbours per model")
    assert all("#" in line for line in block[1:])


def test_train_yaml_lists_every_policy() -> None:
    import router_rl.configs

    root = Path(router_rl.configs.__file__).parent
    line = next(
        line
        for line in (root / "train.yaml").read_text().splitlines()
        if line.strip().startswith("- policy:")
    )
    listed = set(line.split("#", 1)[1].split(":", 1)[1].replace("|", " ").split())
    assert listed == {p.stem for p in (root / "policy").glob("*.yaml")}


def test_collect_help_is_documented_without_loading_the_http_clients(tmp_path: Path) -> None:
    proc = run_cli(["collect", "--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    concurrency = next(line for line in proc.stdout.splitlines() if line.strip().startswith("concurrency: 8"))
    assert "# (prompt, model) pairs in flight at once" in concurrency
    code = (
        "import sys; from router_rl.cli import main; main(['collect', '--help']); "
        "print(sorted({'httpx', 'pandas', 'router_rl.collect'} & set(sys.modules)))"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
