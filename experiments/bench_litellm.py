"""router-rl inside LiteLLM: what the routing strategy costs per request, against ``router-rl serve`` behind the
proxy, and how its decisions compare with LiteLLM's own ``adaptive_router`` on the bundled arena data.

    python experiments/bench_litellm.py                 # about 6 minutes on 2 cores
    python experiments/bench_litellm.py --requests 40   # a smoke run

Sections (``experiments/results/bench_litellm.json``, summarised in ``bench_litellm.md``):

- policy: ``router-rl train`` on half of the arena prompts (``evaluation.scheme=holdout``,
  ``data.test_fraction=0.5``); the other half is the traffic below and the test set of the comparison.
- in_process: one ``litellm.Router`` holding the catalog twice (a ``router`` group with every model, one group
  per model) and LiteLLM's ``adaptive_router``; requests are interleaved over three paths: a model called by
  name (the peer), ``router`` routed by :class:`RouterRLStrategy`, and ``adaptive``. The upstream is the
  tests' OpenAI-compatible stub. Overhead = median of per-request differences against the peer, for new
  prompts (the encoder runs) and repeated ones (embedding cache hit).
- proxy: the real LiteLLM proxy on loopback with the strategy loaded from its config, and ``router-rl serve``
  behind the same proxy (client -> proxy -> serve -> proxy -> model, the two-hop path); requests interleaved
  over: a model by name (peer), ``router`` (strategy, one hop), ``serve-router`` (two hops), ``adaptive``.
- quality: on the held-out prompts, every model's recorded quality and cost: router-rl's artifact over the
  evaluation sweep of cost weights, ``adaptive_router`` over its (quality, cost) weights, as shipped
  (its priors: it learns only from multi-turn conversation signals, which single prompts never give) and fed
  the recorded quality of its own choices on the training prompts through its internal Beta cells (not a
  supported path: LiteLLM offers no feedback API), the single models, the oracle; AIQ of each.

Client, stub, proxy and router share the machine's cores; the load average is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
sys.path.insert(0, str(ROOT / "experiments"))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from openai_stub import OpenAIStub  # noqa: E402
from serving_http_bench import serve_process  # noqa: E402

MASTER_KEY = "sk-bench-master"
COST_WEIGHTS = [0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0]
ADAPTIVE_COST_WEIGHTS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9, 1.0]  # quality weight = 1 - this
TEST_FRACTION = 0.5
SEED = 0


# ---------------------------------------------------------------------------------------------- the policy
def train_policy(work: Path) -> Path:
    """``router-rl train`` on the training half of arena; returns the artifact."""
    cmd = [
        sys.executable, "-m", "router_rl.cli", "train", "evaluation.scheme=holdout",
        f"data.test_fraction={TEST_FRACTION}", "data.valid_fraction=0.0", f"seed={SEED}",
        "mlflow.enabled=false", "registry.name=null", f"hydra.run.dir={work}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"router-rl train failed:\n{proc.stderr[-3000:]}")
    return work / "artifact"


def arena_split() -> tuple[object, np.ndarray, np.ndarray]:
    from router_rl.data import assign_splits, load_bundled

    data = load_bundled("arena")
    data = data.take(data.complete_rows())
    split = assign_splits(data.prompt_ids, seed=SEED, valid_fraction=0.0, test_fraction=TEST_FRACTION)
    rows = np.arange(data.n_prompts)
    return data, rows[split != "test"], rows[split == "test"]


def check_held_out(artifact: Path, data: object, test_rows: np.ndarray) -> None:
    """The artifact's record of its training prompts shares none with the test half."""
    from router_rl.evaluation import prompt_digests

    record = json.loads((artifact / "manifest.json").read_text()).get("training_prompts") or {}
    seen = set(record.get("sha256_16", []))
    leaked = seen & set(prompt_digests(data.prompts[test_rows]))
    if leaked:
        raise RuntimeError(f"{len(leaked)} test prompts were trained on")


# ---------------------------------------------------------------------------------------------- timing
def summarise(samples: dict[str, list[float]], peer: str) -> dict[str, dict[str, float]]:
    """Median, p90 and mean latency (ms) per path, and the median per-request difference to ``peer``."""
    base = np.asarray(samples[peer])
    out = {}
    for path, values in samples.items():
        v = np.asarray(values)
        out[path] = {
            "p50_ms": float(np.median(v) * 1e3),
            "p90_ms": float(np.percentile(v, 90) * 1e3),
            "mean_ms": float(v.mean() * 1e3),
            "overhead_p50_ms": float(np.median(v - base) * 1e3),
            "n": len(v),
        }
    return out


def model_list(
    catalog: list[str], stub_url: str, tiers: dict[str, int], costs: dict[str, float]
) -> list[dict]:
    """The catalog as the ``router`` group, as one group per model (with adaptive_router's preferences and
    per-token prices), and an ``adaptive`` group routed by LiteLLM's adaptive_router."""

    def params(m: str) -> dict:
        return {"model": f"openai/{m}", "api_base": stub_url, "api_key": "sk-stub"}

    entries = [{"model_name": "router", "litellm_params": params(m)} for m in catalog]
    entries += [
        {
            "model_name": m,
            "litellm_params": params(m),
            "model_info": {
                "input_cost_per_token": costs[m] / 2000,
                "output_cost_per_token": costs[m] / 2000,
                "adaptive_router_preferences": {"quality_tier": tiers[m], "strengths": []},
            },
        }
        for m in catalog
    ]
    entries.append(
        {
            "model_name": "adaptive",
            "litellm_params": {
                "model": "auto_router/adaptive_router",
                "adaptive_router_default_model": catalog[0],
                "adaptive_router_config": {
                    "available_models": catalog,
                    "weights": {"quality": 0.7, "cost": 0.3},
                },
            },
        }
    )
    return entries


def in_process(artifact: Path, prompts: list[str], catalog: list[str], tiers: dict, costs: dict) -> dict:
    import litellm

    from router_rl.integrations.litellm import RouterRLStrategy

    async def run() -> dict:
        with OpenAIStub(models=catalog, backlog=64) as stub:
            router = litellm.Router(
                model_list=model_list(catalog, stub.base_url, tiers, costs), num_retries=0
            )
            strategy = RouterRLStrategy(artifact).install(router)
            paths = {
                "model by name (peer)": catalog[0],
                "router-rl strategy": "router",
                "adaptive_router": "adaptive",
            }

            async def one(model: str, text: str) -> float:
                t0 = time.perf_counter()
                await router.acompletion(model=model, messages=[{"role": "user", "content": text}])
                return time.perf_counter() - t0

            for text in ["warm-up one", "warm-up two", "warm-up three"]:
                for model in paths.values():
                    await one(model, text)
            results = {}
            for phase in ("new prompts", "repeated prompts"):
                samples: dict[str, list[float]] = {p: [] for p in paths}
                for i, text in enumerate(prompts):
                    order = list(paths.items())
                    random.Random(i).shuffle(order)
                    for name, model in order:
                        samples[name].append(await one(model, text))
                results[phase] = summarise(samples, "model by name (peer)")
            strategy.close()
            return results

    return asyncio.run(run())


# ---------------------------------------------------------------------------------------------- the proxy
@contextlib.contextmanager
def litellm_proxy(config: dict, port: int, cwd: Path, timeout_s: float = 300.0) -> Iterator[str]:
    (cwd / "litellm.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOG": "ERROR"}
    litellm_cli = str(Path(sys.executable).with_name("litellm"))
    log_path = cwd / "litellm.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [litellm_cli, "--config", "litellm.yaml", "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:  # bounded by the deadline
            if proc.poll() is not None:
                raise RuntimeError(f"litellm exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"litellm did not start in {timeout_s}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def behind_proxy(
    artifact: Path, prompts: list[str], catalog: list[str], tiers: dict, costs: dict, work: Path
) -> dict:
    from router_rl.serve.testing import free_port

    proxy_port = free_port()
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    os.environ["ROUTER_RL_UPSTREAM_API_KEY"] = MASTER_KEY  # serve sends its choice back through the proxy
    with (
        OpenAIStub(models=catalog, backlog=64) as stub,
        serve_process(artifact, upstream=f"{proxy_url}/v1", log_db=work / "serve.sqlite") as (serve_url, _),
    ):
        entries = model_list(catalog, stub.base_url, tiers, costs)
        entries.append(
            {
                "model_name": "serve-router",
                "litellm_params": {
                    "model": "openai/router",
                    "api_base": f"{serve_url}/v1",
                    "api_key": "none",
                },
            }
        )
        config = {
            "model_list": entries,
            "router_settings": {"num_retries": 0},
            "environment_variables": {
                "ROUTER_RL_ARTIFACT": str(artifact),
                "ROUTER_RL_SERVE_LOG_DB": str(work / "strategy.sqlite"),
            },
            "litellm_settings": {
                "callbacks": "router_rl.integrations.litellm.proxy_strategy",
                "request_timeout": 120,
            },
        }
        with litellm_proxy(config, proxy_port, work) as url:
            paths = {
                "model by name (peer)": catalog[0],
                "router-rl strategy (one hop)": "router",
                "router-rl serve behind the proxy (two hops)": "serve-router",
                "adaptive_router": "adaptive",
            }
            headers = {"Authorization": f"Bearer {MASTER_KEY}"}

            def one(client: httpx.Client, model: str, text: str) -> float:
                t0 = time.perf_counter()
                r = client.post(
                    f"{url}/v1/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": text}]},
                    headers=headers,
                )
                elapsed = time.perf_counter() - t0
                if r.status_code != 200:
                    raise RuntimeError(f"{model}: {r.status_code} {r.text[:300]}")
                return elapsed

            results = {}
            with httpx.Client(timeout=120) as client:
                for text in ["warm-up one", "warm-up two", "warm-up three"]:
                    for model in paths.values():
                        one(client, model, text)
                for phase in ("new prompts", "repeated prompts"):
                    samples: dict[str, list[float]] = {p: [] for p in paths}
                    for i, text in enumerate(prompts):
                        order = list(paths.items())
                        random.Random(i).shuffle(order)
                        for name, model in order:
                            samples[name].append(one(client, model, text))
                    results[phase] = summarise(samples, "model by name (peer)")
            return results


# ---------------------------------------------------------------------------------------------- decisions
def adaptive_points(
    data: object,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    tiers: dict,
    costs: dict,
    *,
    fed: bool,
    steps: int,
    reps: int,
) -> list[dict]:
    """adaptive_router's (cost, quality) on the test prompts for each of its cost weights, averaged over
    ``reps`` seeds of its Thompson draws (and of the feeding, when ``fed``)."""
    from litellm.router_strategy.adaptive_router.adaptive_router import AdaptiveRouter
    from litellm.router_strategy.adaptive_router.bandit import apply_delta, pick_best
    from litellm.router_strategy.adaptive_router.classifier import classify_prompt
    from litellm.types.router import AdaptiveRouterConfig, AdaptiveRouterPreferences

    models = list(data.models)
    index = {m: k for k, m in enumerate(models)}
    prefs = {m: AdaptiveRouterPreferences(quality_tier=tiers[m], strengths=[]) for m in models}
    kinds = {int(i): classify_prompt(str(data.prompts[i])) for i in np.concatenate([train_rows, test_rows])}
    points = []
    for c in ADAPTIVE_COST_WEIGHTS:
        quality, cost = [], []
        for rep in range(reps):
            rng = random.Random(1000 * rep + 7)
            config = AdaptiveRouterConfig(available_models=models, weights={"quality": 1.0 - c, "cost": c})
            ar = AdaptiveRouter("adaptive", config, prefs, costs)
            cells = ar._cells
            if fed:  # bandit feedback: its own choice's recorded quality, as a fractional Beta update
                for _ in range(steps):
                    i = int(train_rows[rng.randrange(len(train_rows))])
                    kind = kinds[i]
                    m = pick_best({k: cells[(kind, k)] for k in models}, costs, 1.0 - c, c, rng=rng)
                    q = float(data.quality[i, index[m]])
                    cells[(kind, m)] = apply_delta(cells[(kind, m)], q, 1.0 - q)
            for i in test_rows:
                kind = kinds[int(i)]
                m = pick_best({k: cells[(kind, k)] for k in models}, costs, 1.0 - c, c, rng=rng)
                quality.append(float(data.quality[i, index[m]]))
                cost.append(float(data.cost_usd[i, index[m]]))
        points.append(
            {"cost_weight": c, "quality": float(np.mean(quality)), "cost_usd": float(np.mean(cost))}
        )
    return points


def router_rl_points(artifact: Path, data: object, test_rows: np.ndarray) -> list[dict]:
    from router_rl.serve.router import Router

    router = Router(artifact, device="cpu")
    index = {m: k for k, m in enumerate(data.models)}
    prompts = [str(p) for p in data.prompts[test_rows]]
    points = []
    for w in COST_WEIGHTS:
        chosen = [index[d.model] for d in router.decide(prompts, cost_weight=w)]
        points.append(
            {
                "cost_weight": w,
                "quality": float(data.quality[test_rows, chosen].mean()),
                "cost_usd": float(data.cost_usd[test_rows, chosen].mean()),
            }
        )
    return points


def decisions(
    artifact: Path,
    data: object,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    tiers: dict,
    costs: dict,
    reps: int,
) -> dict:
    from router_rl.metrics import aiq, oracle_point, single_model_points, zero_router_aiq

    q, c = data.quality[test_rows], data.cost_usd[test_rows]
    single_c, single_q = single_model_points(q, c)
    max_cost = float(single_c.max())
    steps = 10_000  # router-rl train's train.steps: the same number of bandit interactions
    routers = {
        "router-rl (LinUCB artifact)": router_rl_points(artifact, data, test_rows),
        "adaptive_router as shipped (priors)": adaptive_points(
            data, train_rows, test_rows, tiers, costs, fed=False, steps=0, reps=reps
        ),
        "adaptive_router fed recorded quality": adaptive_points(
            data, train_rows, test_rows, tiers, costs, fed=True, steps=steps, reps=reps
        ),
    }
    out = {
        "n_test_prompts": int(len(test_rows)),
        "n_train_prompts": int(len(train_rows)),
        "zero_router_aiq": float(zero_router_aiq(single_c, single_q, max_cost=max_cost)),
        "oracle": dict(zip(("cost_usd", "quality"), map(float, oracle_point(q, c)), strict=True)),
        "single_models": {
            m: {"cost_usd": float(sc), "quality": float(sq)}
            for m, sc, sq in zip(data.models, single_c, single_q, strict=True)
        },
        "tiers": tiers,
        "routers": {},
    }
    for name, points in routers.items():
        xs = np.array([p["cost_usd"] for p in points])
        ys = np.array([p["quality"] for p in points])
        out["routers"][name] = {"aiq": float(aiq(xs, ys, max_cost=max_cost)), "points": points}
    return out


def tiers_and_costs(data: object, train_rows: np.ndarray) -> tuple[dict[str, int], dict[str, float]]:
    """What an operator would declare for adaptive_router from the training half: quality terciles as tiers
    1-3, and each model's mean cost per prompt."""
    mean_q = np.nanmean(data.quality[train_rows], axis=0)
    ranks = np.argsort(np.argsort(mean_q))  # 0 = worst
    k = len(data.models)
    tiers = {m: int(1 + (3 * r) // k) for m, r in zip(data.models, ranks, strict=True)}
    costs = {
        m: float(x) for m, x in zip(data.models, np.nanmean(data.cost_usd[train_rows], axis=0), strict=True)
    }
    return tiers, costs


# ---------------------------------------------------------------------------------------------- report
def markdown(result: dict) -> str:
    lines = [
        "# bench_litellm",
        "",
        f"{result['when']}, {result['machine']}, load {result['load_before']}; litellm {result['versions']['litellm']}.",
        "",
    ]
    for section in ("in_process", "proxy"):
        for phase, rows in result[section].items():
            lines += [
                f"## {section}: {phase} (ms per request, {next(iter(rows.values()))['n']} requests a path)",
                "",
            ]
            lines += [
                "| path | p50 | p90 | mean | overhead vs peer (p50 of differences) |",
                "|---|---|---|---|---|",
            ]
            for path, r in rows.items():
                lines.append(
                    f"| {path} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['mean_ms']:.2f} | {r['overhead_p50_ms']:+.2f} |"
                )
            lines.append("")
    d = result["quality"]
    lines += [
        f"## decisions on {d['n_test_prompts']} held-out arena prompts",
        "",
        "| router | AIQ |",
        "|---|---|",
    ]
    lines.append(f"| zero router (hull of the single models) | {d['zero_router_aiq']:.4f} |")
    for name, r in d["routers"].items():
        lines.append(f"| {name} | {r['aiq']:.4f} |")
    lines += ["", f"oracle: quality {d['oracle']['quality']:.3f} at ${d['oracle']['cost_usd']:.5f}", ""]
    for name, r in d["routers"].items():
        pts = ", ".join(
            f"w={p['cost_weight']:g}: {p['quality']:.3f} @ ${p['cost_usd']:.5f}" for p in r["points"]
        )
        lines.append(f"- {name}: {pts}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=120, help="requests per path and phase")
    parser.add_argument("--reps", type=int, default=20, help="seeds of adaptive_router's Thompson draws")
    parser.add_argument("--sections", default="in_process,proxy,quality")
    parser.add_argument("--out", default=str(RESULTS / "bench_litellm.json"))
    opts = parser.parse_args(argv)
    sections = opts.sections.split(",")
    result = {
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "versions": {p: metadata.version(p) for p in ("litellm", "router-rl", "torch", "onnxruntime")},
        "requests_per_path": opts.requests,
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, train_rows, test_rows = arena_split()
        t0 = time.perf_counter()
        artifact = train_policy(work / "train")
        result["train_seconds"] = time.perf_counter() - t0
        check_held_out(artifact, data, test_rows)
        tiers, costs = tiers_and_costs(data, train_rows)
        catalog = list(data.models)
        prompts = [str(p) for p in data.prompts[test_rows]][: opts.requests]
        if "in_process" in sections:
            result["in_process"] = in_process(artifact, prompts, catalog, tiers, costs)
        if "proxy" in sections:
            (work / "proxy").mkdir()
            result["proxy"] = behind_proxy(artifact, prompts, catalog, tiers, costs, work / "proxy")
        if "quality" in sections:
            result["quality"] = decisions(artifact, data, train_rows, test_rows, tiers, costs, opts.reps)
    result["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if all(s in result for s in ("in_process", "proxy", "quality")):
        out.with_suffix(".md").write_text(markdown(result))
        print(markdown(result))
    else:
        print(json.dumps({k: v for k, v in result.items() if k in sections}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
