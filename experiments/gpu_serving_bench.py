"""Decision throughput and latency of the serving path, embedder and policy head measured apart, over batch sizes.

    python experiments/gpu_serving_bench.py                       # cuda when present, else cpu; default sizes
    python experiments/gpu_serving_bench.py --device cpu --batch-sizes 1 8 --repeats 3 --tiny
    python experiments/gpu_serving_bench.py --artifact outputs/.../artifact
    python experiments/gpu_serving_bench.py --backend onnx       # ONNX Runtime (CUDA provider with onnxruntime-gpu)

For each batch size B it times, after warm-up, ``repeats`` passes of
  - embed: the encoder (``--backend``: torch, onnx or onnx-int8) on B distinct prompts (tokenisation included,
    no cache),
  - head: the linear policy head (quality, cost, latency estimates and the decision scores) on B embeddings,
  - decide: both, as the service's micro-batcher runs them (``Router.decide_requests``),
with ``torch.cuda.synchronize()`` around every pass on cuda. It writes
``experiments/results/serving_bench_<device>.json`` and ``.md`` (latency per pass: median and p95;
throughput: decisions per second at the median). Without ``--artifact`` it builds a toy 16-model artifact
on the default encoder, which is what serving cost depends on (the head's size barely matters).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _time(fn, repeats: int, device: str) -> list[float]:
    out = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def _prompts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = [
        "route",
        "model",
        "cost",
        "quality",
        "prove",
        "explain",
        "write",
        "code",
        "python",
        "theorem",
        "poem",
        "summary",
        "translate",
        "data",
    ]
    return [f"{i}: " + " ".join(rng.choice(words, size=int(rng.integers(8, 40)))) for i in range(n)]


def _summary(seconds: list[float], batch: int) -> dict[str, float]:
    med = statistics.median(seconds)
    return {
        "median_ms": med * 1000,
        "p95_ms": float(np.percentile(seconds, 95)) * 1000,
        "decisions_per_s": batch / med if med > 0 else float("inf"),
    }


def run(args: argparse.Namespace) -> dict:
    import torch

    from router_rl.serve.artifact import decision_scores, pick_torch_device
    from router_rl.serve.router import Router
    from router_rl.serve.testing import toy_artifact

    device = pick_torch_device(args.device)
    from router_rl.serve.settings import ServeSettings

    # the service's rule: one core less than the machine has (the HTTP side keeps one), unless told
    torch.set_num_threads(ServeSettings(torch_threads=args.threads).resolved_torch_threads())
    tmp = None
    if args.artifact:
        path = Path(args.artifact)
    else:
        tmp = tempfile.TemporaryDirectory()
        k = 16
        path = toy_artifact(
            Path(tmp.name) / "artifact",
            [f"model-{i}" for i in range(k)],
            quality=list(np.linspace(0.4, 0.9, k)),
            cost_usd=list(np.geomspace(1e-5, 1e-2, k)),
            slope=1.0,
        )
    router = Router(path, device=device, encoder_backend=args.backend, threads=torch.get_num_threads())
    router.embed(_prompts(8, 0))  # load and warm the encoder
    rows = []
    for b in args.batch_sizes:
        prompts = _prompts(b, b)
        x = router.embed(prompts)
        xt = torch.as_tensor(x, device=device)
        for _ in range(args.warmup):
            router.embed(prompts)
            decision_scores(router.artifact, xt, cost_weight=0.5)
        embed = _time(lambda p=prompts: router.embed(p), args.repeats, device)
        head = _time(lambda t=xt: decision_scores(router.artifact, t, cost_weight=0.5), args.repeats, device)
        decide = _time(
            lambda p=prompts: router.decide_requests(p, [{"cost_weight": 0.5}] * len(p)), args.repeats, device
        )
        row = {
            "batch": b,
            "embed": _summary(embed, b),
            "head": _summary(head, b),
            "decide": _summary(decide, b),
        }
        rows.append(row)
        print(
            f"batch {b:>5}: embed {row['embed']['median_ms']:9.2f} ms  head {row['head']['median_ms']:8.3f} ms  "
            f"decide {row['decide']['median_ms']:9.2f} ms  ({row['decide']['decisions_per_s']:,.0f} decisions/s)",
            flush=True,
        )
    info = {
        "device": device,
        "device_name": torch.cuda.get_device_name(0)
        if device.startswith("cuda")
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "encoder": router.artifact.manifest["embedder"]["id"],
        "encoder_backend": router.embedder.backend,
        "max_seq_length": router.embedder.max_seq_length,
        "models": len(router.models),
        "repeats": args.repeats,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "artifact": str(args.artifact) if args.artifact else "toy (16 models)",
    }
    if tmp is not None:
        tmp.cleanup()
    return {"info": info, "results": rows}


def write(report: dict, out_dir: Path, tag: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    info = report["info"]
    stem = f"serving_bench_{tag or info['device'].split(':')[0]}"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2))
    lines = [
        f"# Serving decision benchmark: {info['device']} ({info['device_name']})",
        "",
        f"torch {info['torch']} ({info['torch_threads']} CPU threads), encoder `{info['encoder']}` "
        f"on {info.get('encoder_backend', 'torch')} "
        f"(max_seq_length {info['max_seq_length']}), {info['models']} models, {info['repeats']} timed passes "
        f"per cell, {info['created_at']}. Produced by `experiments/gpu_serving_bench.py`.",
        "",
        "| batch | embed median ms | embed p95 ms | head median ms | head p95 ms | decide median ms | decisions/s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['batch']} | {r['embed']['median_ms']:.2f} | {r['embed']['p95_ms']:.2f} | "
            f"{r['head']['median_ms']:.3f} | {r['head']['p95_ms']:.3f} | {r['decide']['median_ms']:.2f} | "
            f"{r['decide']['decisions_per_s']:,.0f} |"
        )
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:N")
    parser.add_argument("--artifact", default=None, help="an exported artifact (default: a toy 16-model one)")
    parser.add_argument(
        "--backend", default="torch", help="encoder backend: torch, onnx, onnx-int8 or auto (onnx on CPU)"
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64, 128, 256, 512])
    parser.add_argument("--repeats", type=int, default=20, help="timed passes per batch size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes per batch size")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: as the service, one core less than the machine has)",
    )
    parser.add_argument("--tiny", action="store_true", help="a smoke run: repeats 3, warmup 1")
    parser.add_argument("--out-dir", default=str(RESULTS), help="where the .json and .md go")
    parser.add_argument("--tag", default="", help="file name tag (default: the device type)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.repeats, args.warmup = 3, 1
    report = run(args)
    json_path, md_path = write(report, Path(args.out_dir), args.tag)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
