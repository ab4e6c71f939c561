"""What judge sampling costs a request: p50/p99 of a non-streamed chat request through the real server with
``--judge-share 1.0`` against the same server with judging off.

    python experiments/bench_judging.py                # about 2 minutes on 2 cores
    python experiments/bench_judging.py --rounds 4 --requests 50   # seconds

Two ``router-rl serve`` subprocesses (a toy linear artifact on the default encoder; a fixed set of prompts,
warmed into the embedding cache first, so the head decides inline and the encoder is out of the picture) share
one local OpenAI-compatible stub that is both their upstream and the judge (``experiments/production_loop.py``'s
:class:`Stub`: it answers, and grades with a recorded grade). Both servers log every decision durably to their
own sqlite file; the judged one also writes each grade as feedback. Rounds alternate which server goes first;
each round sends ``--requests`` requests one at a time (concurrency 1, keep-alive), then waits until every
judged answer of the round has its grade stored (so the judged server's background work is finished before
the other server is measured, and it overlaps only its own next requests, as in production).

Target (issue 14): judging adds <= 0.5 ms to the p50. Writes experiments/results/bench_judging.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
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


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds")
    p.add_argument("--requests", type=int, default=200, help="requests per server per round")
    p.add_argument("--paced-requests", type=int, default=60, help="paced requests per server per round")
    p.add_argument("--gap-ms", type=float, default=20.0, help="idle time after each paced request")
    p.add_argument("--prompts", type=int, default=32, help="distinct prompts, cycled (cached after warm-up)")
    p.add_argument("--out", default=str(RESULTS / "bench_judging"), help="output prefix (.json, .md)")
    opts = p.parse_args(argv)
    from router_rl.serve.testing import toy_artifact

    t_start = time.perf_counter()
    texts = prompts(opts.prompts)
    work = Path(tempfile.mkdtemp(prefix="bench-judging-"))
    art = toy_artifact(work / "toy", MODELS, quality=[0.8, 0.7], cost_usd=[0.01, 0.001], slope=0.5)
    k = len(MODELS)
    quality = np.full((opts.prompts, k), 0.7)
    tokens = np.full((opts.prompts, k), 100)
    modes = {"back_to_back": 0.0, "paced": float(opts.gap_ms)}
    lat = {m: {"off": [], "on": []} for m in modes}
    round_p50 = {m: {"off": [], "on": []} for m in modes}
    graded = 0
    with Stub(quality, tokens, tokens, MODELS) as stub:
        common = ["--upstream", stub.base_url]
        judge = ["--judge-share", "1.0", "--judge-url", stub.base_url, "--judge-model", JUDGE_MODEL]
        judge += ["--judge-budget-usd-per-hour", "1000"]
        (work / "off").mkdir()
        (work / "on").mkdir()
        with Serve(art, work / "off", common) as off, Serve(art, work / "on", common + judge) as on:
            servers = {"off": off, "on": on}
            for server in servers.values():  # warm-up: every prompt into the cache, connections opened
                measure(server.url, 2 * opts.prompts, texts)
            sent_on = 2 * opts.prompts
            on.wait_for_grades(sent_on)
            for r in range(opts.rounds):
                for mode, gap in modes.items():
                    n = opts.requests if gap <= 0 else opts.paced_requests
                    order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
                    for name in order:
                        got = measure(servers[name].url, n, texts, gap)
                        lat[mode][name] += got
                        round_p50[mode][name].append(float(np.median(got)) * 1e3)
                        if name == "on":
                            sent_on += n
                            graded = on.wait_for_grades(sent_on)
                    print(
                        f"round {r} {mode}: p50 off {round_p50[mode]['off'][-1]:.3f} ms, "
                        f"on {round_p50[mode]['on'][-1]:.3f} ms",
                        flush=True,
                    )
            judged = stub.judged
    result = {
        "command": "python experiments/bench_judging.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "config": vars(opts),
        "grades_stored": graded,
        "judge_calls": judged,
        "target": "judging adds <= 0.5 ms to the p50",
    }
    for mode in modes:
        stats = {}
        for name, xs in lat[mode].items():
            a = np.array(xs) * 1e3
            stats[name] = {
                "n": int(a.size),
                "p50_ms": float(np.percentile(a, 50)),
                "p99_ms": float(np.percentile(a, 99)),
                "mean_ms": float(a.mean()),
                "median_of_round_p50_ms": float(np.median(round_p50[mode][name])),
            }
        paired = np.array(round_p50[mode]["on"]) - np.array(round_p50[mode]["off"])
        d50 = stats["on"]["p50_ms"] - stats["off"]["p50_ms"]
        result[mode] = {
            "gap_ms": modes[mode],
            "judge_off": stats["off"],
            "judge_on": stats["on"],
            "p50_ratio": stats["on"]["p50_ms"] / stats["off"]["p50_ms"],
            "p99_ratio": stats["on"]["p99_ms"] / stats["off"]["p99_ms"],
            "p50_difference_ms": d50,
            "p99_difference_ms": stats["on"]["p99_ms"] - stats["off"]["p99_ms"],
            "round_p50_difference_ms": {
                "median": float(np.median(paired)),
                "q25": float(np.percentile(paired, 25)),
                "q75": float(np.percentile(paired, 75)),
            },
            "met": bool(d50 <= 0.5),
        }
    result["minutes"] = (time.perf_counter() - t_start) / 60
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    write_md(result, out.with_suffix(".md"))
    print(json.dumps({k: result[k] for k in ("back_to_back", "paced")}, indent=1))
    return result


def write_md(r: dict, path: Path) -> None:
    bb, pc = r["back_to_back"], r["paced"]
    lines = [
        "# Judge sampling overhead (issue 14)",
        "",
        f"Made by `experiments/bench_judging.py` (`{r['command']}`), {r['minutes']:.1f} min, "
        f"{r['machine']['cpus']} CPUs, load average {', '.join(f'{x:.1f}' for x in r['machine']['load_avg'])} "
        "at the end (the machine is shared).",
        "",
        "A non-streamed chat request through `router-rl serve` (HTTP on loopback, one request at a time, cached "
        "prompt: the head decides inline; durable decision log) with `--judge-share 1.0` (every answer graded "
        "in a background task after the response went out, the grade stored as judge feedback) against the "
        f"same server with judging off, {r['config']['rounds']} interleaved rounds; {r['grades_stored']} grades "
        f"stored from {r['judge_calls']} judge calls. Two loads: back to back ({r['config']['requests']} "
        "requests per server per round, the next request sent as soon as the answer arrives, so the judged "
        "server's background grading (the judge call on the event loop, the feedback row's durable commit) "
        f"competes with it) and paced ({r['config']['paced_requests']} requests per round, "
        f"{pc['gap_ms']:g} ms idle after each answer, so the grading is done before the next request: what "
        "judging adds to the request path itself).",
        "",
        "| load | p50 off (ms) | p50 on (ms) | p50 on / off | p50 on - off (ms) | p99 off | p99 on | p99 on / off "
        "| per-round p50 difference, median [IQR] (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in (("back to back", bb), ("paced", pc)):
        rp = m["round_p50_difference_ms"]
        lines.append(
            f"| {name} | {m['judge_off']['p50_ms']:.3f} | {m['judge_on']['p50_ms']:.3f} | {m['p50_ratio']:.3f} | "
            f"{m['p50_difference_ms']:+.3f} | {m['judge_off']['p99_ms']:.3f} | {m['judge_on']['p99_ms']:.3f} | "
            f"{m['p99_ratio']:.3f} | {rp['median']:+.3f} [{rp['q25']:+.3f}, {rp['q75']:+.3f}] |"
        )
    lines += [
        "",
        f"Target: {r['target']}: back to back **{'met' if bb['met'] else 'not met'}** "
        f"({bb['p50_difference_ms']:+.3f} ms), paced **{'met' if pc['met'] else 'not met'}** "
        f"({pc['p50_difference_ms']:+.3f} ms).",
        "",
    ]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
