"""Two `router-rl serve` replicas on one PostgreSQL decision log behind LiteLLM's load balancing (a
``litellm.Router`` with one deployment per replica for the model ``router``): decisions land on both,
one replica is SIGKILLed mid-load, no acknowledged decision is lost, and feedback posted to the survivor
finds the decisions the killed one made; decisions, feedback and spend stay attributable per replica.

Needs a real PostgreSQL server: ``.ci/run`` starts one and exports ROUTER_RL_TEST_PG_URL; without it the test
skips, saying so."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai_stub import OpenAIStub
from test_log_backends import PG_ENV, fresh_database

from router_rl.serve.decision_log import read_logged_bandit_data
from router_rl.serve.log_backends import open_backend
from router_rl.serve.testing import free_port, running_process, toy_artifact

pytestmark = pytest.mark.skipif(
    not os.environ.get(PG_ENV),
    reason=f"{PG_ENV} is unset: no PostgreSQL server to test against (.ci/run starts one and sets it)",
)
MODELS = ["big", "mid", "small"]
N_REQUESTS, CONCURRENCY, KILL_AFTER = 160, 12, 40


@contextlib.contextmanager
def replica(artifact: Path, cwd: Path, name: str, *args: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`router-rl serve` in a subprocess; yields (process, base URL) once /healthz answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "router_rl.cli", "serve", str(artifact), "--port", str(port),
               "--replica-id", name, "--log-level", "warning", *args]  # fmt: skip
    with running_process(
        command, f"{url}/healthz", cwd / f"{name}.log", name=f"replica {name}", cwd=cwd, timeout_s=240
    ) as proc:
        yield proc, url


def test_replicas_share_one_postgres_log_behind_litellm(tmp_path: Path) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: no fetch of the price map
    import litellm

    art = toy_artifact(
        tmp_path / "artifact", MODELS, quality=[0.9, 0.8, 0.5], cost_usd=[0.01, 0.002, 0.0001], slope=0.5
    )
    with (
        fresh_database(os.environ[PG_ENV]) as db_url,
        OpenAIStub(models=MODELS, backlog=64) as stub,
        replica(art, tmp_path, "replica-a", "--log-db", db_url, "--upstream", stub.base_url) as (
            proc_a,
            url_a,
        ),
        replica(art, tmp_path, "replica-b", "--log-db", db_url, "--upstream", stub.base_url) as (
            proc_b,
            url_b,
        ),
    ):
        assert httpx.get(f"{url_a}/healthz").json()["replica"] == "replica-a"
        assert httpx.get(f"{url_b}/healthz").json()["replica"] == "replica-b"
        # a decision on one replica, its feedback on the other
        decided = httpx.post(f"{url_a}/v1/route", json={"prompt": "warm-up question"}).json()
        r = httpx.post(f"{url_b}/v1/feedback", json={"decision_id": decided["decision_id"], "quality": 0.8})
        assert r.status_code == 200 and r.json()["stored"] is True

        gateway = litellm.Router(
            model_list=[
                {"model_name": "router",
                 "litellm_params": {"model": "openai/router", "api_base": f"{url}/v1", "api_key": "none"}}
                for url in (url_a, url_b)
            ],
            routing_strategy="simple-shuffle",
            num_retries=4,
            retry_after=0,
            allowed_fails=0,  # a replica that fails once is cooled down, the retry goes to the other
            cooldown_time=600,
            timeout=60,
        )  # fmt: skip

        async def load() -> tuple[dict[str, str], int]:
            acked: dict[str, str] = {}  # decision id -> the model the answer says was chosen
            failed = 0
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(N_REQUESTS):
                queue.put_nowait(i)

            async def worker() -> None:
                nonlocal failed
                while not queue.empty():
                    i = queue.get_nowait()
                    try:
                        resp = await gateway.acompletion(
                            model="router",
                            messages=[{"role": "user", "content": f"question {i} about topic {i % 7}"}],
                        )
                    except Exception:  # noqa: BLE001 - counted: a request that was never acknowledged
                        failed += 1
                        continue
                    headers = resp._hidden_params["additional_headers"]
                    assert headers["llm_provider-x-router-decision-durable"] == "true"
                    acked[headers["llm_provider-x-router-decision-id"]] = headers[
                        "llm_provider-x-router-model"
                    ]
                    if len(acked) == KILL_AFTER:
                        os.kill(proc_a.pid, signal.SIGKILL)  # mid-load: requests are in flight on both

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            return acked, failed

        acked, failed = asyncio.run(load())
        proc_a.wait(timeout=10)
        assert proc_a.returncode == -signal.SIGKILL
        assert len(acked) == N_REQUESTS - failed and len(acked) >= N_REQUESTS - 2, failed  # LiteLLM retried

        # no acknowledged decision lost, each with the choice the answer reported
        data = read_logged_bandit_data(db_url, include_fallbacks=True)
        chosen = [data.models[a] for a in data.action]
        stored = {d: (r, m) for d, r, m in zip(data.decision_id, data.replica, chosen, strict=True)}
        lost = [d for d in acked if d not in stored]
        assert not lost, f"{len(lost)} acknowledged decisions lost"
        assert all(stored[d][1] == model for d, model in acked.items())
        by_a = [d for d in acked if stored[d][0] == "replica-a"]
        by_b = [d for d in acked if stored[d][0] == "replica-b"]
        assert len(by_a) >= KILL_AFTER // 4 and len(by_b) >= KILL_AFTER // 4, (len(by_a), len(by_b))
        print(f"acknowledged {len(acked)} (failed {failed}): replica-a {len(by_a)}, replica-b {len(by_b)}")

        # the survivor takes feedback for every decision, the killed replica's included
        async def feedback() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as client:
                replies = await asyncio.gather(
                    *(
                        client.post(f"{url_b}/v1/feedback", json={"decision_id": d, "quality": 0.5})
                        for d in acked
                    )
                )
            return [r.status_code for r in replies]

        assert set(asyncio.run(feedback())) == {200}

        judged = read_logged_bandit_data(db_url, require_feedback=True, include_fallbacks=True)
        assert set(acked) <= set(judged.decision_id)
        db = open_backend(db_url, read_only=True)
        try:
            taken = dict(db.fetchall("SELECT replica, COUNT(*) FROM feedback GROUP BY replica"))
            spend = dict(
                db.fetchall(
                    "SELECT replica, SUM(cost_usd) FROM decisions WHERE cost_usd IS NOT NULL GROUP BY replica"
                )
            )
        finally:
            db.close()
        assert taken == {"replica-b": len(acked) + 1}  # the warm-up decision's feedback too
        # spend per replica (measured from the upstream's token usage; outcomes are not awaited, so the killed
        # replica's last few may be missing, its earlier ones are there)
        assert set(spend) == {"replica-a", "replica-b"} and min(spend.values()) > 0
