"""The artifact manifest: its integrity seal, the checks of every field, and reading the files it names.

Integrity. ``manifest_sha256`` is the sha256 of the manifest's canonical JSON (every field but the seal
fields, keys sorted, no whitespace, UTF-8, no NaN or Infinity). ``files`` records each file's sha256 and size,
so the seal covers the weights too, and the policy version is the seal's prefix: any change to the manifest or
to a file gives a new version. A bare hash detects corruption and naive edits only: whoever can write the
manifest can recompute it. For tamper-proofing set ``ROUTER_RL_ARTIFACT_KEY`` where artifacts are written and
where they are served: the writer adds ``manifest_hmac_sha256`` (HMAC-SHA256 of the same bytes under that key)
and the loader then refuses an artifact without a valid one.

Paths. A name in ``files`` is a relative path inside the artifact directory (no absolute path, no ``..``, no
symlink anywhere on the way, a regular file) whose size is the recorded one, below :data:`MAX_ARTIFACT_BYTES`
in all. Those checks use ``lstat`` only; nothing outside the directory is ever opened.

Every failure is an :class:`ArtifactError` with a one-line message naming the file and the field.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

FORMAT = "router-rl-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
POLICY_KINDS = ("linear", "linear+mlp")  # linear heads; the same blended with an MLP (see artifact.py)
MAX_MLP_LAYERS = 16
MANIFEST_SHA256 = "manifest_sha256"
MANIFEST_HMAC = "manifest_hmac_sha256"
SEAL_FIELDS = (MANIFEST_SHA256, MANIFEST_HMAC)
KEY_ENV = "ROUTER_RL_ARTIFACT_KEY"
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few kB; 1 MiB bounds what is parsed
MAX_ARTIFACT_BYTES = 2 << 30  # all listed files together: a linear head is kB to MB; 2 GiB bounds hashing
MAX_EMBEDDING_DIM = 1 << 16
MAX_SEQ_LENGTH = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ArtifactError(RuntimeError):
    """An artifact that cannot be served: missing, corrupted, modified, or made for another format."""


# ------------------------------------------------------------------------------------------- the seal
def canonical_json(content: dict[str, Any]) -> bytes:
    """The bytes the seal covers: ``content`` as sorted, compact, UTF-8 JSON without NaN or Infinity."""
    return json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _content(manifest: dict[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in manifest.items() if k not in SEAL_FIELDS})


def artifact_key(environ: dict[str, str] | None = None) -> bytes | None:
    """The HMAC key from ``ROUTER_RL_ARTIFACT_KEY`` (None when unset or empty)."""
    key = (os.environ if environ is None else environ).get(KEY_ENV, "")
    return key.encode("utf-8") if key else None


def seal_manifest(manifest: dict[str, Any], *, key: bytes | None = None) -> dict[str, Any]:
    """``manifest`` with its ``manifest_sha256`` (and ``manifest_hmac_sha256`` when ``key`` is given)."""
    content = _content(manifest)
    sealed = {k: v for k, v in manifest.items() if k not in SEAL_FIELDS}
    sealed[MANIFEST_SHA256] = hashlib.sha256(content).hexdigest()
    if key:
        sealed[MANIFEST_HMAC] = hmac.new(key, content, hashlib.sha256).hexdigest()
    return sealed


def check_seal(manifest: dict[str, Any], where: Path, *, key: bytes | None = None) -> None:
    """Refuse a manifest whose content does not match its seal (or its HMAC, when ``key`` is given)."""
    expected = manifest.get(MANIFEST_SHA256)
    if expected is None:
        raise ArtifactError(
            f"{where}: no {MANIFEST_SHA256!r} field, so its content cannot be verified (written by a router-rl "
            "before integrity checks, or edited); re-export it with `router-rl export`"
        )
    if not isinstance(expected, str) or not _HEX64.fullmatch(expected):
        raise ArtifactError(f"{where}: {MANIFEST_SHA256} is {expected!r}; expected 64 lowercase hex digits")
    content = _content(manifest)
    actual = hashlib.sha256(content).hexdigest()
    if actual != expected:
        raise ArtifactError(
            f"{where}: content sha256 {actual[:16]}... does not match {MANIFEST_SHA256} {expected[:16]}...; "
            "the manifest was modified or corrupted (re-export it)"
        )
    if key is None:
        return
    signature = manifest.get(MANIFEST_HMAC)
    if not isinstance(signature, str):
        raise ArtifactError(
            f"{where}: not signed ({MANIFEST_HMAC} missing) and {KEY_ENV} is set; export it with that key"
        )
    if not hmac.compare_digest(signature, hmac.new(key, content, hashlib.sha256).hexdigest()):
        raise ArtifactError(
            f"{where}: {MANIFEST_HMAC} does not match under {KEY_ENV}; the manifest was modified or signed "
            "with another key"
        )


# --------------------------------------------------------------------------------------- parsing
def _reject_constant(name: str) -> float:
    raise ArtifactError(f"holds {name}; expected finite numbers only")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ArtifactError(f"holds the number {text}, which overflows; expected finite numbers only")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ArtifactError(f"holds the key {key!r} twice; expected each key once")
        out[key] = value
    return out


def parse_manifest(raw: bytes, where: Path) -> dict[str, Any]:
    """The manifest object in ``raw``: strict JSON (no NaN/Infinity, no duplicate keys), a JSON object."""
    try:
        manifest = json.loads(
            raw.decode("utf-8"),
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except ArtifactError as err:
        raise ArtifactError(f"{where}: {err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{where}: not valid JSON ({err})") from None
    except RecursionError:
        raise ArtifactError(f"{where}: nested too deeply; expected a router-rl manifest") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(
            f"{where}: holds a JSON {_json_type(manifest)}; expected an object (a router-rl manifest)"
        )
    return manifest


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# ------------------------------------------------------------------------------------------ fields
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def require(manifest: dict[str, Any], key: str, where: Path) -> Any:
    if key not in manifest:
        raise ArtifactError(f"{where}: manifest has no {key!r} field; is this a router-rl artifact?")
    return manifest[key]


def check_format(manifest: dict[str, Any], where: Path) -> None:
    """``format`` and ``format_version`` first: a future format may seal its manifest differently."""
    fmt = require(manifest, "format", where)
    if fmt != FORMAT:
        raise ArtifactError(f"{where}: format is {fmt!r}, expected {FORMAT!r}")
    version = require(manifest, "format_version", where)
    if not _integer(version):
        raise ArtifactError(
            f"{where}: format_version is {version!r} (a JSON {_json_type(version)}); "
            f"expected the integer {FORMAT_VERSION}"
        )
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{where}: format_version {version} is not supported by this router-rl "
            f"(supports {FORMAT_VERSION}); re-export the policy or upgrade router-rl"
        )


def check_fields(manifest: dict[str, Any], where: Path) -> None:
    """Types and ranges of every field decisions use, so a bad manifest fails at load, not mid-request.

    Fields this router-rl does not know are left alone (the seal still covers them)."""
    kind = require(manifest, "policy_kind", where)
    if kind not in POLICY_KINDS:
        raise ArtifactError(f"{where}: policy_kind {kind!r} is unknown; expected one of {POLICY_KINDS}")
    for key in ("models", "embedder", "normalisation", "files"):
        require(manifest, key, where)
    if kind == "linear+mlp":
        _check_blend(manifest, where)
    _check_models(manifest["models"], where)
    emb = manifest["embedder"]
    if not isinstance(emb, dict) or not isinstance(emb.get("id"), str) or not emb["id"].strip():
        raise ArtifactError(f"{where}: embedder must be an object with a non-empty string 'id'")
    dim = emb.get("dim")
    if not _integer(dim) or not 0 < dim <= MAX_EMBEDDING_DIM:
        raise ArtifactError(
            f"{where}: embedder.dim is {dim!r}; expected a positive integer (at most {MAX_EMBEDDING_DIM})"
        )
    length = emb.get("max_seq_length", 256)
    if not _integer(length) or not 0 < length <= MAX_SEQ_LENGTH:
        raise ArtifactError(
            f"{where}: embedder.max_seq_length is {length!r}; expected a positive integer number of tokens"
        )
    norm = manifest["normalisation"]
    scale = norm.get("cost_scale") if isinstance(norm, dict) else None
    if not _number(scale) or not scale > 0:
        raise ArtifactError(f"{where}: normalisation.cost_scale is {scale!r}, expected a finite number > 0")
    for key in ("default_cost_weight", "latency_weight"):
        value = manifest.get(key, 0.0)
        if not _number(value) or value < 0:
            raise ArtifactError(f"{where}: {key} is {value!r}, expected a finite number >= 0")
    check_files(manifest["files"], where)


def _check_blend(manifest: dict[str, Any], where: Path) -> None:
    """A ``linear+mlp`` manifest's ``blend`` block: ``mlp_weight`` in [0, 1] and ``mlp_layers`` >= 1."""
    blend = require(manifest, "blend", where)
    if not isinstance(blend, dict):
        raise ArtifactError(
            f"{where}: blend is a JSON {_json_type(blend)}; expected {{mlp_weight, mlp_layers}}"
        )
    beta, layers = blend.get("mlp_weight"), blend.get("mlp_layers")
    if not _number(beta) or not 0.0 <= beta <= 1.0:
        raise ArtifactError(f"{where}: blend.mlp_weight is {beta!r}; expected a number in [0, 1]")
    if not _integer(layers) or not 1 <= layers <= MAX_MLP_LAYERS:
        raise ArtifactError(
            f"{where}: blend.mlp_layers is {layers!r}; expected an integer from 1 to {MAX_MLP_LAYERS}"
        )


def _check_models(models: Any, where: Path) -> None:
    if not isinstance(models, list):
        raise ArtifactError(
            f"{where}: models is a JSON {_json_type(models)}; expected a list of "
            "{name, usd_per_1m_input, usd_per_1m_output, ...} objects"
        )
    if len(models) < 2:
        raise ArtifactError(
            f"{where}: models lists {len(models)} model(s); a router needs at least 2 to choose between"
        )
    names = []
    for i, m in enumerate(models):
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not m["name"].strip():
            raise ArtifactError(f"{where}: models[{i}] must be an object with a non-empty string 'name'")
        limits = {"usd_per_1m_input": ">= 0", "usd_per_1m_output": ">= 0"}
        optional = {"ttft_s": ">= 0", "output_tokens_per_s": "> 0"}
        for key, bound in {**limits, **optional}.items():
            value = m.get(key)
            if value is None and key in optional:
                continue
            ok = _number(value) and (value >= 0 if bound == ">= 0" else value > 0)
            if not ok:
                also = " or null" if key in optional else ""
                raise ArtifactError(
                    f"{where}: models[{i}] ({m['name']}) has {key}={value!r}, expected a finite number "
                    f"{bound}{also}"
                )
        names.append(m["name"])
    if len(set(names)) != len(names):
        raise ArtifactError(
            f"{where}: models lists a name twice ({sorted(n for n in set(names) if names.count(n) > 1)})"
        )


def check_files(files: Any, where: Path) -> None:
    """``files``: {relative path: {"sha256": 64 hex, "size": bytes}}, weights included, bounded in size."""
    if not isinstance(files, dict) or not files:
        raise ArtifactError(
            f"{where}: files is a JSON {_json_type(files)}; expected an object mapping each file name to "
            '{"sha256": ..., "size": ...}'
        )
    total = 0
    for name, entry in files.items():
        check_file_name(name, where)
        if not isinstance(entry, dict):
            raise ArtifactError(
                f"{where}: files[{name!r}] is a JSON {_json_type(entry)}; expected "
                '{"sha256": ..., "size": ...} (an artifact from an older router-rl: re-export it)'
            )
        digest, size = entry.get("sha256"), entry.get("size")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise ArtifactError(
                f"{where}: files[{name!r}].sha256 is {digest!r}; expected 64 lowercase hex digits"
            )
        if not _integer(size) or size < 0:
            raise ArtifactError(f"{where}: files[{name!r}].size is {size!r}; expected a byte count >= 0")
        total += size
    if total > MAX_ARTIFACT_BYTES:
        raise ArtifactError(
            f"{where}: files add up to {total} bytes; expected at most {MAX_ARTIFACT_BYTES} (MAX_ARTIFACT_BYTES)"
        )
    if WEIGHTS not in files:
        raise ArtifactError(f"{where}: files has no {WEIGHTS}")


def check_file_name(name: Any, where: Path) -> None:
    """A plain relative POSIX path: no absolute path, drive, backslash, ``.``/``..`` or empty part."""
    parts = name.split("/") if isinstance(name, str) else []
    if (
        not parts
        or name == MANIFEST
        or any(p in ("", ".", "..") for p in parts)
        or any(c in name for c in "\\\0:")
        or any(ord(c) < 32 for c in name)
    ):
        raise ArtifactError(
            f"{where}: files names {name!r}; expected a relative path inside the artifact directory "
            "(no absolute path, no '..', not the manifest)"
        )


# ------------------------------------------------------------------------------------------ reading
def read_inside(root: Path, name: str, *, size: int) -> bytes:
    """The bytes of ``root/name``, a regular file of exactly ``size`` bytes reached without any symlink.

    Every component is checked with ``lstat`` before anything is opened, and the file is opened with
    ``O_NOFOLLOW | O_NONBLOCK`` and checked again with ``fstat`` (a file swapped meanwhile is refused)."""
    current = root
    parts = name.split("/")
    for i, part in enumerate(parts):
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            raise ArtifactError(f"{root}: file {name} listed in the manifest is missing") from None
        except OSError as err:
            raise ArtifactError(f"{root}: file {name} cannot be examined ({err.strerror})") from None
        last = i == len(parts) - 1
        if stat.S_ISLNK(st.st_mode):
            raise ArtifactError(
                f"{root}: {'/'.join(parts[: i + 1])} is a symlink; artifact files must be regular files "
                "inside the artifact directory"
            )
        if last and not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{root}: {name} is not a regular file")
        if not last and not stat.S_ISDIR(st.st_mode):
            raise ArtifactError(f"{root}: {'/'.join(parts[: i + 1])} is not a directory")
    if st.st_size != size:
        raise ArtifactError(
            f"{root / name}: {st.st_size} bytes, the manifest records {size}, so its sha256 cannot match; the "
            "artifact is corrupted or was modified"
        )
    flags = (
        os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    )
    try:
        fd = os.open(current, flags)
    except OSError as err:
        raise ArtifactError(f"{root / name}: cannot be opened ({err.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        now = os.fstat(fh.fileno())
        if not stat.S_ISREG(now.st_mode) or (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
            raise ArtifactError(f"{root / name}: changed while it was being read")
        data = fh.read(size + 1)
    if len(data) != size:
        raise ArtifactError(f"{root / name}: changed size while it was being read")
    return data


def read_manifest_bytes(root: Path) -> bytes:
    """``root/manifest.json``: a regular file (no symlink) of at most :data:`MAX_MANIFEST_BYTES`."""
    path = root / MANIFEST
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ArtifactError(
            f"{root}: no {MANIFEST}; expected an artifact written by `router-rl export`"
        ) from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise ArtifactError(
            f"{path}: not a regular file (a symlink or a device); expected the manifest itself"
        )
    if st.st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path}: {st.st_size} bytes; a manifest is at most {MAX_MANIFEST_BYTES} bytes")
    return read_inside(root, MANIFEST, size=st.st_size)


def file_entry(path: str | Path) -> dict[str, Any]:
    """``{"sha256", "size"}`` of a file the writer just wrote."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "size": size}
