"""MLflow logging: one run per job, the resolved config as flat params, namespaced metrics, artifacts.

The tracking URI defaults to the embedded ``sqlite:///mlflow.db`` in the working directory (a real
database that ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` reads); ``MLFLOW_TRACKING_URI`` points it
elsewhere. When tracking is disabled, :class:`Tracker` does nothing, so callers need no branches.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists become their string form."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


class Tracker:
    """A thin wrapper over one MLflow run."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.run_id: str | None = None
        self._mlflow = None

    @contextlib.contextmanager
    def run(
        self, *, tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str]
    ) -> Iterator[Tracker]:
        if not self.enabled:
            yield self
            return
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=run_name, tags=tags) as active:
            self.run_id = active.info.run_id
            yield self

    def log_params(self, params: dict[str, str]) -> None:
        if self._mlflow is None:
            return
        items = [(k, v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self._mlflow.log_params(dict(items[start : start + 100]))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._mlflow is None:
            return
        clean = {
            k: float(v)
            for k, v in metrics.items()
            if v is not None and v == v and abs(float(v)) != float("inf")
        }
        self._mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._mlflow is None:
            return
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
        else:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)
