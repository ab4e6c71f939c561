"""Cost-quality metrics of routers: pure functions on numpy arrays.

Conventions: arrays are indexed ``[prompt, model]`` (shape ``(N, K)``), NaN marks a missing outcome, costs are
USD per prompt, qualities lie in [0, 1]. A *point* is always ``(cost, quality)``: cost on the x axis.

References:
    RouterBench: Q. J. Hu et al., "RouterBench: A Benchmark for Multi-LLM Routing System", 2024,
    arXiv:2403.12031 (non-decreasing convex hull, AIQ, zero router, oracle).
"""

from __future__ import annotations

import numpy as np

_PROB_ATOL = 1e-6
_COLLINEAR_RTOL = 1e-12


def _table(name: str, x: np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (N, K) array, got shape {a.shape}")
    return a


def _same_shape(**arrays: np.ndarray) -> None:
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shapes must match, got {shapes}")


def _points(costs: np.ndarray, qualities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(costs, dtype=np.float64)
    q = np.asarray(qualities, dtype=np.float64)
    if c.ndim != 1 or q.ndim != 1 or c.shape != q.shape or c.size == 0:
        raise ValueError(
            f"costs and qualities must be non-empty 1-D arrays of equal length, got {c.shape} and {q.shape}"
        )
    if not (np.isfinite(c).all() and np.isfinite(q).all()):
        raise ValueError("costs and qualities must be finite (no NaN or inf)")
    if (c < 0).any():
        raise ValueError(f"costs must be >= 0, got min {c.min()}")
    return c, q


def cost_quality_point(probs: np.ndarray, quality: np.ndarray, cost_usd: np.ndarray) -> tuple[float, float]:
    """Expected (mean cost per prompt, mean quality) of a stochastic router.

    Args:
        probs: (N, K) action probabilities, rows non-negative and summing to 1 (within 1e-6).
        quality: (N, K) quality of every model on every prompt; NaN allowed where ``probs`` is 0.
        cost_usd: (N, K) cost in USD, NaN allowed where ``probs`` is 0.

    Returns:
        ``(1/N sum_i sum_k p_ik c_ik, 1/N sum_i sum_k p_ik q_ik)``.
    """
    p = _table("probs", probs)
    q = _table("quality", quality)
    c = _table("cost_usd", cost_usd)
    _same_shape(probs=p, quality=q, cost_usd=c)
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("probs must be finite and non-negative")
    row_sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(row_sums - 1.0) > _PROB_ATOL)
    if bad.size:
        raise ValueError(f"probs rows must sum to 1; row {bad[0]} sums to {float(row_sums[bad[0]])!r}")
    chosen = p > 0
    for name, a in (("quality", q), ("cost_usd", c)):
        missing = chosen & ~np.isfinite(a)
        if missing.any():
            i, k = np.argwhere(missing)[0]
            raise ValueError(
                f"{name} is NaN/inf where the router has positive probability "
                f"({int(missing.sum())} cells, first at prompt {i}, model {k})"
            )
    exp_c = (p * np.where(chosen, c, 0.0)).sum(axis=1)
    exp_q = (p * np.where(chosen, q, 0.0)).sum(axis=1)
    return float(exp_c.mean()), float(exp_q.mean())


def oracle_choice(quality: np.ndarray, cost_usd: np.ndarray, *, atol: float = 1e-12) -> np.ndarray:
    """Per prompt, the best-quality model, cheapest among ties (RouterBench's oracle).

    Args:
        quality: (N, K), NaN where missing (never chosen).
        cost_usd: (N, K).
        atol: qualities within ``atol`` of the row's best are ties.

    Returns:
        (N,) int model index ``argmin_{k: q_ik >= max_j q_ij - atol} c_ik``; among equal costs, the lowest index.
    """
    q = _table("quality", quality)
    c = _table("cost_usd", cost_usd)
    _same_shape(quality=q, cost_usd=c)
    if atol < 0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    q = np.where(np.isfinite(q), q, np.nan)
    empty = np.flatnonzero(np.isnan(q).all(axis=1))
    if empty.size:
        raise ValueError(f"prompt {empty[0]} has no finite quality for any model ({empty.size} such prompts)")
    best = np.nanmax(q, axis=1, keepdims=True)
    tied = q >= best - atol  # NaN compares False
    if (tied & ~np.isfinite(c)).any():
        i, k = np.argwhere(tied & ~np.isfinite(c))[0]
        raise ValueError(f"cost_usd is NaN/inf for a best-quality model (prompt {i}, model {k})")
    return np.argmin(np.where(tied, c, np.inf), axis=1)


def oracle_point(quality: np.ndarray, cost_usd: np.ndarray, *, atol: float = 1e-12) -> tuple[float, float]:
    """(mean cost, mean quality) of :func:`oracle_choice`."""
    k = oracle_choice(quality, cost_usd, atol=atol)
    rows = np.arange(k.size)
    return float(np.asarray(cost_usd, float)[rows, k].mean()), float(
        np.asarray(quality, float)[rows, k].mean()
    )


def single_model_points(quality: np.ndarray, cost_usd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each model's (mean cost, mean quality) when it answers every prompt.

    Args:
        quality, cost_usd: (N, K), NaN where missing (ignored: nanmean per column).

    Returns:
        ``(costs (K,), qualities (K,))``. A column with no finite value raises ValueError.
    """
    q = _table("quality", quality)
    c = _table("cost_usd", cost_usd)
    _same_shape(quality=q, cost_usd=c)
    for name, a in (("quality", q), ("cost_usd", c)):
        empty = np.flatnonzero(~np.isfinite(a).any(axis=0))
        if empty.size:
            raise ValueError(f"{name} has no finite value for model (column) {empty[0]}")
    return np.nanmean(c, axis=0), np.nanmean(q, axis=0)


def nondecreasing_convex_hull(costs: np.ndarray, qualities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RouterBench's non-decreasing convex hull: the upper-left frontier of a set of routers.

    Steps: sort by cost; at equal cost keep the best quality; drop every point whose quality does not strictly
    exceed that of all cheaper points (dominated); take the upper concave hull of the rest (Andrew's monotone
    chain; middle points collinear up to rounding are dropped). Any point on a segment between two vertices is
    achievable by randomly mixing the two routers, so the hull is the achievable frontier.

    Args:
        costs, qualities: (M,) points, M >= 1, finite, costs >= 0.

    Returns:
        ``(hull_costs (H,), hull_qualities (H,))``, both strictly increasing, with concave slopes; H >= 1.
    """
    c, q = _points(costs, qualities)
    order = np.lexsort((-q, c))  # by cost, then best quality first
    c, q = c[order], q[order]
    hc: list[float] = []
    hq: list[float] = []
    for ci, qi in zip(c.tolist(), q.tolist(), strict=True):
        if hq and qi <= hq[-1]:
            continue  # equal cost with lower quality, or dominated by a cheaper point
        # pop the last vertex while it lies on or below the chord from the one before it to the new point
        # (cross product >= 0; collinear up to rounding, relative 1e-12, counts as on the chord)
        while len(hc) >= 2:
            lhs = (hc[-1] - hc[-2]) * (qi - hq[-2])
            rhs = (hq[-1] - hq[-2]) * (ci - hc[-2])
            if lhs - rhs < -_COLLINEAR_RTOL * (abs(lhs) + abs(rhs)):
                break
            hc.pop()
            hq.pop()
        hc.append(ci)
        hq.append(qi)
    return np.asarray(hc), np.asarray(hq)


def aiq(costs: np.ndarray, qualities: np.ndarray, *, max_cost: float) -> float:
    """Average Improvement in Quality (RouterBench) of one router's points.

    Let ``f`` be the router's non-decreasing convex hull with vertices ``(c_0, q_0) ... (c_H, q_H)``,
    linear between vertices, extended flat at ``q_H`` from ``c_H`` to ``max_cost``, and **zero left of
    ``c_0``** (a router cannot be run for less than its cheapest point, so it earns no quality there). Then

        AIQ = (1 / max_cost) * integral_0^max_cost f(c) dc
            = (sum_h (c_{h+1} - c_h) (q_h + q_{h+1}) / 2 + q_H (max_cost - c_H)) / max_cost.

    RouterBench integrates over ``[c_min, c_max]`` of the comparison instead; with our convention two routers
    are compared on the same interval ``[0, max_cost]`` and a router that only has expensive points is not
    rewarded for it. Pass the same ``max_cost`` (the largest cost of every point in the comparison, single
    models included) for every router compared.

    Args:
        costs, qualities: (M,) the router's points (e.g. one per cost weight).
        max_cost: right end of the integration, ``>= max(costs)`` and ``> 0``.

    Returns:
        AIQ in quality units (in [0, 1] for qualities in [0, 1]).
    """
    c, q = _points(costs, qualities)
    if not (np.isfinite(max_cost) and max_cost > 0):
        raise ValueError(f"max_cost must be finite and > 0, got {max_cost}")
    if max_cost < c.max():
        raise ValueError(f"max_cost ({max_cost}) must be >= the largest cost of the points ({c.max()})")
    hc, hq = nondecreasing_convex_hull(c, q)
    area = float(np.sum(np.diff(hc) * (hq[1:] + hq[:-1]) / 2.0)) + float(hq[-1]) * (max_cost - float(hc[-1]))
    return area / max_cost


def zero_router_aiq(single_costs: np.ndarray, single_qualities: np.ndarray, *, max_cost: float) -> float:
    """AIQ of the zero router: the non-decreasing convex hull of the single models' (K,) points."""
    return aiq(single_costs, single_qualities, max_cost=max_cost)


def cost_at_quality(costs: np.ndarray, qualities: np.ndarray, target_quality: float) -> float:
    """Least cost at which the router's non-decreasing convex hull reaches ``target_quality``.

    With hull vertices ``(c_h, q_h)`` and ``j`` the first vertex with ``q_j >= target``: ``c_0`` if ``j = 0``,
    else ``c_{j-1} + (target - q_{j-1}) (c_j - c_{j-1}) / (q_j - q_{j-1})`` (a random mix of two routers);
    ``inf`` if ``target > q_H``.
    """
    if not np.isfinite(target_quality):
        raise ValueError(f"target_quality must be finite, got {target_quality}")
    hc, hq = nondecreasing_convex_hull(costs, qualities)
    j = int(np.searchsorted(hq, target_quality, side="left"))
    if j == hq.size:
        return float("inf")
    if j == 0 or hq[j] == target_quality:
        return float(hc[j])
    t = (target_quality - hq[j - 1]) / (hq[j] - hq[j - 1])
    return float(hc[j - 1] + t * (hc[j] - hc[j - 1]))


def best_single_model(single_costs: np.ndarray, single_qualities: np.ndarray) -> int:
    """Index of the single model with the highest mean quality, cheapest among exact ties (then lowest index)."""
    c, q = _points(single_costs, single_qualities)
    tied = q == q.max()
    return int(np.argmin(np.where(tied, c, np.inf)))


def headline_cost_fraction(
    costs: np.ndarray,
    qualities: np.ndarray,
    single_costs: np.ndarray,
    single_qualities: np.ndarray,
    fraction: float,
) -> float:
    """The least cost at which a router reaches ``fraction`` of the best single model's quality, as a fraction
    of that model's cost (DESIGN "Headline"; e.g. ``fraction=0.95``).

        cost_at_quality(router, fraction * q_best) / c_best,  best = :func:`best_single_model`.

    Returns ``inf`` if the router never reaches the target; values < 1 mean savings.
    """
    if not (0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    b = best_single_model(single_costs, single_qualities)
    c_best = float(np.asarray(single_costs, float)[b])
    if c_best <= 0:
        raise ValueError(
            f"the best single model (index {b}) has cost {c_best}; a cost fraction needs cost > 0"
        )
    q_best = float(np.asarray(single_qualities, float)[b])
    return cost_at_quality(costs, qualities, fraction * q_best) / c_best


def cumulative_regret(rewards: np.ndarray, best_rewards: np.ndarray) -> np.ndarray:
    """Cumulative regret ``R_t = sum_{s<=t} (r*_s - r_s)`` against the per-step best action.

    Args:
        rewards: (T,) rewards obtained.
        best_rewards: (T,) reward of the best action at each step under the same reward.

    Returns:
        (T,) running sum; non-decreasing when ``best_rewards >= rewards`` (not enforced).
    """
    r = np.asarray(rewards, dtype=np.float64)
    b = np.asarray(best_rewards, dtype=np.float64)
    if r.ndim != 1 or r.shape != b.shape:
        raise ValueError(f"rewards and best_rewards must be 1-D of equal length, got {r.shape} and {b.shape}")
    if not (np.isfinite(r).all() and np.isfinite(b).all()):
        raise ValueError("rewards and best_rewards must be finite")
    return np.cumsum(b - r)


def achievable_cost_fraction(
    costs: np.ndarray,
    qualities: np.ndarray,
    single_costs: np.ndarray,
    single_qualities: np.ndarray,
    fraction: float,
) -> tuple[float, int]:
    """The headline at a cost weight that ran: the least cost among the router's own points whose quality
    reaches ``fraction`` of the best single model's, as a fraction of that model's cost, and which point.

        min {c_j : q_j >= fraction * q_best} / c_best,   best = :func:`best_single_model`.

    Unlike :func:`headline_cost_fraction` (the hull: a random mix of two cost weights) this needs no mixing:
    one cost weight, deployed as is, gets that quality at that cost on these prompts.

    Returns:
        ``(fraction of c_best, index of the point)``; ``(inf, -1)`` when no point reaches the target.
    """
    if not (0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    c, q = _points(costs, qualities)
    b = best_single_model(single_costs, single_qualities)
    c_best = float(np.asarray(single_costs, float)[b])
    if c_best <= 0:
        raise ValueError(
            f"the best single model (index {b}) has cost {c_best}; a cost fraction needs cost > 0"
        )
    target = fraction * float(np.asarray(single_qualities, float)[b])
    ok = np.flatnonzero(q >= target)
    if ok.size == 0:
        return float("inf"), -1
    j = int(ok[np.argmin(c[ok])])
    return float(c[j]) / c_best, j


def mean_aiq(quality: np.ndarray, cost: np.ndarray, *, max_cost: float) -> float:
    """Mean over seeds of the AIQ of per-seed points.

    Args:
        quality, cost: (S, W) mean quality and cost of one router at each of W cost weights in S seeds.
        max_cost: the comparison's right end (see :func:`aiq`).
    """
    return float(np.mean([aiq(c, q, max_cost=max_cost) for q, c in zip(quality, cost, strict=True)]))


def paired_bootstrap_aiq(
    quality_a: np.ndarray,
    cost_a: np.ndarray,
    quality_b: np.ndarray,
    cost_b: np.ndarray,
    *,
    max_cost: float,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Paired bootstrap over prompts of the AIQ difference between routers A and B on the same prompts.

    Args:
        quality_a, cost_a: (S_a, W_a, N) router A's expected quality and cost on each of N prompts at each of
            its W_a cost weights, in each of S_a seeds (a deterministic router: S = 1). Likewise for B; both
            share the N prompts (the pairing).
        max_cost: the comparison's right end of the AIQ integral, as in the report (each resample uses
            ``max(max_cost, its largest point cost)``).
        n_boot: resamples. level: two-sided confidence level of the percentile interval.
        seed: seeds the resampling (the interval is deterministic for a seed).

    Returns:
        ``{"diff", "low", "high", "se", "p_value", "n_boot", "level", "n_prompts"}``: ``diff`` =
        mean_s AIQ_A - mean_s AIQ_B on the prompts as given (what the report's AIQs give); ``low``/``high``:
        the percentile interval of the difference over resamples; ``se``: its bootstrap standard error;
        ``p_value``: two-sided, ``2 min(P*(d <= 0), P*(d >= 0))`` with the +1 correction, capped at 1.

    Each resample draws N prompts with replacement (multinomial counts), the same prompts for A and B and for
    every seed and cost weight, recomputes every point as the count-weighted mean over prompts, then each
    router's mean AIQ over its seeds (Efron and Tibshirani, 1993, ch. 13; the pairing removes the variance
    the two routers share, which dominates on small test sets).
    """
    qa, ca, qb, cb = (np.asarray(a, dtype=np.float64) for a in (quality_a, cost_a, quality_b, cost_b))
    for name, a in (("quality_a", qa), ("cost_a", ca), ("quality_b", qb), ("cost_b", cb)):
        if a.ndim != 3:
            raise ValueError(f"{name} must be (seeds, weights, prompts), got shape {a.shape}")
    if qa.shape != ca.shape or qb.shape != cb.shape:
        raise ValueError(
            f"quality and cost shapes differ: A {qa.shape} vs {ca.shape}, B {qb.shape} vs {cb.shape}"
        )
    n = qa.shape[2]
    if qb.shape[2] != n or n == 0:
        raise ValueError(f"A and B must share the same N > 0 prompts, got {qa.shape[2]} and {qb.shape[2]}")
    if not (0 < level < 1) or int(n_boot) < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got {level} and {n_boot}")
    if not all(np.isfinite(a).all() for a in (qa, ca, qb, cb)):
        raise ValueError("per-prompt qualities and costs must be finite")

    def diff(weights: np.ndarray) -> float:
        pa = [(qa @ weights), (ca @ weights)]  # (S, W) means under these prompt weights
        pb = [(qb @ weights), (cb @ weights)]
        right = max(float(max_cost), float(pa[1].max()), float(pb[1].max()))
        return mean_aiq(pa[0], pa[1], max_cost=right) - mean_aiq(pb[0], pb[1], max_cost=right)

    observed = diff(np.full(n, 1.0 / n))
    rng = np.random.default_rng(seed)
    boots = np.array([diff(rng.multinomial(n, np.full(n, 1.0 / n)) / n) for _ in range(int(n_boot))])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boots, [alpha, 1.0 - alpha])
    tail = min((boots <= 0).sum(), (boots >= 0).sum())
    return {
        "diff": observed,
        "low": float(low),
        "high": float(high),
        "se": float(boots.std(ddof=1)) if len(boots) > 1 else 0.0,
        "p_value": float(min(1.0, 2.0 * (tail + 1) / (len(boots) + 1))),
        "n_boot": int(n_boot),
        "level": float(level),
        "n_prompts": int(n),
    }
