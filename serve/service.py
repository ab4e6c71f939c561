"""What one running service holds: the router (swapped on reload), the micro-batcher, the decision log,
the upstreams and the metrics; decisions and reloads."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from router_rl.serve.artifact import load_artifact
from router_rl.serve.batching import MicroBatcher, Overloaded
from router_rl.serve.budget import SpendPacer
from router_rl.serve.decision_log import DecisionLog, LogFull
from router_rl.serve.errors import APIError
from router_rl.serve.exploration import explore_softmax
from router_rl.serve.metrics import Metrics
from router_rl.serve.router import Decision, Router, explore
from router_rl.serve.settings import ServeSettings
from router_rl.serve.upstreams import UpstreamMap

log = logging.getLogger("router_rl.serve")


def same_encoder(a: Router, b: Router) -> bool:
    """Whether two routers' artifacts embed prompts identically (the same ``embedder`` block of the manifest:
    encoder, dimension, representation), so one embedding serves both."""
    return a.artifact.manifest["embedder"] == b.artifact.manifest["embedder"]


@dataclass
class Routed:
    """A decision as the batcher returns it: with the embedding and the router that made it."""

    decision: Decision
    embedding: np.ndarray
    router: Router
    limits: dict[str, Any]
    multiplier: float = 0.0  # the budget pacer's lambda, already in limits["cost_weight"]
    shadow: Decision | None = None  # what the shadow policy would have chosen (never served)


@dataclass
class Service:
    """Everything one running app holds; ``app.state.service``."""

    router: Router
    settings: ServeSettings
    upstreams: UpstreamMap
    metrics: Metrics
    decision_log: DecisionLog | None
    artifact_source: str
    resolve: Callable[[str], str]
    client: aiohttp.ClientSession | None = None
    batcher: MicroBatcher | None = None
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    started_at: float = field(default_factory=time.time)
    cooldown: dict[str, float] = field(default_factory=dict)  # model -> monotonic time its 429 pause ends
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pacer: SpendPacer | None = None  # --budget-usd-per-hour
    shadow: Router | None = None  # --shadow: decides beside the served policy, on the same embedding
    shadow_counts: dict[str, int] = field(default_factory=lambda: {"agree": 0, "disagree": 0, "error": 0})
    clock: Callable[[], float] = time.time  # unix seconds of the log's rows (tests drive it)

    # ------------------------------------------------------------------ decisions
    def _batch(self, payloads: list[tuple[str, dict[str, Any]]]) -> list[Routed]:
        """One micro-batch: the batch's own memory-cache lookups, one encoder pass for the misses, one head
        pass for all. Hits and misses are counted from these lookups, not from the cache's shared counters,
        which the event loop's inline decisions move while the batch runs."""
        router = self.router  # a reload swaps self.router; a batch uses one router throughout
        prompts, limits = [p for p, _ in payloads], [lim for _, lim in payloads]
        if router.embedder.memory_cache is None:
            decisions, x = router.decide_requests(prompts, limits)
        else:
            found = [router.embedder.cached(p) for p in prompts]
            missed = [i for i, v in enumerate(found) if v is None]
            if missed:
                fresh = router.embed([prompts[i] for i in missed])
                for i, v in zip(missed, fresh, strict=True):
                    found[i] = v
            x = np.stack(found).astype(np.float32, copy=False)  # type: ignore[arg-type]
            decisions = router.decide_rows(x, limits)
            self.metrics.embedding_cache.labels(result="hit").inc(len(prompts) - len(missed))
            self.metrics.embedding_cache.labels(result="miss").inc(len(missed))
        return [Routed(d, x[i], router, payloads[i][1]) for i, d in enumerate(decisions)]

    def _cached(self, prompt: str, limits: dict[str, Any]) -> Routed | None:
        """A prompt whose embedding is cached (the head alone runs), or any prompt of a static encoder under
        :data:`~router_rl.serve.router.INLINE_CHARS` (a token lookup: ~0.2 ms), decided here on the event loop
        without the micro-batcher's thread hop."""
        router = self.router
        found = router.decide_cached(prompt, limits)
        result = "hit"
        if found is None:  # a token-lookup encoder is cheap enough for the event loop too
            found, result = router.decide_inline(prompt, limits), "miss"
        if found is None:
            return None
        self.metrics.embedding_cache.labels(result=result).inc()
        decision, x = found
        return Routed(decision, x[0], router, limits)

    async def decide(self, prompt: str, limits: dict[str, Any]) -> Routed:
        assert self.batcher is not None
        multiplier = 0.0
        if self.pacer is not None:  # every decision prices cost at its own weight + lambda
            await self.pacer.refresh_if_due()
            multiplier = self.pacer.multiplier
            if multiplier > 0:
                own = limits.get("cost_weight")
                if own is None:
                    own = float(self.router.artifact.manifest.get("default_cost_weight", 0.0))
                limits = {**limits, "cost_weight": float(own) + multiplier}
        t0 = time.perf_counter()
        try:
            routed = self._cached(prompt, limits) if self.settings.inline_cached else None
            if routed is None:
                routed = await self.batcher.submit((prompt, limits))
        except Overloaded as err:
            raise APIError(
                503,
                f"the router is overloaded ({err}); retry shortly",
                code="overloaded",
                headers={"Retry-After": "1"},
            ) from None
        except ValueError as err:  # e.g. a candidate unknown to an artifact loaded meanwhile
            raise APIError(400, str(err), code="invalid_candidates", param="candidates") from None
        self.metrics.decision_latency.observe(time.perf_counter() - t0)
        if self.settings.explore_epsilon > 0:
            routed.decision = explore(routed.decision, self.settings.explore_epsilon, self.rng)
        elif self.settings.explore_softmax_temperature > 0:
            routed.decision = explore_softmax(
                routed.decision,
                routed.embedding,
                routed.router.artifact,
                bonus=self.settings.explore_bonus,
                temperature=self.settings.explore_softmax_temperature,
                rng=self.rng,
            )
        routed.multiplier = multiplier
        self.metrics.decisions.labels(model=routed.decision.model).inc()
        if self.shadow is not None:
            routed.shadow = self.shadow_decide(routed)
        return routed

    def shadow_decide(self, routed: Routed) -> Decision | None:
        """The shadow policy's decision on the served decision's embedding and limits (one head pass), or None
        when it cannot decide (no candidate it knows, an error: counted, never seen by the client)."""
        shadow = self.shadow
        assert shadow is not None
        limits = dict(routed.limits)
        if limits.get("candidates") is not None:
            limits["candidates"] = [m for m in limits["candidates"] if m in shadow.models]
            if not limits["candidates"]:
                return None
        try:
            decision = shadow.decide_rows(np.asarray(routed.embedding, dtype=np.float32)[None, :], [limits])[
                0
            ]
        except Exception as err:  # noqa: BLE001 - the shadow must never touch the response
            log.warning("shadow decision failed: %s", err)
            self.shadow_counts["error"] += 1
            self.metrics.shadow.labels(result="error").inc()
            return None
        result = "agree" if decision.model == routed.decision.model else "disagree"
        self.shadow_counts[result] += 1
        self.metrics.shadow.labels(result=result).inc()
        return decision

    def log_decision(self, routed: Routed, prompt: str, endpoint: str, api_key: str) -> Future | None:
        """Queue the decision's log row; the future resolves once it is committed and synced (None: no log)."""
        if self.decision_log is None:
            return None
        d, router = routed.decision, routed.router
        art = router.artifact
        models = router.models
        cost_weight = routed.limits.get("cost_weight")
        if cost_weight is None:
            cost_weight = float(art.manifest.get("default_cost_weight", 0.0))
        row = {
            "decision_id": d.decision_id,
            "ts": self.clock(),
            "endpoint": endpoint,
            "policy_version": d.policy_version,
            "models": json.dumps(models),
            "action": models.index(d.model),
            "model": d.model,
            "propensity": d.propensity,
            "scores": json.dumps([d.scores[m] for m in models]),
            "pred_quality": json.dumps([d.estimates[m]["quality"] for m in models]),
            "pred_cost_usd": json.dumps([d.estimates[m]["cost_usd"] for m in models]),
            "cost_weight": float(cost_weight),
            "cost_scale": art.cost_scale,
            "limits": json.dumps(
                {k: v for k, v in routed.limits.items() if v is not None}
                | ({"budget_multiplier": routed.multiplier} if self.pacer is not None else {})
            ),
            "prompt_sha256": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
            "prompt": prompt if self.settings.log_prompts else None,
            "embedding": (
                np.ascontiguousarray(routed.embedding, dtype=np.float32).tobytes()
                if self.settings.log_embeddings
                else None
            ),
            "api_key": api_key,
        }
        future = self.decision_log.log_decision(row)
        if future.done() and future.exception() is not None:
            self.metrics.log_dropped.inc()
        elif routed.shadow is not None:  # queued after its decision: the same or a later group
            s = routed.shadow
            names = self.shadow.models if self.shadow is not None else list(s.scores)
            self.decision_log.log_shadow(
                {
                    "decision_id": d.decision_id,
                    "ts": row["ts"],
                    "policy_version": s.policy_version,
                    "models": json.dumps(names),
                    "action": names.index(s.model),
                    "model": s.model,
                    "propensity": s.propensity,
                    "scores": json.dumps([s.scores.get(m) for m in names]),
                    "pred_quality": json.dumps([s.estimates[m]["quality"] for m in names]),
                    "pred_cost_usd": json.dumps([s.estimates[m]["cost_usd"] for m in names]),
                }
            )
        return future

    async def logged(self, future: Future | None) -> bool:
        """Whether the decision behind ``future`` is durable, waiting for its commit when decisions are durable
        (``durable_decisions``). A row the log could not take or commit is an error then: the client must not
        get a decision id that feedback cannot find (503, retry)."""
        if future is None or not self.settings.durable_decisions:
            return False
        try:
            await asyncio.wrap_future(future)
        except LogFull as err:
            raise APIError(503, str(err), code="overloaded", headers={"Retry-After": "1"}) from None
        except Exception as err:  # sqlite3.Error from the writer's commit
            log.error("decision log commit failed: %s", err)
            raise APIError(
                503, f"the decision could not be logged ({type(err).__name__}); retry", code="log_failed"
            ) from None
        return True

    # ------------------------------------------------------------------ reload
    async def reload(self, source: str | None = None, *, remember: bool = True) -> dict[str, str]:
        """Load ``source`` (default: the artifact the service started with), check it, and swap it in; with
        ``remember`` off the next default reload still loads the old source (a registry alias the service
        follows, whose pinned versions are loaded one by one).

        Requests keep flowing: batches already running finish on the old router, the next batch uses the new
        one. The encoder stays in memory when the new artifact uses the same one.
        """
        async with self.reload_lock:
            loop = asyncio.get_running_loop()
            source = source or self.artifact_source
            old = self.router
            try:
                path = await loop.run_in_executor(None, self.resolve, source)
                artifact = await loop.run_in_executor(
                    None, lambda: load_artifact(path, device=old.artifact.device)
                )
                emb = artifact.manifest["embedder"]
                kwargs = self.settings.router_kwargs()
                max_seq_length = kwargs["max_seq_length"] or int(emb.get("max_seq_length", 256))
                same = old.embedder.model_name == emb["id"] and old.embedder.max_seq_length == max_seq_length
                new = Router(artifact, embedder=old.embedder if same else None, **kwargs)
                if not same:
                    await loop.run_in_executor(None, new.embedder._load)
                assert self.batcher is not None
                await loop.run_in_executor(self.batcher.executor, new.embed, ["warm-up"])
            except Exception as err:
                self.metrics.reloads.labels(result="error").inc()
                log.error("reload of %s failed: %s", source, err)
                raise
            if self.shadow is not None and not same_encoder(new, self.shadow):
                log.warning(
                    "shadow policy %s dropped: the reloaded policy %s encodes prompts differently",
                    self.shadow.artifact.version,
                    new.artifact.version,
                )
                self.shadow = None
            self.router = new
            if remember:
                self.artifact_source = source
            self.metrics.set_policy(new.artifact.version)
            self.metrics.set_encoder(new.embedder.describe)
            self.metrics.reloads.labels(result="ok").inc()
            log.info("reloaded %s: policy %s -> %s", source, old.artifact.version, new.artifact.version)
            return {
                "policy_version": new.artifact.version,
                "previous": old.artifact.version,
                "artifact": source,
            }
