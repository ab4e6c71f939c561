"""The built wheel carries everything a user needs and installs envs/policies/serve under router_rl only."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contents(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("router_rl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names if not n.startswith("router_rl-")}
    assert tops == {"router_rl"}, tops  # nothing named envs, policies or serve lands in site-packages
    for needed in (
        "router_rl/envs/routing.py",
        "router_rl/policies/linucb.py",
        "router_rl/serve/artifact.py",
        "router_rl/configs/train.yaml",
        "router_rl/configs/policy/linucb.yaml",
        "router_rl/configs/debug/default.yaml",
        "router_rl/configs/embedder/minilm.yaml",
        "router_rl/configs/embedder/static.yaml",
        "router_rl/datasets/arena_bench_v1_gpt4judge.csv.gz",
        "router_rl/datasets/routellm_gpt4_vs_mixtral_prompts.jsonl.gz",
        "router_rl/datasets/models.csv",
        "router_rl/datasets/ATTRIBUTION.md",
    ):
        assert needed in names, needed
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "router-rl = router_rl.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_ci_lock_is_current_hashed_and_excludes_compromised_releases() -> None:
    """CI installs .ci/requirements.lock with --require-hashes: every line pinned and hashed, written from the
    current pyproject.toml (lock.py --check), and no release reported compromised (litellm 1.107.0)."""
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11, as CI
    check = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "lock.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    pins = [
        ln for ln in (ROOT / ".ci" / "requirements.lock").read_text().splitlines() if not ln.startswith("#")
    ]
    assert len(pins) > 50
    for line in pins:
        spec, _, digest = line.partition(" --hash=sha256:")
        assert "==" in spec and len(digest) == 64, line
    assert not any(p.lower().startswith(("litellm==1.107.0 ", "litellm[proxy]==1.107.0 ")) for p in pins)
    plain = {ln.split(" --hash")[0] for ln in pins if "[" not in ln.split("==")[0]}
    for line in pins:  # httpx[http2]==0.28.1 beside httpx==0.28.1: pip 23 reads them as two projects
        spec = line.split(" --hash")[0]
        if "[" in spec:
            assert re.sub(r"\[.*\]", "", spec) in plain, line
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    (litellm,) = [r for r in dev if r.startswith("litellm")]
    assert "!=1.107.0" in litellm


def test_lock_pins_the_extras_that_dependencies_ask_for() -> None:
    """lock.py's fixed point: an extra counts when its marker holds for an extra its own package was asked for,
    transitively, and never otherwise (an extra pinned that nothing asked for would need packages not locked)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ci_lock", ROOT / ".ci" / "lock.py")
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)

    def item(name: str, *requires: str) -> dict:
        return {"metadata": {"name": name, "version": "1.0", "requires_dist": list(requires)}}

    items = [
        item("router-rl", "litellm[proxy]; extra == 'dev'", "fastapi"),
        item("litellm", "httpx[http2]>=0.28", "PyJWT[crypto]; extra == 'proxy'", "rich[jupyter]; extra == 'cli'"),
        item("httpx", "h2<5; extra == 'http2'", "Brotli[ffi]; extra == 'brotli'"),
        item("PyJWT", "cryptography; extra == 'crypto'"),
        item("fastapi", "uvicorn[standard]; extra == 'standard'"),
        item("h2"), item("cryptography"), item("rich"), item("brotli"), item("uvicorn"),
    ]  # fmt: skip
    asked = lock.extras_asked(items)
    assert asked["litellm"] == {"proxy"}
    assert asked["httpx"] == {"http2"}
    assert asked["pyjwt"] == {"crypto"}  # asked only under litellm's proxy extra, which dev asks for
    assert asked["rich"] == set() and asked["brotli"] == set() and asked["uvicorn"] == set()
    assert lock._canonical("PyJWT") == "pyjwt" and lock._canonical("ruamel.yaml__clib") == "ruamel-yaml-clib"
