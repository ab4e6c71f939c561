"""The serving artifact: read, verify and decide with it, using torch on ``cuda`` when present.

An artifact is a directory holding ``manifest.json`` and ``weights.safetensors``. The manifest names the
format version, the policy kind, the ordered models with their prices, the embedder (id and dimension), the
default cost and latency weights, the normalisation (``cost_scale``), the training run, the creation time, the
sha256 and size of every other file, and its own seal (``manifest_sha256``, see :mod:`router_rl.serve.manifest`).
Loading checks all of it and refuses a corrupted, modified or incompatible artifact with an
:class:`ArtifactError` that says in one line what is wrong. Nothing here imports training-only code.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router_rl.serve.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_SHA256,
    POLICY_KINDS,
    WEIGHTS,
    ArtifactError,
    artifact_key,
    check_fields,
    check_format,
    check_seal,
    file_entry,
    parse_manifest,
    read_inside,
    read_manifest_bytes,
    seal_manifest,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LINEAR_TENSORS",
    "MANIFEST",
    "POLICY_KINDS",
    "WEIGHTS",
    "Artifact",
    "ArtifactError",
    "decision_scores",
    "linear_estimates",
    "load_artifact",
    "mlp_estimates",
    "scores_from_estimates",
    "write_linear_artifact",
    "write_manifest",
]

LINEAR_TENSORS = ("theta_quality", "theta_cost", "theta_latency")
# a linear+mlp artifact's network: mlp.<i>.weight / mlp.<i>.bias, mlp.col_mean, mlp.col_sd
MLP_PREFIX = "mlp."


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
        """A short, stable policy version: the prefix of the manifest's seal, which covers every field and,
        through ``files``, the weights; so any change to either is a new version."""
        return self.manifest[MANIFEST_SHA256][:12]

    def file(self, name: str) -> Path:
        """The path of a file the manifest lists (verified at load: inside the directory, hash and size)."""
        if name not in self.manifest["files"]:
            raise ArtifactError(f"{self.path}: the manifest lists no file {name!r}")
        return self.path / name

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

    @property
    def mlp_weight(self) -> float:
        """beta, the network's share of every estimate (0 for a ``linear`` artifact)."""
        if self.manifest["policy_kind"] != "linear+mlp":
            return 0.0
        return float(self.manifest["blend"]["mlp_weight"])

    @functools.cached_property
    def mlp_numpy(self) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray] | None:
        """The network as float32 numpy for the CPU path: [(W^T (in, out), b)] per layer, col_mean, col_sd
        (3K,); None for a ``linear`` artifact."""
        if self.manifest["policy_kind"] != "linear+mlp":
            return None

        def host(name: str) -> np.ndarray:
            return np.ascontiguousarray(self.tensors[MLP_PREFIX + name].detach().float().cpu().numpy())

        n = int(self.manifest["blend"]["mlp_layers"])
        layers = [(np.ascontiguousarray(host(f"{i}.weight").T), host(f"{i}.bias")) for i in range(n)]
        return layers, host("col_mean"), host("col_sd")


def write_manifest(out_dir: str | Path, manifest: dict[str, Any], files: list[str] | tuple[str, ...]) -> Path:
    """Seal ``manifest`` and write it to ``out_dir/manifest.json``, with the sha256 and size of ``files``
    (names relative to ``out_dir``, already written). Every field is checked as :func:`load_artifact` checks
    it, so the writer cannot produce an artifact the loader refuses. Signed when ``ROUTER_RL_ARTIFACT_KEY`` is
    set. Any other field in ``manifest`` (a prompt representation, say) is covered by the seal."""
    out = Path(out_dir)
    manifest = {**manifest, "files": {name: file_entry(out / name) for name in files}}
    where = out / MANIFEST
    try:
        sealed = seal_manifest(manifest, key=artifact_key())
    except (TypeError, ValueError) as err:  # NaN, Infinity or a non-JSON value in a field
        raise ArtifactError(f"{where}: cannot be written as strict JSON ({err})") from None
    check_format(sealed, where)
    check_fields(sealed, where)
    where.write_text(
        json.dumps(sealed, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
    )
    return out


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
    extra_files: list[str] | tuple[str, ...] = (),
    mlp: dict[str, np.ndarray] | None = None,
    mlp_weight: float = 0.0,
) -> Path:
    """Write a ``linear`` artifact from its head tensors (``theta_quality``, ``theta_cost``, ``theta_latency``,
    each (K, d + 1)); the writer twin of :func:`load_artifact`, used by ``router-rl export``, tests and tools.

    With ``mlp`` (``mlp.<i>.weight`` (out, in) and ``mlp.<i>.bias`` per layer, ReLU between them, the last
    with 3K outputs in head-major order, and ``mlp.col_mean``, ``mlp.col_sd`` (3K,) de-normalising them) the
    artifact is ``linear+mlp``: every estimate is (1 - ``mlp_weight``) * the linear heads' + ``mlp_weight`` *
    the network's (:func:`linear_estimates`).

    ``models``: the ordered catalog entries (``name``, ``usd_per_1m_input``, ``usd_per_1m_output``, optional
    latency priors); ``embedder``: ``id``, ``dim``, ``max_seq_length``; ``extra``: more manifest fields
    (training run, dataset, ...), sealed with the rest; ``extra_files``: more files already written into
    ``out_dir`` (a static encoder's table), listed with their sha256 and size. ``out_dir`` is created (it must
    not hold another artifact's files: they would not be listed in the manifest).
    """
    from datetime import datetime, timezone

    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if mlp and not all(name.startswith(MLP_PREFIX) for name in mlp):
        raise ArtifactError(f"{out / WEIGHTS}: every network tensor's name must start with {MLP_PREFIX!r}")
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in {**tensors, **(mlp or {})}.items()}
    for name, array in arrays.items():
        if not np.isfinite(array).all():
            raise ArtifactError(f"{out / WEIGHTS}: tensor {name!r} holds NaN or infinite values")
    save_file(arrays, str(out / WEIGHTS))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "policy_kind": "linear+mlp" if mlp else "linear",
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
    }
    if mlp:
        n_layers = sum(1 for name in mlp if name.endswith(".weight"))
        manifest["blend"] = {"mlp_weight": float(mlp_weight), "mlp_layers": n_layers}
    return write_manifest(out, manifest, [WEIGHTS, *extra_files])


def load_artifact(path: str | Path, *, device: str | None = "auto") -> Artifact:
    """Read and verify the artifact directory at ``path``: the manifest's seal (and HMAC, when
    ``ROUTER_RL_ARTIFACT_KEY`` is set), every field, every listed file (inside the directory, no symlink,
    recorded size and sha256) and the weights (shapes, finite values). One-line :class:`ArtifactError` else."""
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{root}: not a directory; expected an artifact directory with {MANIFEST}")
    root = root.resolve()
    where = root / MANIFEST
    manifest = parse_manifest(read_manifest_bytes(root), where)
    check_format(manifest, where)
    check_seal(manifest, where, key=artifact_key())
    check_fields(manifest, where)
    weights = b""
    for name, entry in manifest["files"].items():
        data = read_inside(root, name, size=entry["size"])
        actual = hashlib.sha256(data).hexdigest()
        if actual != entry["sha256"]:
            raise ArtifactError(
                f"{root / name}: sha256 {actual[:16]}... does not match the manifest's {entry['sha256'][:16]}...; "
                "the artifact is corrupted or was modified"
            )
        if name == WEIGHTS:
            weights = data  # parsed from the very bytes that were verified
    device = pick_torch_device(device)
    tensors = _linear_tensors(manifest, weights, root, device)
    return Artifact(path=root, manifest=manifest, tensors=tensors, device=device)


def _linear_tensors(manifest: dict[str, Any], data: bytes, root: Path, device: str) -> dict[str, Any]:
    """The head tensors from the verified weights bytes: present, (K, d + 1), finite, float32 on ``device``."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load

    where = root / WEIGHTS
    try:
        raw = load(data)
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"{where}: unreadable safetensors file ({err})") from None
    k, dim = len(manifest["models"]), int(manifest["embedder"]["dim"])
    expected = {name: (k, dim + 1) for name in LINEAR_TENSORS}
    shapes = f"for {k} models and embedding dim {dim}"
    if manifest["policy_kind"] == "linear+mlp":
        expected.update(_mlp_shapes(manifest, raw, k, dim))
        shapes += f" (the network's layers chain from {dim} to 3 x {k} outputs)"
    tensors = {}
    for name, shape in expected.items():
        if name not in raw:
            raise ArtifactError(
                f"{where}: tensor {name!r} missing for policy kind {manifest['policy_kind']!r}"
            )
        t = raw[name]
        if tuple(t.shape) != shape:
            raise ArtifactError(
                f"{where}: tensor {name!r} has shape {tuple(t.shape)}, expected {shape} {shapes}"
            )
        if not t.is_floating_point():
            raise ArtifactError(f"{where}: tensor {name!r} has dtype {t.dtype}; expected floating point")
        t = t.to(dtype=torch.float32)
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise ArtifactError(
                f"{where}: tensor {name!r} holds {bad} NaN or infinite value(s); expected finite weights"
            )
        tensors[name] = t.to(device=device)
    return tensors


def _mlp_shapes(
    manifest: dict[str, Any], raw: dict[str, Any], k: int, dim: int
) -> dict[str, tuple[int, ...]]:
    """The shape each tensor of a linear+mlp artifact's network must have: layers chained from ``dim`` to 3K
    outputs (a hidden layer's width is read from its weight), and the (3K,) de-normalisation."""
    n = int(manifest["blend"]["mlp_layers"])
    expected: dict[str, tuple[int, ...]] = {}
    width = dim
    for i in range(n):
        w = raw.get(f"{MLP_PREFIX}{i}.weight")
        out_dim = int(w.shape[0]) if w is not None and w.ndim == 2 else -1
        if i == n - 1:
            out_dim = 3 * k
        expected[f"{MLP_PREFIX}{i}.weight"] = (out_dim, width)
        expected[f"{MLP_PREFIX}{i}.bias"] = (out_dim,)
        width = out_dim
    expected[f"{MLP_PREFIX}col_mean"] = (3 * k,)
    expected[f"{MLP_PREFIX}col_sd"] = (3 * k,)
    return expected


def linear_estimates(artifact: Artifact, x):
    """(3, B, K) predicted quality, normalised cost and latency for embeddings ``x`` (B, d), float32.

    On a CPU artifact a numpy ``x`` gets a numpy answer: one BLAS product, microseconds for a request (torch's
    per-operation overhead is ~10x that at batch 1). On an accelerator, or for a torch ``x``, torch on the
    artifact's device. Either way float32 products of the same weights: the two differ only in summation order
    (~1e-7 relative), which tests check leaves the decisions unchanged.
    """
    import torch

    beta = artifact.mlp_weight
    if artifact.device == "cpu" and not isinstance(x, torch.Tensor):
        x = np.asarray(x, dtype=np.float32)
        b, d = x.shape
        xb = np.empty((b, d + 1), dtype=np.float32)
        xb[:, :d] = x
        xb[:, d] = 1.0
        k = artifact.theta.shape[1]
        linear = (xb @ artifact.theta_t).reshape(b, 3, k).transpose(1, 0, 2)
        if artifact.mlp_numpy is None:
            return linear
        return np.float32(1.0 - beta) * linear + np.float32(beta) * mlp_estimates(artifact, x)
    x = torch.as_tensor(x, dtype=torch.float32, device=artifact.device)
    xb = torch.cat([x, torch.ones((x.shape[0], 1), dtype=x.dtype, device=x.device)], dim=1)
    linear = torch.einsum("bd,hkd->hbk", xb, artifact.theta)
    if artifact.mlp_numpy is None:
        return linear
    return (1.0 - beta) * linear + beta * mlp_estimates(artifact, x)


def mlp_estimates(artifact: Artifact, x):
    """(3, B, K) the network's estimates of a ``linear+mlp`` artifact (its share not applied): numpy float32 for
    a numpy ``x`` (the CPU path), torch on the artifact's device for a torch ``x``."""
    import torch

    k = len(artifact.models)
    n = int(artifact.manifest["blend"]["mlp_layers"])
    if not isinstance(x, torch.Tensor):
        layers, mean, sd = artifact.mlp_numpy
        h = np.asarray(x, dtype=np.float32)
        for i, (wt, bias) in enumerate(layers):
            h = h @ wt + bias
            if i < n - 1:
                np.maximum(h, 0.0, out=h)
        out = h * sd + mean
    else:
        t = artifact.tensors
        h = x
        for i in range(n):
            h = h @ t[f"{MLP_PREFIX}{i}.weight"].T + t[f"{MLP_PREFIX}{i}.bias"]
            if i < n - 1:
                h = torch.relu(h)
        out = h * t[f"{MLP_PREFIX}col_sd"] + t[f"{MLP_PREFIX}col_mean"]
    return _head_major(out, k)


def _head_major(out, k: int):
    """(B, 3K) head-major columns -> (3, B, K)."""
    b = out.shape[0]
    if isinstance(out, np.ndarray):
        return out.reshape(b, 3, k).transpose(1, 0, 2)
    return out.reshape(b, 3, k).permute(1, 0, 2)


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
