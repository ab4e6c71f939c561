"""Tests of the serving simulator: latency components, heavy tails, load, queues, 429s, timeouts, fallbacks,
fitting to measured data, tiers and the simulated envs' vector form."""

from __future__ import annotations

import numpy as np
import pytest
from test_envs import MODELS, make_data

from router_rl.envs import RoutingEnv, make_vector_env
from router_rl.envs.latency import (
    expected_latency,
    fit_latency_priors,
    fit_output_lengths,
    heavy_tail_noise,
    noise_mean,
    sample_latency,
)
from router_rl.envs.scenarios import Scenario
from router_rl.envs.simulator import ModelQueues, RequestSimulator, parse_simulator
from router_rl.envs.traffic import V0_SIMULATOR, Traffic

LOCAL = {"regions": ["local"], "rtt_s": [[0.0]]}
TTFT, TPS = np.array([0.2, 0.5, 1.0]), np.array([100.0, 40.0, 50.0])  # the fixture's priors, defaults filled


@pytest.fixture
def data():
    return make_data()[0]


@pytest.fixture
def embeddings():
    return make_data()[1]


def simulator(data, sigma=0.0, scenario=None, **options) -> RequestSimulator:
    config = parse_simulator({"latency_priors": "catalog", **options}, data)
    return RequestSimulator(data, config, Scenario(scenario, data.models), sigma)


# ---------------------------------------------------------------------- noise
def test_heavy_tail_noise_without_tail_is_the_v0_stream():
    a = heavy_tail_noise(np.random.default_rng(4), 0.25, 0.0, 2.5, size=100)
    b = sample_latency(np.random.default_rng(4), 0.0, 1.0, np.ones(100), 0.25)  # base 1 s: b is the noise
    np.testing.assert_array_equal(a, b)


def test_heavy_tail_noise_has_the_stated_mean_and_a_heavy_tail():
    rng = np.random.default_rng(0)
    body = heavy_tail_noise(rng, 0.25, 0.0, 2.5, size=200_000)
    tailed = heavy_tail_noise(rng, 0.25, 0.1, 2.5, size=200_000)
    assert tailed.mean() == pytest.approx(noise_mean(0.25, 0.1, 2.5), rel=0.03)
    assert body.mean() == pytest.approx(noise_mean(0.25), rel=0.01)
    assert np.quantile(tailed, 0.999) > 2.5 * np.quantile(body, 0.999)
    with pytest.raises(ValueError, match="tail_alpha"):
        noise_mean(0.25, 0.1, 1.0)


# ---------------------------------------------------------------------- latency components
def test_latency_is_round_trip_plus_ttft_plus_decoding(data):
    rtt = [[0.02, 0.3], [0.3, 0.05]]
    sim = simulator(data, regions=["a", "b"], rtt_s=rtt, provider_regions={"large": "b"})
    rng = np.random.default_rng(0)
    for region in (0, 1):
        for k in range(3):
            out = sim.serve(rng, 3, k, region=region, now=0.0, step=0)
            provider = 1 if k == 2 else 0
            expected = rtt[region][provider] + TTFT[k] + data.output_tokens[3, k] / TPS[k]
            assert out.latency_s == pytest.approx(expected)
            assert (out.status, out.served_by, out.cost_usd) == ("ok", k, data.cost_usd[3, k])
    # A measured latency replaces round trip and service.
    assert sim.serve(rng, 0, 0, region=1, now=0.0, step=0).latency_s == 0.75


def test_provider_load_slows_first_token_and_decoding(data):
    sim = simulator(data, provider_load={"medium": 0.5}, decode_slowdown=0.5, **LOCAL)
    out = sim.serve(np.random.default_rng(0), 3, 1, region=0, now=0.0, step=0)
    assert out.latency_s == pytest.approx(TTFT[1] / 0.5 + data.output_tokens[3, 1] / (TPS[1] * 0.75))
    cyc = simulator(data, provider_load=0.3, load_amplitude=0.2, load_period_s=100.0, **LOCAL)
    np.testing.assert_allclose(cyc.utilisation(25.0), 0.5)
    np.testing.assert_allclose(cyc.utilisation(75.0), 0.1)


def test_queueing_latency_rises_with_load(data):
    """More own traffic on a model with a concurrency limit: longer waits, then 429s."""

    def run(rate: float) -> tuple[float, float]:
        sim = simulator(data, concurrency=2, queue_size=50, **LOCAL)
        rng, now, waits, rejected = np.random.default_rng(0), 0.0, [], 0
        for _ in range(3000):
            now += rng.exponential(1 / rate)
            out = sim.serve(rng, 3, 2, region=0, now=now, step=0)
            rejected += out.status == "failed"
            if out.status == "ok":
                waits.append(out.wait_s)
        return float(np.mean(waits)), rejected / 3000

    service = TTFT[2] + data.output_tokens[3, 2] / TPS[2]  # deterministic (sigma 0)
    loads = [0.3, 0.6, 0.9, 1.5]  # utilisation of the two slots
    results = [run(rho * 2 / service) for rho in loads]
    waits = [w for w, _ in results]
    # M/D/2 at rho = 0.3: about half the M/M/2 (Erlang C) wait, 2 rho^2 / (1 + rho) * service / (2 (1 - rho)).
    erlang_c = 2 * 0.3**2 / 1.3 * service / (2 * 0.7)
    assert waits[0] == pytest.approx(erlang_c / 2, rel=0.3)
    assert all(a < b for a, b in zip(waits, waits[1:], strict=False))
    assert results[2][1] == 0.0 and results[3][1] > 0.2  # beyond capacity the queue fills and 429s follow


def test_model_queues_are_fifo_multi_server():
    q = ModelQueues(np.array([2.0]), np.array([1]))
    assert q.wait(0.0, 0) == 0.0
    q.occupy(0.0, 0, 10.0)
    assert q.wait(1.0, 0) == 0.0
    q.occupy(1.0, 0, 10.0)
    assert q.wait(2.0, 0) == pytest.approx(8.0)  # waits for the first slot (free at 10)
    q.occupy(2.0, 0, 5.0)
    assert q.wait(3.0, 0) is None  # one waiting already: the queue of size 1 is full
    np.testing.assert_allclose(q.occupancy(3.0), [1.0])
    assert q.wait(10.5, 0) == pytest.approx(0.5)  # the waiting one started at 10; next slot frees at 11
    q.reset()
    np.testing.assert_allclose(q.occupancy(0.0), [0.0])


def test_rejection_charges_the_fallbacks_cost_and_delay(data):
    sim = simulator(
        data, concurrency=1, queue_size=0, fallback={"large": "small"}, reject_delay_s=0.1, **LOCAL
    )
    rng = np.random.default_rng(0)
    first = sim.serve(rng, 3, 2, region=0, now=0.0, step=0)
    second = sim.serve(rng, 3, 2, region=0, now=0.5, step=0)  # the only slot is busy: 429, then "small"
    assert first.status == "ok"
    assert (second.status, second.first_status, second.served_by) == ("fallback", "rejected", 0)
    assert second.quality == data.quality[3, 0] and second.cost_usd == data.cost_usd[3, 0]
    assert second.latency_s == pytest.approx(0.1 + TTFT[0] + data.output_tokens[3, 0] / TPS[0])
    no_fallback = simulator(data, concurrency=1, **LOCAL)
    no_fallback.serve(rng, 3, 2, region=0, now=0.0, step=0)
    failed = no_fallback.serve(rng, 3, 2, region=0, now=0.5, step=0)
    assert (failed.status, failed.quality, failed.cost_usd, failed.served_by) == ("failed", 0.0, 0.0, -1)


def test_timeout_bills_input_tokens_and_falls_back(data):
    sim = simulator(data, timeout_s={"large": 1.0}, fallback="cheapest", **LOCAL)
    out = sim.serve(np.random.default_rng(0), 3, 2, region=0, now=0.0, step=0)
    billed = data.input_tokens[3, 2] * 10.0 / 1e6
    assert (out.status, out.first_status, out.served_by) == ("fallback", "timeout", 0)
    assert out.cost_usd == pytest.approx(billed + data.cost_usd[3, 0])
    assert out.latency_s == pytest.approx(1.0 + TTFT[0] + data.output_tokens[3, 0] / TPS[0])


def test_cheapest_fallback_and_catalog_regions(data):
    config = parse_simulator({"fallback": "cheapest"}, data)
    np.testing.assert_array_equal(config.fallback, [1, 0, 0])  # small's own fallback is the next cheapest
    data.catalog.table["region"] = ["eu-west", "us-east", "ap-southeast"]
    np.testing.assert_array_equal(parse_simulator({}, data).provider_region, [1, 0, 2])


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"bogus": 1}, "unknown options"),
        ({"rtt_s": [[0.1]]}, "rtt_s must be a 3x3"),
        ({"caller_mix": [0, 0, 0]}, "caller_mix"),
        ({"latency_priors": "guess"}, "latency_priors"),
        ({"tail_prob": 0.1, "tail_alpha": 1.0}, "tail_alpha"),
        ({"concurrency": {"huge": 3}}, "unknown models"),
        ({"concurrency": 0}, "invalid value 0 for model 'small'"),
        ({"queue_size": 1.5}, "queue_size"),
        ({"provider_load": 0.99}, "provider_load"),
        ({"fallback": "nope"}, "not one of the models"),
        ({"provider_regions": {"small": "mars"}}, "mars"),
        ({"arrival_rate": 0}, "arrival_rate"),
    ],
)
def test_parse_simulator_rejects_bad_options(data, options, match):
    with pytest.raises(ValueError, match=match):
        parse_simulator(options, data)


# ---------------------------------------------------------------------- fitting to the data
def test_latency_priors_are_fitted_from_measured_latencies(data):
    rng = np.random.default_rng(0)
    data.latency_s[:, 1] = 0.7 + data.output_tokens[:, 1] / 33.0 + rng.normal(0, 0.01, data.n_prompts)
    fit = fit_latency_priors(data, min_points=10)
    assert fit.source == ("catalog", "fit", "default")
    assert fit.ttft_s[1] == pytest.approx(0.7, abs=0.02) and fit.tokens_per_s[1] == pytest.approx(
        33.0, rel=0.01
    )
    assert (fit.ttft_s[0], fit.tokens_per_s[0]) == (0.2, 100.0)
    # An env with latency_priors=fit uses the fitted values where a pair has no measurement.
    data.latency_s[4, 1] = np.nan
    sim = simulator(data, latency_priors="fit", **LOCAL)
    out = sim.serve(np.random.default_rng(0), 4, 1, region=0, now=0.0, step=0)
    assert out.latency_s == pytest.approx(0.7 + data.output_tokens[4, 1] / 33.0, rel=0.02)


def test_missing_output_lengths_come_from_the_fitted_distribution(data):
    lengths = fit_output_lengths(data.output_tokens)
    logs = np.log(data.output_tokens[:, 2])
    assert lengths.mu[2] == pytest.approx(logs.mean()) and lengths.sigma[2] == pytest.approx(logs.std())
    data.output_tokens[5, 0] = np.nan
    sim = simulator(data, output_tokens="fit", **LOCAL)
    rng = np.random.default_rng(0)
    draws = [sim.serve(rng, 5, 0, region=0, now=0.0, step=0).latency_s for _ in range(400)]
    assert np.std(draws) > 0.1  # a distribution, not the mean
    assert np.median(draws) == pytest.approx(TTFT[0] + np.exp(lengths.mu[0]) / TPS[0], rel=0.15)
    mean = simulator(data, output_tokens="mean", **LOCAL)
    assert mean.serve(rng, 5, 0, region=0, now=0.0, step=0).latency_s == pytest.approx(
        TTFT[0] + np.nanmean(data.output_tokens[:, 0]) / TPS[0]
    )


def test_expected_latency_matches_the_simulated_mean(data):
    sim = simulator(data, sigma=0.3, tail_prob=0.1, caller_mix=[0.5, 0.5, 0.0])
    rng = np.random.default_rng(0)
    draws = np.array(
        [
            sim.serve(rng, 3, 1, region=int(rng.random() < 0.5), now=0.0, step=0).latency_s
            for _ in range(20_000)
        ]
    )
    _, _, expected = sim.expected()
    assert draws.mean() == pytest.approx(expected[3, 1], rel=0.02)
    rtt = (0.02 + 0.09) / 2  # every provider in us-east; callers half in us-east, half in eu-west
    closed = expected_latency(data, 0.3, tail_prob=0.1, rtt_s=rtt)
    np.testing.assert_allclose(expected, closed)
    # The v0 model: the keyword defaults and the V0 simulator agree with the old formula.
    v0 = RequestSimulator(data, parse_simulator(V0_SIMULATOR, data), Scenario(None, MODELS), 0.25)
    np.testing.assert_allclose(v0.expected()[2], expected_latency(data, 0.25))


# ---------------------------------------------------------------------- tiers and envs
def test_tier_violations_are_penalised(data, embeddings):
    tiers = {"fast": {"budget_s": 3.0, "share": 1.0, "penalty": 0.4}}
    env = RoutingEnv(data=data, embeddings=embeddings, tiers=tiers, latency_sigma=0.0, cost_weight=0.5)
    assert env.observation_space.shape == (embeddings.shape[1] + 1,)
    obs, info = env.reset(seed=0, options={"row": 3})
    assert info["tier"] == "fast" and obs[-1] == 1.0
    for a in range(3):
        env.reset(options={"row": 3})
        _, r, *_, info = env.step(a)
        slow = info["latency_s"] > 3.0
        assert info["sla_violated"] == slow and info["sla_penalty"] == (0.4 if slow else 0.0)
        assert r == pytest.approx(info["quality"] - 0.5 * info["cost"] - info["sla_penalty"])
    assert {True, False} <= {
        (env.reset(options={"row": 3}), env.step(a)[4]["sla_violated"])[1] for a in range(3)
    }


def test_traffic_draws_tiers_and_regions_with_their_shares(data):
    traffic = Traffic(
        data,
        simulator={"caller_mix": [0.6, 0.4, 0.0]},
        tiers="default",
        scenario=None,
        latency_sigma=0.25,
    )
    assert traffic.context_dim == 3 + 3
    rng = np.random.default_rng(0)
    requests = [traffic.next_request(rng) for _ in range(5000)]
    tiers = np.bincount([r.tier for r in requests], minlength=3) / 5000
    regions = np.bincount([r.region for r in requests], minlength=3) / 5000
    np.testing.assert_allclose(tiers, [0.3, 0.5, 0.2], atol=0.02)
    np.testing.assert_allclose(regions, [0.6, 0.4, 0.0], atol=0.02)
    ctx = traffic.context(requests[0])
    assert ctx.sum() == 2 and ctx[requests[0].tier] == 1 and ctx[3 + requests[0].region] == 1


def test_simulated_vector_env_counts_requests_across_sub_envs(data, embeddings):
    envs = make_vector_env(4, data=data, embeddings=embeddings, simulator={"concurrency": 2, "queue_size": 2})
    _, infos = envs.reset(seed=0)
    np.testing.assert_array_equal(infos["step"], [0, 1, 2, 3])
    _, _, term, _, infos = envs.step(np.zeros(4, dtype=np.int64))
    assert term.all()
    np.testing.assert_array_equal(infos["final_info"]["step"], [0, 1, 2, 3])
    np.testing.assert_array_equal(infos["step"], [4, 5, 6, 7])  # SAME_STEP: the next requests
    assert set(infos["final_info"]["status"]) <= {"ok", "fallback", "failed"}
    envs.close()


def test_simulated_env_queues_fill_with_traffic(data, embeddings):
    def waits(rate: float) -> float:
        env = RoutingEnv(
            data=data,
            embeddings=embeddings,
            simulator={"concurrency": 1, "queue_size": 100, "arrival_rate": rate, **LOCAL},
        )
        env.reset(seed=0)
        out = []
        for _ in range(300):
            env.reset()
            out.append(env.step(1)[4]["wait_s"])
        return float(np.mean(out))

    light, busy, overloaded = waits(0.002), waits(0.05), waits(0.2)
    assert light < 0.2 * busy and busy < 0.2 * overloaded
