"""MLflow logging: one run per job, the resolved config as flat params, namespaced metrics, artifacts.

The tracking URI defaults to the embedded ``sqlite:///mlflow.db`` in the working directory (a real
database that ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` reads); ``MLFLOW_TRACKING_URI`` points it
elsewhere. When tracking is disabled, :class:`Tracker` does nothing, so callers need no branches.

A Hydra sweep (``-m``) gets one parent run (:class:`MLflowSweepCallback`); its id and the tracking URI reach
every job through the job's config overrides, so jobs on other machines (a Ray cluster) nest under it too.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import threading
import warnings
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
        self,
        *,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        tags: dict[str, str],
        parent_run_id: str | None = None,
    ) -> Iterator[Tracker]:
        """Start the run; ``parent_run_id`` (a sweep's ``mlflow.parent_run_id``) nests it under that run."""
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
        if parent_run_id:  # a job of a Hydra multirun: nest under the sweep's run
            tags = {**tags, "mlflow.parentRunId": str(parent_run_id)}
        with mlflow.start_run(run_name=run_name, tags=tags) as active:
            self.run_id = active.info.run_id
            try:
                yield self
            except (
                KeyboardInterrupt,
                SystemExit,
            ):  # Ctrl-C, SIGTERM during a sweep: not a failure of the job
                mlflow.end_run("KILLED")
                raise

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


def _is_local_relative_store(tracking_uri: str) -> bool:
    """True for a store that lives in the working directory of whoever opens it: ``sqlite:///mlflow.db``,
    ``file:mlruns``, or a bare relative path (``mlruns``)."""
    uri = str(tracking_uri)
    if uri.startswith("sqlite:///"):
        return not uri[len("sqlite:///") :].startswith("/")
    if uri.startswith("file:"):
        return not uri[len("file:") :].startswith("/")
    return "://" not in uri and not os.path.isabs(uri)


def remote_store_warning(tracking_uri: str, launcher: Any) -> str | None:
    """The warning for a job launched onto a Ray cluster it joined (``hydra.launcher.ray.init.address`` set)
    that logs to a store relative to its working directory: every node would write a database of its own,
    and the jobs' runs would not reach the parent run. ``None`` when there is nothing to warn about."""
    target = str(_get(launcher, "_target_") or "")
    address = _get(_get(_get(launcher, "ray"), "init"), "address")
    if "ray" not in target.lower() or not address or not _is_local_relative_store(tracking_uri):
        return None
    return (
        f"mlflow.tracking_uri is {tracking_uri!r}, relative to each node's working directory, while the sweep "
        f"joins the Ray cluster at {address}: every node would write its own MLflow database. Start one "
        "tracking server (mlflow server --backend-store-uri sqlite:///$PWD/mlflow.db --host 0.0.0.0 --port 5000)"
        " and set MLFLOW_TRACKING_URI=http://HOST:5000 where you launch the sweep"
    )


def _get(node: Any, key: str) -> Any:
    if node is None:
        return None
    return node.get(key) if hasattr(node, "get") else getattr(node, key, None)


def _parses_as_string(key: str, value: str) -> bool:
    """Whether ``key=value`` reads back as the string ``value`` in Hydra's override grammar (sweepers such as
    Optuna's re-emit fixed overrides unquoted, so ``1e10`` would become a float)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(f"{key}={value}").value() == value
    except Exception:  # noqa: BLE001 - any parse failure means "no"
        return False


# Sweep parent runs this process opened and has not ended: run id -> tracking URI. Ended by
# ``MLflowSweepCallback.on_multirun_end``, or at exit (FAILED; KILLED after SIGINT/SIGTERM) when the sweep
# raised, was interrupted, or one of its jobs failed.
_OPEN_SWEEPS: dict[str, str] = {}
_INTERRUPTED: list[str] = []
_ATEXIT_REGISTERED = False
_SAVED_HANDLERS: dict[int, Any] = {}


def end_open_sweeps(status: str | None = None, reason: str = "") -> None:
    """End every sweep parent run still open in this process, and its children still RUNNING, as ``status``
    (default: KILLED after an interrupt, else FAILED). Registered with :mod:`atexit` by the callback."""
    status = status or ("KILLED" if _INTERRUPTED else "FAILED")
    for run_id, tracking_uri in list(_OPEN_SWEEPS.items()):
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=tracking_uri)
            experiment_id = client.get_run(run_id).info.experiment_id
            running = client.search_runs(
                [experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'",
            )
            for child in running:
                client.set_terminated(child.info.run_id, status=status)
            client.set_terminated(run_id, status=status)
            log.warning("MLflow sweep run %s ended %s%s", run_id, status, f" ({reason})" if reason else "")
        except Exception as err:  # noqa: BLE001 - at exit: report, never mask the sweep's own error
            log.warning("could not end MLflow sweep run %s as %s: %s", run_id, status, err)
        _OPEN_SWEEPS.pop(run_id, None)


def is_interruption(exc: BaseException) -> bool:
    """Whether ``exc``, ending a sweep, means it was stopped rather than failed: Ctrl-C, or the exit of a
    SIGINT/SIGTERM handler. Ours exits 128 + the signal number; once ``ray.init`` ran, Ray's driver handler
    replaces ours and ``ray.get`` turns its ``sys.exit(15)`` into ``SystemExit(1)`` whose
    ``ray_terminate_msg`` says ``Exit code: 15``."""
    if _INTERRUPTED or isinstance(exc, KeyboardInterrupt):
        return True
    if not isinstance(exc, SystemExit):
        return False
    # 128 + SIGINT/SIGTERM, and Ray's bare 15 (a bare 2 is a user error's status, not SIGINT: Ray leaves
    # SIGINT to Python's KeyboardInterrupt)
    stops = {128 + int(signal.SIGINT), 128 + int(signal.SIGTERM), int(signal.SIGTERM)}
    ray_exit = re.search(r"Exit code: (-?\d+)", str(getattr(exc, "ray_terminate_msg", "")))
    return exc.code in stops or (ray_exit is not None and int(ray_exit.group(1)) in stops)


def _interrupt(signum: int, frame: Any) -> None:
    """SIGINT/SIGTERM during a sweep: remember it (the parent run ends KILLED), then stop as Python does."""
    _INTERRUPTED.append(signal.Signals(signum).name)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _install_guard() -> None:
    """While a sweep runs: the atexit hook, and SIGINT/SIGTERM handlers (only where Python's defaults are)."""
    global _ATEXIT_REGISTERED
    if not _ATEXIT_REGISTERED:
        _ATEXIT_REGISTERED = True
        atexit.register(end_open_sweeps)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        if sig not in _SAVED_HANDLERS and signal.getsignal(sig) in (
            signal.SIG_DFL,
            signal.default_int_handler,
        ):
            _SAVED_HANDLERS[sig] = signal.signal(sig, _interrupt)


def _remove_guard() -> None:
    if _OPEN_SWEEPS or threading.current_thread() is not threading.main_thread():
        return
    for sig, previous in list(_SAVED_HANDLERS.items()):
        signal.signal(sig, previous)
        del _SAVED_HANDLERS[sig]


FAILED_JOB_TAG = "router_rl.sweep.failed_job."
"""Tag prefix a failed job sets on its sweep's parent run (``router_rl.sweep.failed_job.<num>``: overrides)."""


class MLflowSweepCallback(Callback):
    """Hydra callback: one parent MLflow run per ``-m`` sweep, with every job's run nested under it.

    ``on_multirun_start`` creates the parent run (tagged with the sweep's overrides) and appends
    ``mlflow.parent_run_id`` and the resolved ``mlflow.tracking_uri`` to the sweep's overrides, so every job
    (in-process, joblib, or a Ray worker on another machine, which inherits no environment) logs its run to
    the same store, tagged ``mlflow.parentRunId``. A job that fails tags the parent
    (``router_rl.sweep.failed_job.<num>``: its overrides and error); ``on_multirun_end`` logs the best job's
    objective, the failed jobs' count (and an Optuna study's best parameters) and ends the parent FINISHED. A
    sweep that raises (a job's crash, a sweeper or launcher error) or is interrupted never reaches
    ``on_multirun_end``: ``router-rl``'s command line ends its parent FAILED, or KILLED after SIGINT/SIGTERM,
    with its children still RUNNING (an :mod:`atexit` hook does it for any other entry point).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._run_id: str | None = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        if not (self.enabled and config.mlflow.enabled):
            return
        import mlflow
        from mlflow.tracking import MlflowClient
        from omegaconf import read_write

        tracking_uri = str(config.mlflow.tracking_uri)
        message = remote_store_warning(tracking_uri, config.hydra.launcher)
        if message:
            warnings.warn(message, UserWarning, stacklevel=2)
        mlflow.set_tracking_uri(tracking_uri)
        experiment = mlflow.set_experiment(config.mlflow.experiment)
        overrides = " ".join(config.hydra.overrides.task)
        client = MlflowClient(tracking_uri=tracking_uri)
        tags = {"router_rl.sweep": "parent", "router_rl.sweep_dir": str(config.hydra.sweep.dir)}
        sweeper = str(config.hydra.sweeper.get("_target_", ""))
        tags["router_rl.sweeper"] = sweeper.rsplit(".", 1)[-1]
        run_name = f"sweep {config.hydra.job.name}: {overrides}"[:250]
        run = client.create_run(experiment.experiment_id, run_name=run_name, tags=tags)
        while not _parses_as_string("mlflow.parent_run_id", run.info.run_id):  # ~1 id in a million
            client.delete_run(run.info.run_id)
            run = client.create_run(experiment.experiment_id, run_name=run_name, tags=tags)
        self._run_id = run.info.run_id
        _OPEN_SWEEPS[self._run_id] = tracking_uri
        _install_guard()
        with read_write(config.hydra.overrides):
            config.hydra.overrides.task.append(f"mlflow.parent_run_id={self._run_id}")
            config.hydra.overrides.task.append(f"mlflow.tracking_uri='{tracking_uri}'")

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        if not (self.enabled and config.mlflow.enabled):
            return
        message = remote_store_warning(str(config.mlflow.tracking_uri), config.hydra.launcher)
        if message:  # the job's own view: its node's working directory gets the database
            warnings.warn(message, UserWarning, stacklevel=2)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        """In the job's process: a job that raised, or ended with no objective, tags its sweep's parent."""
        from hydra.core.utils import JobStatus

        parent = config.mlflow.get("parent_run_id") if config.mlflow.enabled else None
        if not (self.enabled and parent):
            return
        value = getattr(job_return, "_return_value", None)
        if job_return.status == JobStatus.COMPLETED and value is not None:
            return
        from mlflow.tracking import MlflowClient

        overrides = [o for o in config.hydra.overrides.task if not o.startswith("mlflow.")]
        reason = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else "no objective"
        try:
            MlflowClient(tracking_uri=str(config.mlflow.tracking_uri)).set_tag(
                str(parent),
                f"{FAILED_JOB_TAG}{config.hydra.job.num}",
                f"{' '.join(overrides)} ({reason})"[:5000],
            )
        except Exception as err:  # noqa: BLE001 - the job's own outcome stands; say why the tag is missing
            log.warning(
                "could not tag sweep run %s with job %s's failure: %s", parent, config.hydra.job.num, err
            )

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if self._run_id is None:
            return
        from mlflow.tracking import MlflowClient

        run_id, self._run_id = self._run_id, None
        client = MlflowClient(tracking_uri=_OPEN_SWEEPS.get(run_id, str(config.mlflow.tracking_uri)))
        parent = client.get_run(run_id)
        children = client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
        )
        client.log_metric(run_id, "sweep/jobs", len(children))
        for key in {k for r in children for k in r.data.metrics if k.endswith("/aiq")}:
            values = [r.data.metrics[key] for r in children if key in r.data.metrics]
            client.log_metric(run_id, f"sweep/best/{key}", max(values))
        self._log_study(client, run_id, Path(str(config.hydra.sweep.dir)) / "optimization_results.yaml")
        # the sweep ran to its end (a job's user error lets it go on): FINISHED, its failed jobs counted
        failed = [k for k in client.get_run(run_id).data.tags if k.startswith(FAILED_JOB_TAG)]
        client.log_metric(run_id, "sweep/failed_jobs", len(failed))
        client.set_terminated(run_id, status="FINISHED")
        _OPEN_SWEEPS.pop(run_id, None)
        _remove_guard()

    @staticmethod
    def _log_study(client: Any, run_id: str, results: Path) -> None:
        """An Optuna sweep's ``optimization_results.yaml``: the file, ``sweep/best_value`` and ``best.<param>``."""
        if not results.is_file():
            return
        import yaml

        found = yaml.safe_load(results.read_text()) or {}
        client.log_artifact(run_id, str(results))
        if "best_value" in found:
            client.log_metric(run_id, "sweep/best_value", float(found["best_value"]))
        for name, value in (found.get("best_params") or {}).items():
            client.log_param(run_id, f"best.{name}", str(value))
