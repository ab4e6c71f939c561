"""Compare router-rl runs logged in MLflow: a table of AIQ and headline costs (mean ± sd over runs, e.g. the
seeds of a sweep) per dataset and router, and the frontier plot of the averaged reports.

    python experiments/compare_runs.py --tracking-uri sqlite:///mlflow.db --experiment router-rl \
        [--filter "tags.router_rl.dataset = 'arena'"] [--parent RUN_ID] --out experiments/results/compare

Writes ``<out>.md`` (the table) and ``<out>-<dataset>.png`` (frontiers). Every figure is read back from MLflow:
metrics ``eval/<router>/...`` and the ``report.json`` artifact of each run.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def fmt(values: list[float], pct: bool = False) -> str:
    arr = np.asarray([np.inf if v is None else v for v in values], dtype=float)  # null = never reached
    if arr.size == 0 or not np.isfinite(arr).all():
        return "never" if arr.size else "-"
    scale = 100.0 if pct else 1.0
    mean = f"{scale * arr.mean():.1f}%" if pct else f"{arr.mean():.4f}"
    return mean if arr.size == 1 else f"{mean} ± {scale * arr.std(ddof=1):.{1 if pct else 4}f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="router-rl")
    parser.add_argument("--filter", default="", help="MLflow search filter string")
    parser.add_argument("--parent", default=None, help="only the jobs of this sweep (parent run id)")
    parser.add_argument("--out", default="experiments/results/compare")
    args = parser.parse_args()

    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    from router_rl.plotting import plot_frontier

    client = MlflowClient(tracking_uri=args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no MLflow experiment {args.experiment!r} at {args.tracking_uri}")
    filters = [
        f for f in (args.filter, f"tags.mlflow.parentRunId = '{args.parent}'" if args.parent else "") if f
    ]
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=" and ".join(filters), max_results=5000
    )
    runs = [r for r in runs if r.data.tags.get("router_rl.sweep") != "parent" and r.info.status == "FINISHED"]
    if not runs:
        raise SystemExit("no finished runs match")

    table: dict[str, dict[str, dict[str, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    reports: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        path = download_artifacts(
            run_id=run.info.run_id, artifact_path="report.json", tracking_uri=args.tracking_uri
        )
        report = json.loads(Path(path).read_text())
        dataset = f"{report['dataset']} ({report['scheme']})"
        reports[dataset].append(report)
        for name, entry in report["policies"].items():
            per_seed = entry.get("aiq_per_seed") or [entry["aiq"]]
            table[dataset][name]["aiq"].extend(per_seed)
            for key in ("cost_fraction_at_95", "cost_fraction_at_97"):
                table[dataset][name][key].extend(entry.get(f"{key}_per_seed") or [entry[key]])
            two = report.get("two_model", {}).get("routers", {}).get(name)
            if two:
                for key in ("apgr", "cpt50", "cpt80"):
                    table[dataset][name][key].extend(two.get(f"{key}_per_seed") or [two[key]])
        table[dataset]["zero router (hull)"]["aiq"].append(report["zero_router"]["aiq"])

    lines = [f"Runs: {len(runs)} from `{args.tracking_uri}` (experiment `{args.experiment}`)", ""]
    for dataset, routers in table.items():
        two_model = any("apgr" in v for v in routers.values())
        head = "| router | AIQ | cost@95% | cost@97% |" + (
            " APGR | CPT(50%) | CPT(80%) |" if two_model else ""
        )
        lines += [f"### {dataset}", "", head, "|" + "---|" * (head.count("|") - 1)]
        order = sorted(routers, key=lambda n: -np.mean(routers[n]["aiq"]))
        for name in order:
            v = routers[name]
            row = f"| {name} | {fmt(v['aiq'])} | {fmt(v['cost_fraction_at_95'], True)} | {fmt(v['cost_fraction_at_97'], True)} |"
            if two_model:
                row += f" {fmt(v['apgr'])} | {fmt(v['cpt50'], True)} | {fmt(v['cpt80'], True)} |"
            lines.append(row)
        lines.append("")
        merged = dict(reports[dataset][0])
        merged["policies"] = {}
        for report in reports[dataset]:
            for name, entry in report["policies"].items():
                merged["policies"].setdefault(name, entry)
        slug = dataset.split()[0]
        png = plot_frontier(merged, f"{args.out}-{slug}.png")
        lines.append(f"Frontier: `{png}`")
        lines.append("")
    out = Path(f"{args.out}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
