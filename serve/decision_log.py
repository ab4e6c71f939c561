"""The decision log: every routing decision and its feedback, in one sqlite file (WAL) or one PostgreSQL
database that several replicas share (:mod:`router_rl.serve.log_backends`: ``--log-db`` is a path or a URL),
read back as logged bandit data for off-policy evaluation and retraining.

Tables:
    ``decisions``: one row per decision: ``decision_id``, time, endpoint, policy version, the artifact's ordered
    ``models`` (JSON), the chosen ``action`` (index into ``models``) and ``model``, its ``propensity``, the
    decision ``scores`` and the policy's predicted quality and cost for every model (JSON lists aligned with
    ``models``; null for excluded models' scores), ``cost_weight``, ``cost_scale``, the request's limits, the
    prompt's sha256 (the prompt text and the embedding only when asked), the API key name, and what happened
    upstream (``answered_by``, ``status``, ``attempts``, tokens, ``cost_usd``, ``latency_s``), and the
    ``replica`` that decided.
    ``feedback``: one row per (decision_id, ``source``), the latest of each source winning: ``quality`` in
    [0, 1], optional ``cost_usd`` and ``latency_s``, time, and the ``replica`` that took it (any replica finds
    any decision). ``source`` is ``client`` (``POST /v1/feedback``), ``judge`` (the judge sampler) or
    ``pairwise`` (the judge's comparison with a reference model's answer, read only when asked for). When
    both graded one decision, the reader takes the client's grade (the person who saw the answer outranks
    the sampled judge) unless asked for one source (``feedback_source``).

    ``shadow_decisions``: one row per served decision a shadow policy (``--shadow``) also decided, keyed by
    the served ``decision_id`` (no foreign key: a shadow row never fails its group): time, the shadow's
    policy version, its ``models``, ``action``/``model``, ``propensity``, ``scores`` and predictions (JSON
    lists aligned with its own ``models``), and the ``replica``. Never served, never seen by the client.

One writer thread owns the connection and commits in groups: everything queued while it was syncing the
previous group goes into the next transaction (group commit), so under load one sync covers many rows.
``synchronous=FULL`` in WAL mode syncs the log file on every commit (PostgreSQL: ``synchronous_commit=on``
flushes its WAL). Producers never block: each operation is queued at once (a full queue refuses it) and
returns a future that resolves once its group is committed and synced. The service awaits the futures of feedback and, by default, of decisions before answering, so
feedback and decision ids acknowledged to a client survive a crash or a SIGKILL of the server; outcomes are
not awaited. Nothing here imports training-only code.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router_rl.serve.log_backends import (
    FEEDBACK_SOURCES,
    SQLITE_SCHEMA,
    connect_sqlite,
    default_replica_id,
    open_backend,
    parse_log_url,
)
from router_rl.serve.log_backends import SCHEMA_VERSION as SCHEMA_VERSION  # re-exported

log = logging.getLogger(__name__)

SCHEMA = SQLITE_SCHEMA  # the tables (sqlite dialect; log_backends has PostgreSQL's)
DECISION_COLUMNS = (
    "decision_id",
    "ts",
    "endpoint",
    "policy_version",
    "models",
    "action",
    "model",
    "propensity",
    "scores",
    "pred_quality",
    "pred_cost_usd",
    "cost_weight",
    "cost_scale",
    "limits",
    "prompt_sha256",
    "prompt",
    "embedding",
    "api_key",
    "replica",
)
SHADOW_COLUMNS = (
    "decision_id",
    "ts",
    "policy_version",
    "models",
    "action",
    "model",
    "propensity",
    "scores",
    "pred_quality",
    "pred_cost_usd",
    "replica",
)
OUTCOME_COLUMNS = (
    "answered_by",
    "status",
    "attempts",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_s",
)


class UnknownDecision(KeyError):
    """Feedback for a decision_id the log does not hold."""


class LogFull(RuntimeError):
    """The writer's queue is full; feedback cannot be accepted now (HTTP 503)."""


def connect(path: str | Path, *, timeout: float = 30.0) -> sqlite3.Connection:
    """A sqlite connection in WAL mode with ``synchronous=FULL`` (every commit synced) and the schema in place."""
    return connect_sqlite(path, timeout=timeout)


@dataclass
class _Op:
    kind: str  # decision | shadow | outcome | feedback | flush
    args: tuple
    future: Future | None = field(default=None, repr=False)


class DecisionLog:
    """The asynchronous writer of one decision log.

    Args:
        path: ``sqlite:///path`` or a path (the file is created with its folder), or ``postgresql://...``
            (a database several replicas share; the tables are created by the first).
        replica: this writer's name on every row it writes (default ``hostname:pid``).
        max_queue: rows allowed to wait for the writer; decisions past it are dropped and counted.
        max_group: the most operations committed in one transaction.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        replica: str | None = None,
        max_queue: int = 100_000,
        max_group: int = 512,
    ) -> None:
        self.target = parse_log_url(path)
        self.path = self.target.path  # None for a database server
        self.location = self.target.location  # printable: the path, or the URL without its password
        self.replica = replica or default_replica_id()
        self.max_group = int(max_group)
        self.n_dropped = 0
        self.n_commits = 0
        self._queue: queue.Queue[_Op | None] = queue.Queue(maxsize=max_queue)
        self._backend = open_backend(
            self.target
        )  # here: a bad path or URL fails at startup, not in the thread
        self._thread = threading.Thread(target=self._run, name="router-rl-decision-log", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producers (any thread, non-blocking)
    def log_decision(self, row: dict[str, Any]) -> Future:
        """Queue a decision row (keys: :data:`DECISION_COLUMNS`). The future resolves once the row is committed
        and synced; it holds :class:`LogFull` at once when the queue is full (the row is dropped and counted)."""
        future: Future = Future()
        row = {**row, "replica": row.get("replica") or self.replica}
        if not self._put(_Op("decision", tuple(row.get(c) for c in DECISION_COLUMNS), future)):
            future.set_exception(LogFull("the decision log writer is behind; the decision was not logged"))
        return future

    def log_shadow(self, row: dict[str, Any]) -> bool:
        """Queue a shadow decision row (keys: :data:`SHADOW_COLUMNS`); not awaited by anyone."""
        row = {**row, "replica": row.get("replica") or self.replica}
        return self._put(_Op("shadow", tuple(row.get(c) for c in SHADOW_COLUMNS)))

    def log_outcome(self, decision_id: str, **outcome: Any) -> bool:
        """Queue what happened upstream (keys: :data:`OUTCOME_COLUMNS`)."""
        values = tuple(outcome.get(c) for c in OUTCOME_COLUMNS)
        return self._put(_Op("outcome", (*values, decision_id)))

    def add_feedback(
        self,
        decision_id: str,
        quality: float,
        *,
        cost_usd: float | None = None,
        latency_s: float | None = None,
        source: str = "client",
    ) -> Future:
        """Queue feedback from ``source`` (client, judge or pairwise; the latest of each source is kept); the
        future resolves once it is committed and synced (raises :class:`UnknownDecision` for an unknown id,
        :class:`LogFull` when the queue is full)."""
        if source not in FEEDBACK_SOURCES:
            raise ValueError(f"feedback source {source!r}: expected one of {', '.join(FEEDBACK_SOURCES)}")
        future: Future = Future()
        args = (decision_id, source, float(quality), cost_usd, latency_s, time.time(), self.replica)
        op = _Op("feedback", args, future)
        try:
            self._queue.put_nowait(op)
        except queue.Full:
            future.set_exception(LogFull("the decision log writer is behind; retry shortly"))
        return future

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait until everything queued so far is committed."""
        future: Future = Future()
        self._queue.put(_Op("flush", (), future), timeout=timeout)
        future.result(timeout=timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Commit everything queued, then stop the writer and close the file."""
        if self._thread.is_alive():
            self._queue.put(None, timeout=timeout)
            self._thread.join(timeout)
        self._backend.close()

    def _put(self, op: _Op) -> bool:
        try:
            self._queue.put_nowait(op)
            return True
        except queue.Full:
            self.n_dropped += 1
            return False

    # ------------------------------------------------------------------ the writer thread
    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            group = [first]
            while len(group) < self.max_group:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    stop = True
                    break
                group.append(op)
            self._commit(group)

    def _commit(self, group: list[_Op]) -> None:
        db = self._backend
        results: list[tuple[Future, BaseException | None]] = []
        try:
            db.begin()  # reopens a connection lost since the last group (a database server restarted)
            for op in group:
                if op.kind == "decision":
                    db.execute(
                        f"INSERT INTO decisions ({', '.join(DECISION_COLUMNS)}) "
                        f"VALUES ({', '.join('?' * len(DECISION_COLUMNS))}) ON CONFLICT (decision_id) DO NOTHING",
                        op.args,
                    )
                    results.append((op.future, None))  # type: ignore[arg-type]
                elif op.kind == "shadow":
                    db.execute(
                        f"INSERT INTO shadow_decisions ({', '.join(SHADOW_COLUMNS)}) "
                        f"VALUES ({', '.join('?' * len(SHADOW_COLUMNS))}) ON CONFLICT (decision_id) DO NOTHING",
                        op.args,
                    )
                elif op.kind == "outcome":
                    db.execute(
                        f"UPDATE decisions SET {', '.join(f'{c} = ?' for c in OUTCOME_COLUMNS)} WHERE decision_id = ?",
                        op.args,
                    )
                elif op.kind == "feedback":
                    known = db.execute(
                        "SELECT 1 FROM decisions WHERE decision_id = ?", (op.args[0],)
                    ).fetchone()
                    if known is None:
                        results.append((op.future, UnknownDecision(op.args[0])))  # type: ignore[arg-type]
                        continue
                    db.execute(
                        "INSERT INTO feedback (decision_id, source, quality, cost_usd, latency_s, ts, replica)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (decision_id, source) DO UPDATE SET"
                        " quality = excluded.quality, cost_usd = excluded.cost_usd,"
                        " latency_s = excluded.latency_s, ts = excluded.ts, replica = excluded.replica",
                        op.args,
                    )
                    results.append((op.future, None))  # type: ignore[arg-type]
                else:  # flush
                    results.append((op.future, None))  # type: ignore[arg-type]
            db.commit()  # sqlite synchronous=FULL / PostgreSQL synchronous_commit: on disk when this returns
            self.n_commits += 1
        except (*db.errors, ConnectionError) as err:
            log.exception("decision log commit failed; %d operations lost", len(group))
            db.rollback()
            results = [(op.future, err) for op in group if op.future is not None]
        for future, error in results:
            if future is None:
                continue
            if error is None:
                future.set_result(True)
            else:
                future.set_exception(error)


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class LoggedBanditData:
    """Logged bandit feedback from a decision log, as plain arrays (n decisions, K models).

    Attributes:
        models: (K,) the action space: model names in catalog order (the union over policy versions, in
            order of first appearance).
        decision_id, policy_version, prompt_sha256: (n,) str.
        timestamp: (n,) float64, unix seconds.
        action: (n,) int64, the logged action as an index into ``models``.
        propensity: (n,) float64, the logging policy's probability of ``action``.
        cost_weight, cost_scale: (n,) float64, the trade-off each decision was made for and the artifact's
            cost normalisation (reward = quality - cost_weight * cost_usd / cost_scale).
        scores: (n, K) float64 decision scores (NaN: excluded, or a model unknown to that policy).
        pred_quality, pred_cost_usd: (n, K) float64, the logging policy's own predictions (a reward model
            for doubly robust estimators; NaN for models unknown to that policy).
        quality: (n,) float64 judged quality from feedback, NaN where none arrived.
        has_feedback: (n,) bool.
        cost_usd: (n,) float64 realised cost: from feedback when given, else measured from the upstream's
            token usage, else NaN (a /v1/route decision whose caller sent no cost).
        latency_s: (n,) float64, from feedback, else measured upstream, else NaN.
        answered_by: (n,) str, the model that answered upstream ('' when the decision was not served here).
        prompts: (n,) str or None when the log holds no prompt text (``--log-prompts`` off).
        contexts: (n, d) float32 embeddings or None when the log holds none (``--log-embeddings`` off).
        replica: (n,) str, the replica that made each decision ('' in logs older than the column).
        feedback_source: (n,) str, who graded the row's ``quality``: ``client``, ``judge``, or '' (none).
        shadow_action: (n,) int64, the shadow policy's choice as an index into ``models``; -1 where no shadow
            decided (or it chose a model outside ``models``). None when the log has no shadow rows.
        shadow_propensity: (n,) float64, its probability (NaN where none). shadow_policy_version: (n,) str.
        shadow_scores: (n, K) float64, its decision scores (NaN: excluded or unknown to it).
    """

    models: list[str]
    decision_id: np.ndarray
    policy_version: np.ndarray
    prompt_sha256: np.ndarray
    timestamp: np.ndarray
    action: np.ndarray
    propensity: np.ndarray
    cost_weight: np.ndarray
    cost_scale: np.ndarray
    scores: np.ndarray
    pred_quality: np.ndarray
    pred_cost_usd: np.ndarray
    quality: np.ndarray
    has_feedback: np.ndarray
    cost_usd: np.ndarray
    latency_s: np.ndarray
    answered_by: np.ndarray
    prompts: np.ndarray | None
    contexts: np.ndarray | None
    replica: np.ndarray | None = None
    feedback_source: np.ndarray | None = None
    shadow_action: np.ndarray | None = None
    shadow_propensity: np.ndarray | None = None
    shadow_policy_version: np.ndarray | None = None
    shadow_scores: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.action.shape[0])

    @property
    def n_actions(self) -> int:
        return len(self.models)

    def rewards(self, cost_weight: float | None = None, latency_weight: float = 0.0) -> np.ndarray:
        """(n,) reward ``quality - w * cost_usd / cost_scale - latency_weight * latency_s`` with ``w`` the
        logged cost weight of each decision unless given; NaN where quality (or a needed cost) is missing."""
        w = self.cost_weight if cost_weight is None else np.full(len(self), float(cost_weight))
        cost = np.where(w == 0.0, 0.0, self.cost_usd / self.cost_scale)
        lat = 0.0 if latency_weight == 0.0 else latency_weight * self.latency_s
        return self.quality - w * cost - lat

    def to_obp(self, reward: np.ndarray | None = None) -> dict[str, Any]:
        """The dictionary Open Bandit Pipeline's estimators take (rows with feedback only):
        ``n_rounds, n_actions, action, reward, pscore, context, position`` (+ ``action_context=None``)."""
        keep = self.has_feedback & np.isfinite(self.quality if reward is None else reward)
        r = self.quality if reward is None else reward
        return {
            "n_rounds": int(keep.sum()),
            "n_actions": self.n_actions,
            "action": self.action[keep],
            "reward": r[keep],
            "pscore": self.propensity[keep],
            "context": None if self.contexts is None else self.contexts[keep],
            "position": np.zeros(int(keep.sum()), dtype=np.int64),
            "action_context": None,
        }

    def to_frame(self):
        """A pandas DataFrame, one row per decision (per-model arrays as ``score/<model>`` ... columns)."""
        import pandas as pd

        cols: dict[str, Any] = {
            "decision_id": self.decision_id,
            "timestamp": self.timestamp,
            "policy_version": self.policy_version,
            "prompt_sha256": self.prompt_sha256,
            "action": self.action,
            "model": np.asarray(self.models, dtype=object)[self.action] if len(self) else [],
            "propensity": self.propensity,
            "cost_weight": self.cost_weight,
            "cost_scale": self.cost_scale,
            "quality": self.quality,
            "has_feedback": self.has_feedback,
            "cost_usd": self.cost_usd,
            "latency_s": self.latency_s,
            "answered_by": self.answered_by,
        }
        if self.replica is not None:
            cols["replica"] = self.replica
        if self.feedback_source is not None:
            cols["feedback_source"] = self.feedback_source
        if self.prompts is not None:
            cols["prompt"] = self.prompts
        if self.shadow_action is not None:
            names = np.asarray([*self.models, ""], dtype=object)
            cols["shadow_model"] = names[self.shadow_action] if len(self) else []
            cols["shadow_propensity"] = self.shadow_propensity
            cols["shadow_policy_version"] = self.shadow_policy_version
        for k, m in enumerate(self.models):
            cols[f"score/{m}"] = self.scores[:, k]
            cols[f"pred_quality/{m}"] = self.pred_quality[:, k]
            cols[f"pred_cost_usd/{m}"] = self.pred_cost_usd[:, k]
        return pd.DataFrame(cols)


def read_logged_bandit_data(
    path: str | os.PathLike[str],
    *,
    policy_version: str | None = None,
    since: float | None = None,
    until: float | None = None,
    require_feedback: bool = False,
    include_fallbacks: bool = False,
    feedback_source: str = "any",
) -> LoggedBanditData:
    """Read a decision log back as :class:`LoggedBanditData`, oldest decision first.

    Args:
        path: the log the server wrote (``--log-db``: a sqlite path or URL, or ``postgresql://...``).
        policy_version: keep only decisions of this policy version.
        since, until: keep decisions with ``since <= timestamp < until`` (unix seconds).
        require_feedback: keep only decisions that have feedback.
        include_fallbacks: keep decisions answered by another model than the logged action (an upstream
            failure made the server fall back). Off by default: their outcome belongs to another action than
            the one whose propensity was logged, so they would bias off-policy estimates.
        feedback_source: whose grades count: ``any`` (the client's where a client graded, else the
            judge's single grade), ``client``, ``judge`` or ``pairwise`` (the served answer's win rate against
            the reference model's, a scale of its own, so ``any`` never mixes it in); with one source the
            others' grades are ignored: a decision only they graded reads as without feedback.
    """
    if feedback_source not in ("any", *FEEDBACK_SOURCES):
        raise ValueError(f"feedback_source {feedback_source!r}: expected any, {', '.join(FEEDBACK_SOURCES)}")
    if feedback_source == "any":  # the client's row where there is one, else the judge's

        def pick(col: str) -> str:
            return f"CASE WHEN fc.decision_id IS NOT NULL THEN fc.{col} ELSE fj.{col} END"

        source_sql = "CASE WHEN fc.decision_id IS NOT NULL THEN 'client' WHEN fj.decision_id IS NOT NULL THEN 'judge' END"
    else:
        alias = {"client": "fc", "judge": "fj", "pairwise": "fp"}[feedback_source]

        def pick(col: str) -> str:
            return f"{alias}.{col}"

        source_sql = f"{alias}.source"
    db = open_backend(path, read_only=True)  # a missing sqlite file: FileNotFoundError
    try:
        version = db.fetchall("SELECT value FROM meta WHERE key = 'schema_version'")
        feedback = "feedback"
        schema = int(version[0][0]) if version else SCHEMA_VERSION
        if schema < 3:  # a log no server of this version opened: no source column
            feedback = "(SELECT decision_id, 'client' AS source, quality, cost_usd, latency_s FROM feedback)"
        shadow_cols, shadow_join = ", NULL, NULL, NULL, NULL, NULL", ""
        if schema >= 4:
            shadow_cols = ", s.models, s.model, s.propensity, s.policy_version, s.scores"
            shadow_join = " LEFT JOIN shadow_decisions s ON s.decision_id = d.decision_id"
        where, params = [], []
        if policy_version is not None:
            where.append("d.policy_version = ?")
            params.append(policy_version)
        if since is not None:
            where.append("d.ts >= ?")
            params.append(float(since))
        if until is not None:
            where.append("d.ts < ?")
            params.append(float(until))
        if require_feedback:
            where.append(f"{pick('quality')} IS NOT NULL")
        if not include_fallbacks:
            where.append("(d.answered_by IS NULL OR d.answered_by = d.model)")
        sql = (
            "SELECT d.decision_id, d.ts, d.policy_version, d.prompt_sha256, d.models, d.model, d.propensity,"
            " d.cost_weight, d.cost_scale, d.scores, d.pred_quality, d.pred_cost_usd, d.prompt, d.embedding,"
            f" d.answered_by, d.cost_usd, d.latency_s, {pick('quality')}, {pick('cost_usd')},"
            f" {pick('latency_s')}, d.replica, {source_sql}{shadow_cols}"
            " FROM decisions d"
            f" LEFT JOIN {feedback} fc ON fc.decision_id = d.decision_id AND fc.source = 'client'"
            f" LEFT JOIN {feedback} fj ON fj.decision_id = d.decision_id AND fj.source = 'judge'"
            f" LEFT JOIN {feedback} fp ON fp.decision_id = d.decision_id AND fp.source = 'pairwise'"
            + shadow_join
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + f" ORDER BY d.ts, {db.order_tiebreak}"
        )
        rows = db.fetchall(sql, params)
    finally:
        db.close()

    models: list[str] = []
    index: dict[str, int] = {}
    per_row_models = []
    for r in rows:
        names = json.loads(r[4])
        per_row_models.append(names)
        for m in names:
            if m not in index:
                index[m] = len(models)
                models.append(m)
    n, k = len(rows), len(models)

    def spread(values: list[float | None], names: list[str], out: np.ndarray) -> None:
        for m, v in zip(names, values, strict=True):
            out[index[m]] = np.nan if v is None else v

    scores = np.full((n, k), np.nan)
    pred_q = np.full((n, k), np.nan)
    pred_c = np.full((n, k), np.nan)
    for i, (r, names) in enumerate(zip(rows, per_row_models, strict=True)):
        spread(json.loads(r[9]), names, scores[i])
        spread(json.loads(r[10]), names, pred_q[i])
        spread(json.loads(r[11]), names, pred_c[i])

    shadow_action = shadow_p = shadow_v = shadow_s = None
    if any(r[22] is not None for r in rows):
        shadow_action = np.full(n, -1, dtype=np.int64)
        shadow_p, shadow_s = np.full(n, np.nan), np.full((n, k), np.nan)
        shadow_v = np.array([r[25] or "" for r in rows], dtype=object)
        for i, r in enumerate(rows):
            if r[22] is None:
                continue
            names = json.loads(r[22])
            shadow_action[i] = index.get(r[23], -1)
            shadow_p[i] = r[24]
            for m, v in zip(names, json.loads(r[26]), strict=True):
                if m in index:
                    shadow_s[i, index[m]] = np.nan if v is None else v

    def column(j: int, dtype: Any = float) -> np.ndarray:
        return np.array([np.nan if r[j] is None else r[j] for r in rows], dtype=dtype)

    fb_cost, served_cost = column(18), column(15)
    fb_lat, served_lat = column(19), column(16)
    prompts = None
    if rows and all(r[12] is not None for r in rows):
        prompts = np.array([r[12] for r in rows], dtype=object)
    contexts = None
    if rows and all(r[13] is not None for r in rows):
        contexts = np.stack([np.frombuffer(bytes(r[13]), dtype=np.float32) for r in rows])
    return LoggedBanditData(
        models=models,
        decision_id=np.array([r[0] for r in rows], dtype=object),
        policy_version=np.array([r[2] for r in rows], dtype=object),
        prompt_sha256=np.array([r[3] for r in rows], dtype=object),
        timestamp=column(1),
        action=np.array([index[r[5]] for r in rows], dtype=np.int64),
        propensity=column(6),
        cost_weight=column(7),
        cost_scale=column(8),
        scores=scores,
        pred_quality=pred_q,
        pred_cost_usd=pred_c,
        quality=column(17),
        has_feedback=np.array([r[17] is not None for r in rows], dtype=bool),
        cost_usd=np.where(np.isfinite(fb_cost), fb_cost, served_cost),
        latency_s=np.where(np.isfinite(fb_lat), fb_lat, served_lat),
        answered_by=np.array([r[14] or "" for r in rows], dtype=object),
        prompts=prompts,
        contexts=contexts,
        replica=np.array([r[20] or "" for r in rows], dtype=object),
        feedback_source=np.array([r[21] or "" for r in rows], dtype=object),
        shadow_action=shadow_action,
        shadow_propensity=shadow_p,
        shadow_policy_version=shadow_v,
        shadow_scores=shadow_s,
    )


_STRING_ARRAYS = (
    "decision_id",
    "policy_version",
    "prompt_sha256",
    "answered_by",
    "replica",
    "feedback_source",
    "shadow_policy_version",
)


def export_logged_data(db: str | os.PathLike[str], out: str | Path, **filters: Any) -> Path:
    """Write the logged bandit data of ``db`` to ``out``: ``.parquet``/``.csv`` (one row per decision, via
    :meth:`LoggedBanditData.to_frame`) or ``.npz`` (the arrays, ``models`` included)."""
    data = read_logged_bandit_data(db, **filters)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(out.suffixes[-1:]).lower()
    if suffix == ".npz":
        arrays = {
            k: v
            for k, v in data.__dict__.items()
            if isinstance(v, np.ndarray) and k not in _STRING_ARRAYS + ("prompts",)
        }
        for k in _STRING_ARRAYS:
            if getattr(data, k) is not None:
                arrays[k] = np.asarray(getattr(data, k), dtype=str)
        if data.prompts is not None:
            arrays["prompts"] = np.asarray(data.prompts, dtype=str)
        np.savez_compressed(out, models=np.asarray(data.models, dtype=str), **arrays)
    elif suffix == ".parquet":
        data.to_frame().to_parquet(out, index=False)
    elif suffix == ".csv":
        data.to_frame().to_csv(out, index=False)
    else:
        raise ValueError(f"{out}: unknown format {suffix!r}; expected .parquet, .csv or .npz")
    return out
