"""End-to-end HTTP benchmark of `router-rl serve` on loopback: route latency at concurrency 1, and route and
chat-completion throughput and latency at concurrency 64, with the tests' OpenAI-compatible stub upstream.

    python experiments/serving_http_bench.py                        # toy 16-model artifact, cpu/cuda auto
    python experiments/serving_http_bench.py --artifact outputs/.../artifact --requests 5000 --tag gpu

Writes ``experiments/results/serving_http_<tag>.json`` and ``.md``. The load client and the stub run in this
process, the server in its own, so on a small machine the three share the cores: the numbers are the
whole loop's, an upper bound on the router's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(url: str, path: str, n: int, concurrency: int, body) -> dict:
    from router_rl.serve.testing import http_load

    result = asyncio.run(http_load(url, path, body, n, concurrency))
    return {
        "path": path,
        "requests": n,
        "concurrency": concurrency,
        "seconds": result.seconds,
        "requests_per_s": result.requests_per_s,
        "p50_ms": result.percentile_ms(50),
        "p90_ms": result.percentile_ms(90),
        "p99_ms": result.percentile_ms(99),
        "statuses": {str(k): v for k, v in result.statuses.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", default=None, help="an exported artifact (default: a toy 16-model one)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency-64 run")
    parser.add_argument("--sequential", type=int, default=200, help="requests of the concurrency-1 run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tag", default="", help="file name tag (default: the device)")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT / "tests"))
    from openai_stub import OpenAIStub

    from router_rl.serve.testing import free_port, toy_artifact

    with tempfile.TemporaryDirectory() as tmp, OpenAIStub() as stub:
        artifact = args.artifact or str(
            toy_artifact(
                Path(tmp) / "artifact",
                [f"model-{i}" for i in range(16)],
                quality=list(np.linspace(0.4, 0.9, 16)),
                cost_usd=list(np.geomspace(1e-5, 1e-2, 16)),
                slope=1.0,
            )
        )
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "router_rl.cli",
            "serve",
            artifact,
            "--port",
            str(port),
            "--upstream",
            stub.base_url,
            "--log-db",
            str(Path(tmp) / "log.sqlite"),
            "--device",
            args.device,
            "--log-level",
            "warning",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(1200):  # bounded wait for startup
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                time.sleep(0.1)
            health = httpx.get(f"{url}/healthz").json()
            _load(url, "/v1/route", 32, 8, lambda i: {"prompt": f"warm-up {i}"})

            def prompt(i: int) -> str:
                return f"request {i}: explain topic {i % 97} with an example about {i % 13}"

            runs = []
            cpu0 = _cpu_seconds(proc.pid)
            runs.append(_load(url, "/v1/route", args.sequential, 1, lambda i: {"prompt": prompt(i)}))
            runs.append(_load(url, "/v1/route", args.requests, 64, lambda i: {"prompt": prompt(i)}))
            chat = {"model": "router", "messages": [{"role": "user", "content": ""}]}
            runs.append(
                _load(
                    url,
                    "/v1/chat/completions",
                    args.requests,
                    64,
                    lambda i: {**chat, "messages": [{"role": "user", "content": prompt(i)}]},
                )
            )
            server_cpu = _cpu_seconds(proc.pid) - cpu0
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    total = sum(r["requests"] for r in runs)
    report = {
        "info": {
            "device": health["device"],
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
            "artifact": args.artifact or "toy (16 models)",
            "server_cpu_ms_per_request": 1000 * server_cpu / total,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "runs": runs,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"serving_http_{args.tag or health['device']}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    info = report["info"]
    lines = [
        f"# router-rl serve over HTTP: {info['device']}, {info['cpus']} CPUs",
        "",
        f"{info['created_at']}, {info['machine']}, 1-minute load average {info['load_average_1m']:.1f} when done "
        f"(other work on the machine shares the cores). Server CPU: {info['server_cpu_ms_per_request']:.1f} ms "
        "per request. Produced by `experiments/serving_http_bench.py`; client and stub upstream in one process, "
        "server in another, all on loopback.",
        "",
        "| endpoint | requests | concurrency | req/s | p50 ms | p90 ms | p99 ms | statuses |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['path']} | {r['requests']} | {r['concurrency']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['statuses']} |"
        )
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
