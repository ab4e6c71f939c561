"""router-rl as a LiteLLM routing strategy: the learned decision made inside the gateway, one hop to the model.

    import litellm
    from router_rl.integrations.litellm import RouterRLStrategy

    catalog = ["gpt-4-0314", "claude-instant-1", "mixtral-8x7b-instruct-v0.1"]     # the artifact's models
    router = litellm.Router(model_list=[
        {"model_name": "router", "litellm_params": {"model": f"openai/{m}", "api_base": URL, "api_key": KEY}}
        for m in catalog
    ])
    strategy = RouterRLStrategy("outputs/.../artifact", log_db="decisions.sqlite").install(router)
    await router.acompletion(model="router", messages=[...])          # the artifact's default cost weight
    await router.acompletion(model="router-0.5", messages=[...])      # cost weight 0.5
    await router.acompletion(model="router", messages=[...],
                             metadata={"router_rl": {"cost_weight": 2, "candidates": ["claude-instant-1"]}})

The model group (``router``) holds one or more deployments per catalog model; a deployment is matched to its
catalog model by ``model_info.router_rl_model``, else by ``litellm_params.model`` with or without its provider
prefix. For a request to ``router`` or ``router-<w>`` the strategy takes the deployments LiteLLM considers
healthy (cooldowns, health checks, team and tag filters applied), embeds the last user message as
``router-rl serve`` does, lets the artifact decide among those models, logs the decision with its propensity,
and returns one deployment of the chosen model. Everything after that is LiteLLM's: retries (a retry goes to
the next-best untried model), fallbacks to other groups, cooldowns, budgets, spend logs. Requests for any
other model group are routed by LiteLLM's own strategy, unchanged.

Limits per request come from ``metadata["router_rl"]`` (``cost_weight``, ``candidates``, ``max_cost_usd``,
``latency_budget_s``; validated as ``POST /v1/route`` validates them); a cost weight there wins over the one
in the group name. The decision shows in the response: ``response._hidden_params["router_rl"]`` in process,
``x-router-model``, ``x-router-decision-id`` and ``x-router-policy-version`` headers from the proxy (LiteLLM's
own ``x-litellm-model-name`` names the deployment too).

**The proxy, config only** (``litellm --config config.yaml``):

    model_list:                          # one entry per catalog model, all named "router"
      - model_name: router
        litellm_params: {model: openai/gpt-4-0314, api_key: os.environ/OPENAI_API_KEY}
      ...
    router_settings:
      model_group_alias: {router-0.5: router, router-2: router}   # the cost weights clients may name
    environment_variables:
      ROUTER_RL_ARTIFACT: /srv/router/artifact                     # or models:/router@champion
      ROUTER_RL_SERVE_LOG_DB: /srv/router/decisions.sqlite         # any ROUTER_RL_SERVE_* setting of serve
    litellm_settings:
      callbacks: router_rl.integrations.litellm.proxy_strategy

``proxy_strategy`` is built on first access from those variables (``ROUTER_RL_GROUP`` renames the group) and
installs itself on the proxy's router before its first request is routed (and again should the proxy rebuild
its router or reset its routing strategy).
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litellm
import numpy as np
import pydantic
from litellm.integrations.custom_logger import CustomLogger
from litellm.types.router import CustomRoutingStrategyBase

from router_rl.serve.batching import MicroBatcher
from router_rl.serve.decision_log import DecisionLog
from router_rl.serve.exploration import explore_softmax
from router_rl.serve.router import Decision, Router, explore
from router_rl.serve.schemas import Limits
from router_rl.serve.settings import ServeSettings

log = logging.getLogger("router_rl.integrations.litellm")

STATE_KEY = "router_rl_decision"  # request metadata key of a request's decision (strategy -> hooks, retries)
LIMITS_KEY = "router_rl"  # request metadata key of the caller's limits
HIDDEN_KEY = "router_rl"  # response._hidden_params key of the decision
HEADER_MODEL = "x-router-model"
HEADER_DECISION = "x-router-decision-id"
HEADER_POLICY = "x-router-policy-version"
MODEL_INFO_KEY = "router_rl_model"  # model_info key naming a deployment's catalog model
ENDPOINT = "litellm"  # the decision log's endpoint column for decisions made here


class _NotOurs:
    """The group is not router-rl's: LiteLLM's own strategy routes it."""


NOT_OURS = _NotOurs()


def group_cost_weight(model: str, group: str) -> float | None | _NotOurs:
    """The cost weight a model group name asks for: ``group`` -> None (the artifact's default),
    ``group-<w>`` -> w; any other name -> :data:`NOT_OURS`. A ``group-<w>`` whose w is no finite number >= 0
    is not ours either (a user may have a group ``router-eu``)."""
    if model == group:
        return None
    prefix = group + "-"
    if not model.startswith(prefix):
        return NOT_OURS
    text = model[len(prefix) :]
    if not re.fullmatch(r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?", text):
        return NOT_OURS
    w = float(text)
    return w if math.isfinite(w) else NOT_OURS


def prompt_of(messages: Sequence[Mapping[str, Any]] | None) -> str:
    """The text a chat request is routed on, as ``router-rl serve`` takes it: the last user message's text
    (a string, or the text parts of a content list joined by newlines)."""
    for message in reversed(list(messages or [])):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = "\n".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, Mapping) and part.get("type") == "text"
            )
        else:
            text = ""
        if not text.strip():
            raise _bad_request("the last user message has no text to route on")
        return text
    raise _bad_request("messages hold no user message to route on")


def _bad_request(message: str, model: str = "router") -> Exception:
    return litellm.BadRequestError(message=f"router-rl: {message}", model=model, llm_provider="router_rl")


def catalog_model(deployment: Mapping[str, Any], models: frozenset[str] | set[str]) -> str | None:
    """The catalog model a LiteLLM deployment serves: ``model_info.router_rl_model``, else
    ``litellm_params.model`` as it is, without its provider prefix, or its last path segment; None when
    none of those is a model of the artifact."""
    info = deployment.get("model_info") or {}
    explicit = info.get(MODEL_INFO_KEY) if isinstance(info, Mapping) else None
    if explicit:
        return str(explicit) if explicit in models else None
    name = str((deployment.get("litellm_params") or {}).get("model") or "")
    for candidate in (name, name.split("/", 1)[-1], name.rsplit("/", 1)[-1]):
        if candidate in models:
            return candidate
    return None


def _metadata(request_kwargs: dict[str, Any]) -> dict[str, Any]:
    key = "litellm_metadata" if "litellm_metadata" in request_kwargs else "metadata"
    meta = request_kwargs.get(key)
    if not isinstance(meta, dict):
        meta = {}
        request_kwargs[key] = meta
    return meta


def _state_of(kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
    """A request's decision state from a callback's kwargs (``litellm_params.metadata`` or ``metadata``)."""
    for holder in ((kwargs.get("litellm_params") or {}), kwargs):
        for key in ("metadata", "litellm_metadata"):
            meta = holder.get(key) if isinstance(holder, Mapping) else None
            if isinstance(meta, Mapping) and isinstance(meta.get(STATE_KEY), dict):
                return meta[STATE_KEY]
    return None


@dataclass
class _Plan:
    """One routing call: the healthy deployments by catalog model, the request's metadata, and either a
    retry's model or what to decide on."""

    by_model: dict[str, list[dict[str, Any]]]
    meta: dict[str, Any]
    state: dict[str, Any] | None = None
    chosen: str | None = None
    prompt: str | None = None
    limits: dict[str, Any] | None = None


class RouterRLStrategy(CustomRoutingStrategyBase, CustomLogger):
    """A LiteLLM custom routing strategy that decides with a router-rl artifact.

    Args:
        artifact: an artifact directory, a ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` URI (needs MLflow:
            ``pip install "router-rl[train]"``), or a loaded :class:`~router_rl.serve.router.Router`.
        group: the model group routed by router-rl; ``<group>-<w>`` asks for cost weight ``w``.
        log_db: where decisions are logged with their propensities (a sqlite path or a
            :class:`~router_rl.serve.decision_log.DecisionLog`); None: the settings' ``log_db`` when
            ``settings`` is given, else no log.
        settings: encoder, batching, exploration and logging settings, as ``router-rl serve`` takes them
            (``device``, ``encoder_backend``, ``embedding_cache_size``, ``inline_cached``, ``batch_max_size``,
            ``batch_max_wait_ms``, ``max_queue``, ``max_prompt_chars``, ``log_prompts``, ``log_embeddings``,
            ``explore_epsilon``, ``seed``); default :class:`~router_rl.serve.settings.ServeSettings`.
        retry_next_best: a LiteLLM retry of a request goes to the best model not tried yet for it (as
            ``router-rl serve`` falls back); False: the retry re-decides among the healthy deployments.

    :meth:`install` sets it on a ``litellm.Router``; the proxy installs :data:`proxy_strategy` by itself.
    """

    def __init__(
        self,
        artifact: str | Path | Router,
        *,
        group: str = "router",
        log_db: str | Path | DecisionLog | None = None,
        settings: ServeSettings | None = None,
        retry_next_best: bool = True,
    ) -> None:
        CustomLogger.__init__(self)
        given_settings = settings is not None
        self.settings = (settings or ServeSettings(log_db=None)).validate()
        if isinstance(artifact, Router):
            self.router = artifact
        else:
            from router_rl.serve.cli import resolve_artifact

            self.router = Router(
                resolve_artifact(str(artifact)), device=self.settings.device, **self.settings.router_kwargs()
            )
        self.group = group
        self.retry_next_best = retry_next_best
        if log_db is None and given_settings:
            log_db = self.settings.log_db
        self._own_log = log_db is not None and not isinstance(log_db, DecisionLog)
        self.decision_log: DecisionLog | None = (
            DecisionLog(log_db) if self._own_log else log_db  # type: ignore[assignment, arg-type]
        )
        self.models = frozenset(self.router.models)
        self.n_dropped = 0  # decisions the log refused (its queue was full)
        self.litellm_router: Any = None
        self._tag = uuid.uuid4().hex  # marks this strategy's decisions in request metadata
        self._rng = np.random.default_rng(self.settings.seed)
        self._pick = random.Random(self.settings.seed)
        self._lock = threading.Lock()  # the encoder is used by one thread at a time
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MicroBatcher] = (
            weakref.WeakKeyDictionary()
        )
        self._unmapped_warned: set[str] = set()

    # ------------------------------------------------------------------ installing
    def install(self, router: Any) -> RouterRLStrategy:
        """Route ``router``'s group with this strategy (``router.set_custom_routing_strategy``) and register
        it as a LiteLLM callback (decision outcomes in the log, the decision on the response). Returns self."""
        self.litellm_router = router
        router.set_custom_routing_strategy(self)
        if self not in litellm.callbacks:
            litellm.logging_callback_manager.add_litellm_callback(self)
        mapped = {catalog_model(d, self.models) for d in router.get_model_list(model_name=self.group) or []}
        mapped.discard(None)
        if not mapped:
            log.warning(
                "router-rl: no deployment of model group %r serves a model of the artifact (%s); name the "
                "group's deployments after catalog models or set model_info.%s",
                self.group,
                ", ".join(sorted(self.models)),
                MODEL_INFO_KEY,
            )
        return self

    def installed_on(self, router: Any) -> bool:
        return router is not None and router.__dict__.get("async_get_available_deployment") == (
            self.async_get_available_deployment
        )

    def uninstall(self) -> None:
        """Give the router back its own strategy and stop receiving callbacks."""
        router, self.litellm_router = self.litellm_router, None
        if router is not None and self.installed_on(router):
            for attr in ("get_available_deployment", "async_get_available_deployment"):
                router.__dict__.pop(attr, None)
        for registry in (
            litellm.callbacks,
            litellm.success_callback,
            litellm.failure_callback,
            litellm._async_success_callback,
            litellm._async_failure_callback,
        ):
            while self in registry:
                registry.remove(self)

    def close(self) -> None:
        """:meth:`uninstall`, then flush and close a decision log this strategy opened."""
        self.uninstall()
        for batcher in list(self._batchers.values()):
            batcher.executor.shutdown(wait=False)
        if self.decision_log is not None and self._own_log:
            self.decision_log.close()

    def feedback(
        self,
        decision_id: str,
        quality: float,
        *,
        cost_usd: float | None = None,
        latency_s: float | None = None,
    ) -> None:
        """Store the judged quality of a decision's answer (as ``POST /v1/feedback`` does); waits for the sync."""
        if self.decision_log is None:
            raise RuntimeError("this strategy has no decision log (pass log_db=...)")
        self.decision_log.add_feedback(decision_id, quality, cost_usd=cost_usd, latency_s=latency_s).result(
            30
        )

    # ------------------------------------------------------------------ LiteLLM's entry points
    async def async_get_available_deployment(
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list | None = None,  # noqa: A002 - LiteLLM's name
        specific_deployment: bool | None = False,
        request_kwargs: dict | None = None,
    ) -> Any:
        router = self._installed()
        weight = group_cost_weight(model, self.group)
        request_kwargs = request_kwargs if request_kwargs is not None else {}
        if weight is NOT_OURS or specific_deployment:
            return await type(router).async_get_available_deployment(
                router,
                model=model,
                request_kwargs=request_kwargs,
                messages=messages,
                input=input,
                specific_deployment=specific_deployment,
            )
        healthy = await router.async_get_healthy_deployments(
            model=self._lookup_group(model), request_kwargs=request_kwargs, messages=messages, input=input
        )
        if isinstance(healthy, dict):  # LiteLLM resolved one deployment itself
            return healthy
        plan = self._plan(model, weight, healthy, request_kwargs, messages, input)
        decided = None if plan.limits is None else await self._decide_async(plan.prompt, plan.limits, model)
        deployment = self._finish(plan, model, decided)
        if deployment is None:
            raise await self._no_deployment(model, request_kwargs)
        return deployment

    def get_available_deployment(
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list | None = None,  # noqa: A002 - LiteLLM's name
        specific_deployment: bool | None = False,
        request_kwargs: dict | None = None,
    ) -> Any:
        router = self._installed()
        weight = group_cost_weight(model, self.group)
        if weight is NOT_OURS or specific_deployment:
            return type(router).get_available_deployment(
                router,
                model=model,
                messages=messages,
                input=input,
                specific_deployment=specific_deployment,
                request_kwargs=request_kwargs,
            )
        request_kwargs = request_kwargs if request_kwargs is not None else {}
        found = router._get_healthy_deployments(self._lookup_group(model), None)
        healthy = found[0] if isinstance(found, tuple) else found
        plan = self._plan(model, weight, healthy, request_kwargs, messages, input)
        decided = None if plan.limits is None else self._decide_sync(plan.prompt, plan.limits, model)
        deployment = self._finish(plan, model, decided)
        if deployment is None:
            raise _no_deployment_sync(model)
        return deployment

    # ------------------------------------------------------------------ deciding
    def _installed(self) -> Any:
        if self.litellm_router is None:
            raise RuntimeError(
                "RouterRLStrategy is not installed on a litellm.Router: call strategy.install(router)"
            )
        return self.litellm_router

    def _plan(
        self,
        model: str,
        weight: float | None,
        healthy: Sequence[dict[str, Any]],
        request_kwargs: dict[str, Any],
        messages: Any,
        input: Any,  # noqa: A002
    ) -> _Plan:
        """What a request needs: a retry's model (the best untried), or the prompt and limits to decide on."""
        by_model = self._by_model(healthy)
        meta = _metadata(request_kwargs)
        state = meta.get(STATE_KEY)
        if isinstance(state, dict) and state.get("by") == self._tag and state.get("group") == model:
            return _Plan(by_model, meta, state=state, chosen=self._retry_choice(state, by_model))
        limits = self._limits(model, weight, meta.get(LIMITS_KEY), by_model)
        if limits is None:  # no healthy deployment among the allowed models
            return _Plan(by_model, meta)
        return _Plan(by_model, meta, prompt=self._prompt(messages, input, model), limits=limits)

    def _finish(
        self, plan: _Plan, model: str, decided: tuple[Decision, np.ndarray] | None
    ) -> dict[str, Any] | None:
        """Log a new decision, note the attempt, and return a deployment of its model (None: none left)."""
        if decided is not None:
            decision, embedding = decided
            assert plan.limits is not None and plan.prompt is not None
            plan.state = self._record(decision, embedding, plan.limits, plan.prompt, model, plan.meta)
            plan.meta[STATE_KEY] = plan.state
            plan.chosen = plan.state["model"]  # after exploration
        if plan.chosen is None or plan.state is None:
            return None
        plan.state["tried"].append(plan.chosen)
        plan.state["answered_by"] = plan.chosen
        return self._deployment(plan.by_model[plan.chosen])

    def _lookup_group(self, model: str) -> str:
        """The group whose deployments serve ``model``: itself when LiteLLM knows the name (a group of its
        own, or a ``model_group_alias``), else the base group (``router-0.5`` called in process)."""
        router = self.litellm_router
        known = getattr(router, "is_recognized_model", None)
        if model == self.group or (known(model) if known else model in router.get_model_names()):
            return model
        return self.group

    def _by_model(self, healthy: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        by_model: dict[str, list[dict[str, Any]]] = {}
        for deployment in healthy:
            name = catalog_model(deployment, self.models)
            if name is None:
                label = str((deployment.get("litellm_params") or {}).get("model"))
                if label not in self._unmapped_warned:
                    self._unmapped_warned.add(label)
                    log.warning(
                        "router-rl: deployment %s serves no model of the artifact; it is skipped", label
                    )
                continue
            by_model.setdefault(name, []).append(deployment)
        return by_model

    def _limits(
        self, model: str, weight: float | None, asked: Any, by_model: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """The Router limits of a request, candidates cut to the healthy models; None when none is left."""
        try:
            req = Limits.model_validate(asked or {})
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or LIMITS_KEY
            raise _bad_request(f"metadata.{LIMITS_KEY}.{where}: {first.get('msg')}", model) from None
        unknown = sorted(set(req.candidates or ()) - self.models)
        if unknown:
            raise _bad_request(
                f"metadata.{LIMITS_KEY}.candidates: {unknown} are not models of this router "
                f"(it knows {sorted(self.models)})",
                model,
            )
        allowed = [
            m for m in self.router.models if m in by_model and (not req.candidates or m in req.candidates)
        ]
        if not allowed:
            return None
        return {
            "cost_weight": req.cost_weight if req.cost_weight is not None else weight,
            # every model allowed: no candidates, so the decision is exactly Router.decide's
            "candidates": None if len(allowed) == len(self.router.models) else allowed,
            "max_cost_usd": req.max_cost_usd,
            "latency_budget_s": req.latency_budget_s,
        }

    def _prompt(self, messages: Any, input: Any, model: str) -> str:  # noqa: A002
        text = input if messages is None and isinstance(input, str) else prompt_of(messages)
        if len(text) > self.settings.max_prompt_chars:
            raise _bad_request(
                f"the prompt has {len(text)} characters, more than this router's limit of "
                f"{self.settings.max_prompt_chars}",
                model,
            )
        return text

    def _batch(self, payloads: list[tuple[str, dict[str, Any]]]) -> list[tuple[Decision, np.ndarray]]:
        with self._lock:
            decisions, x = self.router.decide_requests([p for p, _ in payloads], [lim for _, lim in payloads])
        return [(d, x[i]) for i, d in enumerate(decisions)]

    async def _batcher(self) -> MicroBatcher:
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = MicroBatcher(
                self._batch,
                max_batch=self.settings.batch_max_size,
                max_wait_s=self.settings.batch_max_wait_ms / 1000.0,
                max_queue=self.settings.max_queue,
            )
            await batcher.start()
            self._batchers[loop] = batcher
        return batcher

    async def _decide_async(
        self, prompt: str, limits: dict[str, Any], model: str
    ) -> tuple[Decision, np.ndarray]:
        try:
            if self.settings.inline_cached:
                found = self.router.decide_cached(prompt, limits)
                if found is not None:
                    return found[0], found[1][0]
            return await (await self._batcher()).submit((prompt, limits))
        except ValueError as err:
            raise _bad_request(str(err), model) from None

    def _decide_sync(self, prompt: str, limits: dict[str, Any], model: str) -> tuple[Decision, np.ndarray]:
        try:
            return self._batch([(prompt, limits)])[0]
        except ValueError as err:
            raise _bad_request(str(err), model) from None

    def _retry_choice(self, state: dict[str, Any], by_model: Mapping[str, Any]) -> str | None:
        """The model a retry goes to: the best-scored healthy model not tried yet, else the best healthy one."""
        scores = state["scores"]
        healthy = [m for m in self.router.models if m in by_model and scores.get(m) is not None]
        if not healthy:
            return None
        fresh = [m for m in healthy if m not in state["tried"]] if self.retry_next_best else healthy
        pool = fresh or healthy
        return max(pool, key=lambda m: scores[m])

    def _deployment(self, deployments: list[dict[str, Any]]) -> dict[str, Any]:
        """One deployment of the chosen model; several share its traffic by ``litellm_params.weight``."""
        if len(deployments) == 1:
            return deployments[0]
        weights = [float((d.get("litellm_params") or {}).get("weight") or 1.0) for d in deployments]
        return self._pick.choices(deployments, weights=weights)[0]

    async def _no_deployment(self, model: str, request_kwargs: dict[str, Any]) -> Exception:
        """What LiteLLM raises when a group has no deployment left (so fallbacks and cooldown answers apply)."""
        try:
            from litellm.router_utils.handle_error import async_raise_no_deployment_exception

            return await async_raise_no_deployment_exception(
                litellm_router_instance=self.litellm_router, model=model, parent_otel_span=None
            )
        except ImportError:  # pragma: no cover - older LiteLLM
            return _no_deployment_sync(model)

    # ------------------------------------------------------------------ logging
    def _record(
        self,
        decision: Decision,
        embedding: np.ndarray,
        limits: dict[str, Any],
        prompt: str,
        model: str,
        meta: Mapping[str, Any],
    ) -> dict[str, Any]:
        if self.settings.explore_epsilon > 0:
            decision = explore(decision, self.settings.explore_epsilon, self._rng)
        elif self.settings.explore_softmax_temperature > 0:
            decision = explore_softmax(
                decision,
                embedding,
                self.router.artifact,
                bonus=self.settings.explore_bonus,
                temperature=self.settings.explore_softmax_temperature,
                rng=self._rng,
            )
        if self.decision_log is not None:
            self._log_decision(decision, embedding, limits, prompt, meta)
        return {
            "by": self._tag,
            "group": model,
            "decision_id": decision.decision_id,
            "model": decision.model,
            "policy_version": decision.policy_version,
            "propensity": decision.propensity,
            "scores": dict(decision.scores),
            "tried": [],
            "answered_by": None,
            "t0": time.perf_counter(),
        }

    def _log_decision(
        self,
        d: Decision,
        embedding: np.ndarray,
        limits: dict[str, Any],
        prompt: str,
        meta: Mapping[str, Any],
    ) -> None:
        """One decision row, as ``router-rl serve`` writes it (``endpoint`` = ``litellm``)."""
        assert self.decision_log is not None
        art = self.router.artifact
        models = self.router.models
        cost_weight = limits.get("cost_weight")
        if cost_weight is None:
            cost_weight = float(art.manifest.get("default_cost_weight", 0.0))
        key = meta.get("user_api_key_alias") or meta.get("user_api_key_hash")
        row = {
            "decision_id": d.decision_id,
            "ts": time.time(),
            "endpoint": ENDPOINT,
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
            "limits": json.dumps({k: v for k, v in limits.items() if v is not None}),
            "prompt_sha256": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
            "prompt": prompt if self.settings.log_prompts else None,
            "embedding": (
                np.ascontiguousarray(embedding, dtype=np.float32).tobytes()
                if self.settings.log_embeddings
                else None
            ),
            "api_key": str(key) if key else None,
        }
        queued = self.decision_log.log_decision(row)
        refused = queued is False or (
            hasattr(queued, "done") and queued.done() and queued.exception() is not None
        )
        if refused:
            self.n_dropped += 1

    def _log_outcome(
        self, state: dict[str, Any], status: str, response: Any = None, kwargs: Any = None
    ) -> None:
        if self.decision_log is None:
            return
        usage = getattr(response, "usage", None)
        cost = (kwargs or {}).get("response_cost")
        self.decision_log.log_outcome(
            state["decision_id"],
            answered_by=state.get("answered_by") if status == "ok" else None,
            status=status,
            attempts=len(state["tried"]),
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            cost_usd=float(cost) if isinstance(cost, (int, float)) else None,
            latency_s=time.perf_counter() - state["t0"],
        )

    def _ours(self, kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        state = _state_of(kwargs)
        return state if state is not None and state.get("by") == self._tag else None

    # ------------------------------------------------------------------ LiteLLM callbacks
    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):  # noqa: ANN001, ANN201
        state = self._ours(kwargs)
        if state is not None:
            self._log_outcome(state, "ok", response_obj, kwargs)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):  # noqa: ANN001, ANN201
        state = self._ours(kwargs)
        if state is not None:
            self._log_outcome(state, "failed")

    def log_success_event(self, kwargs, response_obj, start_time, end_time):  # noqa: ANN001, ANN201
        state = self._ours(kwargs)  # a synchronous call (Router.completion)
        if state is not None:
            self._log_outcome(state, "ok", response_obj, kwargs)

    def log_failure_event(self, kwargs, response_obj, start_time, end_time):  # noqa: ANN001, ANN201
        state = self._ours(kwargs)
        if state is not None:
            self._log_outcome(state, "failed")

    async def async_post_call_success_deployment_hook(self, request_data, response, call_type):  # noqa: ANN001, ANN201
        """The decision on the response LiteLLM returns: ``response._hidden_params["router_rl"]``."""
        state = self._ours(request_data)
        hidden = getattr(response, "_hidden_params", None)
        if state is not None and isinstance(hidden, dict):
            hidden[HIDDEN_KEY] = {
                "model": state["answered_by"],
                "chosen": state["model"],
                "decision_id": state["decision_id"],
                "policy_version": state["policy_version"],
                "propensity": state["propensity"],
                "attempts": len(state["tried"]),
            }
        return response

    async def async_post_call_response_headers_hook(  # noqa: ANN201
        self,
        data,  # noqa: ANN001
        user_api_key_dict,  # noqa: ANN001
        response,  # noqa: ANN001
        request_headers=None,  # noqa: ANN001
        litellm_call_info=None,  # noqa: ANN001
    ):
        """The proxy's answer names the decision: ``x-router-model``, ``x-router-decision-id``,
        ``x-router-policy-version`` (streamed answers included)."""
        state = self._ours(data)
        if state is None:
            return None
        return {
            HEADER_MODEL: str(state["answered_by"] or state["model"]),
            HEADER_DECISION: state["decision_id"],
            HEADER_POLICY: state["policy_version"],
        }

    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):  # noqa: ANN001, ANN201
        """The proxy calls this before routing each request: install on its router when not yet (or no longer)
        installed there. A no-op outside the proxy."""
        try:
            from litellm.proxy import proxy_server
        except ImportError:  # pragma: no cover - litellm without [proxy]
            return data
        router = getattr(proxy_server, "llm_router", None)
        if router is not None and not self.installed_on(router):
            with self._lock:
                if not self.installed_on(router):
                    self.install(router)
                    log.info("router-rl: routing model group %r of the LiteLLM proxy", self.group)
        return data

    # ------------------------------------------------------------------ the proxy's instance
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RouterRLStrategy:
        """The strategy ``ROUTER_RL_ARTIFACT`` (a directory or ``models:/`` URI), ``ROUTER_RL_GROUP`` (default
        ``router``) and the ``ROUTER_RL_SERVE_*`` settings describe (the decision log is serve's default,
        ``router-rl-decisions.sqlite``, unless ``ROUTER_RL_SERVE_LOG_DB`` says otherwise)."""
        from router_rl.serve.settings import from_env

        env = os.environ if environ is None else environ
        artifact = env.get("ROUTER_RL_ARTIFACT")
        if not artifact:
            raise RuntimeError(
                "router_rl.integrations.litellm.proxy_strategy needs ROUTER_RL_ARTIFACT (an artifact directory or "
                "models:/NAME/VERSION), e.g. under environment_variables: in the LiteLLM config"
            )
        strategy = cls(artifact, group=env.get("ROUTER_RL_GROUP") or "router", settings=from_env(env))
        atexit.register(strategy.close)  # the proxy's exit commits the decision log's last rows
        return strategy


def _no_deployment_sync(model: str) -> Exception:
    return litellm.ServiceUnavailableError(
        message=f"router-rl: no healthy deployment of model group {model!r} serves a model of the artifact",
        model=model,
        llm_provider="router_rl",
    )


_proxy_strategy: RouterRLStrategy | None = None
_proxy_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    """``proxy_strategy``: the strategy of the environment (:meth:`RouterRLStrategy.from_env`), built on first
    access, so that ``litellm_settings.callbacks: router_rl.integrations.litellm.proxy_strategy`` loads it."""
    global _proxy_strategy
    if name != "proxy_strategy":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _proxy_lock:
        if _proxy_strategy is None:
            _proxy_strategy = RouterRLStrategy.from_env()
        return _proxy_strategy
