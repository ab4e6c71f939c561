"""Behind a real gateway: the LiteLLM proxy (litellm[proxy], offline, master key, bound to 127.0.0.1) in front
of router-rl, router-rl forwarding the chosen model back through the gateway, which sends it to the
OpenAI-compatible stub; the official OpenAI client talks only to the gateway.

    openai client -> LiteLLM (model "router") -> router-rl -> LiteLLM (model "mid") -> upstream stub
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml
from openai_stub import OpenAIStub

from router_rl.serve.app import create_app
from router_rl.serve.decision_log import read_logged_bandit_data
from router_rl.serve.router import Router
from router_rl.serve.settings import ServeSettings
from router_rl.serve.testing import ServerThread, free_port, running_process, shared_embedder, toy_artifact

MODELS = ["big", "mid", "small"]
MASTER_KEY = "sk-gateway-test-master"


def litellm_config(router_url: str, stub_url: str) -> dict:
    """The gateway's model list: `router` and `router-<w>` go to router-rl; every catalog model to its upstream."""
    entries = [
        {
            "model_name": name,
            "litellm_params": {"model": f"openai/{name}", "api_base": router_url, "api_key": "none"},
        }
        for name in ("router", "router-100")
    ]
    entries += [
        {
            "model_name": m,
            "litellm_params": {"model": f"openai/{m}", "api_base": stub_url, "api_key": "sk-upstream"},
        }
        for m in MODELS
    ]
    return {"model_list": entries, "litellm_settings": {"num_retries": 0, "request_timeout": 60}}


def litellm_executable() -> str:
    beside = Path(sys.executable).with_name("litellm")
    found = str(beside) if beside.exists() else shutil.which("litellm")
    if not found:
        pytest.fail("the litellm CLI is missing: pip install -e '.[dev]' installs litellm[proxy]")
    return found


@contextlib.contextmanager
def litellm_proxy(config: dict, port: int, cwd: Path, timeout_s: float = 180.0) -> Iterator[str]:
    (cwd / "litellm.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # offline: no fetch of the price map
        "LITELLM_LOG": "ERROR",
    }
    url = f"http://127.0.0.1:{port}"
    command = [litellm_executable(), "--config", "litellm.yaml", "--host", "127.0.0.1", "--port", str(port)]
    with running_process(
        command, f"{url}/health/liveliness", cwd / "litellm.log", name="litellm", cwd=cwd, env=env,
        timeout_s=timeout_s, poll_s=0.5, stop_timeout_s=20,
    ):  # fmt: skip
        yield url


def test_openai_client_through_litellm_to_router_rl_and_back(tmp_path: Path) -> None:
    art = toy_artifact(tmp_path / "artifact", MODELS, quality=[0.9, 0.8, 0.5], cost_usd=[0.01, 0.002, 0.0001])
    router = Router(art, device="cpu", embedder=shared_embedder())
    gateway_port = free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    settings = ServeSettings(
        upstream=f"{gateway_url}/v1",  # router-rl sends the chosen model back through the gateway
        upstream_api_key_env="TEST_GATEWAY_KEY",
        log_db=str(tmp_path / "decisions.sqlite"),
        api_keys={"gateway": "sk-router-rl"},
    )
    os.environ["TEST_GATEWAY_KEY"] = MASTER_KEY
    try:
        app = create_app(router, settings)
    finally:
        del os.environ["TEST_GATEWAY_KEY"]
    with OpenAIStub(models=MODELS) as stub, ServerThread(app) as router_rl:
        config = litellm_config(f"{router_rl.url}/v1", stub.base_url)
        for entry in config["model_list"][:2]:
            entry["litellm_params"]["api_key"] = "sk-router-rl"  # the gateway's key for router-rl
        with litellm_proxy(config, gateway_port, tmp_path) as url:
            client = openai.OpenAI(base_url=url, api_key=MASTER_KEY, max_retries=0, timeout=60)

            raw = client.chat.completions.with_raw_response.create(
                model="router", messages=[{"role": "user", "content": "Explain entropy in one line."}]
            )
            completion = raw.parse()
            assert completion.choices[0].message.content == "echo: Explain entropy in one line."
            # the gateway passes the upstream's headers on as llm_provider-*: router-rl's choice is visible
            assert raw.headers["llm_provider-x-router-model"] == "big"
            assert raw.headers["llm_provider-x-router-decision-id"]
            assert [r["json"]["model"] for r in stub.requests] == [
                "big"
            ]  # the chosen model reached the upstream

            stream = client.chat.completions.create(
                model="router-100",
                messages=[{"role": "user", "content": "stream through the gateway"}],
                stream=True,
            )
            text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
            assert text == "echo: stream through the gateway"
            assert stub.requests[-1]["json"]["model"] == "small"  # cost weight 100: the cheapest

            n = len(stub.requests)
            # the gateway refuses a key it does not know (without a database LiteLLM says so with a 400)
            with pytest.raises(openai.APIStatusError) as refused:
                openai.OpenAI(base_url=url, api_key="sk-wrong", max_retries=0).chat.completions.create(
                    model="router", messages=[{"role": "user", "content": "x"}]
                )
            assert refused.value.status_code in (400, 401, 403) and len(stub.requests) == n
    log = read_logged_bandit_data(tmp_path / "decisions.sqlite")
    assert [log.models[a] for a in log.action] == ["big", "small"]
    assert list(log.answered_by) == ["big", "small"]
