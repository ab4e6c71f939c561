"""The cost-quality plane of an evaluation report (``pareto.png``).

Matplotlib is imported inside :func:`plot_frontier`, and the figure is drawn on a bare ``Figure`` with the Agg
canvas (no pyplot, no global backend switch, nothing left open), so importing this module is cheap and plotting
is safe in headless and multi-threaded processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from router_rl.metrics import aiq, nondecreasing_convex_hull

_MAX_LABEL = 20


def short_label(model: str, max_len: int = _MAX_LABEL) -> str:
    """``mistralai/Mixtral-8x7B-Instruct-v0.1`` -> ``Mixtral-8x7B-Instruct…``: drop the org, truncate."""
    name = model.rsplit("/", 1)[-1]
    return name if len(name) <= max_len else name[: max_len - 1] + "…"


def _xy(entry: Any, where: str) -> tuple[float, float]:
    try:
        return float(entry["cost_usd"]), float(entry["quality"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"report {where} must have numeric 'cost_usd' and 'quality', got {entry!r}") from e


def _hull_curve(
    costs: np.ndarray, qualities: np.ndarray, max_cost: float, per_segment: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """The hull, extended flat to ``max_cost`` as AIQ integrates it, sampled densely along each segment:
    mixing two routers is linear in cost, which is a curve, not a straight segment, on a log cost axis."""
    hc, hq = nondecreasing_convex_hull(costs, qualities)
    if max_cost > hc[-1]:
        hc, hq = np.append(hc, max_cost), np.append(hq, hq[-1])
    if hc.size == 1:
        return hc, hq
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)
    xs = np.append((hc[:-1, None] + t * np.diff(hc)[:, None]).ravel(), hc[-1])
    return xs, np.interp(xs, hc, hq)


def _mixing_path(
    costs: np.ndarray, qualities: np.ndarray, per_segment: int = 32
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Consecutive points joined by the line that mixing them traces (straight in linear cost), sampled
    densely; also the indices of the original points in the result (for ``markevery``)."""
    if costs.size == 1:
        return costs, qualities, [0]
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[None, :]
    xs = np.append((costs[:-1, None] + t * np.diff(costs)[:, None]).ravel(), costs[-1])
    ys = np.append((qualities[:-1, None] + t * np.diff(qualities)[:, None]).ravel(), qualities[-1])
    return xs, ys, list(range(0, xs.size, per_segment))


def plot_frontier(report: Mapping[str, Any], path: str | Path) -> Path:
    """Draw a ``report.json`` dict on the cost-quality plane and save it as a PNG (dpi 120).

    Single models are labelled grey dots, the zero router (hull of the single models) a dashed line, each
    policy its sweep of points (ordered by cost weight, joined by the mixing lines) with its non-decreasing convex hull as a wide, pale
    line of the same colour; hulls are extended flat to the largest cost, as AIQ integrates them, and drawn
    as the curves that linear mixing traces on the log axis. The oracle is
    a star. The x axis is logarithmic (symlog if some cost is 0).

    Args:
        report: the ``report.json`` contract (``models`` and ``policies`` required; ``oracle``,
            ``zero_router``, ``dataset``, ``split``, ``scheme``, ``n_prompts`` used when present).
        path: output file; parent folders are created.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    for key in ("models", "policies"):
        if not isinstance(report.get(key), Mapping):
            raise ValueError(f"report must have a '{key}' mapping, got {type(report.get(key)).__name__}")
    models = {name: _xy(v, f"models[{name!r}]") for name, v in report["models"].items()}
    if not models:
        raise ValueError("report['models'] is empty: nothing to compare against")
    policies: dict[str, tuple[list[tuple[float, float]], float | None]] = {}
    for name, pol in report["policies"].items():
        pts = sorted(pol.get("points", []), key=lambda p: float(p.get("cost_weight", 0.0)))
        xy = [_xy(p, f"policies[{name!r}].points[{i}]") for i, p in enumerate(pts)]
        policies[name] = (xy, pol.get("aiq"))
    oracle = _xy(report["oracle"], "oracle") if report.get("oracle") else None

    all_costs = [c for c, _ in models.values()] + [c for xy, _ in policies.values() for c, _ in xy]
    if oracle:
        all_costs.append(oracle[0])
    max_cost = max(all_costs)

    fig = Figure(figsize=(8.5, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    mc = np.array([c for c, _ in models.values()])
    mq = np.array([q for _, q in models.values()])
    ax.scatter(mc, mq, s=22, color="0.45", zorder=3, label="single models")
    # alternate label offsets along the cost axis so neighbours do not print over each other
    for rank, i in enumerate(np.argsort(mc, kind="stable")):
        dy = 4 if rank % 2 == 0 else -9
        ax.annotate(
            short_label(list(models)[i]),
            (mc[i], mq[i]),
            xytext=(5, dy),
            textcoords="offset points",
            fontsize=6.5,
            color="0.3",
        )

    zero = report.get("zero_router") or {}
    zero_aiq = zero.get("aiq")
    if zero_aiq is None and max_cost > 0:
        zero_aiq = aiq(mc, mq, max_cost=max_cost)
    zc, zq = _hull_curve(mc, mq, max_cost)
    ax.plot(zc, zq, "--", color="0.2", lw=1.2, zorder=2, label=f"zero router (AIQ {zero_aiq:.3f})")

    colors = [f"C{i}" for i in range(10)]
    for j, (name, (xy, pol_aiq)) in enumerate(policies.items()):
        color = colors[j % len(colors)]
        label = name if pol_aiq is None else f"{name} (AIQ {float(pol_aiq):.3f})"
        if not xy:
            ax.plot([], [], "o-", color=color, label=f"{name} (no points)")
            continue
        pc, pq = np.array(xy).T
        xs, ys, marks = _mixing_path(pc, pq)
        ax.plot(xs, ys, "o-", markevery=marks, color=color, ms=4, lw=1.0, zorder=4, label=label)
        hc, hq = _hull_curve(pc, pq, max_cost)
        ax.plot(hc, hq, "-", color=color, lw=4, alpha=0.25, zorder=3, solid_capstyle="round")

    if any(xy for xy, _ in policies.values()):
        ax.plot([], [], "-", color="0.5", lw=4, alpha=0.3, label="policy hull (random mixing)")
    if oracle:
        ax.scatter(
            *oracle, marker="*", s=220, color="gold", edgecolor="black", lw=0.7, zorder=5, label="oracle"
        )

    positive = [c for c in all_costs if c > 0]
    if positive and len(positive) == len(all_costs):
        ax.set_xscale("log")
        ax.set_xlabel("cost per prompt (USD, log scale)")
    else:
        ax.set_xscale("symlog", linthresh=min(positive) if positive else 1e-9)
        ax.set_xlabel("cost per prompt (USD, symlog scale)")
    ax.set_ylabel("mean quality")
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    ax.set_title(
        f"{report.get('dataset', '?')} / {report.get('split', '?')} ({report.get('scheme', '?')}), "
        f"n = {report.get('n_prompts', '?')} prompts",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    fig.tight_layout()

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, format="png")
    fig.clear()
    return out


def plot_learning_curves(
    curves: Mapping[str, Mapping[str, Any]], path: str | Path, *, title: str = ""
) -> Path:
    """Cumulative pseudo-regret and running mean reward against steps, one line per policy, in one figure.

    Args:
        curves: policy name -> ``{"steps": (T,), "cumulative_regret": (T,), "reward_mean": (T,)}``.
        path: output PNG; parent folders are created.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2))
    FigureCanvasAgg(fig)
    ax_regret, ax_reward = fig.subplots(1, 2)
    for name, curve in curves.items():
        steps = np.asarray(curve["steps"])
        ax_regret.plot(steps, np.asarray(curve["cumulative_regret"]), label=name)
        ax_reward.plot(steps, np.asarray(curve["reward_mean"]), label=name)
    ax_regret.set(xlabel="steps (decisions with feedback)", ylabel="cumulative pseudo-regret", title="regret")
    ax_reward.set(xlabel="steps (decisions with feedback)", ylabel="mean reward so far", title="reward")
    for ax in (ax_regret, ax_reward):
        ax.grid(alpha=0.3)
    ax_reward.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, format="png")
    return out
