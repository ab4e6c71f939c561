"""A replica serving ``models:/NAME@ALIAS`` follows the alias: a real sqlite MLflow registry, the alias moved
to a new version is picked up and served without a restart; a corrupted version and a deleted alias are
counted, logged and leave the old policy serving."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router_rl.serve.artifact import load_artifact
from router_rl.serve.cli import build_app, main
from router_rl.serve.manifest import WEIGHTS
from router_rl.serve.settings import ServeSettings, SettingsError
from router_rl.serve.testing import ServerThread, shared_embedder, toy_artifact

MODELS = ["big", "mid", "small"]
COST = [0.01, 0.002, 0.0001]


def polls(http: httpx.Client) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        if family.name == "router_rl_registry_polls":
            for s in family.samples:
                if s.name.endswith("_total"):
                    out[s.labels["result"]] = s.value
    return out


def wait_until(what: str, check, timeout_s: float = 60.0):  # noqa: ANN001, ANN201
    """Poll ``check()`` until it returns something truthy, or fail after ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Versions 1 (big is best), 2 (small is best) and 3 (a copy whose stored weights get corrupted) of
    ``toy`` in a sqlite registry; the alias ``champion`` on version 1."""
    from router_rl.registry import register_artifact

    monkeypatch.chdir(tmp_path)  # ./mlruns, the artifact store, goes here
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    wheel = tmp_path / "router_rl-0.0.0-py3-none-any.whl"
    wheel.write_bytes(b"not a real wheel: the registry only stores it")
    arts = {
        1: toy_artifact(tmp_path / "a1", MODELS, quality=[0.9, 0.5, 0.4], cost_usd=COST),
        2: toy_artifact(tmp_path / "a2", MODELS, quality=[0.4, 0.5, 0.9], cost_usd=COST),
        3: toy_artifact(tmp_path / "a3", MODELS, quality=[0.3, 0.95, 0.2], cost_usd=COST, seed=3, slope=0.1),
    }
    for v, art in arts.items():
        version = register_artifact(
            art, "toy", tracking_uri=uri, wheel=wheel, alias="champion" if v == 1 else None
        )
        assert str(version.version) == str(v)
    return {
        "uri": uri,
        "versions": {v: load_artifact(a, device="cpu").version for v, a in arts.items()},
        "weights": {v: (a / WEIGHTS).read_bytes() for v, a in arts.items()},
        "root": tmp_path,
    }


def test_a_replica_follows_its_alias(registry: dict) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=registry["uri"], registry_uri=registry["uri"])
    versions = registry["versions"]
    settings = ServeSettings(log_db=None, registry_poll_s=0.1)
    app = build_app("models:/toy@champion", settings, embedder=shared_embedder(), handle_sighup=False)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:

        def serving() -> str:
            return http.get("/healthz").json()["policy_version"]

        health = http.get("/healthz").json()
        assert health["policy_version"] == versions[1]
        assert (
            health["registry"]["follows"] == "models:/toy@champion" and health["registry"]["version"] == "1"
        )
        assert http.post("/v1/route", json={"prompt": "hello"}).json()["model"] == "big"

        client.set_registered_model_alias("toy", "champion", "2")
        wait_until("serving version 2", lambda: serving() == versions[2])
        assert http.post("/v1/route", json={"prompt": "hello"}).json()["model"] == "small"
        assert http.get("/healthz").json()["registry"]["version"] == "2"
        assert polls(http)["reloaded"] == 1

        # version 3's stored weights are corrupted: its reload is refused, version 2 keeps serving
        stored = [
            p
            for p in registry["root"].joinpath("mlruns").rglob(WEIGHTS)
            if p.read_bytes() == registry["weights"][3]
        ]
        assert stored, "version 3's weights not found in the artifact store"
        for p in stored:
            data = bytearray(p.read_bytes())
            data[-1] ^= 0xFF
            p.write_bytes(bytes(data))
        client.set_registered_model_alias("toy", "champion", "3")
        wait_until("a refused reload", lambda: polls(http).get("reload_error", 0) >= 1)
        wait_until("the refused version skipped", lambda: polls(http).get("refused", 0) >= 1)
        assert polls(http)["reload_error"] == 1  # refused once, not retried on every poll
        health = http.get("/healthz").json()
        assert health["policy_version"] == versions[2]
        assert (
            health["registry"]["refused_version"] == "3" and "version 3" in health["registry"]["last_error"]
        )
        assert http.post("/v1/route", json={"prompt": "hello"}).json()["model"] == "small"

        # the alias is deleted: polls fail, are counted, and version 2 keeps serving
        client.delete_registered_model_alias("toy", "champion")
        wait_until("a failed poll", lambda: polls(http).get("poll_error", 0) >= 1)
        assert serving() == versions[2]
        assert http.post("/v1/route", json={"prompt": "hi"}).status_code == 200

        client.set_registered_model_alias("toy", "champion", "1")  # back: followed again
        wait_until("serving version 1 again", lambda: serving() == versions[1])


def test_a_pinned_version_is_not_followed(registry: dict) -> None:
    settings = ServeSettings(log_db=None, registry_poll_s=0.1)
    app = build_app("models:/toy/2", settings, embedder=shared_embedder(), handle_sighup=False)
    assert app.state.registry_watch is None
    off = build_app("models:/toy@champion", settings.replace(registry_poll_s=0.0), embedder=shared_embedder())
    assert off.state.registry_watch is None
    with ServerThread(app) as server:
        health = httpx.get(f"{server.url}/healthz").json()
    assert health["policy_version"] == registry["versions"][2] and "registry" not in health


def test_bad_poll_interval_is_one_line_naming_the_flag(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SettingsError, match="registry_poll_s"):
        ServeSettings(registry_poll_s=-1.0).validate()
    assert main(["no-such-artifact", "--registry-poll-s", "soon"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--registry-poll-s" in err and "\n" not in err
