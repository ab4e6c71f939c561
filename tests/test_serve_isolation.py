"""router_rl.serve reads only the exported artifact: no training-only module may load with it."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = (
    "hydra",
    "mlflow",
    "gymnasium",
    "omegaconf",
    "router_rl.policies",
    "router_rl.training",
    "router_rl.envs",
)

CHECK = """
import json, sys
import router_rl.serve, router_rl.serve.artifact, router_rl.serve.router
import router_rl.serve.app, router_rl.serve.batching, router_rl.serve.cli, router_rl.serve.decision_log
import router_rl.serve.errors, router_rl.serve.metrics, router_rl.serve.schemas, router_rl.serve.settings
import router_rl.serve.testing, router_rl.serve.upstreams, router_rl.serve.proxy, router_rl.serve.service
from router_rl.serve.app import create_app
from router_rl.serve.cli import main
forbidden = tuple(sys.argv[1].split(","))
prefixes = tuple(f + "." for f in forbidden)
print(json.dumps(sorted(m for m in sys.modules if m in forbidden or m.startswith(prefixes))))
"""


def test_serve_imports_nothing_training_only() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK, ",".join(FORBIDDEN)], capture_output=True, text=True, check=True
    )
    loaded = json.loads(out.stdout)
    assert loaded == [], f"router_rl.serve pulled in training-only modules: {loaded}"


def test_the_check_would_catch_a_training_import() -> None:
    code = CHECK.replace(
        "router_rl.serve.router\n", "router_rl.serve.router\nimport router_rl.policies.linucb\n"
    )
    assert code != CHECK
    out = subprocess.run(
        [sys.executable, "-c", code, ",".join(FORBIDDEN)], capture_output=True, text=True, check=True
    )
    assert "router_rl.policies.linucb" in json.loads(out.stdout)


def test_serving_an_artifact_directory_imports_no_mlflow(tmp_path) -> None:
    """Building the app for a directory (what `router-rl serve DIR` does) loads no training-only module;
    MLflow comes in only for a models:/ URI, through router_rl.registry."""
    code = f"""
import json, sys
from router_rl.serve.testing import toy_artifact
from router_rl.serve.app import create_app
from router_rl.serve.cli import resolve_artifact
from router_rl.serve.settings import ServeSettings
path = resolve_artifact(str(toy_artifact({str(tmp_path / "a")!r}, ['x', 'y'], quality=[1, 0], cost_usd=[1, 1])))
create_app(path, ServeSettings(log_db=None, device='cpu'))
forbidden = tuple(sys.argv[1].split(","))
prefixes = tuple(f + "." for f in forbidden)
print(json.dumps(sorted(m for m in sys.modules if m in forbidden or m.startswith(prefixes))))
"""
    out = subprocess.run(
        [sys.executable, "-c", code, ",".join(FORBIDDEN)], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
