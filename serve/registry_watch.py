"""Following a registry alias: a replica started on ``models:/NAME@ALIAS`` (or ``models:/NAME/ALIAS``) asks
the MLflow registry every ``registry_poll_s`` seconds which version the alias points at, and hot-reloads
(:meth:`Service.reload <router_rl.serve.service.Service.reload>`, lossless: requests keep flowing) when it
moved. The new version is loaded pinned (``models:/NAME/VERSION``), so what was checked is what serves.

A poll that fails (the registry is unreachable, the alias was deleted) or a version that does not load (a
corrupted or incompatible artifact) is logged and counted; the old policy keeps serving. A refused version
is not retried on every poll: move the alias again (or send SIGHUP) to try it once more.

The registry calls themselves come from the CLI (:mod:`router_rl.registry`, which imports MLflow); this module
imports nothing of MLflow. Metrics: ``router_rl_registry_polls{result}`` (unchanged, reloaded, poll_error,
reload_error, refused) and ``router_rl_registry_version`` (the registry version being served).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("router_rl.serve")

RESULTS = ("unchanged", "reloaded", "poll_error", "reload_error", "refused")


@dataclass
class RegistrySource:
    """A moving registry reference and how to ask about it.

    Attributes:
        uri: the reference the replica follows, e.g. ``models:/router@champion``.
        version: the registry version loaded at startup.
        current_version: blocking; the version ``uri`` points at now (raises when the registry cannot say).
        pinned: ``version -> URI`` of exactly that version (what a reload loads).
    """

    uri: str
    version: str
    current_version: Callable[[], str]
    pinned: Callable[[str], str]


class RegistryWatch:
    """The polling loop of one service (``app.state.registry_watch``)."""

    def __init__(self, service: Any, source: RegistrySource, *, interval_s: float, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        self.service = service
        self.source = source
        self.interval_s = float(interval_s)
        self.version = str(source.version)
        self.refused: str | None = None
        self.last_error: str | None = None
        self.last_poll_at: float | None = None
        self.polls = Counter(
            "router_rl_registry_polls",
            "Polls of the registry alias the replica follows, by result (" + ", ".join(RESULTS) + ")",
            ["result"],
            registry=registry,
        )
        for result in RESULTS:
            self.polls.labels(result=result)
        self.version_gauge = Gauge(
            "router_rl_registry_version", "The registry version being served", registry=registry
        )
        self._set_version(self.version)
        self._task: asyncio.Task | None = None

    def _set_version(self, version: str) -> None:
        with contextlib.suppress(ValueError):
            self.version_gauge.set(float(version))

    async def poll_once(self) -> str:
        """Ask the registry once and reload when the alias moved; returns the result (one of RESULTS)."""
        loop = asyncio.get_running_loop()
        self.last_poll_at = time.time()
        try:
            now = str(await loop.run_in_executor(None, self.source.current_version))
        except Exception as err:  # noqa: BLE001 - any registry failure: the old policy keeps serving
            self.last_error = f"poll: {err}"
            log.warning("registry poll of %s failed: %s", self.source.uri, err)
            return self._count("poll_error")
        if now == self.version:
            return self._count("unchanged")
        if now == self.refused:
            return self._count("refused")
        try:
            await self.service.reload(self.source.pinned(now), remember=False)
        except Exception as err:  # noqa: BLE001 - a bad version must not stop the replica
            self.refused = now
            self.last_error = f"version {now}: {err}"
            log.error(
                "%s moved to version %s, which did not load; still serving %s",
                self.source.uri,
                now,
                self.version,
            )
            return self._count("reload_error")
        log.info("%s moved: version %s -> %s", self.source.uri, self.version, now)
        self.version, self.refused, self.last_error = now, None, None
        self._set_version(now)
        return self._count("reloaded")

    def _count(self, result: str) -> str:
        self.polls.labels(result=result).inc()
        return result

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)  # the poll period, not a synchronisation
            await self.poll_once()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="router-rl-registry-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def describe(self) -> dict[str, Any]:
        """For ``/healthz``."""
        return {
            "follows": self.source.uri,
            "version": self.version,
            "poll_s": self.interval_s,
            "refused_version": self.refused,
            "last_error": self.last_error,
        }
