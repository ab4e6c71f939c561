"""Checkpoints and serving artifacts.

A checkpoint (``checkpoint.json`` + ``policy.safetensors``) restores a trained policy with its training
context, for further training or export. The serving artifact (``manifest.json`` + ``weights.safetensors``,
see :mod:`router_rl.serve.artifact`) holds only what decisions need, with the sha256 and size of every file
and the manifest's own seal; it is written by :func:`router_rl.serve.artifact.write_linear_artifact`, so the
exporter and the loader share one set of checks.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from router_rl.serve.artifact import ArtifactError, write_linear_artifact
from router_rl.types import Catalog

CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_WEIGHTS = "policy.safetensors"


class ExportError(RuntimeError):
    """A checkpoint or run that cannot be exported, with the reason."""


def policy_target(policy: Any) -> str:
    return f"{type(policy).__module__}.{type(policy).__qualname__}"


def model_entries(catalog: Catalog) -> list[dict[str, Any]]:
    """The ordered model list with prices and latency priors, as stored in manifests."""

    def num(v: float) -> float | None:
        return None if not np.isfinite(v) else float(v)

    return [
        {
            "name": m,
            "usd_per_1m_input": float(catalog.usd_per_1m_input[i]),
            "usd_per_1m_output": float(catalog.usd_per_1m_output[i]),
            "ttft_s": num(catalog.ttft_s[i]),
            "output_tokens_per_s": num(catalog.output_tokens_per_s[i]),
        }
        for i, m in enumerate(catalog.models)
    ]


def write_checkpoint(path: str | Path, policy: Any, context: dict[str, Any]) -> Path:
    """Save ``policy`` and its training ``context`` (models, embedder, cost_scale, weights, run id...)."""
    from safetensors.numpy import save_file

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    state = {k: np.ascontiguousarray(v) for k, v in policy.state_dict().items()}
    if state:
        save_file(state, str(root / CHECKPOINT_WEIGHTS))
    meta = {
        "policy_target": policy_target(policy),
        "policy_config": policy.config(),
        "models": list(policy.models),
        "dim": getattr(policy, "dim", None),
        **context,
    }
    (root / CHECKPOINT_JSON).write_text(json.dumps(meta, indent=2))
    return root


def load_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Restore ``(policy, context)`` from a checkpoint directory."""
    from safetensors.numpy import load_file

    root = Path(path)
    meta_path = root / CHECKPOINT_JSON
    if not meta_path.is_file():
        raise ExportError(f"{root}: no {CHECKPOINT_JSON}; expected a checkpoint written by `router-rl train`")
    meta = json.loads(meta_path.read_text())
    module_name, _, cls_name = meta["policy_target"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise ExportError(
            f"{meta_path}: policy class {meta['policy_target']!r} cannot be imported ({err})"
        ) from None
    kwargs = dict(meta["policy_config"])
    if meta.get("dim") is not None:
        kwargs["dim"] = meta["dim"]
    policy = cls(models=meta["models"], **kwargs)
    weights = root / CHECKPOINT_WEIGHTS
    if weights.is_file():
        policy.load_state_dict(load_file(str(weights)))
    return policy, meta


def export_artifact(policy: Any, context: dict[str, Any], out_dir: str | Path) -> Path:
    """Write the serving artifact of ``policy`` to ``out_dir`` (replaced if it exists).

    ``context`` needs ``catalog_models`` (see :func:`model_entries`), ``embedder`` (``id``, ``dim``,
    ``max_seq_length``, ``representation``...: :meth:`router_rl.embeddings.Embedder.manifest`),
    ``cost_scale``, ``cost_weight``, ``latency_weight``; optional ``run_id`` and ``dataset``.
    """
    head = getattr(policy, "linear_head", None)
    if head is None:
        raise ExportError(
            f"policy {policy_target(policy)} has no serving form (linear_head); export a learned policy such as linucb"
        )
    models = context["catalog_models"]
    if [m["name"] for m in models] != list(policy.models):
        raise ExportError("the catalog's model order differs from the policy's arms; cannot export")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    embedder, extra_files = _encoder_files(context["embedder"], out)
    mlp_head = getattr(policy, "mlp_head", None)
    beta = float(getattr(policy, "blend_weight", 0.0))  # the network's share as the policy decides now
    try:
        return write_linear_artifact(
            out,
            models=models,
            tensors=head(),
            mlp=mlp_head() if mlp_head is not None and beta > 0 else None,
            mlp_weight=beta,
            embedder=embedder,
            extra_files=extra_files,
            cost_scale=float(context["cost_scale"]),
            default_cost_weight=float(context["cost_weight"]),
            latency_weight=float(context.get("latency_weight", 0.0)),
            extra={
                "policy_class": policy_target(policy),
                "policy_config": policy.config(),
                "dataset": context.get("dataset"),
                "training_run_id": context.get("run_id"),
            },
        )
    except ArtifactError as err:  # e.g. NaN weights or a non-finite cost weight: nothing servable to write
        shutil.rmtree(out, ignore_errors=True)
        raise ExportError(f"cannot export {policy_target(policy)}: {err}") from None


def _encoder_files(block: dict[str, Any], out: Path) -> tuple[dict[str, Any], list[str]]:
    """The manifest's ``embedder`` block (with its representation, as training recorded it) and the files the
    encoder needs in the artifact: a static encoder's token table and tokenizer are copied from the local
    model directory (``location``, which stays out of the manifest); a transformer is named by its id."""
    block = dict(block)
    location = block.pop("location", None)
    if block.get("kind") != "static":
        return block, []
    from router_rl.static_encoder import StaticEncoderError, write_artifact_files

    out.mkdir(parents=True, exist_ok=True)
    try:
        block["files"] = write_artifact_files(location, out) if location else None
    except (StaticEncoderError, OSError) as err:
        raise ExportError(
            f"static encoder {block.get('id')!r}: cannot copy it into the artifact ({err})"
        ) from None
    if block["files"] is None:
        raise ExportError(f"static encoder {block.get('id')!r}: the training context names no local copy")
    return block, sorted(block["files"].values())


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Serving artifact from a checkpoint directory."""
    policy, meta = load_checkpoint(checkpoint)
    return export_artifact(policy, meta, out_dir)


def export_run(run_id: str, out_dir: str | Path, *, tracking_uri: str | None = None) -> Path:
    """Serving artifact from the checkpoint logged by the MLflow run ``run_id``."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint")
    except Exception as err:  # MLflow raises several types for a missing run or artifact
        raise ExportError(f"MLflow run {run_id!r}: cannot fetch its checkpoint ({err})") from None
    return export_checkpoint(local, out_dir)
