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

from hydra.experimental.callback import Callback

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
        parent = os.environ.get(PARENT_RUN_ENV)
        if parent:  # a job of a Hydra multirun: nest under the sweep's run
            tags = {**tags, "mlflow.parentRunId": parent}
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


PARENT_RUN_ENV = "ROUTER_RL_PARENT_RUN_ID"
"""Set during a Hydra multirun to the sweep's MLflow run id: every job's run is nested under it."""


class MLflowSweepCallback(Callback):
    """Hydra callback: one parent MLflow run per ``-m`` sweep, with every job's run nested under it.

    ``on_multirun_start`` creates the parent run (tagged with the sweep's overrides) and exports its id in
    ``ROUTER_RL_PARENT_RUN_ID``, which the jobs (in-process, or joblib/Ray workers started afterwards) read to
    tag their runs ``mlflow.parentRunId``; ``on_multirun_end`` logs the best job's objective on the parent.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._run_id: str | None = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        if not (self.enabled and config.mlflow.enabled):
            return
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(config.mlflow.tracking_uri)
        experiment = mlflow.set_experiment(config.mlflow.experiment)
        overrides = " ".join(config.hydra.overrides.task)
        client = MlflowClient()
        run = client.create_run(
            experiment.experiment_id,
            run_name=f"sweep {config.hydra.job.name}: {overrides}"[:250],
            tags={"router_rl.sweep": "parent", "router_rl.sweep_dir": str(config.hydra.sweep.dir)},
        )
        self._run_id = run.info.run_id
        os.environ[PARENT_RUN_ENV] = self._run_id

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if self._run_id is None:
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=config.mlflow.tracking_uri)
        children = client.search_runs(
            [client.get_run(self._run_id).info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self._run_id}'",
        )
        client.log_metric(self._run_id, "sweep/jobs", len(children))
        for key in {k for r in children for k in r.data.metrics if k.endswith("/aiq")}:
            values = [r.data.metrics[key] for r in children if key in r.data.metrics]
            client.log_metric(self._run_id, f"sweep/best/{key}", max(values))
        client.set_terminated(self._run_id)
        os.environ.pop(PARENT_RUN_ENV, None)
        self._run_id = None
