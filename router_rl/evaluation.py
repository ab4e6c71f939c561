"""Evaluation: cost-quality points over a sweep of cost weights, AIQ, headline costs, and the report.

The chain is: per prompt, every router's action probabilities at each cost weight (from the test folds) ->
:func:`frontier` turns them into cost-quality points with the full outcome table -> :func:`build_report`
adds the single models, the oracle, the zero router and AIQ against the largest cost in the comparison.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from router_rl import metrics
from router_rl.routellm_metrics import pgr, two_model_summary
from router_rl.types import RoutingData


def frontier(
    probs_by_weight: dict[float, np.ndarray], quality: np.ndarray, cost_usd: np.ndarray
) -> list[dict[str, float]]:
    """Cost-quality points of one router, one per cost weight.

    Args:
        probs_by_weight: cost weight -> (N, K) action probabilities on the evaluated prompts.
        quality, cost_usd: (N, K) recorded outcomes of the same prompts.
    Returns:
        ``[{"cost_weight", "quality", "cost_usd"}]`` sorted by cost weight (means per prompt).
    """
    points = []
    for w in sorted(probs_by_weight):
        cost, qual = metrics.cost_quality_point(probs_by_weight[w], quality, cost_usd)
        points.append({"cost_weight": float(w), "quality": float(qual), "cost_usd": float(cost)})
    return points


def build_report(
    data: RoutingData,
    rows: np.ndarray,
    routers: dict[str, dict[float, np.ndarray]],
    *,
    scheme: str,
    split: str,
    cost_scale: float,
    oracle_probs: dict[float, np.ndarray] | None = None,
    extra: dict[str, Any] | None = None,
    max_cost: float | None = None,
) -> dict[str, Any]:
    """The ``report.json`` contents for routers evaluated on ``rows`` of ``data``.

    Args:
        data: the dataset.
        rows: (N,) the evaluated prompt rows, in the order of every probability matrix.
        routers: router name -> cost weight -> (N, K) probabilities.
        scheme: how test predictions were produced (``kfold-5``, ``holdout``...).
        split: which split the figures are on.
        cost_scale: dollars per unit of cost weight.
        oracle_probs: cost weight -> (N, K) oracle choices, for the oracle's own frontier.
        max_cost: the comparison's largest cost when it spans more than these routers (e.g. several seeds);
            the largest cost of these points is used when it is larger.
    """
    quality, cost = data.quality[rows], data.cost_usd[rows]
    single_costs, single_quals = metrics.single_model_points(quality, cost)
    oracle_cost, oracle_quality = metrics.oracle_point(quality, cost)
    policies = {name: {"points": frontier(pw, quality, cost)} for name, pw in routers.items()}
    all_costs = [*single_costs.tolist(), *(p["cost_usd"] for r in policies.values() for p in r["points"])]
    max_cost = float(max(all_costs) if max_cost is None else max(max(all_costs), max_cost))
    best = metrics.best_single_model(single_costs, single_quals)
    for entry in policies.values():
        c = np.array([p["cost_usd"] for p in entry["points"]])
        q = np.array([p["quality"] for p in entry["points"]])
        entry["aiq"] = metrics.aiq(c, q, max_cost=max_cost)
        entry.update(headline_costs(entry["points"], single_costs, single_quals))
    report: dict[str, Any] = {
        "dataset": data.name,
        "split": split,
        "scheme": scheme,
        "n_prompts": int(len(rows)),
        "cost_scale": float(cost_scale),
        "max_cost_usd": max_cost,
        "models": {
            m: {"quality": float(q), "cost_usd": float(c)}
            for m, q, c in zip(data.models, single_quals, single_costs, strict=True)
        },
        "best_single_model": data.models[best],
        "oracle": {"quality": float(oracle_quality), "cost_usd": float(oracle_cost)},
        "zero_router": {"aiq": metrics.zero_router_aiq(single_costs, single_quals, max_cost=max_cost)},
        "policies": policies,
    }
    if data.n_models == 2:
        report["two_model"] = two_model_report(routers, policies, single_quals, best)
        groups = None if data.groups is None else benchmark_of(np.asarray(data.groups)[rows])
        if groups is not None and len(set(groups.tolist())) > 1:
            report["two_model"]["by_group"] = {
                str(g): _group_two_model(routers, groups == g, quality, cost, best)
                for g in sorted(set(groups.tolist()))
            }
    if oracle_probs is not None:
        report["oracle"]["points"] = frontier(oracle_probs, quality, cost)
    if extra:
        report.update(extra)
    return report


HEADLINE_FRACTIONS = (95, 97)
"""The headline's quality targets, in percent of the best single model's quality."""


def headline_costs(
    points: list[dict[str, float]], single_costs: np.ndarray, single_quals: np.ndarray
) -> dict[str, float]:
    """The headline cost shares of one router's points, at 95% and 97% of the best single model's quality.

    ``cost_fraction_at_X``: at a cost weight that ran (the cheapest point reaching the target, as a share of
    the best single model's cost; :func:`router_rl.metrics.achievable_cost_fraction`) and ``cost_weight_at_X``
    that weight (None when never reached); ``cost_fraction_at_X_hull``: on the router's hull, by mixing two
    cost weights at random (:func:`router_rl.metrics.headline_cost_fraction`), never above the former.
    """
    c = np.array([p["cost_usd"] for p in points])
    q = np.array([p["quality"] for p in points])
    out: dict[str, float] = {}
    for pct in HEADLINE_FRACTIONS:
        frac, j = metrics.achievable_cost_fraction(c, q, single_costs, single_quals, pct / 100)
        out[f"cost_fraction_at_{pct}"] = frac
        out[f"cost_weight_at_{pct}"] = float(points[j]["cost_weight"]) if j >= 0 else float("nan")
        out[f"cost_fraction_at_{pct}_hull"] = metrics.headline_cost_fraction(
            c, q, single_costs, single_quals, pct / 100
        )
    return out


def prompt_outcomes(
    probs_by_weight: dict[float, np.ndarray], quality: np.ndarray, cost_usd: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(W, N) expected quality and (W, N) expected cost per prompt of one router, weights in sorted order:
    ``sum_k p_ik q_ik`` for the (N, K) probabilities at each cost weight (the per-prompt terms of
    :func:`frontier`'s means, which the paired bootstrap resamples)."""
    weights = sorted(probs_by_weight)
    p = np.stack([np.asarray(probs_by_weight[w], dtype=np.float64) for w in weights])  # (W, N, K)
    return (p * np.nan_to_num(quality)).sum(axis=2), (p * np.nan_to_num(cost_usd)).sum(axis=2)


def paired_comparisons(
    per_seed: list[dict[str, dict[float, np.ndarray]]],
    reference: str,
    quality: np.ndarray,
    cost_usd: np.ndarray,
    *,
    max_cost: float,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired bootstrap intervals over prompts of ``reference``'s AIQ minus every other router's.

    Args:
        per_seed: per seed, router -> cost weight -> (N, K) probabilities on the same N prompts (a router
            missing from a seed, or identical in every seed, counts once).
        reference: the router compared with all others (the run's main policy).
        quality, cost_usd: (N, K) outcomes of those prompts.
        max_cost: the report's AIQ right end.
    Returns:
        ``{"reference", "level", "n_boot", "rivals": {name: paired_bootstrap_aiq(...)}}``; a rival whose
        interval lies above zero is beaten with that confidence.
    """

    def stacked(name: str) -> tuple[np.ndarray, np.ndarray]:
        runs = [seed_probs[name] for seed_probs in per_seed if name in seed_probs]
        first = runs[0]
        if all(all(np.array_equal(r[w], first[w]) for w in first) for r in runs[1:]):
            runs = runs[:1]  # deterministic across seeds (a fitted yardstick, an artifact)
        outs = [prompt_outcomes(r, quality, cost_usd) for r in runs]
        return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])

    names = list(dict.fromkeys(n for seed_probs in per_seed for n in seed_probs))
    if reference not in names:
        raise ValueError(f"reference router {reference!r} is not among {names}")
    qa, ca = stacked(reference)
    rivals = {}
    for name in names:
        if name == reference:
            continue
        qb, cb = stacked(name)
        rivals[name] = metrics.paired_bootstrap_aiq(
            qa, ca, qb, cb, max_cost=max_cost, n_boot=n_boot, level=level, seed=seed
        )
    return {"reference": reference, "level": level, "n_boot": n_boot, "rivals": rivals}


def task_mean_probs(
    tasks: np.ndarray,
    quality: np.ndarray,
    cost: np.ndarray,
    plan: list[tuple[np.ndarray, np.ndarray]],
    weights: list[float],
) -> dict[float, np.ndarray]:
    """The per-task mean table (a yardstick where the data has a task column): per fold, every model's mean
    quality and cost per task on the training rows; a test prompt goes to ``argmax_k q_tk - w c_tk`` of its
    task t (the model means when its task has no training prompt). Ties split evenly.

    Args:
        tasks: (N,) task label per prompt. quality, cost: (N, K) outcomes (cost in the unit the cost weight
            multiplies: cost_usd / cost_scale). plan: ``[(train_rows, test_rows)]`` per fold.
    Returns:
        cost weight -> (N_test, K) probabilities, test rows in the plan's order (concatenated folds).
    """
    from router_rl.policies.base import greedy_probs

    tasks = np.asarray(tasks).astype(str)
    q_hat, c_hat = [], []
    for train, test in plan:
        codes, inverse = np.unique(tasks[train], return_inverse=True)
        counts = np.bincount(inverse, minlength=len(codes))[:, None]
        q_t = np.zeros((len(codes), quality.shape[1]))
        c_t = np.zeros_like(q_t)
        np.add.at(q_t, inverse, quality[train])
        np.add.at(c_t, inverse, cost[train])
        q_t, c_t = q_t / counts, c_t / counts
        where = np.searchsorted(codes, tasks[test])
        known = (where < len(codes)) & (codes[np.minimum(where, len(codes) - 1)] == tasks[test])
        fold_q = np.where(known[:, None], q_t[np.minimum(where, len(codes) - 1)], quality[train].mean(axis=0))
        fold_c = np.where(known[:, None], c_t[np.minimum(where, len(codes) - 1)], cost[train].mean(axis=0))
        q_hat.append(fold_q)
        c_hat.append(fold_c)
    q_all, c_all = np.concatenate(q_hat), np.concatenate(c_hat)
    return {float(w): greedy_probs(q_all - w * c_all) for w in weights}


class TrainedOnWarning(UserWarning):
    """An artifact is scored on prompts its training run saw: its figures are optimistic."""


def prompt_digests(prompts: Any) -> list[str]:
    """The first 16 hex digits of each prompt text's sha256: what a checkpoint records of its training
    prompts (``training_prompts``), compact and without the texts."""
    import hashlib

    return [hashlib.sha256(str(t).encode("utf-8")).hexdigest()[:16] for t in prompts]


def training_prompts_record(dataset: str, scheme: str, prompts: Any) -> dict[str, Any]:
    """``{"dataset", "scheme", "n", "sha256_16"}`` of the prompts a policy was trained on (export context)."""
    digests = prompt_digests(prompts)
    return {"dataset": dataset, "scheme": scheme, "n": len(digests), "sha256_16": sorted(set(digests))}


def warn_if_trained_on(
    artifact_path: str | Path, manifest: dict[str, Any], dataset: str, test_prompts: Any
) -> int | None:
    """Warn (:class:`TrainedOnWarning`) when an artifact is scored on prompts its training run saw.

    The training prompts come from the checkpoint its run wrote beside it (``<run dir>/checkpoint``: the
    ``training_prompts`` record of :func:`training_prompts_record`), matched by the manifest's training run
    id when both have one. Without that record, a dataset name equal to the manifest's ``dataset`` warns
    that the overlap cannot be checked. Returns the number of test prompts it trained on (None: unknown).
    """
    import json
    import warnings

    where = Path(artifact_path).resolve().parent / "checkpoint" / "checkpoint.json"
    record = None
    if where.is_file():
        try:
            meta = json.loads(where.read_text())
        except (OSError, ValueError):
            meta = {}
        run = manifest.get("training_run_id")
        if meta.get("training_prompts") and (not run or not meta.get("run_id") or meta["run_id"] == run):
            record = meta["training_prompts"]
    if record is None:
        if manifest.get("dataset") is not None and manifest.get("dataset") == dataset:
            warnings.warn(
                f"artifact {artifact_path} was trained on dataset {dataset!r}, which it is now scored on, and "
                "records no training prompts to check the overlap: unless its run held these test prompts "
                "out, its figures are optimistic",
                TrainedOnWarning,
                stacklevel=2,
            )
        return None
    seen = set(record.get("sha256_16", []))
    digests = prompt_digests(test_prompts)
    overlap = sum(d in seen for d in digests)
    if overlap:
        warnings.warn(
            f"artifact {artifact_path} is scored on {overlap} of {len(digests)} test prompts its training run "
            f"saw (dataset {record.get('dataset')!r}, {record.get('scheme')}, {record.get('n')} training "
            "prompts): its figures on them are not held-out",
            TrainedOnWarning,
            stacklevel=2,
        )
    return overlap


def two_model_report(
    routers: dict[str, dict[float, np.ndarray]],
    policies: dict[str, dict[str, Any]],
    single_quals: np.ndarray,
    strong: int,
) -> dict[str, Any]:
    """RouteLLM's metrics for two-model data: per router the strong-call share and PGR at every cost weight,
    APGR, CPT(50%) and CPT(80%). The strong model is the better single model; ``policies`` holds each router's
    points (sorted by cost weight, as :func:`frontier` returns them)."""
    q_strong, q_weak = float(single_quals[strong]), float(single_quals[1 - strong])
    out: dict[str, Any] = {
        "strong_model_index": int(strong),
        "q_strong": q_strong,
        "q_weak": q_weak,
        "routers": {},
    }
    if not q_strong > q_weak:
        return out  # both models equally good: PGR is undefined
    for name, by_weight in routers.items():
        weights = sorted(by_weight)
        shares = np.array([float(by_weight[w][:, strong].mean()) for w in weights])
        quals = np.array([p["quality"] for p in policies[name]["points"]])
        entry: dict[str, Any] = two_model_summary(shares, quals, q_weak, q_strong)
        entry["points"] = [
            {"cost_weight": float(w), "strong_share": float(sh), "pgr": float(g)}
            for w, sh, g in zip(weights, shares, pgr(quals, q_weak, q_strong), strict=True)
        ]
        out["routers"][name] = entry
    return out


def benchmark_of(groups: np.ndarray) -> np.ndarray:
    """The benchmark of each ``source_benchmark`` label: its first two ``/``-separated parts
    (``routellm/mmlu/anatomy`` -> ``routellm/mmlu``; ``coding`` stays ``coding``)."""
    return np.array(["/".join(str(g).split("/")[:2]) for g in groups], dtype=object)


def _group_two_model(
    routers: dict[str, dict[float, np.ndarray]],
    mask: np.ndarray,
    quality: np.ndarray,
    cost: np.ndarray,
    strong: int,
) -> dict[str, Any]:
    """:func:`two_model_report` on the prompts of one group (e.g. one source benchmark), with the same strong
    model as the whole data; ``n_prompts`` added."""
    sub = {name: {w: p[mask] for w, p in by_w.items()} for name, by_w in routers.items()}
    points = {name: {"points": frontier(by_w, quality[mask], cost[mask])} for name, by_w in sub.items()}
    _, quals = metrics.single_model_points(quality[mask], cost[mask])
    return {"n_prompts": int(mask.sum()), **two_model_report(sub, points, quals, strong)}


def _aggregate_two_model(parts: list[dict[str, Any]], spread: Callable[..., None]) -> dict[str, Any]:
    out = dict(parts[0])
    out["routers"] = {}
    for name, first in parts[0]["routers"].items():
        entry = {"points": first["points"], "points_per_seed": [p["routers"][name]["points"] for p in parts]}
        for key in ("apgr", "cpt50", "cpt80", "share_min", "share_max"):
            if key in first:
                spread(entry, key, [p["routers"][name][key] for p in parts])
        out["routers"][name] = entry
    if "by_group" in parts[0]:
        out["by_group"] = {
            g: _aggregate_two_model([p["by_group"][g] for p in parts], spread) for g in parts[0]["by_group"]
        }
    return out


def aggregate_reports(reports: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """One report from per-seed reports of the same routers on the same prompts.

    Points are averaged per cost weight (the point of the seed-mixture router) and kept per seed
    (``points_per_seed``, so every figure can be recomputed); AIQ, headline cost fractions and the two-model
    figures are averaged over seeds with their standard deviation (``<key>_std``) and per-seed values
    (``<key>_per_seed``). With one seed the report is returned as is, with ``seeds``.
    """
    base = dict(reports[0])
    base["seeds"] = list(seeds)
    if len(reports) == 1:
        return base

    def spread(entry: dict[str, Any], key: str, values: list[float]) -> None:
        arr = np.asarray(values, dtype=np.float64)
        finite = bool(np.isfinite(arr).all())  # "never reached" in one seed makes mean and spread undefined
        entry[key] = float(arr.mean()) if finite else float("inf")
        entry[f"{key}_std"] = float(arr.std(ddof=1)) if finite else float("nan")
        entry[f"{key}_per_seed"] = [float(v) for v in arr]

    policies = {}
    for name in base["policies"]:
        runs = [r["policies"][name] for r in reports]
        entry: dict[str, Any] = {
            "points": [
                {
                    "cost_weight": pts[0]["cost_weight"],
                    "quality": float(np.mean([p["quality"] for p in pts])),
                    "cost_usd": float(np.mean([p["cost_usd"] for p in pts])),
                }
                for pts in zip(*(run["points"] for run in runs), strict=True)
            ]
        }
        entry["points_per_seed"] = [run["points"] for run in runs]  # every seed's points: figures recompute
        for key in ("aiq", *(k for k in runs[0] if k.startswith("cost_fraction_at_"))):
            spread(entry, key, [run[key] for run in runs])
        for key in (k for k in runs[0] if k.startswith("cost_weight_at_")):
            entry[f"{key}_per_seed"] = [run[key] for run in runs]
        policies[name] = entry
    base["policies"] = policies
    if "two_model" in base:
        base["two_model"] = _aggregate_two_model([r["two_model"] for r in reports], spread)
    return base


def to_json(report: dict[str, Any]) -> str:
    """Strict JSON: non-finite numbers (a target never reached, an undefined spread) become ``null``."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not np.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(report), indent=2, allow_nan=False)


def summary_table(report: dict[str, Any]) -> str:
    """A short plain-text table of the report for the terminal."""
    best = report["best_single_model"]
    best_q = report["models"][best]["quality"]
    best_c = report["models"][best]["cost_usd"]
    lines = [
        f"{report['dataset']} | {report['split']} split | {report['scheme']} | {report['n_prompts']} prompts",
        f"{'router':<26}{'AIQ':>8}{'cost@95%':>10}{'cost@97%':>10}{'hull@97%':>10}   best point at w<=0.2",
    ]

    def frac(v: float | None) -> str:
        return f"{100 * v:7.1f}%" if v is not None and np.isfinite(v) else "   never"

    comparisons = (report.get("comparisons") or {}).get("rivals", {})
    for name, entry in report["policies"].items():
        near = [p for p in entry["points"] if p["cost_weight"] <= 0.2] or entry["points"][:1]
        top = max(near, key=lambda p: p["quality"])
        std = (
            f"   (AIQ sd {entry['aiq_std']:.4f} over {len(entry['aiq_per_seed'])} seeds)"
            if "aiq_std" in entry
            else ""
        )
        vs = comparisons.get(name)
        ci = f"   ref-this [{vs['low']:+.4f}, {vs['high']:+.4f}]" if vs else ""
        lines.append(
            f"{name:<26}{entry['aiq']:8.4f}{frac(entry['cost_fraction_at_95']):>10}"
            f"{frac(entry['cost_fraction_at_97']):>10}{frac(entry.get('cost_fraction_at_97_hull')):>10}"
            f"   q={top['quality']:.3f} ${top['cost_usd']:.5f} (w={top['cost_weight']:g}){std}{ci}"
        )
    lines.append(f"{'zero router (hull)':<26}{report['zero_router']['aiq']:8.4f}")
    lines.append(f"{'best single: ' + best:<26}{'':8}{'':10}{'':10}{'':10}   q={best_q:.3f} ${best_c:.5f}")
    o = report["oracle"]
    lines.append(f"{'oracle':<26}{'':8}{'':10}{'':10}{'':10}   q={o['quality']:.3f} ${o['cost_usd']:.5f}")
    lines.append(
        "cost@X%: least cost at a cost weight that ran reaching X% of the best single model's quality, as a "
        "share of its cost; hull@X%: the same on the hull (mixing two weights)"
    )
    if comparisons:
        ref, level = report["comparisons"]["reference"], report["comparisons"]["level"]
        lines.append(
            f"ref-this: {100 * level:g}% paired bootstrap interval over prompts of AIQ({ref}) - AIQ(this)"
        )
    two = report.get("two_model", {}).get("routers", {})
    for name, entry in two.items():
        lines.append(
            f"{name:<26}APGR {entry['apgr']:.3f}   CPT(50%) {100 * entry['cpt50']:5.1f}%   "
            f"CPT(80%) {100 * entry['cpt80']:5.1f}% strong-model calls (RouteLLM's definitions)"
        )
    return "\n".join(lines)
