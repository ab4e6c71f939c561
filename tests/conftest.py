"""Test-wide settings: offline hub, a shared embedding cache, one debug training run reused by many tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("embedding-cache")
    os.environ["ROUTER_RL_CACHE"] = str(path)
    return path


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``router-rl ARGS`` in a subprocess, as a user runs it: MLflow's default store is ``cwd/mlflow.db``
    (``mlflow.set_tracking_uri`` in an earlier in-process test exports MLFLOW_TRACKING_URI; not inherited)."""
    inherited = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    }
    full_env = {**inherited, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "router_rl.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def debug_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict:
    """One `router-rl train debug=default` run in a fresh working directory (real MLflow sqlite store)."""
    work = tmp_path_factory.mktemp("train-run")
    proc = run_cli(["train", "debug=default", "hydra.run.dir=out"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"cwd": work, "out": work / "out", "stdout": proc.stdout, "stderr": proc.stderr}
