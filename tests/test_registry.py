"""The registered MLflow model: params (cost weight, candidates, budgets) through its signature, the same
answers as ``Router.decide``, requirements that resolve from the model itself, and ``mlflow models serve``
from the registry (a real sqlite tracking store, a real scoring server on loopback)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from router_rl.serve.router import Router
from router_rl.serve.testing import free_port, running_process, shared_embedder, toy_artifact

MODELS = ["big", "mid", "small"]
PROMPTS = ["Prove that sqrt(2) is irrational.", "a haiku about the sea", "SELECT * FROM t", "hi", "tax law"]
PARAM_SETS = [
    {},
    {"cost_weight": 0.0},
    {"cost_weight": 100.0},
    {"cost_weight": 0.5, "candidates": ["mid", "small"]},
    {"cost_weight": 0.0, "max_cost_usd": 0.003},
    {"cost_weight": 0.0, "latency_budget_s": 1.5},
]


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A prompt-dependent toy artifact whose default cost weight is 100 (so ignoring params shows), registered
    as version 1 of ``toy`` in a sqlite registry in a temporary directory."""
    import mlflow

    from router_rl.registry import register_artifact

    root = tmp_path_factory.mktemp("mlflow-registry")
    art = toy_artifact(
        root / "artifact",
        MODELS,
        quality=[0.8, 0.75, 0.6],
        cost_usd=[0.01, 0.002, 0.0001],
        latency_s=[3.0, 1.0, 0.5],
        cost_weight=100.0,
        slope=1.0,
        seed=5,
    )
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cwd = os.getcwd()
    os.chdir(root)  # the artifact store (./mlruns) goes into the temporary directory
    try:
        version = register_artifact(art, "toy", tracking_uri=uri)
        local = Path(mlflow.artifacts.download_artifacts("models:/toy/1", dst_path=str(root / "download")))
    finally:
        os.chdir(cwd)
    yield {"uri": uri, "root": root, "artifact": art, "version": version, "local": local}


def expected(art: Path, params: dict) -> list[dict]:
    router = Router(art, device="cpu", embedder=shared_embedder())
    return [d.to_dict() for d in router.decide(PROMPTS, **params)]


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert [g["model"] for g in got] == [w["model"] for w in want]
    assert [g["propensity"] for g in got] == [w["propensity"] for w in want]
    assert {g["policy_version"] for g in got} == {w["policy_version"] for w in want}
    for g, w in zip(got, want, strict=True):
        assert g["scores"].keys() == w["scores"].keys() == set(MODELS)
        for m in MODELS:
            if w["scores"][m] is None:
                assert g["scores"][m] is None, m
            else:
                np.testing.assert_allclose(g["scores"][m], w["scores"][m], rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(
                [g["estimates"][m][k] for k in ("quality", "cost_usd", "latency_s")],
                [w["estimates"][m][k] for k in ("quality", "cost_usd", "latency_s")],
                rtol=1e-6,
                atol=1e-9,
            )
        assert len(g["decision_id"]) == 32


def test_pyfunc_answers_what_router_decides(registered: dict) -> None:
    import mlflow

    model = mlflow.pyfunc.load_model("models:/toy/1")
    for params in PARAM_SETS:
        assert_same(model.predict(PROMPTS, params=params or None), expected(registered["artifact"], params))
    # the bug this replaces: params were ignored, so w=0 answered what the artifact's default (w=100) answers
    at_zero = [d["model"] for d in model.predict(PROMPTS, params={"cost_weight": 0.0})]
    default = [d["model"] for d in model.predict(PROMPTS)]
    assert default == ["small"] * len(PROMPTS) and at_zero != default
    assert (
        len(set(at_zero)) > 1
    )  # the prompt matters at w=0: the comparison above tests the embedding path too


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"cost_weight": -1.0}, "cost_weight"),
        ({"candidates": ["gpt-5"]}, "gpt-5"),
        ({"latency_budget_s": 0.0}, "latency_budget_s"),
        ({"cost_weight": "high"}, "cost_weight"),
    ],
)
def test_bad_params_are_refused_with_their_name(registered: dict, params: dict, message: str) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model("models:/toy/1")
    with pytest.raises(MlflowException, match=message):
        model.predict(PROMPTS[:1], params=params)


def test_signature_example_and_requirements(registered: dict) -> None:
    import yaml

    local = registered["local"]
    spec = yaml.safe_load((local / "MLmodel").read_text())
    params = {p["name"]: p for p in json.loads(spec["signature"]["params"])}
    assert set(params) == {"cost_weight", "latency_weight", "candidates", "max_cost_usd", "latency_budget_s"}
    assert params["candidates"]["shape"] == [-1] and params["cost_weight"]["type"] == "double"
    example = json.loads((local / "serving_input_example.json").read_text())
    assert example["inputs"] and "cost_weight" in example["params"]
    # requirements name the wheel shipped inside the model, not a package no index has
    requirements = (local / "requirements.txt").read_text().split()
    (wheel_req,) = [r for r in requirements if r.endswith(".whl")]
    assert not any(r.startswith("router-rl") for r in requirements)
    wheel = local / wheel_req
    assert wheel.is_file() and wheel_req.startswith("artifacts/wheels/router_rl-")
    names = zipfile.ZipFile(wheel).namelist()
    assert "router_rl/serve/router.py" in names and "router_rl/registry.py" in names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Name: router-rl" in metadata
    conda = yaml.safe_load((local / "conda.yaml").read_text())
    assert wheel_req in conda["dependencies"][-1]["pip"]


@contextlib.contextmanager
def mlflow_serve(model_uri: str, tracking_uri: str, cwd: Path, timeout_s: float = 240.0) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri}
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    with running_process(
        command, f"{url}/ping", cwd / "mlflow-serve.log", name="mlflow models serve", cwd=cwd, env=env,
        timeout_s=timeout_s, poll_s=0.5,
    ):  # fmt: skip
        yield url


def test_mlflow_models_serve_from_the_registry(registered: dict, tmp_path: Path) -> None:
    with mlflow_serve("models:/toy/1", registered["uri"], tmp_path) as url:
        for params in PARAM_SETS[1:4]:
            answer = httpx.post(f"{url}/invocations", json={"inputs": PROMPTS, "params": params}, timeout=60)
            assert answer.status_code == 200, answer.text
            assert_same(answer.json()["predictions"], expected(registered["artifact"], params))
        framed = httpx.post(
            f"{url}/invocations",
            json={"dataframe_split": {"columns": ["prompt"], "data": [[p] for p in PROMPTS]}},
            timeout=60,
        )
        assert [d["model"] for d in framed.json()["predictions"]] == ["small"] * len(PROMPTS)  # the default
        bad = httpx.post(
            f"{url}/invocations", json={"inputs": PROMPTS, "params": {"cost_weight": -1}}, timeout=60
        )
        assert bad.status_code == 400 and "cost_weight" in bad.text
