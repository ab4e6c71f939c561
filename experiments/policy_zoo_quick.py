"""Quick benchmark of the policy zoo on a bundled dataset, with the same cross-fitting as ``router-rl train``.

Every policy is trained per fold on the training prompts and evaluated on the held-out fold over the sweep of
cost weights (the test figures of ``report.json``), then AIQ and the headline costs come from
:func:`router_rl.evaluation.build_report`. Modes:

- ``bandit``: learn from bandit feedback only (``router_rl.training.learn`` in the SAME_STEP vector env);
- ``supervised``: ``fit`` on the training prompts' full outcome tables, no bandit loop (offline baselines);
- ``warm``: a supervised prior first (``warm_start`` for the linear bandits, ``fit`` for the others, through
  ``router_rl.policies.base.offline_start``), then the bandit loop, as PILOT does. The prior comes from the
  same training prompts' full outcomes, so a warm run has seen full information: compare it with the
  supervised baselines, not with the pure bandits.

Usage (each run is ``policy[:mode][,key=value...]``; values are YAML):

    python experiments/policy_zoo_quick.py                                   # the default line-up
    python experiments/policy_zoo_quick.py --runs lin_ts linucb:warm,warm_weight=0.5 knn:supervised,k=10
    python experiments/policy_zoo_quick.py --data routellm --steps 20000

    python experiments/policy_zoo_quick.py --seeds 0 1 2                     # mean and sd over seeds

Writes ``experiments/results/policy_zoo_quick_<data>.json`` (every seed's report and the per-seed headline
figures) and prints each seed's summary table, then a markdown table of mean ± sd over seeds. The seed drives
the fold assignment, the exploration and the initialisations.
"""

from __future__ import annotations

import os

# The policies' matrices are small: one BLAS/OpenMP thread each is faster, and far faster on shared cores.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from router_rl.envs.latency import expected_latency  # noqa: E402
from router_rl.evaluation import build_report, summary_table  # noqa: E402
from router_rl.policies.base import offline_start  # noqa: E402
from router_rl.policies.oracle import Oracle  # noqa: E402
from router_rl.reward import default_cost_scale  # noqa: E402
from router_rl.training import evaluation_plan, learn, load_data, make_embedder  # noqa: E402

DEFAULT_RUNS = [
    "linucb",
    "eps_greedy",
    "lin_ts",
    "neural_ts",
    "mlp:bandit",
    "vw",
    "knn:supervised",
    "mlp:supervised",
    "routellm_mf:supervised",
    "linucb:warm",
    "lin_ts:warm",
    "neural_ts:warm",
    "zero_router",
    "random",
]


def parse_run(spec: str) -> tuple[str, str, dict]:
    head, *pairs = spec.split(",")
    name, _, mode = head.partition(":")
    overrides = {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}
    return name, mode or ("supervised" if name in ("knn", "mlp", "routellm_mf") else "bandit"), overrides


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """One cross-fitted comparison of ``args.runs`` with ``seed`` (splits, exploration, initialisations)."""
    with initialize_config_module(config_module="router_rl.configs", version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"data={args.data}", f"seed={seed}", f"embedder.cache_dir={args.cache_dir}"],
        )
        policy_cfgs = {}
        for spec in args.runs:
            name = parse_run(spec)[0]
            if name not in policy_cfgs:
                policy_cfgs[name] = compose(
                    config_name="train", overrides=[f"policy={name}", f"seed={seed}"]
                ).policy

    data = load_data(cfg.data)
    embeddings = make_embedder(cfg.embedder, show_progress=False).encode(list(data.prompts))
    scheme, split_label, plan, final_rows = evaluation_plan(data, cfg.evaluation, cfg.data)
    cost_scale = default_cost_scale(data.cost_usd[final_rows])
    weights = [float(w) for w in cfg.evaluation.cost_weights]
    latency = expected_latency(data, float(cfg.env.latency_sigma))
    steps = int(args.steps or cfg.train.steps)
    env_kw = dict(
        steps=steps,
        batch_size=int(cfg.train.batch_size),
        cost_weight=float(cfg.reward.cost_weight),
        cost_scale=cost_scale,
        latency_weight=float(cfg.reward.latency_weight),
        env_options={"latency_sigma": float(cfg.env.latency_sigma)},
    )

    routers: dict[str, dict[float, list[np.ndarray]]] = {}
    seconds: dict[str, float] = {}
    for spec in args.runs:
        name, mode, overrides = parse_run(spec)
        warm_weight = float(overrides.pop("warm_weight", 1.0))
        label = spec.replace(":bandit", "")
        routers[label] = {w: [] for w in weights}
        t0 = time.perf_counter()
        for fold, (train, test) in enumerate(plan):
            policy = instantiate(
                policy_cfgs[name], models=list(data.models), dim=embeddings.shape[1], **overrides
            )
            full = (embeddings[train], data.quality[train], data.cost_usd[train] / cost_scale, latency[train])
            if mode in ("supervised", "warm"):
                offline_start(policy, *full, warm_start_weight=warm_weight)
            if mode in ("bandit", "warm"):
                learn(policy, data, embeddings, train, seed=seed * 1000 + fold, **env_kw)
            for w in weights:
                routers[label][w].append(
                    policy.probs(embeddings[test], cost_weight=w, latency_weight=env_kw["latency_weight"])
                )
        seconds[label] = time.perf_counter() - t0
        print(f"[zoo] seed {seed} {label}: {seconds[label]:.1f}s", flush=True)

    test_rows = np.concatenate([t for _, t in plan])
    oracle = Oracle(data.quality, data.cost_usd, cost_scale)
    return build_report(
        data,
        test_rows,
        {n: {w: np.concatenate(p) for w, p in by_w.items()} for n, by_w in routers.items()},
        scheme=scheme,
        split=split_label,
        cost_scale=cost_scale,
        oracle_probs={w: oracle.probs(test_rows, cost_weight=w) for w in weights},
        extra={"steps": steps, "seed": seed, "seconds": seconds, "runs": args.runs},
    )


def spread_table(reports: list[dict]) -> tuple[str, dict]:
    """Mean and sample sd over seeds of every policy's AIQ and headline costs (never reached = inf)."""
    rows, summary = [], {}
    names = list(reports[0]["policies"])
    for name in [*names, "zero router (hull)"]:
        if name == "zero router (hull)":
            aiq = np.array([r["zero_router"]["aiq"] for r in reports])
            c95 = c97 = np.full(len(reports), np.nan)
        else:
            aiq = np.array([r["policies"][name]["aiq"] for r in reports])
            c95 = np.array([r["policies"][name]["cost_fraction_at_95"] for r in reports], dtype=float)
            c97 = np.array([r["policies"][name]["cost_fraction_at_97"] for r in reports], dtype=float)
        summary[name] = {
            "aiq": aiq.tolist(),
            "cost_fraction_at_95": c95.tolist(),
            "cost_fraction_at_97": c97.tolist(),
        }

        def fmt(v: np.ndarray, pct: bool) -> str:
            if np.isnan(v).all():
                return ""
            if not np.isfinite(v).all():
                return f"never ({int((~np.isfinite(v)).sum())}/{len(v)})"
            sd = v.std(ddof=1) if len(v) > 1 else 0.0
            return f"{100 * v.mean():.1f}% ± {100 * sd:.1f}" if pct else f"{v.mean():.4f} ± {sd:.4f}"

        rows.append(f"| {name} | {fmt(aiq, False)} | {fmt(c95, True)} | {fmt(c97, True)} |")
    header = "| policy | AIQ (mean ± sd) | cost@95% | cost@97% |\n|---|---|---|---|"
    return header + "\n" + "\n".join(rows), summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="arena")
    ap.add_argument("--runs", nargs="*", default=DEFAULT_RUNS)
    ap.add_argument("--steps", type=int, default=None, help="bandit steps per fold (default: train.steps)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0], help="one cross-fitted comparison per seed")
    ap.add_argument("--cache-dir", default="/tmp/rrl-cache")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    reports = []
    for seed in args.seeds:
        reports.append(run_seed(args, seed))
        print(summary_table(reports[-1]), flush=True)
    table, summary = spread_table(reports)
    out = Path(args.out or Path(__file__).parent / "results" / f"policy_zoo_quick_{args.data}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seeds": args.seeds, "summary": summary, "reports": reports}, indent=2))
    print(f"\n{reports[0]['dataset']}, {reports[0]['scheme']}, seeds {args.seeds} (AIQ vs the same max cost)")
    print(table)
    print(f"[zoo] report: {out}")


if __name__ == "__main__":
    main()
