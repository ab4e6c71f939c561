"""Serving performance on CPU: encoder backends, decision agreement, and the HTTP service against torch.

    python experiments/bench_serving.py                  # full run: about 5 minutes on 2 cores
    python experiments/bench_serving.py --quick          # smoke run: about a minute
    python experiments/bench_serving.py --artifact outputs/<date>/<time>/artifact   # your trained policy

Sections, all in ``experiments/results/bench_serving.json`` and summarised in ``bench_serving.md``:

- embedding: prompts per second of each encoder backend (torch, onnx, onnx-int8) at batch sizes 1, 8, 32 and
  128, on arena prompts drawn at random (tokenisation included, no cache), with the service's thread count.
- agreement: on the 300 bundled arena prompts, the cosine between torch's embeddings and each backend's (and
  of a 128-token truncation); the share of identical routing decisions of an exported policy at the
  evaluation sweep's cost weights; and the frontier that policy traces with each (mean cost and quality on
  arena, with every model's outcome known) and its AIQ. Without ``--artifact`` the policy comes from
  ``router-rl train debug=default`` (about 25 s).
- service: ``/v1/route`` latency (p50, p99), throughput and server CPU per request at concurrency 1, 16 and
  64 over real HTTP on loopback (``router-rl serve`` in a subprocess, uvicorn), for each backend; the
  micro-batch size the server formed; the in-memory embedding cache on repeated prompts.
- chat: ``/v1/chat/completions`` through the router against calling the upstream directly (the tests'
  OpenAI-compatible stub, ``tests/openai_stub.py``), at concurrency 1: the extra latency and how much of it
  the encoder and head explain (the server's own batch timing).

Every ratio compares with the torch backend measured by the same run. Client, stub and server share the
machine's cores: on a busy machine every number is slower and noisier (the load average is recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import httpx
import numpy as np
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
sys.path.insert(0, str(ROOT / "experiments"))
sys.path.insert(0, str(ROOT / "tests"))

from serving_http_bench import load_run, serve_process  # noqa: E402

BACKENDS = ("torch", "onnx", "onnx-int8")
SECTIONS = ("embedding", "agreement", "service")
DEFAULT_BACKEND = "onnx"  # what `router-rl serve` picks on a CPU (encoder_backend=auto)
# the evaluation sweep of configs/train.yaml
COST_WEIGHTS = [0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0]
PACKAGES = (
    "router-rl",
    "torch",
    "onnxruntime",
    "onnx",
    "sentence-transformers",
    "transformers",
    "tokenizers",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "httpx",
    "numpy",
)
PROFILES = {
    "full": {
        "batch_sizes": [1, 8, 32, 128],
        "embed_seconds": 4.5,
        "rounds": 3,
        "agreement_prompts": None,  # all 300
        "variants": [
            ("onnx", None),
            ("onnx-int8", None),
            ("onnx", 128),
            ("onnx-int8", 128),
            ("onnx", 64),
            ("onnx", 32),
            ("onnx-int8", 32),
        ],
        "service_backends": list(BACKENDS),
        "c1_seconds": 5.0,
        "load_seconds": 6.0,
        "chat_seconds": 5.0,
    },
    "quick": {
        "batch_sizes": [1, 8],
        "embed_seconds": 0.5,
        "rounds": 1,
        "agreement_prompts": 40,
        "variants": [("onnx", None), ("onnx-int8", None)],
        "service_backends": ["torch", "onnx"],
        "c1_seconds": 1.0,
        "load_seconds": 1.0,
        "chat_seconds": 1.0,
    },
}


# ------------------------------------------------------------------------------------------ the machine


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "machine": platform.platform(),
        "python": sys.version.split()[0],
        "versions": versions,
        "git_commit": commit,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average_start": list(os.getloadavg()),
    }


# ------------------------------------------------------------------------------------------ embedding


def bench_embedding(prompts: list[str], cfg: dict, threads: int, bar: tqdm) -> list[dict]:
    """Prompts per second of each backend at each batch size: distinct random arena prompts per batch.

    The backends take turns (``rounds`` slices of ``embed_seconds`` each), so a change in the machine's load
    during the run hits them alike; a batch slower than its slice runs once.
    """
    import torch

    from router_rl.embeddings import Embedder

    torch.set_num_threads(threads)
    embedders = {}
    for backend in BACKENDS:
        bar.set_description(f"embedding: loading {backend}")
        embedders[backend] = Embedder(backend=backend, device="cpu", threads=threads)
        embedders[backend].encode(prompts[:8])  # load (and export once), warm up
    rows = []
    for b in cfg["batch_sizes"]:
        bar.set_description(f"embedding: batch {b}")
        rng = np.random.default_rng(b)
        times: dict[str, list[float]] = {backend: [] for backend in BACKENDS}
        for _ in range(cfg["rounds"]):
            for backend, embedder in embedders.items():
                embedder.batch_size = b
                spent = sum(times[backend])
                start = time.perf_counter()
                while spent < cfg["embed_seconds"] and (
                    time.perf_counter() - start < cfg["embed_seconds"] / cfg["rounds"] or not times[backend]
                ):
                    batch = [prompts[i] for i in rng.choice(len(prompts), size=b, replace=b > len(prompts))]
                    t0 = time.perf_counter()
                    embedder.encode(batch)
                    times[backend].append(time.perf_counter() - t0)
        for backend, t in times.items():
            rows.append(
                {
                    "backend": backend,
                    "batch": b,
                    "batches": len(t),
                    "prompts_per_s": b * len(t) / sum(t),
                    "batch_ms_median": 1000 * float(np.median(t)),
                    "batch_ms_p95": 1000 * float(np.percentile(t, 95)),
                }
            )
            bar.update()
    torch_rate = {r["batch"]: r["prompts_per_s"] for r in rows if r["backend"] == "torch"}
    for r in rows:
        r["speedup_vs_torch"] = r["prompts_per_s"] / torch_rate[r["batch"]]
    return rows


# ------------------------------------------------------------------------------------------ agreement


def toy_arena_artifact(out_dir: Path) -> Path:
    """A hand-made policy over arena's models (mean quality and cost per model plus a random direction of the
    embedding), for the quick run: no training, decisions that vary with the prompt."""
    from router_rl.data import load_bundled
    from router_rl.serve.testing import toy_artifact

    data = load_bundled("arena")
    return toy_artifact(
        out_dir,
        list(data.models),
        quality=list(np.nanmean(data.quality, axis=0)),
        cost_usd=list(np.nanmean(data.cost_usd, axis=0)),
        slope=0.5,
        cost_weight=0.2,
    )


def train_debug_artifact(work: Path) -> Path:
    """`router-rl train debug=default` in ``work`` (its own MLflow store): the exported artifact."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    proc = subprocess.run(
        [sys.executable, "-m", "router_rl.cli", "train", "debug=default", "hydra.run.dir=out"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"router-rl train debug=default failed:\n{proc.stderr[-3000:]}")
    return work / "out" / "artifact"


def bench_agreement(artifact: Path, cfg: dict, threads: int, bar: tqdm) -> dict:
    """Embedding cosine, decision agreement and frontier of each backend variant against torch."""
    from router_rl.data import load_bundled
    from router_rl.metrics import aiq, single_model_points
    from router_rl.serve.router import Router

    data = load_bundled("arena")
    n = cfg["agreement_prompts"] or len(data.prompts)
    prompts = [str(p) for p in data.prompts[:n]]
    reference = Router(artifact, device="cpu", encoder_backend="torch")
    models = reference.models
    column = np.array([list(data.models).index(m) for m in models])
    quality, cost = data.quality[:n][:, column], data.cost_usd[:n][:, column]
    complete = ~(np.isnan(quality).any(axis=1) | np.isnan(cost).any(axis=1))
    rows = np.arange(n)

    def frontier(x: np.ndarray) -> tuple[list[str], list[dict]]:
        choices, points = [], []
        for w in COST_WEIGHTS:
            chosen = [d.model for d in reference.decide_embedded(x, cost_weight=w)]
            k = np.array([models.index(m) for m in chosen])
            points.append(
                {
                    "cost_weight": w,
                    "cost_usd": float(cost[rows, k][complete].mean()),
                    "quality": float(quality[rows, k][complete].mean()),
                }
            )
            choices.append(chosen)
        return choices, points

    bar.set_description("agreement: torch embeddings")
    x_ref = reference.embed(prompts)
    ref_choices, ref_points = frontier(x_ref)
    single_c, single_q = single_model_points(quality[complete], cost[complete])
    variants = {
        "torch": {
            "backend": "torch",
            "max_seq_length": reference.embedder.max_seq_length,
            "points": ref_points,
        }
    }
    embeddings = {"torch": x_ref}
    bar.update()
    for backend, length in cfg["variants"]:
        name = backend if length is None else f"{backend}@{length}"
        bar.set_description(f"agreement: {name}")
        router = Router(
            artifact, device="cpu", encoder_backend=backend, max_seq_length=length, threads=threads
        )
        x = router.embed(prompts)
        embeddings[name] = x
        cosine = (x * x_ref).sum(axis=1)
        choices, points = frontier(x)
        same = [
            float(np.mean([a == b for a, b in zip(c, r, strict=True)]))
            for c, r in zip(choices, ref_choices, strict=True)
        ]
        variants[name] = {
            "backend": backend,
            "max_seq_length": length or router.trained_max_seq_length,
            "cosine_min": float(cosine.min()),
            "cosine_p5": float(np.percentile(cosine, 5)),
            "cosine_mean": float(cosine.mean()),
            "same_decision_share": dict(zip(map(str, COST_WEIGHTS), same, strict=True)),
            "same_decision_min": min(same),
            "same_decision_mean": float(np.mean(same)),
            "identical_decisions": all(s == 1.0 for s in same),
            "points": points,
        }
        bar.update()
    max_cost = max(float(single_c.max()), *(p["cost_usd"] for v in variants.values() for p in v["points"]))
    for v in variants.values():
        v["aiq"] = aiq(
            np.array([p["cost_usd"] for p in v["points"]]),
            np.array([p["quality"] for p in v["points"]]),
            max_cost=max_cost,
        )
    return {
        "artifact": str(artifact),
        "policy": reference.artifact.manifest.get("policy_class", reference.artifact.manifest["policy_kind"]),
        "policy_config": reference.artifact.manifest.get("policy_config"),
        "trained_on": reference.artifact.manifest.get("dataset"),
        "default_cost_weight": reference.artifact.manifest.get("default_cost_weight"),
        "prompts": n,
        "complete_prompts": int(complete.sum()),
        "cost_weights": COST_WEIGHTS,
        "models_chosen_by_torch": {
            str(w): len(set(c)) for w, c in zip(COST_WEIGHTS, ref_choices, strict=True)
        },
        "variants": variants,
    }


# ------------------------------------------------------------------------------------------ service and chat


def _metric_sums(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out = {}
    for name in (
        "router_rl_batch_latency_seconds_sum",
        "router_rl_batch_latency_seconds_count",
        "router_rl_batch_size_sum",
        "router_rl_batch_size_count",
    ):
        found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
        out[name] = float(found.group(1)) if found else 0.0
    return out


def _batches(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    batches = after["router_rl_batch_size_count"] - before["router_rl_batch_size_count"]
    if batches <= 0:
        return {"batches": 0}
    return {
        "batches": int(batches),
        "mean_batch_size": (after["router_rl_batch_size_sum"] - before["router_rl_batch_size_sum"]) / batches,
        "encoder_head_ms_per_batch": 1000
        * (after["router_rl_batch_latency_seconds_sum"] - before["router_rl_batch_latency_seconds_sum"])
        / batches,
    }


def _server_run(
    url: str,
    proc,
    backend: str,
    kind: str,
    prompt_set: str,
    concurrency: int,
    body,
    seconds: float,
    path: str,
) -> dict:
    """One timed load against the server, with the micro-batches it formed meanwhile."""
    before = _metric_sums(url)
    r = load_run(url, path, 10**7, concurrency, body, duration_s=seconds, pid=proc.pid)
    r.update({"backend": backend, "kind": kind, "prompts": prompt_set, **_batches(before, _metric_sums(url))})
    return r


def service_steps(cfg: dict) -> int:
    n = len(cfg["service_backends"])
    chat = 2 * sum(b in ("torch", DEFAULT_BACKEND) for b in cfg["service_backends"])
    return n + 6 * n + 1 + chat + 2


def bench_service(
    artifact: Path, prompts: list[str], cfg: dict, threads: int, stub, tmp: Path, bar: tqdm
) -> list[dict]:
    """Route and chat runs against `router-rl serve`, one server per backend, all up at once and taking turns
    on every workload (so a change in the machine's load hits them alike); direct upstream calls for chat."""
    runs: list[dict] = []
    offset = iter(range(0, 10**9, 10**6))  # every run's prompts are new to the servers: no cache hits

    def short(base: int, cycle: int | None = None):
        return lambda i: {
            "prompt": f"request {base + i}: explain topic {i % 97} with an example about {i % 13}"
        }

    def arena(base: int, cycle: int | None = None):
        def body(i: int) -> dict:
            i = i % cycle if cycle else i
            return {"prompt": f"[{base + i}] {prompts[i % len(prompts)]}"}

        return body

    def chat(base: int, cycle: int | None = None):
        def body(i: int) -> dict:
            i = i % cycle if cycle else i
            text = f"[{base + i}] {prompts[i % len(prompts)]}"
            return {"model": "router", "messages": [{"role": "user", "content": text}]}

        return body

    def direct(body, prompt_set: str, paired_with: str) -> None:
        bar.set_description(f"chat: straight to the upstream ({prompt_set})")
        upstream = stub.base_url.removesuffix("/v1")
        r = load_run(upstream, "/v1/chat/completions", 10**7, 1, body, duration_s=cfg["chat_seconds"])
        runs.append(
            {**r, "backend": None, "kind": "chat-direct", "prompts": prompt_set, "paired_with": paired_with}
        )
        bar.update()

    with contextlib.ExitStack() as stack:
        servers = {}
        for backend in cfg["service_backends"]:
            bar.set_description(f"service: starting {backend}")
            url, proc = stack.enter_context(
                serve_process(
                    artifact,
                    upstream=stub.base_url,
                    log_db=tmp / f"log-{backend}.sqlite",
                    # threads 0: each backend as the service resolves it (ONNX Runtime every core, torch
                    # one core less)
                    args=[
                        "--encoder-backend",
                        backend,
                        *(["--torch-threads", str(threads)] if threads else []),
                    ],
                )
            )
            load_run(url, "/v1/route", 64, 8, arena(next(offset)))  # warm-up
            servers[backend] = (url, proc, httpx.get(f"{url}/healthz").json()["encoder"])
            bar.update()

        def run(
            backend: str, kind: str, prompt_set: str, concurrency: int, body, seconds: float, path: str
        ) -> None:
            url, proc, encoder = servers[backend]
            bar.set_description(f"service: {backend} {kind} {prompt_set} c={concurrency}")
            r = _server_run(url, proc, backend, kind, prompt_set, concurrency, body, seconds, path)
            runs.append({**r, "encoder": encoder})
            bar.update()

        for prompt_set, make in (("short", short), ("arena", arena)):
            for c in (1, 16, 64):
                for backend in servers:
                    seconds = cfg["c1_seconds"] if c == 1 else cfg["load_seconds"]
                    run(backend, "route", prompt_set, c, make(next(offset)), seconds, "/v1/route")
        url = servers[DEFAULT_BACKEND][0]
        repeated = arena(next(offset), cycle=32)
        load_run(url, "/v1/route", 32, 1, repeated)  # the 32 prompts are in the cache now
        run(DEFAULT_BACKEND, "route", "arena-repeated-32", 1, repeated, cfg["c1_seconds"], "/v1/route")
        for backend in (b for b in ("torch", DEFAULT_BACKEND) if b in servers):
            base = next(offset)
            direct(chat(base), "arena", backend)
            run(
                backend, "chat", "arena", 1, chat(base + 500_000), cfg["chat_seconds"], "/v1/chat/completions"
            )
        cached = chat(next(offset), cycle=32)
        load_run(url, "/v1/chat/completions", 32, 1, cached)  # their embeddings are in the cache now
        direct(cached, "arena-repeated-32", DEFAULT_BACKEND)
        run(
            DEFAULT_BACKEND,
            "chat",
            "arena-repeated-32",
            1,
            cached,
            cfg["chat_seconds"],
            "/v1/chat/completions",
        )
    return runs


def chat_overhead(runs: list[dict]) -> list[dict]:
    """Through-the-router chat latency against the direct call on the same kind of prompts."""
    out = []
    for through in (r for r in runs if r["kind"] == "chat"):
        direct = next(
            r
            for r in runs
            if r["kind"] == "chat-direct"
            and r["paired_with"] == through["backend"]
            and r["prompts"] == through["prompts"]
        )
        out.append(
            {
                "backend": through["backend"],
                "prompts": through["prompts"],
                "direct_p50_ms": direct["p50_ms"],
                "through_p50_ms": through["p50_ms"],
                "direct_p99_ms": direct["p99_ms"],
                "through_p99_ms": through["p99_ms"],
                "extra_p50_ms": through["p50_ms"] - direct["p50_ms"],
                "encoder_head_ms_per_batch": through.get("encoder_head_ms_per_batch", float("nan")),
            }
        )
    return out


def service_ratios(runs: list[dict]) -> list[dict]:
    base = {(r["kind"], r["prompts"], r["concurrency"]): r for r in runs if r["backend"] == "torch"}
    out = []
    for r in runs:
        ref = base.get((r["kind"], r["prompts"], r["concurrency"]))
        if r["backend"] in (None, "torch") or ref is None or r["kind"] != "route":
            continue
        out.append(
            {
                "backend": r["backend"],
                "prompts": r["prompts"],
                "concurrency": r["concurrency"],
                "p50_speedup": ref["p50_ms"] / r["p50_ms"],
                "p99_speedup": ref["p99_ms"] / r["p99_ms"],
                "throughput_ratio": r["requests_per_s"] / ref["requests_per_s"],
            }
        )
    return out


# ------------------------------------------------------------------------------------------ report


def _md_embedding(rows: list[dict]) -> list[str]:
    lines = [
        "## Encoder: prompts per second (arena prompts, tokenisation included, no cache)",
        "",
        "| backend | batch | prompts/s | batch median ms | batch p95 ms | x torch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['batch']} | {r['prompts_per_s']:.1f} | {r['batch_ms_median']:.1f} | "
            f"{r['batch_ms_p95']:.1f} | {r['speedup_vs_torch']:.2f} |"
        )
    return lines


def _md_agreement(ag: dict) -> list[str]:
    lines = [
        f"## Same decisions? {ag['prompts']} arena prompts, policy `{ag['policy']}` (`{ag['artifact']}`)",
        "",
        (
            f"Policy configuration {json.dumps(ag['policy_config'])}, trained on {ag.get('trained_on')}. "
            if ag.get("policy_config")
            else ""
        )
        + f"With torch embeddings it picks {min(ag['models_chosen_by_torch'].values())} to "
        f"{max(ag['models_chosen_by_torch'].values())} different models per cost weight.",
        "",
        f"Share of prompts routed to the same model as with torch embeddings, over the {len(ag['cost_weights'])} "
        f"cost weights of the evaluation sweep; frontier on the {ag['complete_prompts']} prompts with every "
        "model's outcome (mean cost and quality of the chosen models); AIQ over [0, most expensive single model].",
        "",
        "| encoder | max tokens | cosine min | cosine mean | same decision (min over weights) | mean | identical | AIQ |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
        f"| torch | {ag['variants']['torch']['max_seq_length']} | 1 | 1 | 1 | 1 | yes | "
        f"{ag['variants']['torch']['aiq']:.4f} |",
    ]
    for name, var in ag["variants"].items():
        if name != "torch":
            lines.append(
                f"| {name} | {var['max_seq_length']} | {var['cosine_min']:.5f} | {var['cosine_mean']:.5f} | "
                f"{var['same_decision_min']:.3f} | {var['same_decision_mean']:.3f} | "
                f"{'yes' if var['identical_decisions'] else 'no'} | {var['aiq']:.4f} |"
            )
    names = list(ag["variants"])
    lines += [
        "",
        "Frontier (mean cost in milli-dollars per prompt / mean quality) per cost weight:",
        "",
        "| cost weight | " + " | ".join(names) + " |",
        "|---:|" + "---|" * len(names),
    ]
    for i, w in enumerate(ag["cost_weights"]):
        cells = [
            f"{1000 * ag['variants'][n]['points'][i]['cost_usd']:.3f} / {ag['variants'][n]['points'][i]['quality']:.4f}"
            for n in names
        ]
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return lines


def _md_service(report: dict) -> list[str]:
    nan = float("nan")
    lines = [
        "## HTTP service: `/v1/route` over loopback (uvicorn), no cache hits unless stated",
        "",
        "`short`: 15-token synthetic prompts (as `serving_http_bench.py`); `arena`: the bundled arena prompts "
        "(median 57 tokens, a fifth over 128), each made unique. Mean batch: requests per encoder call the server "
        "formed; encoder+head: its time per batch.",
        "",
        "| backend | prompts | concurrency | requests | req/s | p50 ms | p99 ms | server CPU ms/req | mean batch | encoder+head ms/batch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["service"]:
        if r["kind"] == "route":
            lines.append(
                f"| {r['backend']} | {r['prompts']} | {r['concurrency']} | {r['requests']} | "
                f"{r['requests_per_s']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r.get('server_cpu_ms_per_request', nan):.2f} | {r.get('mean_batch_size', nan):.1f} | "
                f"{r.get('encoder_head_ms_per_batch', nan):.2f} |"
            )
    lines += [
        "",
        "Against torch in the same run:",
        "",
        "| backend | prompts | concurrency | p50 speed-up | p99 speed-up | throughput x |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in report["service_ratios"]:
        lines.append(
            f"| {r['backend']} | {r['prompts']} | {r['concurrency']} | {r['p50_speedup']:.2f} | "
            f"{r['p99_speedup']:.2f} | {r['throughput_ratio']:.2f} |"
        )
    lines += [
        "",
        "## Chat completions: through the router vs straight to the upstream (concurrency 1)",
        "",
        "The upstream is the tests' OpenAI-compatible stub on loopback, called with the same kind of bodies "
        "directly and through the router. `arena`: every prompt new (the router embeds each); "
        "`arena-repeated-32`: 32 prompts in turn, their embeddings in the router's cache, so the extra "
        "latency is the router's own beyond the embedding (HTTP hop, decision, proxying, logging). "
        "Encoder+head: the server's mean time per micro-batch during the run.",
        "",
        "| backend | prompts | direct p50 ms | through p50 ms | extra p50 ms | encoder+head ms/batch | direct p99 | through p99 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["chat_overhead"]:
        lines.append(
            f"| {r['backend']} | {r['prompts']} | {r['direct_p50_ms']:.2f} | {r['through_p50_ms']:.2f} | "
            f"{r['extra_p50_ms']:.2f} | {r['encoder_head_ms_per_batch']:.2f} | {r['direct_p99_ms']:.2f} | "
            f"{r['through_p99_ms']:.2f} |"
        )
    return lines


def targets(report: dict) -> list[str]:
    """The issue's targets, checked on this run's numbers for the default backend."""
    runs = {(r["backend"], r["kind"], r["prompts"], r["concurrency"]): r for r in report["service"]}
    lines = ["## Targets (default backend `onnx`)", ""]
    for prompts in ("short", "arena"):
        r = runs.get((DEFAULT_BACKEND, "route", prompts, 1))
        if r:
            verdict = "met" if r["p50_ms"] <= 10.0 else "not met"
            lines.append(
                f"- `/v1/route` at concurrency 1, {prompts} prompts: p50 {r['p50_ms']:.1f} ms (<= 10 ms: {verdict})."
            )
    for prompts in ("short", "arena"):
        rates = [runs.get((DEFAULT_BACKEND, "route", prompts, c)) for c in (1, 16, 64)]
        if all(rates):
            lines.append(
                f"- Throughput, {prompts} prompts, concurrency 1 / 16 / 64: "
                + " / ".join(f"{r['requests_per_s']:.0f}" for r in rates)
                + " req/s (mean batch "
                + " / ".join(f"{r.get('mean_batch_size', float('nan')):.1f}" for r in rates)
                + ")."
            )
    chat = {(r["backend"], r["prompts"]): r for r in report["chat_overhead"]}
    fresh, cached = chat.get((DEFAULT_BACKEND, "arena")), chat.get((DEFAULT_BACKEND, "arena-repeated-32"))
    if fresh and cached:
        verdict = "met" if cached["extra_p50_ms"] <= 2.0 else "not met"
        lines.append(
            f"- Chat completions against a direct upstream call, p50: +{fresh['extra_p50_ms']:.1f} ms with a new "
            f"prompt (the embedding included), +{cached['extra_p50_ms']:.1f} ms with its embedding cached: the "
            f"router's own overhead beyond the embedding (<= 2 ms: {verdict})."
        )
    return lines


def markdown(report: dict) -> str:
    info = report["info"]
    v = info["versions"]
    lines = [
        "# Serving benchmark: encoder backends and the HTTP path (CPU)",
        "",
        f"{info['created_at']}, {info['cpu']}, {info['cores']} cores, encoder threads {info['threads']}, "
        f"{info['machine']}, Python {info['python']}, torch {v['torch']}, onnxruntime {v['onnxruntime']}, "
        f"sentence-transformers {v['sentence-transformers']}, transformers {v['transformers']}, fastapi "
        f"{v['fastapi']}, uvicorn {v['uvicorn']}; commit {info['git_commit']}; profile `{info['profile']}`, "
        f"{info['seconds']:.0f} s. 1-minute load average {info['load_average_start'][0]:.1f} at the start and "
        f"{info['load_average_end'][0]:.1f} at the end: other work on the machine shares the cores, and client, "
        "stub upstream and server share them too, so absolute numbers are upper bounds; ratios against torch "
        "come from the same run. Produced by `experiments/bench_serving.py`.",
        "",
    ]
    if "service" in report:
        lines += targets(report) + [""]
    if "embedding" in report:
        lines += _md_embedding(report["embedding"]) + [""]
    if "agreement" in report:
        lines += _md_agreement(report["agreement"]) + [""]
    if "service" in report:
        lines += _md_service(report)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: short timings, few prompts, toy policy"
    )
    parser.add_argument(
        "--artifact", default=None, help="policy for the agreement check and the service runs"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="encoder CPU threads (0: as the service: every core for ONNX Runtime, cores - 1 for torch)",
    )
    parser.add_argument("--out-dir", default=str(RESULTS), help="where bench_serving.json and .md go")
    parser.add_argument("--tag", default="", help="file name suffix: bench_serving_<tag>.json")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="what to run (default: all); e.g. --sections agreement --artifact DIR --tag trained",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from openai_stub import OpenAIStub

    from router_rl.data import load_bundled
    from router_rl.serve.settings import ServeSettings

    profile = "quick" if args.quick else "full"
    cfg = PROFILES[profile]
    threads = ServeSettings(torch_threads=args.threads).resolved_encoder_threads()
    info = {**machine_info(threads), "profile": profile}
    prompts = [str(p) for p in load_bundled("arena").prompts]
    sections = set(args.sections)
    steps = 0
    if "embedding" in sections:
        steps += len(BACKENDS) * len(cfg["batch_sizes"])
    if "agreement" in sections:
        steps += 1 + len(cfg["variants"])
    if "service" in sections:
        steps += service_steps(cfg)
    t0 = time.perf_counter()
    report: dict = {"info": info}
    with tempfile.TemporaryDirectory() as tmp_name, tqdm(total=steps, unit="step") as bar:
        tmp = Path(tmp_name)
        if args.artifact or sections == {"embedding"}:
            artifact = Path(args.artifact or ".")
        elif args.quick:
            artifact = toy_arena_artifact(tmp / "toy")
        else:
            bar.set_description("training a debug policy")
            artifact = train_debug_artifact(tmp)
        if "embedding" in sections:
            report["embedding"] = bench_embedding(prompts, cfg, threads, bar)
        if "agreement" in sections:
            report["agreement"] = bench_agreement(artifact, cfg, threads, bar)
        if "service" in sections:
            with OpenAIStub(backlog=256) as stub:
                service = bench_service(artifact, prompts, cfg, args.threads, stub, tmp, bar)
            report["service"] = service
            report["service_ratios"] = service_ratios(service)
            report["chat_overhead"] = chat_overhead(service)
    info["load_average_end"] = list(os.getloadavg())
    info["seconds"] = time.perf_counter() - t0
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench_serving" + (f"_{args.tag}" if args.tag else "")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (out / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {out / stem}.json and .md in {info['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
