"""Micro-batching: concurrent requests share encoder and head passes, with a bounded wait, and each request
still gets exactly the decision it would get alone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from router_rl.embeddings import Embedder
from router_rl.serve.app import create_app
from router_rl.serve.batching import MicroBatcher, Overloaded
from router_rl.serve.router import Router, explore
from router_rl.serve.settings import ServeSettings
from router_rl.serve.testing import ServerThread, shared_embedder, toy_artifact

MODELS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Router:
    # slope > 0: decisions depend on the prompt, so a mix-up inside a batch would show
    path = toy_artifact(
        tmp_path_factory.mktemp("batching") / "artifact",
        MODELS,
        quality=[0.6, 0.55, 0.5, 0.45],
        cost_usd=[0.01, 0.004, 0.002, 0.001],
        latency_s=[2.0, 1.5, 1.0, 0.5],
        slope=3.0,
    )
    return Router(path, device="cpu", embedder=shared_embedder())


PROMPTS = [f"question {i}: {'why ' * (i % 7)}does topic {i * 37 % 11} matter?" for i in range(32)]


def test_concurrent_routes_are_batched_and_decide_like_router_decide(router: Router, tmp_path: Path) -> None:
    limits = [
        {"cost_weight": [0.0, 5.0][i % 2], **({"candidates": ["b", "d"]} if i % 3 == 0 else {})}
        for i in range(len(PROMPTS))
    ]
    settings = ServeSettings(log_db=None, batch_max_size=8, batch_max_wait_ms=50.0)
    app = create_app(router, settings)
    with ServerThread(app) as server:
        before_embed, before_head = router.n_embed_calls, router.n_head_calls

        async def fire() -> list[dict]:
            async with httpx.AsyncClient(timeout=60) as client:
                rs = await asyncio.gather(
                    *(
                        client.post(f"{server.url}/v1/route", json={"prompt": p, **lim})
                        for p, lim in zip(PROMPTS, limits, strict=True)
                    )
                )
            return [r.json() for r in rs]

        answers = asyncio.run(fire())
        embed_calls = router.n_embed_calls - before_embed
        head_calls = router.n_head_calls - before_head
        batcher = app.state.service.batcher
        registry = app.state.service.metrics.registry
        sizes_le_8 = registry.get_sample_value("router_rl_batch_size_bucket", {"le": "8.0"})
        sizes_le_4 = registry.get_sample_value("router_rl_batch_size_bucket", {"le": "4.0"})
        n_batches_seen = registry.get_sample_value("router_rl_batch_size_count")
    # far fewer encoder and head passes than requests, and never more than batch_max_size per pass
    assert embed_calls == head_calls == batcher.n_batches
    assert len(PROMPTS) / 8 <= embed_calls < len(PROMPTS) / 2, embed_calls
    assert batcher.n_items == len(PROMPTS)
    assert n_batches_seen == embed_calls and sizes_le_8 == n_batches_seen and sizes_le_4 < n_batches_seen
    # the same decisions as Router.decide on the requests grouped by limits (other batch compositions)
    for key in {str(lim) for lim in limits}:
        rows = [i for i, lim in enumerate(limits) if str(lim) == key]
        direct = router.decide([PROMPTS[i] for i in rows], **limits[rows[0]])
        for i, d in zip(rows, direct, strict=True):
            assert answers[i]["model"] == d.model, (PROMPTS[i], limits[i])
            assert answers[i]["scores"] == pytest.approx(d.scores, abs=1e-5)
    assert len({a["model"] for a in answers}) > 1  # the prompts really lead to different choices


def test_decide_requests_scores_each_request_with_its_own_limits(router: Router) -> None:
    limits = [{"cost_weight": w} for w in (0.0, 2.0, 50.0)] + [
        {"latency_budget_s": 0.6},
        {"max_cost_usd": 0.0025},
    ]
    prompts = PROMPTS[: len(limits)]
    decisions, x = router.decide_requests(prompts, limits)
    assert x.shape == (len(prompts), 384)
    for p, lim, d in zip(prompts, limits, decisions, strict=True):
        assert d.model == router.decide([p], **lim)[0].model
    with pytest.raises(ValueError, match="unknown limit"):
        router.decide_requests(["x"], [{"temperature": 1.0}])


def test_batcher_bounds_batch_size_and_wait() -> None:
    calls: list[int] = []

    def double(xs: list[int]) -> list[int]:
        calls.append(len(xs))
        time.sleep(0.01)
        return [2 * x for x in xs]

    async def run() -> tuple[list[int], float]:
        batcher = MicroBatcher(double, max_batch=8, max_wait_s=0.005)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(50)))
        t0 = time.perf_counter()
        alone = await batcher.submit(7)  # a lone request waits at most max_wait for company
        waited = time.perf_counter() - t0
        await batcher.stop()
        assert alone == 14
        return list(results), waited

    results, waited = asyncio.run(run())
    assert results == [2 * i for i in range(50)]
    assert max(calls) <= 8 and sum(calls) == 51 and len(calls) <= 12
    assert waited < 0.5


def test_a_lone_request_runs_at_once_and_company_is_waited_for() -> None:
    calls: list[int] = []

    def echo(xs: list[int]) -> list[int]:
        calls.append(len(xs))
        return xs

    async def run() -> tuple[float, float]:
        batcher = MicroBatcher(echo, max_batch=8, max_wait_s=0.3)
        await batcher.start()
        t0 = time.perf_counter()
        for i in range(3):  # a sequential client: each request alone, after a lone one
            assert await batcher.submit(i) == i
        sequential = time.perf_counter() - t0
        assert await asyncio.gather(*(batcher.submit(i) for i in range(5))) == list(range(5))
        t0 = time.perf_counter()
        await batcher.submit(9)  # requests came together last time: this one waits for company
        after_company = time.perf_counter() - t0
        await batcher.stop()
        return sequential, after_company

    sequential, after_company = asyncio.run(run())
    assert calls[:4] == [1, 1, 1, 5]
    assert sequential < 0.3  # three lone requests together took less than one max_wait
    assert after_company >= 0.25


def test_batcher_isolates_a_failing_request_and_sheds_load() -> None:
    def picky(xs: list[int]) -> list[int]:
        if any(x < 0 for x in xs):
            raise ValueError("negative")
        return xs

    async def run() -> None:
        batcher = MicroBatcher(picky, max_batch=16, max_wait_s=0.01, max_queue=4)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(x) for x in (1, -1, 2)), return_exceptions=True)
        assert results[0] == 1 and results[2] == 2 and isinstance(results[1], ValueError)
        # more waiting requests than max_queue: the excess is refused at once
        outcome = await asyncio.gather(*(batcher.submit(i) for i in range(12)), return_exceptions=True)
        assert any(isinstance(o, Overloaded) for o in outcome)
        assert all(o == i for i, o in enumerate(outcome) if not isinstance(o, Overloaded))
        await batcher.stop()

    asyncio.run(run())


def test_epsilon_greedy_propensities_match_the_choice_frequencies(router: Router) -> None:
    decision = router.decide([PROMPTS[0]], candidates=["a", "b", "c"])[0]
    rng = np.random.default_rng(0)
    eps, n = 0.3, 6000
    draws = [explore(decision, eps, rng) for _ in range(n)]
    for model in ("a", "b", "c"):
        picked = [d for d in draws if d.model == model]
        expected = (1 - eps) * (model == decision.model) + eps / 3
        assert all(d.propensity == pytest.approx(expected) for d in picked)
        assert len(picked) / n == pytest.approx(expected, abs=0.025)
    assert not any(d.model == "d" for d in draws)  # never an excluded model
    assert explore(decision, 0.0, rng) is decision


@pytest.mark.parametrize("inline", [True, False])
def test_a_cached_prompt_is_decided_on_the_event_loop(router: Router, inline: bool) -> None:
    """With its embedding in the memory cache, a prompt skips the batcher (inline_cached, the default): the
    head alone runs on the event loop and the decision is the batched one; with the setting off it queues."""
    embedder = Embedder(router.embedder.model_name, device="cpu", memory_cache_size=64)
    cached = Router(router.artifact, device="cpu", embedder=embedder)
    app = create_app(cached, ServeSettings(log_db=None, inline_cached=inline))
    prompts = PROMPTS[:6]
    limits = [
        {"cost_weight": 0.0},
        {"cost_weight": 5.0},
        {"candidates": ["b", "d"]},
        {"latency_budget_s": 0.6},
    ]
    with ServerThread(app) as server:
        batcher = app.state.service.batcher
        for p in prompts:  # new prompts: encoded through the batcher, then in the cache
            assert httpx.post(f"{server.url}/v1/route", json={"prompt": p}).status_code == 200
        batches = batcher.n_batches
        again = [
            httpx.post(f"{server.url}/v1/route", json={"prompt": p, **lim}).json()
            for p in prompts
            for lim in limits
        ]
        registry = app.state.service.metrics.registry
        hits = registry.get_sample_value("router_rl_embedding_cache_total", {"result": "hit"})
        misses = registry.get_sample_value("router_rl_embedding_cache_total", {"result": "miss"})
    assert batches == len(prompts) and misses == len(prompts)
    assert batcher.n_batches == batches + (0 if inline else len(again))
    assert hits == len(again)
    for a, (p, lim) in zip(again, [(p, lim) for p in prompts for lim in limits], strict=True):
        d = router.decide([p], **lim)[0]
        assert a["model"] == d.model, (p, lim)
        # the same float32 head on an embedding from another encoder pass (padding and batch size change the
        # encoder's rounding at ~1e-7 relative): equal to float32 precision, not bitwise
        assert {m for m, v in a["scores"].items() if v is None} == {
            m for m, v in d.scores.items() if v is None
        }
        finite = {m: v for m, v in d.scores.items() if v is not None}
        assert {m: a["scores"][m] for m in finite} == pytest.approx(finite, rel=1e-5, abs=1e-5)
    assert len({a["model"] for a in again}) > 1


def float32_dot_bound(x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """(B, 3K) a bound on how far two float32 evaluations of ``[x, 1] @ theta.T`` may differ, whatever
    their summation order: each is within ``gamma_n * (|xb| @ |theta|.T)`` of the exact product (Higham,
    *Accuracy and Stability of Numerical Algorithms*, eq. 3.5), ``gamma_n = n u / (1 - n u)``, ``u = 2^-24``."""
    xb = np.hstack([x, np.ones((x.shape[0], 1))]).astype(np.float64)
    n = xb.shape[1]
    u = 2.0**-24
    gamma = n * u / (1 - n * u)
    return 2 * gamma * (np.abs(xb) @ np.abs(theta.reshape(-1, n).astype(np.float64)).T)


def test_the_numpy_head_decides_like_the_torch_head(router: Router) -> None:
    """On CPU the head runs in numpy (microseconds per request); a torch input takes the torch path (as on an
    accelerator). Both are float32 products of the same weights, so they differ by at most float32 rounding
    (a bound that holds for any summation order: BLAS builds differ in it), and they make the same decisions
    under every kind of limit wherever the best two scores are further apart than that bound."""
    import torch

    from router_rl.serve.artifact import decision_scores, linear_estimates

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    art = router.artifact
    k = len(MODELS)
    est_np = linear_estimates(art, x)
    assert isinstance(est_np, np.ndarray) and est_np.shape == (3, 2000, k)
    est_t = linear_estimates(art, torch.from_numpy(x)).numpy()
    theta = art.theta.detach().cpu().numpy()
    bound = float32_dot_bound(x, theta).reshape(2000, 3, k).transpose(1, 0, 2)
    assert np.all(np.abs(est_np - est_t) <= bound)
    assert bound.max() < 1e-3  # the bound itself is tight enough to mean something
    for limits in (
        {"cost_weight": 0.0},
        {"cost_weight": 5.0},
        {"candidates": ["b", "d"]},
        {"latency_budget_s": 0.6},
        {"max_cost_usd": 0.0025},
    ):
        s_np, e_np = decision_scores(art, x, **limits)
        s_t, e_t = decision_scores(art, torch.from_numpy(x), **limits)
        np.testing.assert_array_equal(np.isfinite(s_np), np.isfinite(s_t))
        w = float(limits.get("cost_weight", art.manifest.get("default_cost_weight", 0.0)))
        lam = float(art.manifest.get("latency_weight", 0.0))
        score_bound = bound[0] + w * bound[1] + lam * bound[2] + 1e-6  # + the float32 weighted sum
        finite = np.isfinite(s_np)
        assert np.all(np.abs(s_np - s_t)[finite] <= score_bound[finite])
        top2 = np.sort(np.where(finite, s_np, -np.inf), axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * score_bound.max(axis=1)
        assert clear.mean() > 0.95, limits  # almost every row has a clear winner
        np.testing.assert_array_equal(s_np.argmax(axis=1)[clear], s_t.argmax(axis=1)[clear])
        assert len(np.unique(s_np.argmax(axis=1))) > 1, limits
