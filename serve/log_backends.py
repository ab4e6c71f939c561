"""Where the decision log lives: one sqlite file (the default) or a PostgreSQL database that several replicas
share, named by one URL.

    sqlite:///decisions.sqlite           a file, relative to the working directory (sqlite:////abs/path: absolute)
    decisions.sqlite                     a bare path: sqlite too
    postgresql://user:pw@host:5432/db    PostgreSQL through psycopg 3 (pip install 'router-rl[postgres]')

Both hold the same tables (:data:`router_rl.serve.decision_log`'s docstring) and take the same statements:
``?`` placeholders (psycopg's ``%s`` for PostgreSQL), ``ON CONFLICT`` upserts, explicit ``BEGIN``/``COMMIT``
around a group of writes. A decision or feedback row is acknowledged only after ``COMMIT`` returned: sqlite in
WAL mode with ``synchronous=FULL`` has synced its log file then, PostgreSQL (``synchronous_commit=on``, set
per session) has flushed its WAL. Every row carries the ``replica`` that wrote it (default ``hostname:pid``),
so decisions, feedback and spend stay attributable when several replicas write one database.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SCHEMA_VERSION = 4
"""1: the first sqlite log; 2: a ``replica`` column on decisions and feedback; 3: a ``source`` column on
feedback (``client`` or ``judge``), keyed by ``(decision_id, source)`` so a client's grade and the judge's
of one decision are both kept (older logs are migrated; their feedback rows become ``client``); 4: a
``shadow_decisions`` table, the decisions a shadow policy made beside the served ones (``--shadow``)."""

FEEDBACK_SOURCES = ("client", "judge", "pairwise")
"""Who graded a decision: a client through ``POST /v1/feedback``, the judge sampler's single grade, or its
pairwise comparison with a reference model's answer (the served answer's win rate, serve/judging.py)."""

_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2")

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    decision_id TEXT PRIMARY KEY,{seq}
    ts {real} NOT NULL,
    endpoint TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    models TEXT NOT NULL,
    action INTEGER NOT NULL,
    model TEXT NOT NULL,
    propensity {real} NOT NULL,
    scores TEXT NOT NULL,
    pred_quality TEXT NOT NULL,
    pred_cost_usd TEXT NOT NULL,
    cost_weight {real} NOT NULL,
    cost_scale {real} NOT NULL,
    limits TEXT NOT NULL,
    prompt_sha256 TEXT NOT NULL,
    prompt TEXT,
    embedding {blob},
    api_key TEXT,
    answered_by TEXT,
    status TEXT,
    attempts INTEGER,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    cost_usd {real},
    latency_s {real},
    replica TEXT
);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts);
CREATE TABLE IF NOT EXISTS feedback (
    decision_id TEXT NOT NULL REFERENCES decisions (decision_id),
    source TEXT NOT NULL DEFAULT 'client',
    quality {real} NOT NULL,
    cost_usd {real},
    latency_s {real},
    ts {real} NOT NULL,
    replica TEXT,
    PRIMARY KEY (decision_id, source)
);
CREATE TABLE IF NOT EXISTS shadow_decisions (
    decision_id TEXT PRIMARY KEY,
    ts {real} NOT NULL,
    policy_version TEXT NOT NULL,
    models TEXT NOT NULL,
    action INTEGER NOT NULL,
    model TEXT NOT NULL,
    propensity {real} NOT NULL,
    scores TEXT NOT NULL,
    pred_quality TEXT NOT NULL,
    pred_cost_usd TEXT NOT NULL,
    replica TEXT
);
"""
SQLITE_SCHEMA = _TABLES.format(seq="", real="REAL", blob="BLOB")
POSTGRES_SCHEMA = _TABLES.format(
    seq="\n    seq BIGINT GENERATED ALWAYS AS IDENTITY,", real="DOUBLE PRECISION", blob="BYTEA"
)
_MIGRATIONS: dict[int, dict[str, list[str]]] = {  # from version -> per backend, the statements to the next
    1: dict.fromkeys(
        ("sqlite", "postgresql"),
        ["ALTER TABLE decisions ADD COLUMN replica TEXT", "ALTER TABLE feedback ADD COLUMN replica TEXT"],
    ),
    2: {
        # sqlite cannot change a primary key in place: the table is rebuilt, its rows copied as 'client'
        "sqlite": [
            "CREATE TABLE feedback_v3 (decision_id TEXT NOT NULL REFERENCES decisions (decision_id),"
            " source TEXT NOT NULL DEFAULT 'client', quality REAL NOT NULL, cost_usd REAL, latency_s REAL,"
            " ts REAL NOT NULL, replica TEXT, PRIMARY KEY (decision_id, source))",
            "INSERT INTO feedback_v3 (decision_id, source, quality, cost_usd, latency_s, ts, replica)"
            " SELECT decision_id, 'client', quality, cost_usd, latency_s, ts, replica FROM feedback",
            "DROP TABLE feedback",
            "ALTER TABLE feedback_v3 RENAME TO feedback",
        ],
        "postgresql": [
            "ALTER TABLE feedback ADD COLUMN source TEXT NOT NULL DEFAULT 'client'",
            "ALTER TABLE feedback DROP CONSTRAINT feedback_pkey",
            "ALTER TABLE feedback ADD PRIMARY KEY (decision_id, source)",
        ],
    },
    3: {"sqlite": [], "postgresql": []},  # shadow_decisions: a new table, created with the others
}
_SCHEMA_LOCK = 0x726F7574  # pg_advisory_xact_lock key: replicas starting together create the tables once


class LogURLError(ValueError):
    """A ``--log-db`` value that names no supported database."""


def default_replica_id() -> str:
    """``hostname:pid``: tells apart the replicas of one machine and of several."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class LogTarget:
    """A parsed ``--log-db``: ``kind`` is ``sqlite`` (``path``) or ``postgresql`` (``url``, for psycopg)."""

    kind: str
    path: Path | None = None
    url: str | None = None

    @property
    def location(self) -> str:
        """Where the log is, safe to print: the sqlite path, or the PostgreSQL URL without its password."""
        if self.kind == "sqlite":
            return str(self.path)
        parts = urlsplit(str(self.url))
        netloc = parts.netloc
        if parts.password is not None:
            user = parts.username or ""
            host = netloc.rsplit("@", 1)[1]
            netloc = f"{user}:***@{host}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def parse_log_url(value: str | os.PathLike[str]) -> LogTarget:
    """``sqlite:///path``, a bare path, or ``postgresql://...`` -> :class:`LogTarget`; anything else raises
    :class:`LogURLError` naming the forms expected."""
    text = os.fspath(value).strip()
    if not text:
        raise LogURLError("--log-db is empty: expected sqlite:///PATH, a path, or postgresql://USER@HOST/DB")
    scheme, sep, rest = text.partition("://")
    if not sep:  # a bare path
        return LogTarget("sqlite", path=Path(text).expanduser())
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest in ("/", "/:memory:"):
            raise LogURLError(
                f"--log-db {text!r}: expected sqlite:///relative/path or sqlite:////absolute/path "
                "(a file: the log must outlive the process)"
            )
        return LogTarget("sqlite", path=Path(rest[1:]).expanduser())
    if scheme in _POSTGRES_SCHEMES:
        parts = urlsplit(text)
        if not parts.hostname and "host=" not in parts.query:
            raise LogURLError(f"--log-db {LogTarget('postgresql', url=text).location!r}: no host")
        return LogTarget("postgresql", url=urlunsplit(("postgresql", *parts[1:])))
    raise LogURLError(
        f"--log-db {text.split('@')[-1]!r}: unknown database scheme {scheme!r}; expected sqlite:///PATH, "
        "a path, or postgresql://USER@HOST:PORT/DB"
    )


class LogBackend:
    """One connection to a decision log, with the few statements the writer and the reader need.

    The writer thread owns one; :meth:`begin`/:meth:`commit` bracket a group. ``errors`` are the database
    errors a caller catches (a failed group is rolled back; a broken connection is reopened by the next
    :meth:`begin`).
    """

    kind: str
    errors: tuple[type[BaseException], ...]
    order_tiebreak: str  # insertion order among decisions with the same ts

    def __init__(self, target: LogTarget) -> None:
        self.target = target
        self.conn: Any = None

    # -------------------------------------------------------------- connection
    def open(self, *, read_only: bool = False) -> LogBackend:
        raise NotImplementedError

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    def broken(self) -> bool:
        return self.conn is None

    # -------------------------------------------------------------- statements
    def sql(self, statement: str) -> str:
        """``statement`` with this backend's placeholders (written with ``?``)."""
        return statement

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self.sql(statement), tuple(params))

    def fetchall(self, statement: str, params: Sequence[Any] = ()) -> list[tuple]:
        return [tuple(r) for r in self.execute(statement, params).fetchall()]

    def begin(self) -> None:
        if self.broken():
            self.open()
        self.conn.execute("BEGIN")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn is None:
            return
        try:
            self.conn.execute("ROLLBACK")
        except self.errors:
            self.close()  # reopened by the next begin()

    # -------------------------------------------------------------- schema
    def _ensure_schema(self, schema: str) -> None:
        """Create the tables, record or check the schema version, migrate an older log."""
        self.begin()
        try:
            self._lock_schema()
            for statement in filter(None, (s.strip() for s in schema.split(";"))):
                self.conn.execute(statement)
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                self.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            else:
                version = int(row[0])
                if version > SCHEMA_VERSION or version not in (*_MIGRATIONS, SCHEMA_VERSION):
                    raise RuntimeError(
                        f"{self.target.location}: decision log schema version {version}, this router-rl writes "
                        f"version {SCHEMA_VERSION}; start with another --log-db"
                    )
                while version < SCHEMA_VERSION:
                    for statement in _MIGRATIONS[version][self.kind]:
                        self.conn.execute(statement)
                    version += 1
                self.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
            self.commit()
        except BaseException:
            self.rollback()
            raise

    def _lock_schema(self) -> None:
        """Serialise schema creation between processes (sqlite: ``BEGIN IMMEDIATE`` already does)."""


class SqliteBackend(LogBackend):
    kind = "sqlite"
    errors = (sqlite3.Error,)
    order_tiebreak = "d.rowid"

    def open(self, *, read_only: bool = False) -> SqliteBackend:
        path = self.target.path
        assert path is not None
        if read_only:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no decision log there (the server's --log-db)")
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
            return self
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = connect_sqlite(path)
        return self

    def begin(self) -> None:
        if self.broken():
            self.open()
        self.conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not at the first write


class PostgresBackend(LogBackend):
    kind = "postgresql"
    order_tiebreak = "d.seq"

    def __init__(self, target: LogTarget) -> None:
        super().__init__(target)
        psycopg = _psycopg()
        self.errors = (psycopg.Error,)

    def open(self, *, read_only: bool = False) -> PostgresBackend:
        psycopg = _psycopg()
        try:
            self.conn = psycopg.connect(str(self.target.url), autocommit=True, connect_timeout=10)
        except psycopg.Error as err:
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConnectionError(
                f"cannot connect to the decision log {self.target.location}: {detail}"
            ) from None
        # acknowledged means on disk, whatever the server's default
        self.conn.execute("SET synchronous_commit = on")
        if read_only:
            self.conn.execute("SET default_transaction_read_only = on")
        else:
            self._ensure_schema(POSTGRES_SCHEMA)
        return self

    def broken(self) -> bool:
        return self.conn is None or self.conn.closed or self.conn.broken

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    def _lock_schema(self) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError(
            "a postgresql:// decision log needs psycopg 3: pip install 'router-rl[postgres]'"
        ) from None
    return psycopg


def connect_sqlite(path: str | Path, *, timeout: float = 30.0) -> sqlite3.Connection:
    """A sqlite connection in WAL mode with ``synchronous=FULL`` (every commit synced) and the schema in place
    (a version-1 file is migrated)."""
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    backend = SqliteBackend(LogTarget("sqlite", path=Path(path)))
    backend.conn = conn
    try:
        backend._ensure_schema(SQLITE_SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


def open_backend(target: LogTarget | str | os.PathLike[str], *, read_only: bool = False) -> LogBackend:
    """An open :class:`LogBackend` for ``target`` (a URL, a path or a parsed target). Read-only opens create
    nothing: a missing sqlite file is a :class:`FileNotFoundError`."""
    if not isinstance(target, LogTarget):
        target = parse_log_url(target)
    backend: LogBackend = SqliteBackend(target) if target.kind == "sqlite" else PostgresBackend(target)
    return backend.open(read_only=read_only)
