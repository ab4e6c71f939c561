"""Sweeps against a real ``mlflow server`` (as on a cluster, where every node logs to one tracking server):
the parent run id and the store travel to the jobs in their config, not their environment; a sweep that
crashes ends its parent FAILED, one that is interrupted ends it KILLED."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from mlflow_server import mlflow_server

TESTS = Path(__file__).resolve().parent
TINY = ["debug=default", "train.steps=160", "data.max_prompts=24", "evaluation.cost_weights=[0,1]",
        "evaluation.baselines=[]", "export.enabled=false", "hydra.sweep.dir=sweep"]  # fmt: skip


class ExplodingPolicy:
    """A policy whose construction crashes: the job raises (not a user error the CLI reports and skips)."""

    def __init__(self, **kwargs: object) -> None:
        raise RuntimeError("policy exploded on purpose")


RAY = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def _launcher(target: str, address: str | None) -> dict:
    return {"_target_": target, "ray": {"init": {"address": address}}}


@pytest.mark.parametrize(
    ("uri", "launcher", "warns"),
    [
        ("sqlite:///mlflow.db", _launcher(RAY, "ray://head:10001"), True),  # the default, on a cluster
        ("sqlite:///runs/mlflow.db", _launcher(RAY, "10.0.0.1:6379"), True),
        ("file:mlruns", _launcher(RAY, "10.0.0.1:6379"), True),
        ("mlruns", _launcher(RAY, "auto"), True),
        ("http://10.0.0.1:5000", _launcher(RAY, "ray://head:10001"), False),  # one tracking server
        ("sqlite:////shared/nfs/mlflow.db", _launcher(RAY, "10.0.0.1:6379"), False),  # an absolute path
        ("file:///shared/nfs/mlruns", _launcher(RAY, "10.0.0.1:6379"), False),
        ("sqlite:///mlflow.db", _launcher(RAY, None), False),  # a local Ray instance: this machine only
        ("sqlite:///mlflow.db", _launcher(JOBLIB, None), False),
        (
            "sqlite:///mlflow.db",
            {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"},
            False,
        ),
    ],
)
def test_relative_store_on_a_joined_ray_cluster_warns(uri: str, launcher: dict, warns: bool) -> None:
    from omegaconf import OmegaConf

    from router_rl.tracking import remote_store_warning

    message = remote_store_warning(uri, OmegaConf.create(launcher))
    assert (message is not None) == warns
    if warns:
        assert uri in message and "MLFLOW_TRACKING_URI=http://HOST:5000" in message


def test_sweep_ray_joins_a_running_cluster_without_an_object_store_size() -> None:
    """The Ray launcher runs ``ray_cfg.init.setdefault("object_store_memory", 78643200)`` before ray.init, and
    Ray refuses the key when joining a cluster: the experiment's explicit null must survive that line."""
    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[1]
    cfg = OmegaConf.load(root / "configs" / "experiment" / "sweep_ray.yaml")
    init = cfg.hydra.launcher.ray.init
    init.address = "ray://head:10001"
    init.setdefault("object_store_memory", 78643200)  # what hydra_ray_launcher's _core.launch does
    kwargs = OmegaConf.to_container(init, resolve=True)
    assert kwargs == {"address": "ray://head:10001", "object_store_memory": None}


@pytest.mark.parametrize(
    ("exc", "stopped"),
    [
        (KeyboardInterrupt(), True),
        (SystemExit(128 + signal.SIGTERM), True),  # our SIGTERM handler
        (SystemExit(signal.SIGTERM), True),  # Ray's driver handler, outside ray.get
        (SystemExit(1), False),  # Hydra after a job's exception
        (SystemExit(2), False),  # a user error
        (RuntimeError("boom"), False),
    ],
)
def test_what_counts_as_an_interrupted_sweep(exc: BaseException, stopped: bool) -> None:
    from router_rl.tracking import is_interruption

    assert is_interruption(exc) is stopped


def test_ray_get_interrupted_by_sigterm_counts_as_stopped() -> None:
    from router_rl.tracking import is_interruption

    # what ray.get raises when the driver gets SIGTERM (seen with Ray 2.60 joined to a `ray start --head`)
    exc = SystemExit(1)
    exc.ray_terminate_msg = "SystemExit is raised (sys.exit is called). Exit code: 15."
    assert is_interruption(exc)
    exc.ray_terminate_msg = "SystemExit is raised (sys.exit is called). Exit code: 1."
    assert not is_interruption(exc)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


def _runs(url: str, experiment: str) -> tuple[object, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    parents = [r for r in runs if r.data.tags.get("router_rl.sweep") == "parent"]
    assert len(parents) <= 1, parents
    parent = parents[0] if parents else None
    children = [r for r in runs if parent and r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def test_sweep_jobs_nest_under_the_parent_on_one_tracking_server(
    tmp_path: Path, cache_dir: Path, server: str
) -> None:
    # the jobs' environment points elsewhere, as a Ray worker's on another machine would (or has no
    # MLFLOW_TRACKING_URI at all): the store and the parent id must reach them through their config
    proc = run_cli(
        ["train", "-m", "policy=linucb,zero_router", *TINY, "mlflow.experiment=across-nodes",
         "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         "++hydra.job.env_set.MLFLOW_TRACKING_URI=sqlite:///worker-local.db"],
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": server},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(tmp_path.rglob("*.db")), "a job wrote a database of its own"
    parent, children = _runs(server, "across-nodes")
    assert parent is not None and parent.info.status == "FINISHED"
    assert sorted(r.data.tags["router_rl.policy"] for r in children) == ["linucb", "zero_router"]
    assert {r.info.status for r in children} == {"FINISHED"}
    assert parent.data.metrics["sweep/jobs"] == 2 and parent.data.metrics["sweep/failed_jobs"] == 0
    for num in (0, 1):
        hydra_dir = tmp_path / "sweep" / str(num) / ".hydra"
        overrides = yaml.safe_load((hydra_dir / "overrides.yaml").read_text())
        assert f"mlflow.parent_run_id={parent.info.run_id}" in overrides
        assert f"mlflow.tracking_uri='{server}'" in overrides
        job_cfg = yaml.safe_load((hydra_dir / "config.yaml").read_text())
        assert job_cfg["mlflow"]["parent_run_id"] == parent.info.run_id
    assert {r.data.params["mlflow.tracking_uri"] for r in children} == {server}
    # what lands on the server is complete: the jobs' artifacts went through its artifact proxy
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server)
    assert "report.json" in {a.path for a in client.list_artifacts(children[0].info.run_id)}


def test_a_crashed_job_ends_the_sweep_parent_failed(tmp_path: Path, cache_dir: Path, server: str) -> None:
    proc = run_cli(
        ["train", "-m", "policy=linucb",
         "policy._target_=router_rl.policies.linucb.LinUCB,test_sweep_tracking_server.ExplodingPolicy",
         *TINY, "mlflow.experiment=crashed-sweep"],
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": server, "PYTHONPATH": str(TESTS)},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "policy exploded on purpose" in proc.stderr
    parent, children = _runs(server, "crashed-sweep")
    assert parent is not None and parent.info.status == "FAILED"
    assert parent.info.end_time is not None
    # the first job finished before the second crashed; the crash is recorded on the parent
    (first,) = [r for r in children if r.data.tags["router_rl.policy"] == "linucb"]
    assert first.info.status == "FINISHED"
    failed = {k: v for k, v in parent.data.tags.items() if k.startswith("router_rl.sweep.failed_job.")}
    assert list(failed) == ["router_rl.sweep.failed_job.1"]
    assert "ExplodingPolicy" in failed["router_rl.sweep.failed_job.1"]
    assert "policy exploded on purpose" in failed["router_rl.sweep.failed_job.1"]


def test_an_interrupted_sweep_ends_the_parent_killed(tmp_path: Path, cache_dir: Path, server: str) -> None:
    from mlflow.tracking import MlflowClient

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_TRACKING_URI"] = server
    # long enough jobs that SIGTERM arrives while the first one is running
    args = ["train", "-m", "seed=0,1", "debug=default", "train.steps=200000",
            "evaluation.baselines=[]", "export.enabled=false", "mlflow.experiment=interrupted-sweep",
            "hydra.sweep.dir=sweep"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "router_rl.cli", *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        running = []
        while not running:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no job run started in 300 s"
            time.sleep(1.0)
            parent, children = _runs(server, "interrupted-sweep")
            running = [r for r in children if r.info.status == "RUNNING"]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    parent, children = _runs(server, "interrupted-sweep")
    assert parent.info.status == "KILLED" and parent.info.end_time is not None
    assert [r.info.status for r in children] == ["KILLED"]  # the second job never started
    client = MlflowClient(tracking_uri=server)
    assert client.get_run(running[0].info.run_id).info.status == "KILLED"
