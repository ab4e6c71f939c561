"""Write ``.ci/requirements.lock``: every package CI installs, pinned to one version and its sha256.

    python .ci/lock.py           # re-resolve pyproject.toml's dependencies + the dev extra and rewrite the lock
    python .ci/lock.py --check   # exit 1 when pyproject.toml's requirements changed since the lock was written

The lock is resolved by pip itself (``pip install --dry-run --report``: the index's own hashes, nothing is
installed) for this machine's kind (CPython 3.11, x86_64 Linux), with CPU torch 2.13.0 from the local wheel.
``.ci/run`` installs it with ``--require-hashes`` and then the project with ``--no-deps``, so a package that
changed on the index after the lock was written, or one that nobody pinned, fails the install instead of
running. The header records a digest of pyproject.toml's requirement lists, so a change there without a new
lock fails CI with a message naming this script.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / ".ci" / "requirements.lock"
EXTRAS = "dev"
# what CI installs besides the project's own requirements: CPU torch first (an unpinned torch is a CUDA build),
# and the build backend, since the project is installed without build isolation
EXTRA_REQUIREMENTS = ["torch==2.13.0", "setuptools>=68", "wheel"]


def requirements_digest() -> str:
    """sha256 of the project's requirement lists (dependencies and every extra), canonically serialised."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {
        "dependencies": project.get("dependencies", []),
        "extras": project.get("optional-dependencies", {}),
    }
    blob = json.dumps({"requirements": wanted, "extra": EXTRA_REQUIREMENTS, "extras": EXTRAS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def recorded_digest() -> str | None:
    if not LOCK.is_file():
        return None
    for line in LOCK.read_text().splitlines():
        if line.startswith("# requirements-sha256: "):
            return line.split(": ", 1)[1].strip()
    return None


def resolve() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
            "--report", str(report), *EXTRA_REQUIREMENTS, "-e", f"{ROOT}[{EXTRAS}]",
        ]  # fmt: skip
        subprocess.run(cmd, check=True)
        items = json.loads(report.read_text())["install"]
    lines = []
    for item in items:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if name == "router-rl":
            continue
        hashes = item["download_info"].get("archive_info", {}).get("hashes", {})
        if "sha256" not in hashes:
            raise SystemExit(
                f"{name}=={version}: the index gave no sha256 for {item['download_info']['url']}"
            )
        lines.append(f"{name}=={version} --hash=sha256:{hashes['sha256']}")
    return sorted(lines, key=str.lower)


def main(argv: list[str]) -> int:
    if argv[1:] == ["--check"]:
        if recorded_digest() != requirements_digest():
            print(
                f"{LOCK.relative_to(ROOT)} is stale: pyproject.toml's requirements changed since it was written; "
                "run `python .ci/lock.py` and commit the new lock",
                file=sys.stderr,
            )
            return 1
        return 0
    lines = resolve()
    header = [
        "# CI's pinned, hashed dependencies (python .ci/lock.py writes this file; do not edit by hand).",
        "# Resolved for CPython 3.11 on x86_64 Linux; installed with pip --require-hashes.",
        f"# requirements-sha256: {requirements_digest()}",
    ]
    LOCK.write_text("\n".join(header + lines) + "\n")
    print(f"wrote {LOCK.relative_to(ROOT)}: {len(lines)} packages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
