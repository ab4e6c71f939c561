"""Budgets in production: a spend target per hour, paced by a primal-dual multiplier on the cost weight,
shared by every replica that writes one decision log.

Every ``budget_update_s`` seconds a replica reads the trailing hour of decisions from the log (all replicas
write there) and prices what they spent: a decision's realised cost (measured from the upstream's token
usage, else the cost a client reported with its feedback), else, for a request still in flight or routed
with ``/v1/route`` and never reported, the policy's predicted cost of the chosen model. The multiplier then
takes a projected dual (sub)gradient step, as :class:`router_rl.policies.pacing.BudgetPacer` does per
decision in the simulator, corrected toward the cumulative target:

    lambda <- clip(lambda + eta * (dt / 60 s) * ((r - B) / B + clip(E / (B * T_r), -1, 1)), 0, lambda_max)

with ``B`` the target in dollars per hour, ``r`` the spend rate of the last ``budget_window_s`` seconds in
dollars per hour (over less when the log is younger), ``dt`` the time since the last step (so ``eta`` is
a step per minute, whatever the update interval), ``E`` the dollars spent beyond the target in the hour so
far (the trailing hour's spend minus ``B`` times the hour, or times the time since its first row when the
traffic is younger) and ``T_r`` (``recover_s``, four rate windows by default) the time over which that excess
is paid back. Steps happen at multiples of ``budget_update_s`` of the clock and count the rows logged before
that time (read from that time minus the hour), so replicas stepping at the same times read the same spend
and hold the same multiplier (two replicas sharing a stream: equal to the last digit in the test). Every
decision is made with cost weight ``w + lambda``,
``w`` its own (the request's, else the artifact's default); the reward prices cost as ``w * cost_usd /
cost_scale``, so ``lambda`` is in the same units as the cost weight. The log's ``cost_weight`` column holds
the weight the decision was made with (``w + lambda``) and its ``limits`` the multiplier.

Why a short rate window rather than the hour: the hour's spend is a moving average that lags the multiplier
by half an hour, and an integral step on a lagged measurement oscillates (a simulation of a 3x overspending
stream, 300 requests an hour: hourly spend 0.89, 1.21, 0.80, 1.17, 0.84 of the target with the hour as the
window, 1.04, 1.00, 0.99, 1.01, 1.01 with 300 s).
The trailing hour is what ``/healthz`` and ``router_rl_budget_spend_usd_last_hour`` report.

Why the cumulative term: the plain step integrates the rate error, so lambda is (a lagged copy of) the
cumulative overspend, and what was overspent while lambda climbed from 0 (or underspent while it was held at
0) is never paid back: the hour ends over by the ramp-up (a stream 3x over its target, a request every 12 s:
first hour +2.3% with the plain step, +0.05% with the correction, tests/test_prod_budget.py; the replay of
experiments/production_loop.py, 3 seeds x 2 arms at 40 requests/s: whole replay +0.7..+2.3% with the plain
step, -0.6..+1.0% with the correction; its last third, 1,600 requests in 40 s, +0.3..+3.8% and +1.0..+4.0%:
a request's cost varies with a coefficient of variation of 2.1 there, so at a fixed multiplier the mean of
1,600 has an sd of 5%). Paying ``E`` back over ``T_r`` makes the controller proportional-integral on the
cumulative spend, whose error then decays instead of staying; ``T_r`` of four windows keeps it well damped
(the loop's time constant is about a window).

All replicas see the same spend, so their multipliers move together; a replica that starts later starts at
lambda = 0 and catches up at the step rate. Reference: Balseiro, Lu and Mirrokni (2020), "Dual mirror
descent for online allocation problems", ICML.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("router_rl.serve")

HOUR_S = 3600.0


def priced_spend(rows: list[tuple]) -> list[tuple[float, float]]:
    """``(ts, dollars)`` per decision row ``(ts, cost_usd, feedback_cost_usd, pred_cost_usd JSON, action)``:
    the measured cost, else the reported one, else the chosen model's predicted cost (0 when none)."""
    out = []
    for ts, measured, reported, predicted, action in rows:
        if measured is not None:
            cost = float(measured)
        elif reported is not None:
            cost = float(reported)
        else:
            try:
                value = json.loads(predicted)[int(action)]
                cost = float(value) if value is not None else 0.0
            except (TypeError, ValueError, IndexError):
                cost = 0.0
        if math.isfinite(cost) and cost > 0:
            out.append((float(ts), cost))
    return out


def dual_step(
    multiplier: float,
    rate_usd_per_hour: float,
    target_usd_per_hour: float,
    step: float,
    max_multiplier: float,
    excess_usd: float = 0.0,
    recover_s: float = math.inf,
) -> float:
    """One projected dual step on the rate error, corrected toward the cumulative target:
    ``clip(lambda + step * ((rate - B) / B + clip(3600 * excess / (B * recover_s), -1, 1)), 0, max)``, with
    ``excess`` the dollars spent beyond the target so far (``recover_s = inf``: the plain dual step)."""
    correction = 0.0
    if math.isfinite(recover_s):
        correction = HOUR_S * excess_usd / (target_usd_per_hour * recover_s)
        correction = min(max(correction, -1.0), 1.0)  # the paced rate stays in [0, 2B]
    error = rate_usd_per_hour / target_usd_per_hour - 1.0 + correction
    return min(max(multiplier + step * error, 0.0), max_multiplier)


class SpendPacer:
    """The multiplier of one replica and the spend it last read.

    Args:
        read_rows: ``since -> rows`` of the decisions with ``ts >= since`` (blocking; see :func:`priced_spend`).
        target_usd_per_hour: ``B``.
        update_s: seconds between two reads of the log.
        window_s: the rate window of the dual step.
        step: ``eta``, per minute.
        max_multiplier: ``lambda_max``.
        recover_s: the time over which the hour's spend beyond (or short of) its target so far is paid back;
            ``None``: four rate windows; ``inf``: no cumulative correction (the plain dual step).
        clock: unix seconds (the decision log's timestamps come from the same clock).
        registry: the service's Prometheus registry.
    """

    def __init__(
        self,
        read_rows: Callable[[float], list[tuple]],
        *,
        target_usd_per_hour: float,
        update_s: float = 10.0,
        window_s: float = 300.0,
        step: float = 0.05,
        max_multiplier: float = 20.0,
        recover_s: float | None = None,
        clock: Callable[[], float] = time.time,
        registry: Any = None,
    ) -> None:
        from prometheus_client import Counter, Gauge

        self.read_rows = read_rows
        self.target = float(target_usd_per_hour)
        self.update_s = float(update_s)
        self.window_s = float(window_s)
        self.step = float(step)
        self.max_multiplier = float(max_multiplier)
        self.recover_s = 4.0 * self.window_s if recover_s is None else float(recover_s)
        self.clock = clock
        self.multiplier = 0.0
        self.spend_last_hour = 0.0
        self.rate = 0.0
        self.excess = 0.0
        self.last_update: float | None = None
        self.last_error: str | None = None
        self._busy = False
        self.g_multiplier = Gauge(
            "router_rl_budget_multiplier",
            "The budget pacer's lambda, added to every cost weight",
            registry=registry,
        )
        self.g_spend = Gauge(
            "router_rl_budget_spend_usd_last_hour",
            "Dollars spent over the trailing hour by every replica of the decision log (predicted for in-flight)",
            registry=registry,
        )
        self.g_target = Gauge(
            "router_rl_budget_target_usd_per_hour", "The spend target per hour", registry=registry
        )
        self.g_target.set(self.target)
        self.updates = Counter(
            "router_rl_budget_updates",
            "Budget pacer updates by result (ok, error)",
            ["result"],
            registry=registry,
        )

    def grid(self, now: float) -> float:
        """The update time ``now`` belongs to: a multiple of ``update_s``, the same on every replica."""
        return math.floor(now / self.update_s) * self.update_s

    def due(self, now: float) -> bool:
        return not self._busy and (self.last_update is None or self.grid(now) > self.last_update)

    def update(self, now: float, rows: list[tuple]) -> float:
        """Take the dual step of the grid time of ``now`` from the trailing hour's ``rows`` (those before the
        grid time count); returns the new multiplier. Replicas that step at the same grid times read the same
        rows, so they compute the same multipliers."""
        now = self.grid(now)
        spend = [(t, c) for t, c in priced_spend(rows) if t < now]
        hour = [(t, c) for t, c in spend if t >= now - HOUR_S]
        self.spend_last_hour = sum(c for _, c in hour)
        # the hour so far: the trailing hour, or the time since its first priced row when traffic is younger
        elapsed = min(HOUR_S, max(now - min(t for t, _ in hour), self.update_s)) if hour else 0.0
        self.excess = self.spend_last_hour - self.target * elapsed / HOUR_S
        recent = [(t, c) for t, c in spend if t >= now - self.window_s]
        if recent:  # over the window, or over the log's age when it is younger
            span = min(self.window_s, max(now - min(t for t, _ in spend), self.update_s))
            self.rate = sum(c for _, c in recent) / span * HOUR_S
        else:
            self.rate = 0.0
        dt = self.update_s if self.last_update is None else now - self.last_update
        step = self.step * max(dt, 0.0) / 60.0
        self.multiplier = dual_step(
            self.multiplier, self.rate, self.target, step, self.max_multiplier, self.excess, self.recover_s
        )
        self.last_update = now
        self.g_multiplier.set(self.multiplier)
        self.g_spend.set(self.spend_last_hour)
        return self.multiplier

    async def refresh_if_due(self) -> None:
        """Read the log and step when an update is due; never raises (a failed read keeps lambda)."""
        now = self.clock()
        if not self.due(now):
            return
        self._busy = True
        try:
            since = self.grid(now) - max(HOUR_S, self.window_s)  # the same rows on every replica
            rows = await asyncio.get_running_loop().run_in_executor(None, self.read_rows, since)
            self.update(now, rows)
            self.last_error = None
            self.updates.labels(result="ok").inc()
        except Exception as err:  # noqa: BLE001 - the log is unreachable: keep pacing with the last lambda
            self.last_error = str(err)
            self.last_update = self.grid(now)  # retried at the next interval, not on every request
            self.updates.labels(result="error").inc()
            log.warning("budget pacer could not read the decision log: %s", err)
        finally:
            self._busy = False

    def describe(self) -> dict[str, Any]:
        """For ``/healthz``."""
        return {
            "target_usd_per_hour": self.target,
            "multiplier": self.multiplier,
            "spend_usd_last_hour": self.spend_last_hour,
            "rate_usd_per_hour": self.rate,
            "excess_usd": self.excess,
            "last_error": self.last_error,
        }


def log_reader(location: Any) -> Callable[[float], list[tuple]]:
    """``since -> rows`` for :class:`SpendPacer` from the decision log at ``location`` (one read-only
    connection per read: the writer thread keeps its own)."""
    from router_rl.serve.log_backends import open_backend

    def read(since: float) -> list[tuple]:
        db = open_backend(location, read_only=True)
        try:
            return db.fetchall(
                "SELECT d.ts, d.cost_usd, f.cost_usd, d.pred_cost_usd, d.action FROM decisions d"
                " LEFT JOIN feedback f ON f.decision_id = d.decision_id AND f.source = 'client'"
                " WHERE d.ts >= ?",
                (float(since),),
            )
        finally:
            db.close()

    return read
