"""Encoders for serving on CPU: MiniLM (ONNX, the CPU serving backend; torch) against the distilled static encoder.

    python experiments/bench_encoders.py             # about 6 minutes on 2 cores
    python experiments/bench_encoders.py --quick     # about 2 minutes

For each encoder a policy is trained and exported by ``router_rl.training.train`` (bundled arena data, the
default policy and the default representation, MLflow off), then:

- route: ``/v1/route`` latency at concurrency 1 over real HTTP on loopback (``router-rl serve ARTIFACT`` in a
  subprocess, as it starts by default (each decision's log row committed and synced before the answer) and with
  ``--no-durable-decisions`` (rows queued), with its CPU defaults: ``--encoder-backend auto`` picks ONNX for MiniLM and the token lookup for
  the static encoder), arena prompts each made new (a request number in front: no cache hit), both servers
  up at once and taking turns for ``--rounds`` rounds; p50/p99 are the medians over rounds.
- encode: prompts/s of each encoder with no cache, one prompt at a time (arena prompts) and in batches of
  3,000 templated arena prompts (~530 tokens each: a ~430-token system prompt, then the prompt).

Results: ``experiments/results/bench_encoders.json`` and ``.md``. Client and server share the machine's
cores; the load average is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
sys.path.insert(0, str(ROOT / "experiments"))

from representation_study import SYSTEM_PROMPT, TEMPLATE, _read_prompts, compose  # noqa: E402
from serving_http_bench import load_run, serve_process  # noqa: E402

ENCODERS = {"minilm": ["embedder=minilm"], "static": ["embedder=static"]}


def train_artifact(encoder: str, out: Path) -> dict:
    """Train and export the default policy with ``encoder`` on arena: the artifact and the run's figures."""
    from router_rl.training import train

    cfg = compose(
        [
            *ENCODERS[encoder],
            "mlflow.enabled=false",
            "registry.name=null",
            "evaluation.baselines=[]",
            "seed=0",
        ]
    )
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = train(cfg, out)
    entry = report["policies"][cfg.policy.get("label") or "linucb"]
    return {"artifact": str(out / "artifact"), "aiq_seed0": entry["aiq"]}


def bench_encode(encoder: str, arena: list[str], templated: list[str], quick: bool) -> dict:
    from router_rl.training import make_embedder

    out: dict = {}
    backends = ["onnx", "torch"] if encoder == "minilm" else ["static"]
    for backend in backends:
        cfg = compose([*ENCODERS[encoder], "embedder.cache_dir=null", f"embedder.backend={backend}"])
        embedder = make_embedder(
            cfg.embedder, show_progress=False
        )  # no affixes: the encoder reads ~530 tokens
        embedder.encode(arena[:8])  # load (and export to ONNX once)
        times = []
        for text in arena[: 60 if quick else 200]:
            t0 = time.perf_counter()
            embedder.encode([text])
            times.append(time.perf_counter() - t0)
        n = len(templated) if backend == "static" else (100 if quick else 300)
        t0 = time.perf_counter()
        embedder.encode(templated[:n])
        seconds = time.perf_counter() - t0
        out[backend] = {
            "one_prompt_p50_ms": 1000 * float(np.median(times)),
            "batch_prompts": n,
            "batch_prompts_per_s": n / seconds,
            "seconds_for_3000": 3000 * seconds / n,
            "representation": embedder.representation.describe(),
        }
    return out


def bench_route(
    artifacts: dict[str, tuple[str, list[str]]], prompts: list[str], rounds: int, seconds: float, tmp: Path
) -> dict:
    runs: dict[str, list[dict]] = {name: [] for name in artifacts}
    offset = iter(range(0, 10**9, 10**6))

    def body(base: int):
        return lambda i: {"prompt": f"[{base + i}] {prompts[i % len(prompts)]}"}

    with contextlib.ExitStack() as stack:
        servers = {}
        for i, (name, (path, args)) in enumerate(artifacts.items()):
            url, proc = stack.enter_context(
                serve_process(
                    path,
                    upstream="http://127.0.0.1:9/v1",
                    log_db=tmp / f"log{i}.sqlite",
                    device="cpu",
                    args=args,
                )
            )
            load_run(url, "/v1/route", 64, 4, body(next(offset)))  # warm-up
            servers[name] = (url, proc)
        for _ in range(rounds):
            for name, (url, proc) in servers.items():
                runs[name].append(
                    load_run(url, "/v1/route", 10**7, 1, body(next(offset)), duration_s=seconds, pid=proc.pid)
                )
    out = {}
    for name, rs in runs.items():
        out[name] = {
            "p50_ms": float(np.median([r["p50_ms"] for r in rs])),
            "p99_ms": float(np.median([r["p99_ms"] for r in rs])),
            "requests_per_s": float(np.median([r["requests_per_s"] for r in rs])),
            "server_cpu_ms_per_request": float(
                np.median([r.get("server_cpu_ms_per_request", np.nan) for r in rs])
            ),
            "p50_ms_rounds": [round(r["p50_ms"], 3) for r in rs],
            "statuses": rs[-1]["statuses"],
        }
    return out


def markdown(report: dict) -> str:
    lines = [
        "# Encoders for CPU serving",
        "",
        f"`python experiments/bench_encoders.py` on {report['machine']}, load average {report['load_before']} "
        f"before, {report['load_after']} after ({report['created']}).",
        "",
        "| encoder | serving backend | `/v1/route` p50 | p99 | route req/s (c=1) | server CPU ms/req | "
        "one prompt encode p50 | 3,000 templated prompts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, route in report["route"].items():
        encoder = name.split(",")[0]
        backend = "onnx" if encoder == "minilm" else "static"
        e = report["encode"][encoder][backend]
        lines.append(
            f"| {name} | {backend} | {route['p50_ms']:.2f} ms | {route['p99_ms']:.2f} ms | "
            f"{route['requests_per_s']:.0f} | {route['server_cpu_ms_per_request']:.2f} | "
            f"{e['one_prompt_p50_ms']:.2f} ms | {e['seconds_for_3000']:.1f} s ({e['batch_prompts_per_s']:.0f}/s) |"
        )
    torch = report["encode"].get("minilm", {}).get("torch")
    if torch:
        lines += [
            "",
            f"MiniLM on torch: one prompt {torch['one_prompt_p50_ms']:.2f} ms, 3,000 templated prompts "
            f"{torch['seconds_for_3000']:.0f} s ({torch['batch_prompts_per_s']:.1f}/s; measured on "
            f"{torch['batch_prompts']}). Batch figures for MiniLM are measured on {report['encode']['minilm']['onnx']['batch_prompts']} "
            "prompts and scaled to 3,000.",
        ]
    lines += [
        "",
        "p50 per round: " + "; ".join(f"{k} {v['p50_ms_rounds']}" for k, v in report["route"].items()),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", default=str(RESULTS / "bench_encoders.json"))
    args = parser.parse_args(argv)
    rounds, seconds = (1, 8.0) if args.quick else (args.rounds, args.seconds)
    arena = [r["prompt"] for r in _read_prompts("arena_bench_v1_gpt4judge")]
    templated = [
        f"[{i}] " + TEMPLATE.format(system=SYSTEM_PROMPT, prompt=arena[i % len(arena)]) for i in range(3000)
    ]
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": round(os.getloadavg()[0], 2),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        trained = {name: train_artifact(name, Path(tmp) / name) for name in ENCODERS}
        report["trained"] = trained
        servers = {n: (t["artifact"], []) for n, t in trained.items()}  # defaults: durable decision rows
        servers.update(
            {f"{n}, rows queued": (t["artifact"], ["--no-durable-decisions"]) for n, t in trained.items()}
        )
        report["route"] = bench_route(servers, arena, rounds, seconds, Path(tmp))
        report["encode"] = {name: bench_encode(name, arena, templated, args.quick) for name in ENCODERS}
    report["load_after"] = round(os.getloadavg()[0], 2)
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
