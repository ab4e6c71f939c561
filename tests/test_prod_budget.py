"""Budgets in production: two replicas on one sqlite decision log pace a stream whose unconstrained spend is
3x the hourly target down to the target, each reading the spend all replicas logged. Time is simulated (an
injected clock stamps the log's rows and drives the pacer), so the test does not depend on wall time."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from router_rl.serve.app import create_app
from router_rl.serve.budget import SpendPacer, dual_step, priced_spend
from router_rl.serve.decision_log import read_logged_bandit_data
from router_rl.serve.router import Router
from router_rl.serve.settings import ServeSettings, SettingsError
from router_rl.serve.testing import ServerThread, shared_embedder, toy_artifact

MODELS = ["big", "mid", "small"]
COST = [0.01, 0.002, 0.0001]
T0 = 1.8e9
PER_HOUR, HOURS = 300, 4
TARGET = 0.95  # dollars per hour; unpaced, this stream spends ~2.85 (big answers ~93%)
WORDS = [
    "alpha",
    "river",
    "proof",
    "tax",
    "haiku",
    "sql",
    "graph",
    "cell",
    "loan",
    "poem",
    "orbit",
    "kernel",
    "essay",
    "bond",
    "virus",
    "chess",
]


class Clock:
    """Simulated unix time."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stream(tmp_path: Path, budget: float) -> tuple[np.ndarray, list[dict]]:
    """Send PER_HOUR * HOURS requests, one every 3600 / PER_HOUR simulated seconds, alternating between two
    replicas; the client reports each answer's realised cost (the predicted one +-20%) as feedback. Returns
    the realised spend per simulated hour and the replicas' /healthz at the end."""
    art = toy_artifact(tmp_path / "toy", MODELS, quality=[0.9, 0.7, 0.6], cost_usd=COST, slope=1.0, seed=2)
    log_db = str(tmp_path / "log.sqlite")
    clock = Clock(T0)
    rng = np.random.default_rng(0)
    apps = []
    for name in ("replica-a", "replica-b"):
        settings = ServeSettings(
            log_db=log_db,
            replica_id=name,
            budget_usd_per_hour=budget,
            budget_update_s=60.0,
            budget_window_s=300.0,
            budget_step=0.05,
        )
        router = Router(art, device="cpu", embedder=shared_embedder())
        apps.append(create_app(router, settings, clock=clock))
    servers = [ServerThread(app) for app in apps]
    with servers[0], servers[1]:
        clients = [httpx.Client(base_url=s.url, timeout=30) for s in servers]
        for i in range(PER_HOUR * HOURS):
            http = clients[i % 2]
            prompt = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) + f" #{i}"
            d = http.post("/v1/route", json={"prompt": prompt}).json()
            realised = COST[MODELS.index(d["model"])] * float(rng.uniform(0.8, 1.2))
            r = http.post(
                "/v1/feedback", json={"decision_id": d["decision_id"], "quality": 0.5, "cost_usd": realised}
            )
            assert r.status_code == 200, r.text
            clock.now += 3600.0 / PER_HOUR
        health = [c.get("/healthz").json() for c in clients]
        metrics = [c.get("/metrics").text for c in clients]
        for c in clients:
            c.close()
    data = read_logged_bandit_data(log_db)
    assert set(data.replica) == {"replica-a", "replica-b"}
    hour = ((data.timestamp - T0) // 3600).astype(int)
    per_hour = np.array([data.cost_usd[hour == h].sum() for h in range(HOURS)])
    for h, text in zip(health, metrics, strict=True):
        h["metrics"] = {
            s.name: s.value
            for f in text_string_to_metric_families(text)
            if f.name.startswith("router_rl_budget")
            for s in f.samples
        }
    return per_hour, health


def test_two_replicas_pace_spend_to_the_hourly_target(tmp_path: Path) -> None:
    per_hour, health = stream(tmp_path / "paced", TARGET)
    # lambda starts at 0 and reaches its level within minutes (a 300 s rate window); every hour holds
    np.testing.assert_allclose(per_hour, TARGET, rtol=0.06)
    assert per_hour[1:].mean() == pytest.approx(TARGET, rel=0.03)
    for h in health:
        budget = h["budget"]
        assert budget["multiplier"] > 0 and budget["target_usd_per_hour"] == TARGET
        assert budget["spend_usd_last_hour"] == pytest.approx(TARGET, rel=0.1)
        assert h["metrics"]["router_rl_budget_multiplier"] == budget["multiplier"]
        assert h["metrics"]["router_rl_budget_spend_usd_last_hour"] == budget["spend_usd_last_hour"]
        assert h["metrics"]["router_rl_budget_updates_total"] >= 150  # ~every 72 simulated s for 4 hours
    a, b = (h["budget"]["multiplier"] for h in health)
    assert a == pytest.approx(b, rel=1e-9)  # both step on the same rows at the same times: one multiplier


def test_without_a_budget_the_stream_spends_three_times_the_target(tmp_path: Path) -> None:
    """The control: the same stream unpaced (the old behaviour) spends ~3x the target every hour."""
    per_hour, health = stream(tmp_path / "free", 0.0)
    assert (per_hour > 2.5 * TARGET).all(), per_hour
    assert "budget" not in health[0]


def test_spend_pricing_and_the_dual_step() -> None:
    rows = [
        (1.0, 0.01, None, "[0.5, 0.5]", 0),  # measured upstream
        (2.0, None, 0.02, "[0.5, 0.5]", 1),  # reported by the client
        (3.0, None, None, "[0.001, 0.003]", 1),  # in flight: the predicted cost of the chosen model
        (4.0, None, None, "[0.001, null]", 1),  # no prediction: nothing
    ]
    assert priced_spend(rows) == [(1.0, 0.01), (2.0, 0.02), (3.0, 0.003)]
    assert dual_step(0.5, 3.0, 1.0, 0.1, 20.0) == pytest.approx(0.7)  # 3x over: up by 2 steps
    assert dual_step(0.05, 0.0, 1.0, 0.1, 20.0) == 0.0  # under: down, never below 0
    assert dual_step(19.99, 100.0, 1.0, 0.1, 20.0) == 20.0
    # the cumulative correction: $0.2 beyond the target so far, paid back over 1,000 s, adds 3600 * 0.2 / 1000
    assert dual_step(0.5, 1.0, 1.0, 0.1, 20.0, excess_usd=0.2, recover_s=1000.0) == pytest.approx(0.572)
    assert dual_step(0.5, 1.0, 1.0, 0.1, 20.0, excess_usd=5.0, recover_s=1000.0) == pytest.approx(
        0.6
    )  # at most 1
    assert dual_step(0.5, 1.0, 1.0, 0.1, 20.0, excess_usd=-5.0, recover_s=1000.0) == pytest.approx(0.4)
    rows = [(T0 - 299.0, 0.25, None, "[0]", 0)]
    plain = SpendPacer(
        lambda since: [],
        target_usd_per_hour=1.0,
        update_s=60.0,
        window_s=300.0,
        step=0.06,
        recover_s=math.inf,
        registry=CollectorRegistry(),
    )
    # $0.25 in the last 300 s is $3 an hour: after 60 s, lambda = 0.06 * (60 / 60) * (3 - 1)
    plain.last_update = T0 - 60.0
    assert plain.update(T0, rows) == pytest.approx(0.12, rel=1e-2)
    assert plain.spend_last_hour == 0.25
    pacer = SpendPacer(lambda since: [], target_usd_per_hour=1.0, update_s=60.0, window_s=300.0, step=0.06)
    assert pacer.recover_s == 1200.0  # four rate windows
    pacer.last_update = T0 - 60.0
    # the hour so far is 299 s, whose target is $0.083: $0.167 beyond it, paid back over 1,200 s adds 0.50
    assert pacer.update(T0, rows) == pytest.approx(0.06 * (2.01 + 0.50), rel=1e-2)
    assert pacer.excess == pytest.approx(0.25 - 299.0 / 3600.0)


def closed_loop(recover_s: float | None, hours: int = 2) -> list[float]:
    """A stream (one request every 12 s) whose spend rate is 3x the target at lambda = 0 and falls as
    exp(-lambda / 0.2): the pacer settles at lambda = 0.2 ln 3. Returns the spend per hour / the target."""
    pacer = SpendPacer(
        lambda since: [],
        target_usd_per_hour=1.0,
        update_s=60.0,
        window_s=300.0,
        step=0.05,
        recover_s=recover_s,
        registry=CollectorRegistry(),
    )
    rows: list[tuple] = []
    per_hour = [0.0] * hours
    for i in range(hours * 300):
        t = T0 + 12.0 * i
        if pacer.due(t):
            pacer.update(t, rows)
        cost = 3.0 * 12.0 / 3600.0 * math.exp(-pacer.multiplier / 0.2)
        rows.append((t, cost, None, "[0]", 0))
        per_hour[i // 300] += cost
    assert pacer.multiplier == pytest.approx(0.2 * math.log(3.0), rel=0.01)
    return per_hour


def test_the_cumulative_correction_pays_back_the_overspend_of_the_ramp_up() -> None:
    """While lambda climbs from 0 the stream overspends; the plain dual step (an integral of the rate error)
    never pays that back, so the first hour ends 2% over; paced toward the cumulative target it ends on it."""
    plain = closed_loop(math.inf)
    assert plain[0] > 1.02 and plain[1] == pytest.approx(1.0, abs=1e-3)
    corrected = closed_loop(None)
    np.testing.assert_allclose(corrected, 1.0, atol=0.004)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"budget_usd_per_hour": -1.0}, "budget_usd_per_hour"),
        ({"budget_usd_per_hour": 1.0, "log_db": None}, "without a decision log"),
        ({"budget_update_s": 0.0}, "budget_update_s"),
        ({"budget_step": float("nan")}, "budget_step"),
    ],
)
def test_bad_budget_settings(changes: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        ServeSettings(**changes).validate()
