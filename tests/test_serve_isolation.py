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
    out = subprocess.run(
        [sys.executable, "-c", code, ",".join(FORBIDDEN)], capture_output=True, text=True, check=True
    )
    assert "router_rl.policies.linucb" in json.loads(out.stdout)
