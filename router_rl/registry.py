"""The serving artifact in the MLflow Model Registry: log it as an MLflow model, register it, and resolve
``models:/NAME/VERSION`` (or ``models:/NAME@alias``) back to an artifact directory.

The MLflow model is a ``pyfunc`` whose ``artifacts`` hold the router artifact directory unchanged
(``artifacts/router_artifact/manifest.json`` + weights): ``router-rl serve models:/NAME/VERSION`` downloads it
and serves it after the usual hash checks, and ``mlflow.pyfunc.load_model(...).predict(prompts)`` routes
prompts in any MLflow tooling. This module imports MLflow; the serving module never
imports this file (the CLI imports it for ``models:/`` arguments only).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pydantic

from router_rl.serve.artifact import MANIFEST, ArtifactError, load_artifact

ARTIFACT_KEY = "router_artifact"  # the name of the artifact directory inside the MLflow model


class RoutedPrompt(pydantic.BaseModel):
    """One decision of :class:`RouterModel`."""

    model: str
    propensity: float
    policy_version: str


class RouterModel(mlflow.pyfunc.PythonModel):
    """Routes prompts with the packaged artifact: ``predict`` takes a list of prompts and returns one
    ``{model, propensity, policy_version}`` per prompt, at the artifact's default cost weight (the HTTP
    service takes a cost weight per request)."""

    def load_context(self, context):  # noqa: ANN001, ANN201 - MLflow's signature
        from router_rl.serve.router import Router

        self.router = Router(context.artifacts[ARTIFACT_KEY])

    def predict(
        self,
        context,  # noqa: ANN001 - MLflow's PythonModelContext
        model_input: list[str],
    ) -> list[RoutedPrompt]:
        decisions = self.router.decide([str(p) for p in model_input])
        return [
            RoutedPrompt(model=d.model, propensity=d.propensity, policy_version=d.policy_version)
            for d in decisions
        ]


def register_artifact(
    artifact_dir: str | Path,
    name: str,
    *,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    tags: dict[str, str] | None = None,
    alias: str | None = None,
) -> Any:
    """Log ``artifact_dir`` as an MLflow pyfunc model and register it as a new version of ``name``.

    Args:
        artifact_dir: a router artifact (it is verified first: a corrupted one is never registered).
        name: the registered model name.
        run_id: log into this run (e.g. the training run; it may be the active run); None: the active run,
            else a new run named ``register-<name>``.
        tracking_uri, registry_uri: MLflow URIs (default: ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``).
        tags: tags of the new model version (the policy version and training run are always added).
        alias: also point this alias (e.g. ``champion``) at the new version.

    Returns:
        the ``ModelVersion`` (``.version`` is the number to put in ``models:/NAME/VERSION``).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    art = load_artifact(artifact_dir, device="cpu")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    mlflow.set_tracking_uri(uri)
    if registry_uri:
        mlflow.set_registry_uri(registry_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=registry_uri)
    active = mlflow.active_run()
    own_run = None
    if run_id is None and active is None:
        own_run = mlflow.start_run(run_name=f"register-{name}")
    elif run_id is not None and (active is None or active.info.run_id != run_id):
        own_run = mlflow.start_run(run_id=run_id)
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    # RouterModel holds no state: cloudpickle stores a reference to this module's class, so MLflow's warning
    # about pickled Python objects does not apply
    pyfunc_log.setLevel(logging.ERROR)
    try:
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT_KEY,
            python_model=RouterModel(),
            artifacts={ARTIFACT_KEY: str(Path(artifact_dir).resolve())},
            pip_requirements=["router-rl"],
            registered_model_name=name,
        )
    finally:
        pyfunc_log.setLevel(level)
        if own_run is not None:
            mlflow.end_run()
    version = info.registered_model_version
    version_tags = {"router_rl.policy_version": art.version, **(tags or {})}
    if art.manifest.get("training_run_id"):
        version_tags["router_rl.training_run_id"] = str(art.manifest["training_run_id"])
    for key, value in version_tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    if alias:
        client.set_registered_model_alias(name, alias, str(version))
    return client.get_model_version(name, str(version))


def resolve_model_uri(
    uri: str,
    *,
    dst_path: str | Path | None = None,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
) -> Path:
    """The local artifact directory of a registered model: ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``.

    Downloads the model (to ``dst_path`` or a fresh temporary directory), finds the router artifact inside and
    verifies it; raises :class:`ArtifactError` with a clear message for an unknown model or version, or for a
    registered model that holds no router artifact.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    if not uri.startswith("models:/"):
        raise ArtifactError(f"{uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    track = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri,
            dst_path=None if dst_path is None else str(dst_path),
            tracking_uri=track,
            registry_uri=registry_uri or track,
        )
    except MlflowException as err:
        raise ArtifactError(f"{uri}: not found in the MLflow registry at {track} ({err.message})") from None
    root = Path(local)
    candidates = [root]
    mlmodel = root / "MLmodel"
    if mlmodel.is_file():
        import yaml

        spec = yaml.safe_load(mlmodel.read_text()) or {}
        entry = spec.get("flavors", {}).get("python_function", {}).get("artifacts", {}).get(ARTIFACT_KEY, {})
        if isinstance(entry, dict) and entry.get("path"):
            candidates.insert(0, root / entry["path"])
    for candidate in candidates:
        if (candidate / MANIFEST).is_file():
            load_artifact(candidate, device="cpu")  # verify now: a bad artifact fails before serving starts
            return candidate
    raise ArtifactError(f"{uri}: the registered model holds no router artifact ({MANIFEST} not found)")
