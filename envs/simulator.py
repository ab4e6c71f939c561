"""The serving simulator: what one routed request costs, how long it takes, and whether it is answered.

For a request from caller region ``r`` routed to model ``k`` at time ``t`` (seconds) and request index ``s``::

    latency = rtt[r, region_k] + queue_wait + service
    service = (ttft_k / (1 - rho_k(t)) + output_tokens / (tps_k * (1 - decode_slowdown * rho_k(t)))) * noise

- ``rtt``: network round trip between the caller's and the provider's region (config; ASSUMED defaults).
- ``ttft_k``, ``tps_k``: time to first token and decode speed: the catalog's priors (ASSUMED, not measured)
  or, with ``latency_priors: fit|auto``, least-squares fits to the data's measured ``latency_s``.
  Where the data has a measured ``latency_s`` for the (prompt, model) pair, it replaces ``rtt + service``.
- ``output_tokens``: the recorded answer length, else a draw from the model's fitted log-normal length
  distribution (``output_tokens: fit``) or the model's mean (``output_tokens: mean``).
- ``noise``: :func:`router_rl.envs.latency.heavy_tail_noise` (log-normal body, Pareto tail).
- ``rho_k(t)``: the provider's own utilisation by everyone's traffic, ``provider_load + load_amplitude *
  sin(2 pi t / load_period_s)`` clipped to [0, 0.95]: the M/M/1 factor ``1 / (1 - rho)`` on the time to first
  token and a linear slowdown of decoding (both ASSUMED shapes).
- ``queue_wait``: the caller's account has ``concurrency`` parallel requests per model and a FIFO queue of
  ``queue_size`` more (an exact multi-server FIFO simulation of this caller's own traffic). A request that finds
  the queue full is rejected (HTTP 429) after ``rtt + reject_delay_s``; one whose wait plus service exceeds
  ``timeout_s`` is abandoned at ``timeout_s`` and its input tokens are billed (an assumption).
- Rejected, timed-out or unavailable (scenario outage or not yet released) requests go to the model's
  ``fallback`` (a model name, a per-model mapping, or ``"cheapest"``: the model with the lowest list price,
  whose own fallback is the second cheapest): its latency and cost are added to what the failed attempt already cost, and its quality is
  the answer's. Without a fallback (or when the fallback fails too) the request fails with quality 0.
- Cost: the recorded ``cost_usd`` (tokens times the catalog's prices) times the scenario's price factor.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router_rl.envs.latency import (
    fill_latency_priors,
    fill_output_tokens,
    fit_latency_priors,
    fit_output_lengths,
    heavy_tail_noise,
    noise_mean,
)
from router_rl.envs.scenarios import Scenario
from router_rl.types import RoutingData

REGIONS = ("us-east", "eu-west", "ap-southeast")
"""Default region names (callers and providers)."""
RTT_S = ((0.02, 0.09, 0.22), (0.09, 0.02, 0.16), (0.22, 0.16, 0.02))
"""Default round trips in seconds between :data:`REGIONS`: ASSUMED, typical public-cloud orders of magnitude."""

DEFAULTS: dict[str, Any] = {
    "latency_priors": "auto",  # catalog | fit | auto (fit where the data has >= 10 measurements, else catalog)
    "output_tokens": "fit",  # fit | mean: missing answer lengths drawn from a per-model log-normal, or the mean
    "tail_prob": 0.0,  # probability of a heavy-tail straggler
    "tail_alpha": 2.5,  # Pareto shape of the straggler factor (> 1)
    "regions": list(REGIONS),  # region names, callers and providers alike
    "rtt_s": [list(r) for r in RTT_S],  # (R, R) round trips in seconds, caller x provider
    "caller_mix": None,  # share of requests per caller region; None = every caller in the first region
    "provider_regions": None,  # {model: region}; None = the catalog's `region` column, else the first region
    "provider_load": 0.0,  # provider utilisation rho in [0, 0.95], scalar or {model: rho}
    "load_amplitude": 0.0,  # amplitude of the daily load cycle
    "load_period_s": 86400.0,  # period of the load cycle in seconds
    "decode_slowdown": 0.5,  # decode speed is multiplied by (1 - decode_slowdown * rho)
    "concurrency": None,  # concurrent requests per model for this caller, scalar or {model: n}; None = unlimited
    "queue_size": 0,  # FIFO places per model beyond the concurrency limit, scalar or {model: n}
    "timeout_s": None,  # abandon a request after this long, scalar or {model: s}; None = never
    "reject_delay_s": 0.05,  # time to receive a 429, on top of the round trip
    "fallback": None,  # who answers when the chosen model fails: a name, {model: name}, "cheapest" or None
    "arrival_rate": 1.0,  # requests per second reaching one env (drives the clock of load and queues)
}


@dataclass(frozen=True)
class SimulatorConfig:
    """Validated simulator parameters, per-model values as (K,) arrays in action order."""

    regions: tuple[str, ...]
    rtt_s: np.ndarray  # (R, R)
    caller_mix: np.ndarray  # (R,)
    provider_region: np.ndarray  # (K,) int
    provider_load: np.ndarray  # (K,)
    load_amplitude: float
    load_period_s: float
    decode_slowdown: float
    concurrency: np.ndarray  # (K,) float, inf = unlimited
    queue_size: np.ndarray  # (K,) int
    timeout_s: np.ndarray  # (K,) float, inf = never
    reject_delay_s: float
    fallback: np.ndarray  # (K,) int, -1 = none
    arrival_rate: float
    tail_prob: float
    tail_alpha: float
    latency_priors: str
    output_tokens: str

    @property
    def n_caller_regions(self) -> int:
        """How many caller regions receive traffic (> 1 adds the caller region to the observation)."""
        return int((self.caller_mix > 0).sum())

    @property
    def timed(self) -> bool:
        """Whether the clock matters (load cycle or finite concurrency)."""
        return self.load_amplitude > 0 or bool(np.isfinite(self.concurrency).any())


def parse_simulator(options: Mapping[str, Any], data: RoutingData) -> SimulatorConfig:
    """Validate ``options`` (keys of :data:`DEFAULTS`) against ``data``'s models and catalog."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"simulator: unknown options {sorted(unknown)}; expected some of {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **options}
    models = tuple(data.models)
    k = len(models)
    regions = tuple(str(r) for r in o["regions"])
    rtt = np.asarray(o["rtt_s"], dtype=np.float64)
    if (
        not regions
        or rtt.shape != (len(regions), len(regions))
        or not (np.isfinite(rtt).all() and (rtt >= 0).all())
    ):
        raise ValueError(f"simulator.rtt_s must be a {len(regions)}x{len(regions)} matrix of seconds >= 0")
    mix = (
        np.eye(len(regions))[0] if o["caller_mix"] is None else np.asarray(o["caller_mix"], dtype=np.float64)
    )
    if mix.shape != (len(regions),) or (mix < 0).any() or not mix.sum() > 0:
        raise ValueError(
            f"simulator.caller_mix must be {len(regions)} shares >= 0 with a positive sum, got {mix}"
        )
    for key in ("latency_priors", "output_tokens"):
        allowed = ("catalog", "fit", "auto") if key == "latency_priors" else ("fit", "mean")
        if o[key] not in allowed:
            raise ValueError(f"simulator.{key} must be one of {list(allowed)}, got {o[key]!r}")
    if not (0 <= o["tail_prob"] <= 1) or (o["tail_prob"] > 0 and not o["tail_alpha"] > 1):
        raise ValueError("simulator: tail_prob must lie in [0, 1] and tail_alpha be > 1")
    for key in ("load_amplitude", "decode_slowdown", "reject_delay_s"):
        if not (np.isfinite(o[key]) and o[key] >= 0):
            raise ValueError(f"simulator.{key} must be a finite number >= 0, got {o[key]!r}")
    if not (o["load_period_s"] > 0 and o["arrival_rate"] > 0) or o["decode_slowdown"] > 1:
        raise ValueError("simulator: load_period_s and arrival_rate must be > 0 and decode_slowdown <= 1")

    if o["provider_regions"] is None and "region" in data.catalog.table.columns:
        table = data.catalog.table.set_index("model")["region"]
        names = {m: table.get(m) for m in models if isinstance(table.get(m), str)}
    else:
        names = dict(o["provider_regions"] or {})
    _check_models("provider_regions", names, models)
    bad = {m: r for m, r in names.items() if r not in regions}
    if bad:
        raise ValueError(f"simulator.provider_regions: regions {bad} are not among {list(regions)}")
    provider_region = np.array([regions.index(names.get(m, regions[0])) for m in models])

    load = _per_model("provider_load", o["provider_load"], models, lambda v: 0 <= v <= 0.95)
    conc = _per_model("concurrency", o["concurrency"], models, lambda v: v >= 1, none=np.inf)
    queue = _per_model("queue_size", o["queue_size"], models, lambda v: v >= 0 and float(v).is_integer())
    timeout = _per_model("timeout_s", o["timeout_s"], models, lambda v: v > 0, none=np.inf)
    fallback = np.full(k, -1)
    fb = o["fallback"]
    if fb == "cheapest":
        catalog = data.catalog.subset(models) if tuple(data.catalog.models) != models else data.catalog
        price = np.asarray(catalog.usd_per_1m_input) + np.asarray(catalog.usd_per_1m_output)
        order = [models[i] for i in np.argsort(price, kind="stable")]
        fb = {m: order[0] if m != order[0] else (order[1] if k > 1 else None) for m in models}
    fb_map = {m: fb for m in models} if isinstance(fb, str) else dict(fb or {})
    _check_models("fallback", fb_map, models)
    for m, target in fb_map.items():
        if target is None:
            continue
        if target not in models:
            raise ValueError(f"simulator.fallback: {target!r} (fallback of {m!r}) is not one of the models")
        fallback[models.index(m)] = models.index(target) if target != m else -1
    return SimulatorConfig(
        regions=regions,
        rtt_s=rtt,
        caller_mix=mix / mix.sum(),
        provider_region=provider_region,
        provider_load=load,
        load_amplitude=float(o["load_amplitude"]),
        load_period_s=float(o["load_period_s"]),
        decode_slowdown=float(o["decode_slowdown"]),
        concurrency=conc,
        queue_size=queue.astype(np.int64),
        timeout_s=timeout,
        reject_delay_s=float(o["reject_delay_s"]),
        fallback=fallback,
        arrival_rate=float(o["arrival_rate"]),
        tail_prob=float(o["tail_prob"]),
        tail_alpha=float(o["tail_alpha"]),
        latency_priors=o["latency_priors"],
        output_tokens=o["output_tokens"],
    )


def _check_models(key: str, mapping: Mapping[str, Any], models: Sequence[str]) -> None:
    unknown = sorted(set(mapping) - set(models))
    if unknown:
        raise ValueError(f"simulator.{key}: unknown models {unknown}; expected some of {list(models)}")


def _per_model(key: str, value: Any, models: Sequence[str], ok, none: float = 0.0) -> np.ndarray:
    raw = dict(value) if isinstance(value, Mapping) else {m: value for m in models}
    _check_models(key, raw, models)
    out = np.full(len(models), none, dtype=np.float64)
    for i, m in enumerate(models):
        v = raw.get(m, None if isinstance(value, Mapping) else value)
        if v is None:
            continue
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float, np.number))
            or not np.isfinite(v)
            or not ok(v)
        ):
            raise ValueError(f"simulator.{key}: invalid value {v!r} for model {m!r}")
        out[i] = float(v)
    return out


class ModelQueues:
    """Per-model FIFO multi-server queues of one caller's own requests.

    Each model has ``concurrency`` slots; a request arriving at ``now`` starts on the slot that frees first (so
    requests start in arrival order) and waits for it; if ``queue_size`` requests are already waiting it is
    rejected. Requests must be submitted in non-decreasing ``now``.
    """

    def __init__(self, concurrency: np.ndarray, queue_size: np.ndarray) -> None:
        self.concurrency, self.queue_size = concurrency, queue_size
        self.reset()

    def reset(self) -> None:
        self._slots = [[0.0] * int(c) if np.isfinite(c) else [] for c in self.concurrency]
        self._waiting = [
            deque() for _ in self.concurrency
        ]  # start times of accepted requests not started yet

    def wait(self, now: float, model: int) -> float | None:
        """Seconds a request arriving at ``now`` waits for a slot, or None when the queue is full (429)."""
        if not np.isfinite(self.concurrency[model]):
            return 0.0
        waiting = self._waiting[model]
        while waiting and waiting[0] <= now:
            waiting.popleft()
        start = max(now, self._slots[model][0])
        if start > now and len(waiting) >= self.queue_size[model]:
            return None
        return start - now

    def occupy(self, now: float, model: int, busy_s: float) -> None:
        """Book the slot for a request that arrived at ``now``, waits :meth:`wait` and then holds it ``busy_s``."""
        if not np.isfinite(self.concurrency[model]):
            return
        start = max(now, self._slots[model][0])
        heapq.heapreplace(self._slots[model], start + busy_s)
        if start > now:
            self._waiting[model].append(start)

    def occupancy(self, now: float) -> np.ndarray:
        """(K,) busy slots plus waiting requests over ``concurrency + queue_size`` (0 when unlimited)."""
        out = np.zeros(len(self.concurrency))
        for k, c in enumerate(self.concurrency):
            if np.isfinite(c):
                busy = sum(t > now for t in self._slots[k])
                waiting = sum(t > now for t in self._waiting[k])
                out[k] = (busy + waiting) / (c + self.queue_size[k])
        return out


@dataclass(frozen=True)
class Served:
    """The outcome of one routed request (see the module docstring)."""

    quality: float
    cost_usd: float
    latency_s: float
    served_by: int  # model index that answered, -1 when the request failed
    status: str  # ok | fallback | failed
    first_status: str  # what the chosen model did: ok | rejected | timeout | unavailable
    wait_s: float


class RequestSimulator:
    """Serves requests against a dataset under a :class:`SimulatorConfig` and a :class:`Scenario`.

    Holds the caller's queues (stateful: :meth:`reset` clears them); draws every random number from the
    generator passed to :meth:`serve`.
    """

    def __init__(
        self, data: RoutingData, config: SimulatorConfig, scenario: Scenario, latency_sigma: float
    ) -> None:
        if tuple(data.catalog.models) != tuple(data.models):
            data = dataclasses.replace(data, catalog=data.catalog.subset(data.models))
        self.data, self.config, self.scenario, self.sigma = data, config, scenario, float(latency_sigma)
        if config.latency_priors == "catalog":
            self.ttft, self.tps = fill_latency_priors(data.catalog.ttft_s, data.catalog.output_tokens_per_s)
            self.prior_source = tuple(
                "catalog" if np.isfinite(a) and np.isfinite(b) else "default"
                for a, b in zip(data.catalog.ttft_s, data.catalog.output_tokens_per_s, strict=True)
            )
        else:
            fit = fit_latency_priors(data, min_points=10)
            self.ttft, self.tps, self.prior_source = fit.ttft_s, fit.tokens_per_s, fit.source
        self.lengths = fit_output_lengths(data.output_tokens)
        self.mean_tokens = fill_output_tokens(data.output_tokens)
        self.queues = ModelQueues(config.concurrency, config.queue_size)

    def reset(self) -> None:
        self.queues.reset()

    def utilisation(self, now: float) -> np.ndarray:
        """(K,) provider utilisation rho at time ``now``."""
        c = self.config
        cycle = c.load_amplitude * np.sin(2 * np.pi * now / c.load_period_s) if c.load_amplitude else 0.0
        return np.clip(c.provider_load + cycle, 0.0, 0.95)

    def rtt(self, region: int) -> np.ndarray:
        """(K,) round trip from caller region ``region`` to every model's provider."""
        return self.config.rtt_s[region, self.config.provider_region]

    def expected(self, step: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, K) expected ``(quality, cost_usd, latency_s)`` of choosing each model at request ``step``.

        Under the scenario's regime at ``step``, at the providers' base load (no daily cycle), averaged over
        the caller regions, without the caller's own queueing: a request to an unavailable model gets its
        fallback's outcome after the rejection delay (or quality 0). Tier penalties are not included.
        """
        c, data = self.config, self.data
        rho = c.provider_load
        tokens = self.mean_tokens.copy()
        if c.output_tokens == "fit":
            fitted = np.exp(self.lengths.mu + self.lengths.sigma**2 / 2)
            tokens = np.where(np.isnan(data.output_tokens), fitted[None, :], data.output_tokens)
        service = self.ttft / (1 - rho) + tokens / (self.tps * (1 - c.decode_slowdown * rho))
        service = service * noise_mean(self.sigma, c.tail_prob, c.tail_alpha)
        rtt = c.caller_mix @ c.rtt_s[:, c.provider_region]  # (K,)
        latency = np.where(np.isnan(data.latency_s), service + rtt[None, :], data.latency_s)
        quality = data.quality * self.scenario.quality_factor(step)[None, :]
        cost = data.cost_usd * self.scenario.price_factor(step)[None, :]
        available = self.scenario.available(step)
        q_out, c_out, l_out = quality.copy(), cost.copy(), latency.copy()
        for k in np.flatnonzero(~available):
            fb = int(c.fallback[k])
            delay = rtt[k] + c.reject_delay_s
            if fb >= 0 and available[fb]:
                q_out[:, k], c_out[:, k], l_out[:, k] = quality[:, fb], cost[:, fb], delay + latency[:, fb]
            else:
                q_out[:, k], c_out[:, k] = 0.0, 0.0
                l_out[:, k] = delay + (rtt[fb] + c.reject_delay_s if fb >= 0 else 0.0)
        return q_out, c_out, l_out

    def serve(
        self, rng: np.random.Generator, row: int, action: int, *, region: int, now: float, step: int
    ) -> Served:
        available = self.scenario.available(step)
        first = self._attempt(rng, row, action, region, now, step, available)
        if first[0] == "ok":
            return Served(first[3], first[2], first[1], action, "ok", "ok", first[4])
        fb = int(self.config.fallback[action])
        if fb >= 0:
            second = self._attempt(rng, row, fb, region, now + first[1], step, available)
            latency, cost = first[1] + second[1], first[2] + second[2]
            if second[0] == "ok":
                return Served(second[3], cost, latency, fb, "fallback", first[0], first[4] + second[4])
            return Served(0.0, cost, latency, -1, "failed", first[0], first[4] + second[4])
        return Served(0.0, first[2], first[1], -1, "failed", first[0], first[4])

    def _attempt(self, rng, row, k, region, now, step, available) -> tuple[str, float, float, float, float]:
        """(status, latency_s, cost_usd, quality, wait_s) of one attempt at model ``k``."""
        c, data = self.config, self.data
        rtt = float(c.rtt_s[region, c.provider_region[k]])
        if not available[k]:
            return "unavailable", rtt + c.reject_delay_s, 0.0, 0.0, 0.0
        wait = self.queues.wait(now, k)
        if wait is None:
            return "rejected", rtt + c.reject_delay_s, 0.0, 0.0, 0.0
        price = float(self.scenario.price_factor(step)[k])
        measured = float(data.latency_s[row, k])
        if np.isfinite(measured):
            service, rtt = measured, 0.0  # a measured latency already includes the network
        else:
            tokens = float(data.output_tokens[row, k])
            if not np.isfinite(tokens):
                tokens = (
                    self.lengths.sample(rng, k)
                    if c.output_tokens == "fit"
                    else float(self.mean_tokens[row, k])
                )
            rho = float(self.utilisation(now)[k])
            base = self.ttft[k] / (1 - rho) + tokens / (self.tps[k] * (1 - c.decode_slowdown * rho))
            service = float(base * heavy_tail_noise(rng, self.sigma, c.tail_prob, c.tail_alpha))
        if wait + service > c.timeout_s[k]:
            held = c.timeout_s[k] - wait
            if held > 0:
                self.queues.occupy(now, k, held)
            input_tokens = float(data.input_tokens[row, k])
            billed = (
                input_tokens * data.catalog.usd_per_1m_input[k] / 1e6 if np.isfinite(input_tokens) else 0.0
            )
            return "timeout", rtt + float(c.timeout_s[k]), billed * price, 0.0, min(wait, c.timeout_s[k])
        self.queues.occupy(now, k, service)
        quality = float(data.quality[row, k]) * float(self.scenario.quality_factor(step)[k])
        return "ok", rtt + wait + service, float(data.cost_usd[row, k]) * price, quality, wait
