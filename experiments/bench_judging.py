"""What judge sampling costs a request: p50/p99 of a non-streamed chat request through the real server with
judging on (``--judge-share 1.0`` and a realistic ``0.1``) against the same server with judging off.

    python experiments/bench_judging.py                # about 5 minutes on 2 cores
    python experiments/bench_judging.py --rounds 4 --requests 50   # under a minute

Since issue 14 the grading runs in the judge worker (serve/judge_worker.py): a separate process at
``os.nice(19)``, fed through a bounded queue, that calls the judge and writes the grade's feedback row itself,
so the serving process only draws the sample and queues a small job after the response went out. With
``--event-loop`` (the default) one more server grades on its own event loop (``--no-judge-worker``, the design
before the worker) at the first share, measured in the same rounds for comparison.

Each server is a ``router-rl serve`` subprocess (a toy linear artifact on the default encoder; a fixed set of
prompts, warmed into the embedding cache first, so the head decides inline and the encoder is out of the
picture); all share one local OpenAI-compatible stub that is both their upstream and the judge
(``experiments/production_loop.py``'s :class:`Stub`: it answers, and grades with a recorded grade). Every
server logs every decision durably to its own sqlite file; the judged ones also write each grade as feedback.
Rounds rotate which server goes first; each round sends ``--requests`` requests one at a time (concurrency 1,
keep-alive) to each server, and after a judged server's turn waits until every answer of the round is
accounted for in its judge metrics (graded, sampled out or dropped), so its background work is finished before
the next server is measured and overlaps only its own next requests, as in production.

Target (issue 14): judging adds <= 0.5 ms to the p50. Writes experiments/results/bench_judging.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from production_loop import JUDGE_MODEL, Serve, Stub  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODELS = ["big", "small"]


def prompts(n: int) -> list[str]:
    return [
        f"Question {i}: explain in two sentences why the sky looks blue at noon and red at dusk."
        for i in range(n)
    ]


def body_for(texts: list[str]):
    def body(i: int) -> dict:
        row = i % len(texts)
        return {
            "model": "router",
            "messages": [
                {"role": "system", "content": f"replay row {row}"},
                {"role": "user", "content": texts[row]},
            ],
        }

    return body


def measure(url: str, n: int, texts: list[str], gap_ms: float = 0.0) -> list[float]:
    """Latencies (s) of ``n`` requests one at a time: back to back on one keep-alive connection, or with
    ``gap_ms`` of idle time after each answer (the server's background work can finish before the next)."""
    from router_rl.serve.testing import http_load

    body = body_for(texts)
    if gap_ms <= 0:
        res = asyncio.run(http_load(url, "/v1/chat/completions", body, n, 1))
        if res.statuses != {200: n}:
            raise RuntimeError(f"{url}: statuses {res.statuses}")
        return res.latencies

    async def paced() -> list[float]:
        out = []
        for i in range(n):
            res = await http_load(url, "/v1/chat/completions", lambda _j, i=i: body(i), 1, 1)
            if res.statuses != {200: 1}:
                raise RuntimeError(f"{url}: statuses {res.statuses}")
            out += res.latencies
            await asyncio.sleep(gap_ms / 1e3)
        return out

    return asyncio.run(paced())


def judge_counts(url: str) -> dict[str, float]:
    """The server's judge metrics: ``accounted`` (answers graded, any outcome, or skipped, any reason),
    ``queue_full`` (dropped for a full worker queue) and ``queued`` (handed to the worker, not graded yet)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out = {"accounted": 0.0, "queue_full": 0.0, "queued": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            if family.name in ("router_rl_judge_grades", "router_rl_judge_skipped") and sample.name.endswith(
                "_total"
            ):
                out["accounted"] += sample.value
                if sample.labels.get("reason") == "queue_full":
                    out["queue_full"] += sample.value
            elif family.name == "router_rl_judge_queued":
                out["queued"] = sample.value
    return out


def judge_accounted(url: str) -> int:
    return int(judge_counts(url)["accounted"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (its own threads; Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_judging(url: str, sent: int, timeout_s: float = 120.0) -> int:
    deadline = time.monotonic() + timeout_s
    got = judge_accounted(url)
    while got < sent and time.monotonic() < deadline:
        time.sleep(0.2)  # each scrape costs the server CPU
        got = judge_accounted(url)
    return got


def latency_stats(xs: list[float], round_p50: list[float]) -> dict:
    a = np.array(xs) * 1e3
    return {
        "n": int(a.size),
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "median_of_round_p50_ms": float(np.median(round_p50)),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds")
    p.add_argument("--requests", type=int, default=200, help="requests per server per round")
    p.add_argument("--paced-requests", type=int, default=60, help="paced requests per server per round")
    p.add_argument("--gap-ms", type=float, default=20.0, help="idle time after each paced request")
    p.add_argument("--prompts", type=int, default=32, help="distinct prompts, cycled (cached after warm-up)")
    p.add_argument(
        "--judge-shares",
        default="1.0,0.1",
        help="comma-separated --judge-share values: one judged server each",
    )
    p.add_argument(
        "--event-loop",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also a server grading on its event loop (--no-judge-worker) at the first share",
    )
    p.add_argument("--out", default=str(RESULTS / "bench_judging"), help="output prefix (.json, .md)")
    opts = p.parse_args(argv)
    from router_rl.serve.testing import toy_artifact

    t_start = time.perf_counter()
    shares = [float(x) for x in opts.judge_shares.split(",") if x.strip()]
    texts = prompts(opts.prompts)
    work = Path(tempfile.mkdtemp(prefix="bench-judging-"))
    art = toy_artifact(work / "toy", MODELS, quality=[0.8, 0.7], cost_usd=[0.01, 0.001], slope=0.5)
    k = len(MODELS)
    quality = np.full((opts.prompts, k), 0.7)
    tokens = np.full((opts.prompts, k), 100)
    modes = {"back_to_back": 0.0, "paced": float(opts.gap_ms)}
    with Stub(quality, tokens, tokens, MODELS) as stub:
        common = ["--upstream", stub.base_url]
        judge = [
            "--judge-url",
            stub.base_url,
            "--judge-model",
            JUDGE_MODEL,
            "--judge-budget-usd-per-hour",
            "1000",
        ]
        variants: dict[str, list[str]] = {"off": []}
        for share in shares:
            variants[f"worker {share:g}"] = [*judge, "--judge-share", str(share)]
        if opts.event_loop and shares:
            variants[f"event loop {shares[0]:g}"] = [
                *judge,
                "--judge-share",
                str(shares[0]),
                "--no-judge-worker",
            ]
        judged = [name for name in variants if name != "off"]
        lat = {m: {name: [] for name in variants} for m in modes}
        round_p50 = {m: {name: [] for name in variants} for m in modes}
        backlog = {m: {name: [] for name in judged} for m in modes}  # worker jobs left as the batch ended
        # the serving process's own CPU seconds: during the requests, and until the round's grades were in
        cpu_batch = {m: dict.fromkeys(variants, 0.0) for m in modes}
        cpu = {m: dict.fromkeys(variants, 0.0) for m in modes}
        with contextlib.ExitStack() as stack:
            servers = {}
            for i, (name, args) in enumerate(variants.items()):
                (work / str(i)).mkdir()
                servers[name] = stack.enter_context(Serve(art, work / str(i), common + args))
            sent = dict.fromkeys(variants, 2 * opts.prompts)
            for server in servers.values():  # warm-up: every prompt into the cache, connections opened
                measure(server.url, 2 * opts.prompts, texts)
            for name in judged:
                wait_for_judging(servers[name].url, sent[name])
            names = list(variants)
            for r in range(opts.rounds):
                for mode, gap in modes.items():
                    n = opts.requests if gap <= 0 else opts.paced_requests
                    order = names[r % len(names) :] + names[: r % len(names)]  # who goes first rotates
                    for name in order:
                        cpu0 = cpu_seconds(servers[name].proc.pid)
                        got = measure(servers[name].url, n, texts, gap)
                        lat[mode][name] += got
                        round_p50[mode][name].append(float(np.median(got)) * 1e3)
                        cpu_batch[mode][name] += cpu_seconds(servers[name].proc.pid) - cpu0
                        queued = judge_counts(servers[name].url)["queued"]  # every server: the same scrape
                        if name != "off":
                            backlog[mode][name].append(queued)
                            sent[name] += n
                            wait_for_judging(servers[name].url, sent[name])
                        cpu[mode][name] += cpu_seconds(servers[name].proc.pid) - cpu0
                    print(
                        f"round {r} {mode}: p50 "
                        + ", ".join(f"{name} {round_p50[mode][name][-1]:.3f} ms" for name in names),
                        flush=True,
                    )
            worker_cpu = {}
            for name in judged:
                pid = (httpx_json(f"{servers[name].url}/healthz").get("judge") or {}).get("worker_pid")
                worker_cpu[name] = cpu_seconds(pid) if pid else None
            grades = {name: servers[name].judged_count() for name in judged}
            dropped = {name: judge_counts(servers[name].url)["queue_full"] for name in judged}
            health = {name: httpx_json(f"{servers[name].url}/healthz").get("judge") for name in judged}
        judge_calls = stub.judged
    result = {
        "command": "python experiments/bench_judging.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "config": vars(opts),
        "servers": {name: " ".join(args) for name, args in variants.items()},
        "grades_stored": grades,
        "dropped_queue_full": dropped,
        "worker_cpu_s": worker_cpu,
        "judge_calls": judge_calls,
        "judge": health,
        "target": "judging adds <= 0.5 ms to the p50",
    }
    for mode in modes:
        stats = {name: latency_stats(lat[mode][name], round_p50[mode][name]) for name in variants}
        for name in variants:
            stats[name]["server_cpu_ms_per_request_during_batch"] = (
                1e3 * cpu_batch[mode][name] / max(1, stats[name]["n"])
            )
            stats[name]["server_cpu_ms_per_request"] = 1e3 * cpu[mode][name] / max(1, stats[name]["n"])
        off = stats["off"]
        versus = {}
        for name in judged:
            on = stats[name]
            paired = np.array(round_p50[mode][name]) - np.array(round_p50[mode]["off"])
            d50 = on["p50_ms"] - off["p50_ms"]
            versus[name] = {
                "p50_ratio": on["p50_ms"] / off["p50_ms"],
                "p99_ratio": on["p99_ms"] / off["p99_ms"],
                "p50_difference_ms": d50,
                "p99_difference_ms": on["p99_ms"] - off["p99_ms"],
                "round_p50_difference_ms": {
                    "median": float(np.median(paired)),
                    "q25": float(np.percentile(paired, 25)),
                    "q75": float(np.percentile(paired, 75)),
                },
                "met": bool(d50 <= 0.5),
                "worker_backlog_at_batch_end": {
                    "median": float(np.median(backlog[mode][name])),
                    "max": float(np.max(backlog[mode][name])),
                },
            }
        result[mode] = {"gap_ms": modes[mode], "servers": stats, "vs_off": versus}
    result["minutes"] = (time.perf_counter() - t_start) / 60
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    write_md(result, out.with_suffix(".md"))
    print(json.dumps({m: result[m]["vs_off"] for m in modes}, indent=1))
    return result


def httpx_json(url: str) -> dict:
    import httpx

    return httpx.get(url, timeout=30).json()


def write_md(r: dict, path: Path) -> None:
    bb, pc = r["back_to_back"], r["paced"]
    cfg = r["config"]
    judged = list(bb["vs_off"])
    lines = [
        "# Judge sampling overhead (issue 14)",
        "",
        f"Made by `experiments/bench_judging.py` (`{r['command'].strip()}`), {r['minutes']:.1f} min, "
        f"{r['machine']['cpus']} CPUs, load average {', '.join(f'{x:.1f}' for x in r['machine']['load_avg'])} "
        "at the end (the machine is shared).",
        "",
        "A non-streamed chat request through `router-rl serve` (HTTP on loopback, one request at a time, cached "
        "prompt: the head decides inline; durable decision log) with judging on against the same server with "
        "judging off, in interleaved rounds. `worker S`: `--judge-share S`, graded in the judge worker (a "
        "separate process at `os.nice(19)`, handed at most `--judge-queue-size` answers without ever waiting, "
        "which calls the judge and commits the grade's feedback row itself; the server only draws the sample and "
        "queues a small job after the response went out). `event loop S`: the design before the worker (`--no-judge-worker`): the judge call, its JSON and "
        f"the feedback commit in a background task on the server's own event loop. {cfg['rounds']} rounds; "
        "grades stored: "
        + ", ".join(f"{name} {n}" for name, n in r["grades_stored"].items())
        + f" ({r['judge_calls']} judge calls; dropped for a full worker queue: "
        + ", ".join(
            f"{name} {n:g}" for name, n in r["dropped_queue_full"].items() if name.startswith("worker")
        )
        + "). The worker backlog is the answers handed to the worker and not graded yet when a round's requests "
        "to that server ended (then the round waits for them). The serving process's CPU (its own threads, "
        "from `/proc`, 10 ms ticks) per request: during the requests, and until the round's grades were in "
        "(which adds the benchmark's `/metrics` polls of a judged server; the worker's CPU is its own: "
        + ", ".join(
            f"{name} {v:.1f} s"
            for name, v in r["worker_cpu_s"].items()
            if v is not None and name.startswith("worker")
        )
        + " in all, its start-up included) says what grading takes from the serving process; it moves with the "
        f"machine's other load too (cache, steal), less than latency does. Two loads: back to back ({cfg['requests']} requests per server "
        "per round, the next request sent as soon as the answer arrives, so it meets the grading of the answer "
        f"before it) and paced ({cfg['paced_requests']} requests per round, {pc['gap_ms']:g} ms idle after each "
        "answer, so the grading is done before the next request: what judging adds to the request path itself).",
        "",
        "| load | server | p50 (ms) | p50 on - off (ms) | p50 on / off | p99 (ms) | p99 on / off "
        "| per-round p50 difference, median [IQR] (ms) | serving process CPU per request, during the requests "
        "/ until graded (ms) | worker backlog at batch end, median / max |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for label, m in (("back to back", bb), ("paced", pc)):
        off = m["servers"]["off"]
        lines.append(
            f"| {label} | off | {off['p50_ms']:.3f} | | | {off['p99_ms']:.3f} | | | "
            f"{off['server_cpu_ms_per_request_during_batch']:.2f} / {off['server_cpu_ms_per_request']:.2f} | |"
        )
        for name in judged:
            s, v = m["servers"][name], m["vs_off"][name]
            rp, bl = v["round_p50_difference_ms"], v["worker_backlog_at_batch_end"]
            backlog = f"{bl['median']:g} / {bl['max']:g}" if name.startswith("worker") else ""
            lines.append(
                f"| {label} | {name} | {s['p50_ms']:.3f} | {v['p50_difference_ms']:+.3f} | {v['p50_ratio']:.3f} | "
                f"{s['p99_ms']:.3f} | {v['p99_ratio']:.3f} | {rp['median']:+.3f} [{rp['q25']:+.3f}, "
                f"{rp['q75']:+.3f}] | {s['server_cpu_ms_per_request_during_batch']:.2f} / "
                f"{s['server_cpu_ms_per_request']:.2f} | {backlog} |"
            )
    lines += ["", f"Target: {r['target']}:"]
    for name in judged:
        verdicts = [
            f"{label} **{'met' if m['vs_off'][name]['met'] else 'not met'}** "
            f"({m['vs_off'][name]['p50_difference_ms']:+.3f} ms)"
            for label, m in (("back to back", bb), ("paced", pc))
        ]
        lines.append(f"- {name}: {', '.join(verdicts)}")
    lines += [
        "",
        "On this shared machine a difference of a few tenths of a millisecond is within the noise (negative "
        "ones included): compare the per-round IQRs, and the off server's own p50 from one load to the other.",
        "",
    ]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
