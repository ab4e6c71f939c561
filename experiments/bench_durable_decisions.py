"""What durable decisions cost: `/v1/route` p50 with ``--durable-decisions`` (the default: a decision is answered
only once its log row is committed and synced, in a group commit with every decision of the same window) and
with ``--no-durable-decisions`` (the row is queued; the answer says ``durable: false``), in one run.

    python experiments/bench_durable_decisions.py                 # about 2 minutes on 2 cores
    python experiments/bench_durable_decisions.py --rounds 2 --requests 100   # a smoke run

Both servers run at once (an idle one costs nothing) and the rounds alternate between them, so both see the
same machine; each figure is the median over rounds of a round's p50, and the ratio is durable / queued. The
decision logs live in ``--db-dir`` (default: a temporary folder on the disk of the working directory, not a
tmpfs, so the syncs are real). Workloads: repeated prompts (their embeddings are cached, so a decision is
~1 ms and the sync is most visible), new prompts (the encoder runs), both at concurrency 1 and 16 (where
group commit shares one sync among the decisions of a window). Writes ``experiments/results/
bench_durable_decisions.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
sys.path.insert(0, str(ROOT / "experiments"))
sys.path.insert(0, str(ROOT / "tests"))

from serving_http_bench import load_run, serve_process, toy_router_artifact  # noqa: E402

MODES = {"durable": "--durable-decisions", "queued": "--no-durable-decisions"}


def workloads(requests: int) -> list[dict]:
    """Each workload's ``bodies(tag)`` gives the request bodies of one round (``tag`` names the round)."""

    def cached(tag: str):
        return lambda i: {"prompt": f"a repeated question about topic {i % 32}"}

    def fresh(tag: str):
        return lambda i: {
            "prompt": f"{tag} request {i}: explain topic {i % 97} with an example about {i % 13}"
        }

    return [
        {"name": "cached prompts, concurrency 1", "bodies": cached, "concurrency": 1, "n": requests},
        {"name": "cached prompts, concurrency 16", "bodies": cached, "concurrency": 16, "n": 4 * requests},
        {"name": "new prompts, concurrency 1", "bodies": fresh, "concurrency": 1, "n": requests // 2},
        {"name": "new prompts, concurrency 16", "bodies": fresh, "concurrency": 16, "n": requests},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per workload and mode")
    parser.add_argument(
        "--requests", type=int, default=300, help="requests per round (concurrency 1, cached)"
    )
    parser.add_argument(
        "--db-dir", default=None, help="where the decision logs go (default: a temp dir in .)"
    )
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args(argv)

    from openai_stub import OpenAIStub

    db_root = Path(args.db_dir) if args.db_dir else Path.cwd()
    db_root.mkdir(parents=True, exist_ok=True)
    rows = []
    with (
        tempfile.TemporaryDirectory(dir=db_root, prefix=".bench-durable-") as tmp,
        OpenAIStub(backlog=256) as stub,
        contextlib.ExitStack() as stack,
    ):
        artifact = toy_router_artifact(Path(tmp) / "artifact")
        urls = {}
        for mode, flag in MODES.items():
            url, _ = stack.enter_context(
                serve_process(
                    artifact, upstream=stub.base_url, log_db=Path(tmp) / f"{mode}.sqlite", args=[flag]
                )
            )
            health = httpx.get(f"{url}/healthz").json()
            assert health["durable_decisions"] is (mode == "durable"), health
            load_run(url, "/v1/route", 64, 8, lambda i: {"prompt": f"warm-up {i}"})
            urls[mode] = url
        for w in workloads(args.requests):
            p50s: dict[str, list[float]] = {m: [] for m in MODES}
            p99s: dict[str, list[float]] = {m: [] for m in MODES}
            for r in range(args.rounds):
                order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    run = load_run(
                        urls[mode], "/v1/route", w["n"], w["concurrency"], w["bodies"](f"{mode}-{r}")
                    )
                    assert run["statuses"] == {"200": w["n"]}, run["statuses"]
                    p50s[mode].append(run["p50_ms"])
                    p99s[mode].append(run["p99_ms"])
            row = {"workload": w["name"], "rounds": args.rounds, "requests_per_round": w["n"]}
            for mode in MODES:
                row[f"{mode}_p50_ms"] = statistics.median(p50s[mode])
                row[f"{mode}_p99_ms"] = statistics.median(p99s[mode])
                row[f"{mode}_p50_rounds_ms"] = p50s[mode]
            row["p50_ratio"] = row["durable_p50_ms"] / row["queued_p50_ms"]
            row["p50_extra_ms"] = row["durable_p50_ms"] - row["queued_p50_ms"]
            rows.append(row)
            print(
                f"{w['name']}: durable {row['durable_p50_ms']:.2f} ms, queued {row['queued_p50_ms']:.2f} ms p50 "
                f"(x{row['p50_ratio']:.2f}, +{row['p50_extra_ms']:.2f} ms)"
            )
    report = {
        "info": {
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "db_filesystem_dir": str(db_root.resolve()),
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "rows": rows,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_durable_decisions.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Durable decisions: /v1/route p50 with and without a synced log row before the answer",
        "",
        f"`python experiments/bench_durable_decisions.py` on {report['info']['machine']}, {os.cpu_count()} CPUs, "
        f"load {report['info']['load_average'][0]:.1f}; median over {args.rounds} alternating rounds.",
        "",
        "| workload | durable p50 / p99 ms | queued p50 / p99 ms | p50 ratio | extra p50 ms |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['workload']} | {row['durable_p50_ms']:.2f} / {row['durable_p99_ms']:.1f} | "
            f"{row['queued_p50_ms']:.2f} / {row['queued_p99_ms']:.1f} | {row['p50_ratio']:.2f} | "
            f"{row['p50_extra_ms']:+.2f} |"
        )
    (out / "bench_durable_decisions.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
