"""The serving artifact: read, verify and decide with it, using torch on ``cuda`` when present.

An artifact is a directory holding ``manifest.json`` and ``weights.safetensors``. The manifest names the
format version, the policy kind, the ordered models with their prices, the embedder (id and dimension), the
default cost and latency weights, the normalisation (``cost_scale``), the training run, the creation time and
the sha256 of every other file. Loading checks all of it and refuses a corrupted or incompatible artifact with
an :class:`ArtifactError` that says what is wrong. Nothing here imports training-only code.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "router-rl-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
POLICY_KINDS = ("linear",)
LINEAR_TENSORS = ("theta_quality", "theta_cost", "theta_latency")


class ArtifactError(RuntimeError):
    """An artifact that cannot be served: missing, corrupted, or made for another format."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pick_torch_device(device: str | None = "auto") -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@dataclass
class Artifact:
    """A verified artifact: its manifest and its weights as float32 tensors on ``device``."""

    path: Path
    manifest: dict[str, Any]
    tensors: dict[str, Any]
    device: str

    @functools.cached_property
    def models(self) -> list[str]:
        """Model names in the manifest's order (the manifest is fixed once loaded)."""
        return [m["name"] for m in self.manifest["models"]]

    @property
    def cost_scale(self) -> float:
        return float(self.manifest["normalisation"]["cost_scale"])

    @property
    def version(self) -> str:
        """A short, stable policy version: the weights' hash prefix."""
        return self.manifest["files"][WEIGHTS][:12]

    @functools.cached_property
    def theta(self) -> Any:
        """(3, K, D) the quality, cost and latency heads stacked (torch, on ``device``), built once."""
        import torch

        return torch.stack([self.tensors[n] for n in LINEAR_TENSORS])

    @functools.cached_property
    def theta_t(self) -> np.ndarray:
        """(D, 3K) float32 numpy: the heads as one matrix for the CPU path of :func:`linear_estimates`."""
        t = self.theta.detach().float().cpu().numpy()
        return np.ascontiguousarray(t.reshape(-1, t.shape[-1]).T)


def _require(manifest: dict[str, Any], key: str, where: Path) -> Any:
    if key not in manifest:
        raise ArtifactError(f"{where}: manifest has no {key!r} field; is this a router-rl artifact?")
    return manifest[key]


def _check_fields(manifest: dict[str, Any], where: Path) -> None:
    """The shapes of the manifest's fields, so that a hand-edited manifest fails here, not mid-request."""
    models = manifest["models"]
    if not isinstance(models, list) or not models:
        raise ArtifactError(f"{where}: models must be a non-empty list of {{name, usd_per_1m_input, ...}}")
    names = []
    for i, m in enumerate(models):
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not m["name"]:
            raise ArtifactError(f"{where}: models[{i}] must be an object with a non-empty 'name'")
        for price in ("usd_per_1m_input", "usd_per_1m_output"):
            value = m.get(price)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ArtifactError(
                    f"{where}: models[{i}] ({m['name']}) has {price}={value!r}, expected a number >= 0"
                )
        names.append(m["name"])
    if len(set(names)) != len(names):
        raise ArtifactError(
            f"{where}: models lists a name twice ({sorted(n for n in set(names) if names.count(n) > 1)})"
        )
    emb = manifest["embedder"]
    if not isinstance(emb, dict) or not isinstance(emb.get("id"), str):
        raise ArtifactError(f"{where}: embedder must be an object with a string 'id'")
    if not isinstance(emb.get("dim"), int) or isinstance(emb.get("dim"), bool) or emb["dim"] <= 0:
        raise ArtifactError(f"{where}: embedder.dim is {emb.get('dim')!r}, expected a positive integer")
    norm = manifest["normalisation"]
    scale = norm.get("cost_scale") if isinstance(norm, dict) else None
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0:
        raise ArtifactError(f"{where}: normalisation.cost_scale is {scale!r}, expected a number > 0")
    if not isinstance(manifest["files"], dict):
        raise ArtifactError(f"{where}: files must map file names to their sha256")


def write_linear_artifact(
    out_dir: str | Path,
    *,
    models: list[dict[str, Any]],
    tensors: dict[str, np.ndarray],
    embedder: dict[str, Any],
    cost_scale: float,
    default_cost_weight: float = 0.0,
    latency_weight: float = 0.0,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a ``linear`` artifact from its head tensors (``theta_quality``, ``theta_cost``, ``theta_latency``,
    each (K, d + 1)); the writer twin of :func:`load_artifact`, used by tests, tools and hand-built routers.

    ``models``: the ordered catalog entries (``name``, ``usd_per_1m_input``, ``usd_per_1m_output``, optional
    latency priors); ``embedder``: ``id``, ``dim``, ``max_seq_length``. ``out_dir`` is created (it must not
    hold another artifact's files: they would not be listed in the manifest).
    """
    from datetime import datetime, timezone

    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(out / WEIGHTS))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "policy_kind": "linear",
        "models": models,
        "embedder": embedder,
        "default_cost_weight": float(default_cost_weight),
        "latency_weight": float(latency_weight),
        "normalisation": {
            "cost_scale": float(cost_scale),
            "embedding": "L2-normalised sentence embedding, constant 1 appended",
        },
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
        "files": {WEIGHTS: sha256_file(out / WEIGHTS)},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out


def load_artifact(path: str | Path, *, device: str | None = "auto") -> Artifact:
    """Read and verify the artifact directory at ``path``."""
    root = Path(path)
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise ArtifactError(f"{root}: not a directory; expected an artifact directory with {MANIFEST}")
    if not manifest_path.is_file():
        raise ArtifactError(f"{root}: no {MANIFEST}; expected an artifact written by `router-rl export`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{manifest_path}: not valid JSON ({err})") from None
    if _require(manifest, "format", manifest_path) != FORMAT:
        raise ArtifactError(f"{manifest_path}: format is {manifest['format']!r}, expected {FORMAT!r}")
    version = _require(manifest, "format_version", manifest_path)
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{manifest_path}: format_version {version} is not supported by this router-rl "
            f"(supports {FORMAT_VERSION}); re-export the policy or upgrade router-rl"
        )
    kind = _require(manifest, "policy_kind", manifest_path)
    if kind not in POLICY_KINDS:
        raise ArtifactError(
            f"{manifest_path}: policy_kind {kind!r} is unknown; expected one of {POLICY_KINDS}"
        )
    for key in ("models", "embedder", "normalisation", "files"):
        _require(manifest, key, manifest_path)
    _check_fields(manifest, manifest_path)
    for name, expected in manifest["files"].items():
        file = root / name
        if not file.is_file():
            raise ArtifactError(f"{root}: file {name} listed in the manifest is missing")
        actual = sha256_file(file)
        if actual != expected:
            raise ArtifactError(
                f"{file}: sha256 {actual[:16]}... does not match the manifest's {expected[:16]}...; "
                "the artifact is corrupted or was modified"
            )
    if WEIGHTS not in manifest["files"]:
        raise ArtifactError(f"{manifest_path}: files has no {WEIGHTS}")

    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    device = pick_torch_device(device)
    try:
        raw = load_file(str(root / WEIGHTS))
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"{root / WEIGHTS}: unreadable safetensors file ({err})") from None
    k, dim = len(manifest["models"]), int(manifest["embedder"]["dim"])
    tensors = {}
    for name in LINEAR_TENSORS:
        if name not in raw:
            raise ArtifactError(f"{root / WEIGHTS}: tensor {name!r} missing for policy kind {kind!r}")
        if tuple(raw[name].shape) != (k, dim + 1):
            raise ArtifactError(
                f"{root / WEIGHTS}: tensor {name!r} has shape {tuple(raw[name].shape)}, expected {(k, dim + 1)} "
                f"for {k} models and embedding dim {dim}"
            )
        tensors[name] = raw[name].to(device=device, dtype=torch.float32)
    return Artifact(path=root, manifest=manifest, tensors=tensors, device=device)


def linear_estimates(artifact: Artifact, x):
    """(3, B, K) predicted quality, normalised cost and latency for embeddings ``x`` (B, d), float32.

    On a CPU artifact a numpy ``x`` gets a numpy answer: one BLAS product, microseconds for a request (torch's
    per-operation overhead is ~10x that at batch 1). On an accelerator, or for a torch ``x``, torch on the
    artifact's device. Either way float32 products of the same weights: the two differ only in summation order
    (~1e-7 relative), which tests check leaves the decisions unchanged.
    """
    import torch

    if artifact.device == "cpu" and not isinstance(x, torch.Tensor):
        x = np.asarray(x, dtype=np.float32)
        b, d = x.shape
        xb = np.empty((b, d + 1), dtype=np.float32)
        xb[:, :d] = x
        xb[:, d] = 1.0
        k = artifact.theta.shape[1]
        return (xb @ artifact.theta_t).reshape(b, 3, k).transpose(1, 0, 2)
    x = torch.as_tensor(x, dtype=torch.float32, device=artifact.device)
    xb = torch.cat([x, torch.ones((x.shape[0], 1), dtype=x.dtype, device=x.device)], dim=1)
    return torch.einsum("bd,hkd->hbk", xb, artifact.theta)


def decision_scores(
    artifact: Artifact,
    x,
    *,
    cost_weight: float | None = None,
    latency_weight: float | None = None,
    candidates: list[str] | None = None,
    max_cost_usd: float | None = None,
    latency_budget_s: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy decision scores (B, K), ``-inf`` for excluded models, and the estimates (3, B, K).

    Score: predicted quality - cost_weight * predicted cost / cost_scale - latency_weight * predicted latency.
    Models outside ``candidates``, or predicted above ``max_cost_usd`` or ``latency_budget_s``, are excluded;
    when the limits exclude every candidate, the cheapest (or fastest) candidate remains so a decision exists.
    """
    return scores_from_estimates(
        artifact,
        linear_estimates(artifact, x),
        cost_weight=cost_weight,
        latency_weight=latency_weight,
        candidates=candidates,
        max_cost_usd=max_cost_usd,
        latency_budget_s=latency_budget_s,
    )


def scores_from_estimates(
    artifact: Artifact,
    est,
    *,
    cost_weight: float | None = None,
    latency_weight: float | None = None,
    candidates: list[str] | None = None,
    max_cost_usd: float | None = None,
    latency_budget_s: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`decision_scores` from estimates ``est`` (3, B, K) already computed by :func:`linear_estimates`.

    Every operation is row-wise, so scoring a slice of a batch gives exactly what scoring those rows alone
    gives: the serving module runs the head once per micro-batch and scores each request with its own limits.
    """
    if not isinstance(est, np.ndarray):  # torch, from an accelerator: score on the host (B x K is small)
        est = est.detach().float().cpu().numpy()
    w = artifact.manifest.get("default_cost_weight", 0.0) if cost_weight is None else cost_weight
    lam = artifact.manifest.get("latency_weight", 0.0) if latency_weight is None else latency_weight
    q, c, lat = est[0], est[1], est[2]
    scores = q - float(w) * c - float(lam) * lat  # float32, as the estimates
    allowed = np.ones(scores.shape, dtype=bool)
    if candidates is not None:
        unknown = [m for m in candidates if m not in artifact.models]
        if unknown:
            raise ValueError(f"unknown candidate model(s) {unknown}; this router knows {artifact.models}")
        allowed &= np.array([m in candidates for m in artifact.models])[None, :]
    rows = np.arange(scores.shape[0])
    if max_cost_usd is not None:
        within = c * artifact.cost_scale <= max_cost_usd
        within[rows, np.where(allowed, c, np.inf).argmin(axis=1)] = True  # the cheapest allowed stays
        allowed &= within
    if latency_budget_s is not None:
        within = lat <= latency_budget_s
        within[rows, np.where(allowed, lat, np.inf).argmin(axis=1)] = True
        allowed &= within
    scores = np.where(allowed, scores, -np.inf)
    return scores.astype(np.float64), est.astype(np.float64)
