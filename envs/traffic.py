"""The request stream the environments share: each request's context (tier, caller region, arrival time,
request index) and its service through the :class:`~router_rl.envs.simulator.RequestSimulator`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router_rl.envs.scenarios import Scenario
from router_rl.envs.simulator import RequestSimulator, Served, parse_simulator
from router_rl.envs.tiers import parse_tiers
from router_rl.types import RoutingData

V0_SIMULATOR: dict[str, Any] = {
    "latency_priors": "catalog",
    "output_tokens": "mean",
    "regions": ["local"],
    "rtt_s": [[0.0]],
}
"""Simulator options used when an env gets a scenario or tiers but no ``simulator``: v0's latency model."""


@dataclass(frozen=True)
class Request:
    """One request's context: index in the stream, arrival time, tier and caller region (indices, -1 = none)."""

    step: int
    now: float
    tier: int
    region: int


class Traffic:
    """Draws requests and serves them.

    Args:
        data: the dataset.
        simulator: options of :func:`router_rl.envs.simulator.parse_simulator`; None = :data:`V0_SIMULATOR`.
        tiers: see :func:`router_rl.envs.tiers.parse_tiers`.
        scenario: events of :class:`router_rl.envs.scenarios.Scenario`.
        latency_sigma: log-normal spread of the latency noise.
        latency_slo_s: an optional latency objective for every request (seconds): a tier-less request slower
            than it, or a tiered one slower than ``min(tier budget, slo)``, is penalised ``slo_penalty``.
        clock_offset, clock_stride: request ``n`` of this env (since its last seeded reset) has index
            ``clock_offset + clock_stride * n``; vector envs set them so indices count the whole vector env.
    """

    def __init__(
        self,
        data: RoutingData,
        *,
        simulator: Mapping[str, Any] | None,
        tiers: str | Mapping[str, Any] | None,
        scenario: Sequence[Mapping[str, Any]] | None,
        latency_sigma: float,
        latency_slo_s: float | None = None,
        slo_penalty: float = 0.0,
        clock_offset: int = 0,
        clock_stride: int = 1,
    ) -> None:
        for name, value in (("clock_offset", clock_offset), ("clock_stride", clock_stride)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, np.integer))
                or value < (name == "clock_stride")
            ):
                raise ValueError(f"{name} must be an integer >= {int(name == 'clock_stride')}, got {value!r}")
        if latency_slo_s is not None and not (np.isfinite(latency_slo_s) and latency_slo_s > 0):
            raise ValueError(f"latency_slo_s must be None or a number > 0, got {latency_slo_s!r}")
        if not (np.isfinite(slo_penalty) and slo_penalty >= 0):
            raise ValueError(f"slo_penalty must be a finite number >= 0, got {slo_penalty!r}")
        self.config = parse_simulator(V0_SIMULATOR if simulator is None else dict(simulator), data)
        self.scenario = Scenario(scenario, data.models)
        self.sim = RequestSimulator(data, self.config, self.scenario, latency_sigma)
        self.tiers = parse_tiers(tiers)
        self.slo_s = None if latency_slo_s is None else float(latency_slo_s)
        self.slo_penalty = float(slo_penalty)
        self.clock_offset, self.clock_stride = int(clock_offset), int(clock_stride)
        self.n_tiers = 0 if self.tiers is None else len(self.tiers)
        self.n_regions = len(self.config.regions) if self.config.n_caller_regions > 1 else 0
        self.reset()

    @property
    def context_dim(self) -> int:
        """Length of :meth:`context`: a tier one-hot block, then a caller-region one-hot block when the
        traffic comes from more than one region."""
        return self.n_tiers + self.n_regions

    def reset(self) -> None:
        """Restart the stream: request index 0, time 0, empty queues."""
        self.sim.reset()
        self._count, self._now = 0, 0.0

    def new_window(self) -> None:
        """Empty the queues and restart the clock at 0, keeping the request index (a budgeted episode's start)."""
        self.sim.reset()
        self._now = 0.0

    def occupancy(self, now: float) -> np.ndarray:
        """(K,) the caller's own load on every model at ``now`` (busy slots plus queue over capacity)."""
        return self.sim.queues.occupancy(now)

    def next_request(self, rng: np.random.Generator) -> Request:
        """Draw the next request's context (and its arrival time when the clock matters)."""
        tier = -1 if self.tiers is None else int(rng.choice(self.n_tiers, p=self.tiers.share))
        if self.n_regions:
            region = int(rng.choice(len(self.config.regions), p=self.config.caller_mix))
        else:
            region = int(np.argmax(self.config.caller_mix))
        if self.config.timed:
            self._now += float(rng.exponential(1.0 / self.config.arrival_rate))
        step = self.clock_offset + self.clock_stride * self._count
        self._count += 1
        return Request(step=step, now=self._now, tier=tier, region=region)

    def context(self, request: Request) -> np.ndarray:
        """(context_dim,) float32 one-hot features of the request's tier and caller region."""
        out = np.zeros(self.context_dim, dtype=np.float32)
        if self.n_tiers:
            out[request.tier] = 1.0
        if self.n_regions:
            out[self.n_tiers + request.region] = 1.0
        return out

    def budget_s(self, request: Request) -> float:
        """The request's latency budget in seconds (inf when none applies)."""
        budget = np.inf if request.tier < 0 else float(self.tiers.budget_s[request.tier])
        return min(budget, self.slo_s) if self.slo_s is not None else budget

    def penalty(self, request: Request) -> float:
        """Reward points lost when the request's latency exceeds :meth:`budget_s`."""
        tier_penalty = 0.0 if request.tier < 0 else float(self.tiers.penalty[request.tier])
        return max(tier_penalty, self.slo_penalty if self.slo_s is not None else 0.0)

    def serve(self, rng: np.random.Generator, row: int, action: int, request: Request) -> tuple[Served, bool]:
        """Serve ``request`` (prompt ``row``) with model ``action``; returns the outcome and whether it
        exceeded the latency budget."""
        served = self.sim.serve(rng, row, action, region=request.region, now=request.now, step=request.step)
        return served, bool(served.latency_s > self.budget_s(request))

    def info(self, request: Request, served: Served, violated: bool) -> dict[str, Any]:
        """The simulator's part of a step's ``info`` (scalars only)."""
        models = self.sim.data.models
        out: dict[str, Any] = {
            "step": request.step,
            "served_by": models[served.served_by] if served.served_by >= 0 else "",
            "status": served.status,
            "first_status": served.first_status,
            "wait_s": served.wait_s,
        }
        if self.n_tiers:
            out["tier"] = self.tiers.names[request.tier]
        if self.n_regions:
            out["region"] = self.config.regions[request.region]
        if self.n_tiers or self.slo_s is not None:
            out["latency_budget_s"] = self.budget_s(request)
            out["sla_violated"] = violated
            out["sla_penalty"] = self.penalty(request) if violated else 0.0
        return out
