"""The serving install: router-rl's wheel with its core dependencies only, in a fresh virtualenv, serves
``/v1/route``; Hydra, MLflow, Gymnasium and matplotlib are not there, and the training commands say which
extra to install in one line.

The virtualenv resolves from the package indexes pip is configured with (this machine's local mirrors and
wheel folder, or PyPI), pinned to the versions of ``.ci/requirements.lock``. The test is skipped only when
that resolution is impossible here (no index reachable); it installs torch and the encoder stack, so it takes
a few minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router_rl.serve.testing import free_port, running_process, toy_artifact

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / ".ci" / "requirements.lock"
TRAIN_ONLY = ("hydra", "omegaconf", "mlflow", "gymnasium", "matplotlib")
SERVING = ("torch", "sentence_transformers", "onnxruntime", "fastapi", "uvicorn", "router_rl.serve.app")
INSTALL_TIMEOUT_S = 1500
UNRESOLVABLE = (
    "No matching distribution",
    "Could not find a version",
    "Failed to establish a new connection",
    "Network is unreachable",
    "Temporary failure in name resolution",
    "ConnectTimeoutError",
)


def _run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding router-rl's wheel and nothing but its core dependencies."""
    root = tmp_path_factory.mktemp("serving-install")
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(root),
            str(ROOT),
        ],
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = root.glob("router_rl-*.whl")
    venv = root / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check"]
    if LOCK.is_file():  # the versions CI vetted (hashes stay with the lock's own install)
        pins = [line.split(" --hash")[0] for line in LOCK.read_text().splitlines() if line and line[0] != "#"]
        pins = sorted({re.sub(r"\[.*\]", "", pin) for pin in pins})  # a constraint takes no extras
        (root / "constraints.txt").write_text("\n".join(pins) + "\n")
        install += ["-c", str(root / "constraints.txt")]
    wanted = ["torch==2.13.0", str(wheel)]  # CPU torch first, as the README says
    resolved = _run([*install, "--dry-run", *wanted], timeout=600)
    if resolved.returncode != 0:
        if any(marker in resolved.stderr for marker in UNRESOLVABLE):
            pytest.skip(
                f"the serving install cannot be resolved from this machine's indexes: {resolved.stderr[-500:]}"
            )
        pytest.fail(f"pip could not resolve the serving install:\n{resolved.stderr[-3000:]}")
    done = _run([*install, *wanted], timeout=INSTALL_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    checked = _run([str(python), "-m", "pip", "check"], timeout=120, cwd=root)
    assert checked.returncode == 0, checked.stdout[-2000:]
    return venv


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ROUTER_RL_", "VIRTUAL_ENV"))}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ROUTER_RL_CACHE": str(tmp / "cache")}


def test_no_training_dependency_is_installed(serving_venv: Path) -> None:
    probe = "import importlib.util, json, sys; print(json.dumps({m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}))"
    found = _run(  # outside the checkout: its router_rl/ folder must not shadow the installed package
        [str(serving_venv / "bin" / "python"), "-c", probe, *TRAIN_ONLY, *SERVING],
        timeout=120,
        cwd=serving_venv,
    )
    assert found.returncode == 0, found.stderr[-2000:]
    present = json.loads(found.stdout)
    assert {m: present[m] for m in TRAIN_ONLY} == dict.fromkeys(TRAIN_ONLY, False)
    assert {m: present[m] for m in SERVING} == dict.fromkeys(SERVING, True)


def test_training_commands_name_the_extra_in_one_line(serving_venv: Path, tmp_path: Path) -> None:
    for args in (["train"], ["eval"], ["serve", "models:/router/1"]):
        proc = _run(
            [str(serving_venv / "bin" / "router-rl"), *args], timeout=300, cwd=tmp_path, env=_env(tmp_path)
        )
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and 'pip install "router-rl[train]"' in lines[0], (args, proc.stderr)


@contextlib.contextmanager
def serving(venv: Path, artifact: Path, cwd: Path, timeout_s: float = 300.0) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(venv / "bin" / "router-rl"), "serve", str(artifact), "--port", str(port)]
    with running_process(
        command, f"{url}/healthz", cwd / "serve.log", name="router-rl serve", cwd=cwd, env=_env(cwd),
        timeout_s=timeout_s, poll_s=0.5,
    ):  # fmt: skip
        yield url


def test_the_serving_install_serves_route(serving_venv: Path, tmp_path: Path) -> None:
    art = toy_artifact(
        tmp_path / "artifact",
        ["big", "mid", "small"],
        quality=[0.9, 0.8, 0.5],
        cost_usd=[0.01, 0.002, 0.0001],
    )
    with serving(serving_venv, art, tmp_path) as url:
        default = httpx.post(f"{url}/v1/route", json={"prompt": "Explain entropy."}, timeout=60)
        assert default.status_code == 200, default.text
        assert default.json()["model"] == "big" and default.json()["propensity"] == 1.0
        cheap = httpx.post(
            f"{url}/v1/route", json={"prompt": "Explain entropy.", "cost_weight": 100}, timeout=60
        )
        assert cheap.json()["model"] == "small"
    assert (tmp_path / "router-rl-decisions.sqlite").is_file()  # decisions logged, as serve does by default
