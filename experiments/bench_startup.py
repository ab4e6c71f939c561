"""Start-up of every ``router-rl`` command: import time (``python -X importtime``) and wall time to answer.

For each command it runs ``router-rl <command> --help`` in a fresh interpreter ``--repeats`` times (median wall
time) and once under ``-X importtime`` (the cumulative import time of the modules the command loads before it
prints, top-level imports summed), then times a warm ``router-rl route ARTIFACT PROMPT`` (after one call that
fills the caches) and the same with ``--encoder-backend torch``. Writes ``results/bench_startup.json`` and
``.md``.

    python experiments/bench_startup.py --artifact outputs/<date>/<time>/artifact
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CPU: list[
    float
] = []  # CPU seconds (user + system) of each run, in order: a figure load inflates less than wall time
COMMANDS = [
    ["--help"],
    ["train", "--help"],
    ["eval", "--help"],
    ["export", "--help"],
    ["route", "--help"],
    ["serve", "--help"],
    ["collect", "--help"],
]


def run(args: list[str], *, importtime: bool = False) -> tuple[float, str]:
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "router_rl.cli", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    CPU.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return wall, proc.stderr


def import_seconds(stderr: str) -> tuple[float, list[tuple[str, float]]]:
    """Sum of the top-level imports' cumulative times, and the five slowest top-level imports."""
    top: list[tuple[str, float]] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, raw = line.split("|", 2)
        name = raw[1:]  # "import time: self | cumulative | " + two spaces per nesting level + name
        if not name.startswith(" "):  # a top-level import
            top.append((name.strip(), int(cumulative) / 1e6))
    return sum(s for _, s in top), sorted(top, key=lambda kv: -kv[1])[:5]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", help="an exported artifact for the route timings")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_startup"))
    opts = parser.parse_args()
    rows = []
    for args in COMMANDS:
        walls = [run(args)[0] for _ in range(opts.repeats)]
        cpu = statistics.median(CPU[-opts.repeats :])
        total, slowest = import_seconds(run(args, importtime=True)[1])
        rows.append(
            {
                "command": "router-rl " + " ".join(args),
                "wall_s": statistics.median(walls),
                "cpu_s": cpu,
                "imports_s": total,
                "slowest_imports": slowest,
            }
        )
        print(
            f"{rows[-1]['command']:<28} {rows[-1]['wall_s']:6.2f} s wall, {cpu:5.2f} s CPU, imports {total:5.2f} s",
            flush=True,
        )
    if opts.artifact:
        prompt = "Prove that there are infinitely many primes."
        for backend in ("auto", "torch"):
            args = ["route", opts.artifact, prompt, "--encoder-backend", backend]
            run(args)  # fills the ONNX export and the page cache
            walls = [run(args)[0] for _ in range(opts.repeats)]
            cpu = statistics.median(CPU[-opts.repeats :])
            total, slowest = import_seconds(run(args, importtime=True)[1])
            rows.append(
                {
                    "command": f"router-rl route ARTIFACT PROMPT --encoder-backend {backend}",
                    "wall_s": statistics.median(walls),
                    "cpu_s": cpu,
                    "imports_s": total,
                    "slowest_imports": slowest,
                }
            )
            print(
                f"route ({backend:<5}) {rows[-1]['wall_s']:6.2f} s wall, {cpu:5.2f} s CPU, imports {total:5.2f} s"
            )
    load = os.getloadavg()[0]
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"load_average_1m": load, "rows": rows}, indent=2))
    lines = [
        f"1-minute load average at the end: {load:.2f} (2 cores)",
        "",
        "| command | wall (median) | CPU (median) | imports | slowest top-level imports |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        slow = ", ".join(f"{n} {s:.2f} s" for n, s in r["slowest_imports"][:3])
        lines.append(
            f"| `{r['command']}` | {r['wall_s']:.2f} s | {r['cpu_s']:.2f} s | {r['imports_s']:.2f} s | {slow} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
