"""The serving artifact in the MLflow Model Registry: log it as an MLflow model, register it, and resolve
``models:/NAME/VERSION`` (or ``models:/NAME@alias``) back to an artifact directory.

The MLflow model is a ``pyfunc`` whose ``artifacts`` hold the router artifact directory unchanged
(``artifacts/router_artifact/manifest.json`` + weights): ``router-rl serve models:/NAME/VERSION`` downloads it
and serves it after the usual hash checks, and in any MLflow tooling

    model = mlflow.pyfunc.load_model("models:/router/1")
    model.predict(["Prove that sqrt(2) is irrational."], params={"cost_weight": 0.5, "candidates": [...]})

answers what :meth:`router_rl.serve.router.Router.decide` answers: one ``{model, scores, propensity,
estimates, decision_id, policy_version}`` per prompt. Its signature takes prompts (a list of strings, one
string column, or ``{"inputs": [...]}`` when served) and the params ``cost_weight``, ``latency_weight``,
``candidates``, ``max_cost_usd`` and ``latency_budget_s``; it carries an input example. Its requirements
resolve without this repository: the project's own wheel (built with ``pip wheel --no-deps``) is logged
inside the model (``artifacts/wheels/``) and named in ``requirements.txt``, so ``mlflow models serve``, its virtualenv and docker builds install router-rl from
the model itself and its dependencies from the index. This module imports MLflow; the serving module never
imports this file (the CLI imports it for ``models:/`` arguments only).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pydantic

try:
    import mlflow.pyfunc

    _PythonModel: type = mlflow.pyfunc.PythonModel
except ModuleNotFoundError:  # the serving install (router-rl without [train]): say so when MLflow is needed
    mlflow = None  # type: ignore[assignment]
    _PythonModel = object

from router_rl.serve.artifact import MANIFEST, ArtifactError, load_artifact

ARTIFACT_KEY = "router_artifact"  # the name of the artifact directory inside the MLflow model
WHEELS_DIR = "wheels"  # the project's wheel lies in the MLflow model's artifacts/wheels/
PARAMS = ("cost_weight", "latency_weight", "candidates", "max_cost_usd", "latency_budget_s")
INPUT_COLUMN = "prompt"
EXAMPLE_PROMPTS = ["Prove that sqrt(2) is irrational.", "Write a haiku about the sea."]

log = logging.getLogger(__name__)


def model_signature() -> Any:
    """The pyfunc's signature: prompts in (one string column); one decision per prompt out; the routing limits
    as params (None / an empty list: not set, so the artifact's defaults apply)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        # one unnamed string column: a list of prompts, {"inputs": [...]} and a one-column frame all fit
        inputs=Schema([ColSpec("string")]),
        outputs=Schema(
            [
                ColSpec("string", "model"),
                ColSpec(AnyType(), "scores"),
                ColSpec("double", "propensity"),
                ColSpec(AnyType(), "estimates"),
                ColSpec("string", "decision_id"),
                ColSpec("string", "policy_version"),
            ]
        ),
        params=ParamSchema(
            [
                ParamSpec("cost_weight", "double", None),
                ParamSpec("latency_weight", "double", None),
                ParamSpec("candidates", "string", [], shape=(-1,)),
                ParamSpec("max_cost_usd", "double", None),
                ParamSpec("latency_budget_s", "double", None),
            ]
        ),
    )


def _prompts(model_input: Any) -> list[str]:
    """The prompts of a pyfunc input: a DataFrame with a ``prompt`` column, a list (or array) of strings, one
    string, or records ``{"prompt": ...}``."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN in model_input.columns:
            values = model_input[INPUT_COLUMN].tolist()
        elif model_input.shape[1] == 1:
            values = model_input.iloc[:, 0].tolist()
        else:
            raise _invalid(f"expected a {INPUT_COLUMN!r} column, got columns {list(model_input.columns)}")
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, dict) and INPUT_COLUMN in model_input:
        values = _as_list(model_input[INPUT_COLUMN])
    else:
        values = [v.get(INPUT_COLUMN) if isinstance(v, dict) else v for v in _as_list(model_input)]
    bad = [i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()]
    if bad:
        raise _invalid(f"prompt(s) at {bad[:10]} are not non-empty strings")
    return [str(v) for v in values]


def _as_list(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _invalid(message: str) -> Exception:
    from mlflow.exceptions import MlflowException

    return MlflowException.invalid_parameter_value(f"router-rl: {message}")


def limits_from_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """Router limits from pyfunc params, validated as ``POST /v1/route`` validates them (None and an empty
    candidate list mean: not set)."""
    from router_rl.serve.schemas import Limits

    given = {k: v for k, v in (params or {}).items() if k in PARAMS and v is not None}
    if not given.get("candidates"):
        given.pop("candidates", None)
    latency_weight = given.pop("latency_weight", None)
    try:
        limits = Limits.model_validate(
            {k: ([str(c) for c in v] if k == "candidates" else float(v)) for k, v in given.items()},
            strict=False,
        )
    except (pydantic.ValidationError, TypeError, ValueError) as err:
        raise _invalid(f"bad params {given}: {err}") from None
    out = limits.model_dump(exclude_none=True)
    if latency_weight is not None:
        if not (math.isfinite(float(latency_weight)) and float(latency_weight) >= 0):
            raise _invalid(f"latency_weight={latency_weight!r}: expected a finite number >= 0")
        out["latency_weight"] = float(latency_weight)
    return out


# no type hints on predict: MLflow warns once that it could infer a signature from them, but this model's
# signature is explicit (model_signature: type hints cannot express params), and MLflow 3.17 failed to serialize
# this class with a hinted predict
class RouterModel(_PythonModel):
    """Routes prompts with the packaged artifact: ``predict(prompts, params={...})`` returns, per prompt, what
    :meth:`Router.decide` returns for those limits, as a dict (``Decision.to_dict()``)."""

    def load_context(self, context):  # noqa: ANN001, ANN201 - MLflow's signature
        from router_rl.serve.router import Router

        self.router = Router(context.artifacts[ARTIFACT_KEY])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - MLflow's signature
        prompts = _prompts(model_input)
        limits = limits_from_params(params)
        try:
            decisions = self.router.decide(prompts, **limits)
        except ValueError as err:  # e.g. a candidate unknown to the artifact
            raise _invalid(str(err)) from None
        return [d.to_dict() for d in decisions]


def _require_mlflow(what: str) -> None:
    if mlflow is None:
        raise RuntimeError(
            f'{what} needs MLflow, which comes with the training extra: pip install "router-rl[train]"'
        )


def project_root() -> Path | None:
    """The source tree of this router-rl (an editable install or a checkout), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return None
    found = re.search(r'^name\s*=\s*"([^"]+)"', pyproject.read_text(), re.MULTILINE)
    name = found.group(1) if found else None
    return root if name == "router-rl" else None


SOURCE_DIRS = ("router_rl", "envs", "policies", "serve", "configs")  # what the wheel is built from


def source_digest(root: str | Path) -> str:
    """sha256 over the files a wheel is built from (the package folders, pyproject.toml, README.md)."""
    root = Path(root)
    h = hashlib.sha256()
    files = [root / "pyproject.toml", root / "README.md"]
    for folder in SOURCE_DIRS:
        files += sorted(
            p
            for p in (root / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        )
    for path in files:
        if path.is_file():
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def build_wheel(out_dir: str | Path, root: str | Path | None = None) -> Path:
    """The project's wheel, built with ``pip wheel --no-deps`` from its source tree into ``out_dir``.

    A wheel built from the same sources before (``$ROUTER_RL_CACHE/wheels/<source sha256>/``) is copied
    instead: registering after every training run rebuilds only when the code changed."""
    from router_rl.embeddings import default_cache_dir

    root = Path(root) if root is not None else project_root()
    if root is None:
        raise ArtifactError(
            "router-rl is not installed from its source tree, so its wheel cannot be built here; pass wheel=PATH "
            "(e.g. the wheel you installed) to register_artifact"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = default_cache_dir() / "wheels" / source_digest(root)
    cached = sorted(cache.glob("router_rl-*.whl")) if cache.is_dir() else []
    if cached:
        return Path(shutil.copy2(cached[-1], out))
    with tempfile.TemporaryDirectory() as tmp:
        base = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp]
        proc = subprocess.run([*base, "--no-build-isolation", str(root)], capture_output=True, text=True)
        if proc.returncode != 0:  # no setuptools/wheel in this environment: let pip fetch the build backend
            proc = subprocess.run([*base, str(root)], capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("router_rl-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ArtifactError(f"building router-rl's wheel from {root} failed:\n{proc.stderr[-2000:]}")
        with contextlib.suppress(OSError):  # a read-only cache only costs the next build
            cache.mkdir(parents=True, exist_ok=True)
            partial = cache / (wheels[-1].name + ".partial")
            shutil.copy2(wheels[-1], partial)
            os.replace(partial, cache / wheels[-1].name)
        return Path(shutil.copy2(wheels[-1], out))


def register_artifact(
    artifact_dir: str | Path,
    name: str,
    *,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    tags: dict[str, str] | None = None,
    alias: str | None = None,
    wheel: str | Path | None = None,
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
        wheel: router-rl's wheel to log with the model; None: built from the source tree (``pip wheel
            --no-deps``, a few seconds).

    Returns:
        the ``ModelVersion`` (``.version`` is the number to put in ``models:/NAME/VERSION``).
    """
    _require_mlflow("registering a model")
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
        with tempfile.TemporaryDirectory() as tmp:
            wheels = Path(tmp) / WHEELS_DIR  # copied into the model as artifacts/wheels/
            if wheel is None:
                built = build_wheel(wheels)
            else:
                wheels.mkdir()
                built = Path(shutil.copy2(wheel, wheels))
            info = mlflow.pyfunc.log_model(
                name=ARTIFACT_KEY,
                python_model=RouterModel(),
                artifacts={ARTIFACT_KEY: str(Path(artifact_dir).resolve()), WHEELS_DIR: str(wheels)},
                # a path inside the model: MLflow installs requirements from the model's directory
                pip_requirements=[f"artifacts/{WHEELS_DIR}/{built.name}"],
                signature=model_signature(),
                input_example=(
                    EXAMPLE_PROMPTS,
                    {"cost_weight": float(art.manifest.get("default_cost_weight", 0.0))},
                ),
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
    _require_mlflow(f"{uri}: a models:/ URI")
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


def parse_model_uri(uri: str) -> tuple[str, str, str]:
    """``models:/NAME/VERSION`` -> (NAME, VERSION, ``version``); ``models:/NAME@ALIAS`` -> (NAME, ALIAS,
    ``alias``); ``models:/NAME/REF`` with a non-numeric REF (an alias, a stage, or ``latest``) -> (NAME, REF,
    ``ref``). Anything else raises :class:`ArtifactError`."""
    if not uri.startswith("models:/"):
        raise ArtifactError(f"{uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    rest = uri[len("models:/") :].strip("/")
    if "@" in rest and "/" not in rest:
        name, _, alias = rest.partition("@")
        if name and alias:
            return name, alias, "alias"
    name, sep, ref = rest.rpartition("/")
    if sep and name and ref and "/" not in name:
        return name, ref, "version" if ref.isdigit() else "ref"
    raise ArtifactError(f"{uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")


def follows_a_reference(uri: str) -> bool:
    """Whether ``uri`` names a registered model by a reference that can move (an alias, a stage, ``latest``)
    rather than by a fixed version number."""
    return uri.startswith("models:/") and parse_model_uri(uri)[2] != "version"


def model_version_of(uri: str, *, tracking_uri: str | None = None) -> str:
    """The version number ``uri`` names in the registry now: its own number, the version its alias (or, for
    ``models:/NAME/REF``, the alias REF, else the stage REF; ``latest``: the newest version) points at.
    Raises :class:`ArtifactError` when the registry does not know it."""
    _require_mlflow(f"{uri}: a models:/ URI")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, ref, kind = parse_model_uri(uri)
    if kind == "version":
        return ref
    track = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    client = MlflowClient(tracking_uri=track, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or track)
    try:
        try:
            return str(client.get_model_version_by_alias(name, ref).version)
        except MlflowException:
            if kind == "alias":
                raise
        if ref.lower() == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if versions:
                return str(max(int(v.version) for v in versions))
        else:
            import warnings

            with warnings.catch_warnings():  # stages are deprecated in MLflow; aliases replace them
                warnings.simplefilter("ignore")
                latest = client.get_latest_versions(name, stages=[ref])
            if latest:
                return str(latest[0].version)
    except MlflowException as err:
        raise ArtifactError(f"{uri}: not found in the MLflow registry at {track} ({err.message})") from None
    raise ArtifactError(f"{uri}: no version of {name!r} is at {ref!r} in the MLflow registry at {track}")
