"""End-to-end HTTP benchmark of `router-rl serve` on loopback: route latency at concurrency 1, and route and
chat-completion throughput and latency at concurrency 64, with the tests' OpenAI-compatible stub upstream.

    python experiments/serving_http_bench.py                        # toy 16-model artifact, cpu/cuda auto
    python experiments/serving_http_bench.py --artifact outputs/.../artifact --requests 5000 --tag gpu
    python experiments/serving_http_bench.py --serve-arg=--encoder-backend=torch --tag cpu-torch

Writes ``experiments/results/serving_http_<tag>.json`` and ``.md``. The load client and the stub run in this
process, the server in its own, so on a small machine the three share the cores: the numbers are the
whole loop's, an upper bound on the router's own cost. ``experiments/bench_serving.py`` builds on the helpers
here (:func:`serve_process`, :func:`load_run`, :func:`toy_router_artifact`) for the backend comparison.
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
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_run(
    url: str,
    path: str,
    n: int,
    concurrency: int,
    body: Callable[[int], dict],
    *,
    duration_s: float | None = None,
    pid: int | None = None,
) -> dict:
    """``n`` POSTs (or as many as start within ``duration_s``) at ``concurrency``: latency percentiles,
    throughput, statuses and, given the server's ``pid``, its CPU milliseconds per request."""
    from router_rl.serve.testing import http_load

    cpu0 = cpu_seconds(pid) if pid else None
    result = asyncio.run(http_load(url, path, body, n, concurrency, duration_s=duration_s))
    out = {
        "path": path,
        "requests": result.n,
        "concurrency": concurrency,
        "seconds": result.seconds,
        "requests_per_s": result.requests_per_s,
        "p50_ms": result.percentile_ms(50),
        "p90_ms": result.percentile_ms(90),
        "p99_ms": result.percentile_ms(99),
        "statuses": {str(k): v for k, v in result.statuses.items()},
    }
    if pid and cpu0 is not None and result.n:
        out["server_cpu_ms_per_request"] = 1000 * (cpu_seconds(pid) - cpu0) / result.n
    return out


def toy_router_artifact(out_dir: Path) -> Path:
    """The benchmarks' default artifact: 16 models on the default encoder, decisions varying with the prompt."""
    from router_rl.serve.testing import toy_artifact

    return toy_artifact(
        out_dir,
        [f"model-{i}" for i in range(16)],
        quality=list(np.linspace(0.4, 0.9, 16)),
        cost_usd=list(np.geomspace(1e-5, 1e-2, 16)),
        slope=1.0,
    )


@contextlib.contextmanager
def serve_process(
    artifact: str | Path,
    *,
    upstream: str,
    log_db: str | Path,
    args: Sequence[str] = (),
    device: str = "auto",
    startup_timeout_s: float = 300.0,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``router-rl serve ARTIFACT`` on a free loopback port; yields (base URL, process) once healthy."""
    from router_rl.serve.testing import free_port

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "router_rl.cli",
        "serve",
        str(artifact),
        "--port",
        str(port),
        "--upstream",
        upstream,
        "--log-db",
        str(log_db),
        "--device",
        device,
        "--log-level",
        "warning",
        *args,
    ]
    log_path = Path(log_db).with_suffix(".server.log")
    log_file = open(log_path, "w")  # noqa: SIM115 - closed below, after the process
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:  # bounded by the deadline
            if proc.poll() is not None:
                raise RuntimeError(
                    f"router-rl serve exited with {proc.returncode}: {log_path.read_text()[-2000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"router-rl serve did not start within {startup_timeout_s}s")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log_file.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", default=None, help="an exported artifact (default: a toy 16-model one)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency-64 run")
    parser.add_argument("--sequential", type=int, default=200, help="requests of the concurrency-1 run")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--serve-arg", action="append", default=[], help="extra router-rl serve flag (repeatable)"
    )
    parser.add_argument("--tag", default="", help="file name tag (default: the device)")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT / "tests"))
    from openai_stub import OpenAIStub

    with tempfile.TemporaryDirectory() as tmp, OpenAIStub(backlog=256) as stub:
        artifact = args.artifact or str(toy_router_artifact(Path(tmp) / "artifact"))
        with serve_process(
            artifact,
            upstream=stub.base_url,
            log_db=Path(tmp) / "log.sqlite",
            args=args.serve_arg,
            device=args.device,
        ) as (url, proc):
            health = httpx.get(f"{url}/healthz").json()
            load_run(url, "/v1/route", 32, 8, lambda i: {"prompt": f"warm-up {i}"})

            def prompt(i: int) -> str:
                return f"request {i}: explain topic {i % 97} with an example about {i % 13}"

            runs = []
            cpu0 = cpu_seconds(proc.pid)
            runs.append(load_run(url, "/v1/route", args.sequential, 1, lambda i: {"prompt": prompt(i)}))
            runs.append(load_run(url, "/v1/route", args.requests, 64, lambda i: {"prompt": prompt(i)}))
            chat = {"model": "router", "messages": [{"role": "user", "content": ""}]}
            runs.append(
                load_run(
                    url,
                    "/v1/chat/completions",
                    args.requests,
                    64,
                    lambda i: {**chat, "messages": [{"role": "user", "content": prompt(i)}]},
                )
            )
            server_cpu = cpu_seconds(proc.pid) - cpu0
    total = sum(r["requests"] for r in runs)
    report = {
        "info": {
            "device": health["device"],
            "encoder": health.get("encoder"),
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
    encoder = info["encoder"] or {}
    lines = [
        f"# router-rl serve over HTTP: {info['device']}, {info['cpus']} CPUs",
        "",
        f"{info['created_at']}, {info['machine']}, 1-minute load average {info['load_average_1m']:.1f} when done "
        f"(other work on the machine shares the cores). Encoder backend {encoder.get('backend', 'torch')}. "
        f"Server CPU: {info['server_cpu_ms_per_request']:.1f} ms per request. Produced by "
        "`experiments/serving_http_bench.py`; client and stub upstream in one process, server in another, all on "
        "loopback.",
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
