"""router-rl inside LiteLLM: the custom routing strategy on a real ``litellm.Router`` (in process) and in the
real LiteLLM proxy loaded from its config alone, both against the OpenAI-compatible stub on loopback."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import litellm
import numpy as np
import pytest
from litellm.types.router import RouterRateLimitError
from openai_stub import OpenAIStub
from test_gateway_litellm import MASTER_KEY, litellm_proxy

from router_rl.integrations.litellm import RouterRLStrategy, catalog_model, group_cost_weight
from router_rl.serve.decision_log import read_logged_bandit_data
from router_rl.serve.router import Router
from router_rl.serve.settings import ServeSettings
from router_rl.serve.testing import free_port, shared_embedder, toy_artifact

MODELS = ["big", "mid", "small"]
QUALITY = [0.9, 0.8, 0.5]
COST = [0.01, 0.002, 0.0001]

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: LiteLLM's bundled price map


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Decisions known in advance: big at w=0, mid at w=0.5 and small at w=100 (quality - w * cost / 0.01)."""
    return toy_artifact(tmp_path_factory.mktemp("litellm-art") / "a", MODELS, quality=QUALITY, cost_usd=COST)


@pytest.fixture(scope="module")
def prompt_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Decisions that depend on the prompt (a slope on the embedding)."""
    return toy_artifact(
        tmp_path_factory.mktemp("litellm-art-slope") / "a",
        MODELS,
        quality=[0.7, 0.7, 0.7],
        cost_usd=[0.0001, 0.0001, 0.0001],
        slope=3.0,
        seed=3,
    )


@pytest.fixture()
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(models=MODELS) as s:
        yield s


def model_list(stub: OpenAIStub, models: list[str] = MODELS) -> list[dict]:
    entries = [
        {
            "model_name": "router",
            "litellm_params": {"model": f"openai/{m}", "api_base": stub.base_url, "api_key": "sk-upstream"},
        }
        for m in models
    ]
    # a plain group of LiteLLM's own, to show the strategy leaves it alone
    entries.append(
        {
            "model_name": "plain-mid",
            "litellm_params": {"model": "openai/mid", "api_base": stub.base_url, "api_key": "sk-upstream"},
        }
    )
    return entries


@pytest.fixture()
def installed(
    artifact: Path, stub: OpenAIStub, tmp_path: Path
) -> Iterator[tuple[litellm.Router, RouterRLStrategy]]:
    router = litellm.Router(model_list=model_list(stub), num_retries=0)
    strategy = RouterRLStrategy(
        Router(artifact, device="cpu", embedder=shared_embedder()), log_db=tmp_path / "decisions.sqlite"
    ).install(router)
    try:
        yield router, strategy
    finally:
        strategy.close()


async def ask(router: litellm.Router, model: str, text: str, **kwargs) -> litellm.ModelResponse:
    return await router.acompletion(model=model, messages=[{"role": "user", "content": text}], **kwargs)


async def settle(strategy: RouterRLStrategy, n: int, timeout_s: float = 30.0) -> None:
    """Wait until the log holds ``n`` decisions with their outcomes: LiteLLM runs its success callbacks on the
    event loop after it answered, so a scenario waits on that loop before leaving it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        strategy.decision_log.flush()
        found = read_logged_bandit_data(strategy.decision_log.path, include_fallbacks=True)
        if len(found.action) >= n and all(found.answered_by[:n]):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the decision log did not reach {n} answered decisions in {timeout_s}s")


def test_group_names_and_deployment_mapping() -> None:
    assert group_cost_weight("router", "router") is None
    assert group_cost_weight("router-0.5", "router") == 0.5
    assert group_cost_weight("router-1e2", "router") == 100.0
    for other in ("gpt-4", "router-eu", "router-", "router--1", "routerx", "router-inf", "router-nan"):
        assert not isinstance(group_cost_weight(other, "router"), (float, type(None))), other
    models = frozenset(["gpt-4-0314", "mistralai/Mixtral-8x7B"])
    assert catalog_model({"litellm_params": {"model": "openai/gpt-4-0314"}}, models) == "gpt-4-0314"
    assert catalog_model({"litellm_params": {"model": "gpt-4-0314"}}, models) == "gpt-4-0314"
    assert catalog_model({"litellm_params": {"model": "together_ai/mistralai/Mixtral-8x7B"}}, models) == (
        "mistralai/Mixtral-8x7B"
    )
    explicit = {
        "litellm_params": {"model": "azure/my-deployment"},
        "model_info": {"router_rl_model": "gpt-4-0314"},
    }
    assert catalog_model(explicit, models) == "gpt-4-0314"
    assert catalog_model({"litellm_params": {"model": "openai/unknown"}}, models) is None


def test_routes_to_the_model_router_decides_in_one_hop(
    prompt_artifact: Path, stub: OpenAIStub, tmp_path: Path
) -> None:
    decider = Router(prompt_artifact, device="cpu", embedder=shared_embedder())
    router = litellm.Router(model_list=model_list(stub), num_retries=0)
    strategy = RouterRLStrategy(decider, log_db=tmp_path / "log.sqlite").install(router)
    topics = ["algebra", "poetry", "sql", "biology", "law"]
    prompts = [f"question {i}: {topic}" for i, topic in enumerate(topics * 2)]
    expected = [d.model for d in decider.decide(prompts)]
    assert len(set(expected)) > 1  # the test means something only if the prompt changes the choice

    async def scenario() -> list[str]:
        answered = []
        for prompt in prompts:
            response = await ask(router, "router", prompt)
            assert response.choices[0].message.content == f"echo: {prompt}"
            assert response._hidden_params["router_rl"]["model"] == response.model
            answered.append(response.model)  # LiteLLM's response names the chosen model
        assert (
            await ask(router, "plain-mid", "not routed by router-rl")
        ).model == "mid"  # LiteLLM's own group
        await settle(strategy, len(prompts))
        return answered

    try:
        assert asyncio.run(scenario()) == expected
    finally:
        strategy.close()
    # one hop: each request reached the upstream once, under the chosen model's name
    assert [r["json"]["model"] for r in stub.requests] == [*expected, "mid"]
    log = read_logged_bandit_data(tmp_path / "log.sqlite")
    assert [log.models[a] for a in log.action] == expected  # only router-rl's decisions are logged
    assert list(log.answered_by) == expected
    assert (log.propensity == 1.0).all() and log.models == MODELS
    rows = sqlite3.connect(tmp_path / "log.sqlite").execute(
        "SELECT endpoint, status, attempts FROM decisions"
    )
    assert set(rows.fetchall()) == {("litellm", "ok", 1)}


def test_cost_weight_from_group_name_and_metadata(installed: tuple, tmp_path: Path) -> None:
    router, strategy = installed

    async def scenario() -> list[str]:
        return [
            (await ask(router, "router", "hello")).model,  # the artifact's default cost weight, 0
            (await ask(router, "router-0.5", "hello")).model,
            (await ask(router, "router-100", "hello")).model,
            # metadata wins over the group name; candidates narrow the choice
            (await ask(router, "router-100", "hello", metadata={"router_rl": {"cost_weight": 0}})).model,
            (
                await ask(router, "router", "hello", metadata={"router_rl": {"candidates": ["mid", "small"]}})
            ).model,
        ]

    assert asyncio.run(scenario()) == ["big", "mid", "small", "big", "mid"]
    # the synchronous path decides the same way
    assert (
        router.completion(model="router-100", messages=[{"role": "user", "content": "hello"}]).model
        == "small"
    )
    with pytest.raises(litellm.BadRequestError, match="cost_weight"):
        asyncio.run(ask(router, "router", "hello", metadata={"router_rl": {"cost_weight": -1}}))
    with pytest.raises(litellm.BadRequestError, match="not models of this router"):
        asyncio.run(ask(router, "router", "hello", metadata={"router_rl": {"candidates": ["gpt-5"]}}))
    strategy.decision_log.flush()
    log = read_logged_bandit_data(tmp_path / "decisions.sqlite", include_fallbacks=True)
    assert list(log.cost_weight) == [0.0, 0.5, 100.0, 0.0, 0.0, 100.0]
    assert [log.models[a] for a in log.action] == ["big", "mid", "small", "big", "mid", "small"]


def test_exploration_is_logged_with_its_propensity(artifact: Path, stub: OpenAIStub, tmp_path: Path) -> None:
    """epsilon = 1: every model is drawn uniformly; the request goes where the draw said, propensity 1/3."""
    router = litellm.Router(model_list=model_list(stub), num_retries=0)
    settings = ServeSettings(log_db=str(tmp_path / "explore.sqlite"), explore_epsilon=1.0, seed=7)
    strategy = RouterRLStrategy(Router(artifact, device="cpu", embedder=shared_embedder()), settings=settings)
    strategy.install(router)

    async def scenario() -> list[str]:
        answered = [(await ask(router, "router", f"explore {i}")).model for i in range(9)]
        await settle(strategy, 9)
        return answered

    try:
        answered = asyncio.run(scenario())
    finally:
        strategy.close()
    log = read_logged_bandit_data(tmp_path / "explore.sqlite")
    assert [log.models[a] for a in log.action] == answered == [r["json"]["model"] for r in stub.requests]
    assert len(set(answered)) > 1  # the greedy choice alone would be big nine times
    np.testing.assert_allclose(log.propensity, [1 / 3] * 9)


def test_softmax_exploration_is_logged_with_its_propensity(
    artifact: Path, stub: OpenAIStub, tmp_path: Path
) -> None:
    """The bonus softmax through LiteLLM: each logged propensity is the softmax of that decision's scores."""
    router = litellm.Router(model_list=model_list(stub), num_retries=0)
    settings = ServeSettings(log_db=str(tmp_path / "soft.sqlite"), explore_softmax_temperature=1.0, seed=3)
    strategy = RouterRLStrategy(Router(artifact, device="cpu", embedder=shared_embedder()), settings=settings)
    strategy.install(router)

    async def scenario() -> list[str]:
        answered = [(await ask(router, "router", f"soft {i}")).model for i in range(12)]
        await settle(strategy, 12)
        return answered

    try:
        answered = asyncio.run(scenario())
    finally:
        strategy.close()
    log = read_logged_bandit_data(tmp_path / "soft.sqlite")
    assert [log.models[a] for a in log.action] == answered
    assert len(set(answered)) > 1
    z = np.exp(log.scores - np.nanmax(log.scores, axis=1, keepdims=True))
    want = (z / np.nansum(z, axis=1, keepdims=True))[np.arange(len(log)), log.action]
    np.testing.assert_allclose(log.propensity, want, rtol=1e-5)


def test_unhealthy_deployment_is_excluded(artifact: Path, stub: OpenAIStub, tmp_path: Path) -> None:
    """A deployment LiteLLM cooled down is no candidate; a retry goes to the next best untried model."""
    router = litellm.Router(model_list=model_list(stub), num_retries=0, allowed_fails=0, cooldown_time=60)
    strategy = RouterRLStrategy(
        Router(artifact, device="cpu", embedder=shared_embedder()), log_db=tmp_path / "log.sqlite"
    ).install(router)

    async def cooled() -> list[str]:
        stub.fail_next(500, model="big")
        with pytest.raises(litellm.InternalServerError):
            await ask(router, "router", "first")  # big fails; no retries: LiteLLM cools big down
        return [(await ask(router, "router", "second")).model, (await ask(router, "router", "third")).model]

    try:
        assert asyncio.run(cooled()) == ["mid", "mid"]  # the best healthy model
        assert [r["json"]["model"] for r in stub.requests] == ["big", "mid", "mid"]
    finally:
        strategy.close()

    retrying = litellm.Router(model_list=model_list(stub), num_retries=1, retry_after=0)
    strategy = RouterRLStrategy(
        Router(artifact, device="cpu", embedder=shared_embedder()), log_db=tmp_path / "retry.sqlite"
    ).install(retrying)

    async def retried() -> litellm.ModelResponse:
        stub.fail_next(500, model="big")
        response = await ask(retrying, "router", "retried")
        await settle(strategy, 1)
        return response

    try:
        stub.requests.clear()
        response = asyncio.run(retried())
        assert response.model == "mid"  # LiteLLM's retry, sent to the next best model
        assert response._hidden_params["router_rl"]["chosen"] == "big"
        assert response._hidden_params["router_rl"]["attempts"] == 2
        assert [r["json"]["model"] for r in stub.requests] == ["big", "mid"]
    finally:
        strategy.close()
    rows = sqlite3.connect(tmp_path / "retry.sqlite").execute(
        "SELECT model, propensity, answered_by, status, attempts FROM decisions"
    )
    assert rows.fetchall() == [("big", 1.0, "mid", "ok", 2)]  # one decision, its fallback recorded


def test_no_healthy_candidate_is_litellms_no_deployment_error(artifact: Path, stub: OpenAIStub) -> None:
    router = litellm.Router(model_list=model_list(stub), num_retries=0, allowed_fails=0, cooldown_time=60)
    strategy = RouterRLStrategy(Router(artifact, device="cpu", embedder=shared_embedder())).install(router)
    only_big = {"router_rl": {"candidates": ["big"]}}

    async def scenario() -> None:
        stub.fail_next(500, model="big")
        with pytest.raises(litellm.InternalServerError):
            await ask(router, "router", "first", metadata=only_big)
        # the caller allows only big, which is cooling down: LiteLLM's own answer for a group with nothing left
        with pytest.raises(RouterRateLimitError, match="No deployments available"):
            await ask(router, "router", "second", metadata=only_big)

    try:
        asyncio.run(scenario())
    finally:
        strategy.close()
    assert [r["json"]["model"] for r in stub.requests] == ["big"]


def test_proxy_loads_the_strategy_from_its_config(artifact: Path, stub: OpenAIStub, tmp_path: Path) -> None:
    """``litellm --config``: the callback module installs the strategy; no code beyond the YAML."""
    log_db = tmp_path / "proxy-decisions.sqlite"
    config = {
        "model_list": model_list(stub),
        "router_settings": {"model_group_alias": {"router-100": "router"}, "num_retries": 0},
        "environment_variables": {
            "ROUTER_RL_ARTIFACT": str(artifact),
            "ROUTER_RL_SERVE_LOG_DB": str(log_db),
            "ROUTER_RL_SERVE_ENCODER_BACKEND": "torch",
        },
        "litellm_settings": {
            "callbacks": "router_rl.integrations.litellm.proxy_strategy",
            "request_timeout": 60,
        },
    }
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    with litellm_proxy(config, free_port(), tmp_path) as url:

        def chat(model: str, text: str, **body) -> httpx.Response:
            return httpx.post(
                f"{url}/v1/chat/completions",
                headers=headers,
                json={"model": model, "messages": [{"role": "user", "content": text}], **body},
                timeout=60,
            )

        first = chat("router", "Explain entropy in one line.")
        assert first.status_code == 200, first.text
        assert first.json()["choices"][0]["message"]["content"] == "echo: Explain entropy in one line."
        assert first.headers["x-router-model"] == "big"
        assert first.headers["x-litellm-model-name"] == "openai/big"  # LiteLLM's own header agrees
        decision_id = first.headers["x-router-decision-id"]
        cheap = chat("router-100", "cheap please")
        assert cheap.status_code == 200 and cheap.headers["x-router-model"] == "small"
        by_metadata = chat("router", "mid please", metadata={"router_rl": {"cost_weight": 0.5}})
        assert by_metadata.headers["x-router-model"] == "mid"
        with httpx.stream(
            "POST",
            f"{url}/v1/chat/completions",
            headers=headers,
            json={"model": "router-100", "messages": [{"role": "user", "content": "stream"}], "stream": True},
            timeout=60,
        ) as streamed:
            assert streamed.headers["x-router-model"] == "small"
            body = "".join(streamed.iter_text())
        assert "data: [DONE]" in body
        bad = chat("router", "x", metadata={"router_rl": {"cost_weight": "high"}})
        assert bad.status_code == 400 and "cost_weight" in bad.text
        assert [r["json"]["model"] for r in stub.requests] == ["big", "small", "mid", "small"]
        deadline = time.monotonic() + 30  # outcomes are written after the answer (the stream's at its end)
        while time.monotonic() < deadline:
            log = read_logged_bandit_data(log_db)
            if len(log.answered_by) == 4 and all(log.answered_by):
                break
            time.sleep(0.2)
    assert [log.models[a] for a in log.action] == ["big", "small", "mid", "small"]
    assert log.decision_id[0] == decision_id
    assert list(log.answered_by) == ["big", "small", "mid", "small"]
    assert list(log.cost_weight) == [0.0, 100.0, 0.5, 100.0]
