"""Write ``.ci/requirements.lock``: every package CI installs, pinned to one version and its sha256.

    python .ci/lock.py            # re-resolve, keeping the lock's current versions where they still fit
    python .ci/lock.py --upgrade  # re-resolve pyproject.toml's dependencies + the dev extra to the newest versions
    python .ci/lock.py --check    # exit 1 when pyproject.toml's requirements changed since the lock was written

The lock is resolved by pip itself (``pip install --dry-run --report``: the index's own hashes, nothing is
installed) for this machine's kind (CPython 3.11, x86_64 Linux), with CPU torch 2.13.0 from the local wheel.
``.ci/run`` installs it with ``--require-hashes`` and then the project with ``--no-deps``, so a package that
changed on the index after the lock was written, or one that nobody pinned, fails the install instead of
running. A package that some dependency asks for with extras (litellm wants ``httpx[http2]``) is pinned
a second time with them (``httpx[http2]==0.28.1`` beside ``httpx==0.28.1``): pip 23's resolver treats
``httpx[http2]`` as a project of its own, and without that pin it looks at the newest release for it and, in
hash-checking mode, stops at once. The header records a digest of pyproject.toml's requirement lists, so a
change there without a new lock fails CI with a message naming this script.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a bare interpreter (CI runs --check before its venv exists): pip vendors packaging
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

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


def locked_versions() -> dict[str, str]:
    """The lock's current pins, ``{name: version}`` (empty when there is no lock)."""
    if not LOCK.is_file():
        return {}
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            spec = line.split(" --hash", 1)[0]
            name, version = spec.split("==", 1)
            pins[name.split("[", 1)[0]] = version
    return pins


def extras_asked(items: list[dict]) -> dict[str, set[str]]:
    """For each resolved package, the extras that the project or another resolved package asks it for.

    A fixed point over the report's ``requires_dist``: a requirement counts when its marker holds with no extra
    or with one of the extras its own package was asked for (``foo[bar]; extra == "proxy"`` counts only when the
    package was asked for ``proxy``)."""
    by_name = {_canonical(item["metadata"]["name"]): item for item in items}
    asked: dict[str, set[str]] = {name: set() for name in by_name}
    asked[_canonical("router-rl")] = {EXTRAS}
    changed = True
    while changed:
        changed = False
        for name, item in by_name.items():
            for text in item["metadata"].get("requires_dist", []):
                req = Requirement(text)
                target = _canonical(req.name)
                if not req.extras or target not in asked:
                    continue
                contexts = [""] + sorted(asked[name])
                if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in contexts):
                    continue
                if not req.extras <= asked[target]:
                    asked[target] |= req.extras
                    changed = True
    return asked


def resolve(upgrade: bool) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
            "--report", str(report), *EXTRA_REQUIREMENTS, "-e", f"{ROOT}[{EXTRAS}]",
        ]  # fmt: skip
        pins = {} if upgrade else locked_versions()
        if pins:  # keep what the lock has: pip may still move a pin that no longer fits pyproject.toml
            keep = Path(tmp) / "keep.txt"
            keep.write_text("".join(f"{name}=={version}\n" for name, version in pins.items()))
            cmd += ["--constraint", str(keep)]
        subprocess.run(cmd, check=True)
        items = json.loads(report.read_text())["install"]
    asked = extras_asked(items)
    lines = []
    for item in items:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if name == "router-rl":
            continue
        extras = sorted(asked.get(_canonical(name), ()))
        hashes = item["download_info"].get("archive_info", {}).get("hashes", {})
        if "sha256" not in hashes:
            raise SystemExit(
                f"{name}=={version}: the index gave no sha256 for {item['download_info']['url']}"
            )
        lines.append(f"{name}=={version} --hash=sha256:{hashes['sha256']}")
        if extras:  # both: plain ``httpx`` is another project to pip 23's resolver than ``httpx[http2]``
            lines.append(f"{name}[{','.join(extras)}]=={version} --hash=sha256:{hashes['sha256']}")
    return sorted(lines, key=str.lower)


def _canonical(name: str) -> str:
    """PEP 503's normalised name."""
    return canonicalize_name(name)


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
    if argv[1:] not in ([], ["--upgrade"]):
        print("usage: python .ci/lock.py [--upgrade | --check]", file=sys.stderr)
        return 2
    lines = resolve(upgrade=argv[1:] == ["--upgrade"])
    header = [
        "# CI's pinned, hashed dependencies (python .ci/lock.py writes this file; do not edit by hand).",
        "# Resolved for CPython 3.11 on x86_64 Linux; installed with pip --require-hashes.",
        f"# requirements-sha256: {requirements_digest()}",
    ]
    LOCK.write_text("\n".join(header + lines) + "\n")
    with_extras = sum("[" in line.split("==", 1)[0] for line in lines)
    print(
        f"wrote {LOCK.relative_to(ROOT)}: {len(lines) - with_extras} packages, {with_extras} also with extras"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
