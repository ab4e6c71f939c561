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


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p")
"""One marker per router (with tab10's colours, every router of a comparison gets its own pair)."""
NUMBERED_ABOVE = 24
"""Catalogs larger than this get numbered markers and a key instead of labels beside the points."""
KEY_COLUMNS, KEY_LINE_IN = 4, 0.125
"""Columns of a large catalog's key under the plot, and the height of one key line (inches)."""

Box = tuple[float, float, float, float]
"""(x0, y0, x1, y1) in display pixels."""

# label offsets (points) tried in order, with the alignment that keeps the text on that side of its point
_OFFSETS = [
    ((5, 2), "left", "bottom"), ((5, -2), "left", "top"), ((-5, 2), "right", "bottom"),
    ((-5, -2), "right", "top"), ((0, 6), "center", "bottom"), ((0, -6), "center", "top"),
    ((9, 9), "left", "bottom"), ((9, -9), "left", "top"), ((-9, 9), "right", "bottom"),
    ((-9, -9), "right", "top"), ((0, 14), "center", "bottom"), ((0, -14), "center", "top"),
    ((16, 0), "left", "center"), ((-16, 0), "right", "center"),
]  # fmt: skip


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(a: Box, bounds: Box) -> bool:
    return a[0] >= bounds[0] and a[1] >= bounds[1] and a[2] <= bounds[2] and a[3] <= bounds[3]


def place_labels(
    anchors: list[tuple[float, float]],
    sizes: list[tuple[float, float]],
    *,
    obstacles: list[Box],
    soft: list[Box] = (),
    bounds: Box,
    points_to_px: float = 1.0,
) -> list[tuple[tuple[float, float], str, str] | None]:
    """Greedy label placement without overlaps: for each anchor (pixels) the first offset of
    :data:`_OFFSETS` whose text box (``sizes``: width, height in pixels) stays inside ``bounds`` and overlaps
    neither an ``obstacle`` (the markers) nor a label placed before, fewest ``soft`` boxes (other lines'
    markers) first; None where no offset fits (the caller numbers that point instead).

    Returns:
        Per anchor ``((dx, dy) in points, horizontal alignment, vertical alignment)`` or None.
    """
    placed: list[Box] = []
    out: list[tuple[tuple[float, float], str, str] | None] = []
    for (x, y), (w, h) in zip(anchors, sizes, strict=True):
        best, best_soft = None, None
        for (dx, dy), ha, va in _OFFSETS:
            px, py = x + dx * points_to_px, y + dy * points_to_px
            x0 = {"left": px, "right": px - w, "center": px - w / 2}[ha]
            y0 = {"bottom": py, "top": py - h, "center": py - h / 2}[va]
            box = (x0, y0, x0 + w, y0 + h)
            if not _inside(box, bounds) or any(_overlaps(box, o) for o in [*obstacles, *placed]):
                continue
            n_soft = sum(_overlaps(box, o) for o in soft)
            if best is None or n_soft < best_soft:
                best, best_soft = (((dx, dy), ha, va), box), n_soft
                if n_soft == 0:
                    break
        if best is None:
            out.append(None)
        else:
            out.append(best[0])
            placed.append(best[1])
    return out


def frontier_title(report: Mapping[str, Any]) -> str:
    """``arena: 270 prompts, each tested once (5-fold cross-fitting)`` or ``routellm: 1,552 prompts of the
    held-out test split``: the dataset, the prompts and how their predictions were made, each said once."""
    scheme, split, n = str(report.get("scheme", "")), str(report.get("split", "")), report.get("n_prompts")
    prompts = f"{n:,} prompts" if isinstance(n, int) else "? prompts"
    if scheme.startswith("kfold-"):
        how = f"{prompts}, each tested once ({scheme.removeprefix('kfold-')}-fold cross-fitting)"
    elif scheme == "holdout" or (split and not scheme):
        how = f"{prompts} of the held-out {split or 'test'} split"
    else:
        how = ", ".join(x for x in (prompts, split, scheme) if x)
    return f"{report.get('dataset', '?')}: {how}"


def plot_frontier(report: Mapping[str, Any], path: str | Path) -> Path:
    """Draw a ``report.json`` dict on the cost-quality plane and save it as a PNG (dpi 120).

    Single models are grey dots, labelled beside the point where the label overlaps no other label or dot
    (:func:`place_labels`) and numbered with a key otherwise (and for catalogs above
    :data:`NUMBERED_ABOVE` models); the zero router (hull of the single models) is a dashed line; each policy
    has its own colour and marker, its sweep of points (ordered by cost weight, joined by the mixing lines)
    and its non-decreasing convex hull as a wide, pale line of the same colour. Hulls are extended flat to
    the largest cost, as AIQ integrates them, and drawn as the curves that linear mixing traces on the log
    axis. The oracle is a star. The x axis is logarithmic (symlog if some cost is 0); the legend sits beside
    the plot, so it hides no point.

    Args:
        report: the ``report.json`` contract (``models`` and ``policies`` required; ``oracle``,
            ``zero_router``, ``dataset``, ``split``, ``scheme``, ``n_prompts`` used when present).
        path: output file; parent folders are created.

    Returns:
        The path written.
    """
    fig, _ = draw_frontier(report)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, format="png")
    fig.clear()
    return out


def draw_frontier(report: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The figure of :func:`plot_frontier` and what was drawn: ``labels`` (model -> text artist or None),
    ``numbered`` (models shown by number), ``legend`` (labels in order), ``styles`` (policy -> (colour,
    marker))."""
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

    # a large catalog's numbered key gets its own band under the plot, in KEY_COLUMNS columns
    key_rows = -(-len(models) // KEY_COLUMNS) if len(models) > NUMBERED_ABOVE else 0
    key_h = key_rows * KEY_LINE_IN + 0.25 if key_rows else 0.0
    fig = Figure(figsize=(11, 6 + key_h))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    names = list(models)
    mc = np.array([c for c, _ in models.values()])
    mq = np.array([q for _, q in models.values()])
    ax.scatter(mc, mq, s=22, color="0.45", zorder=3, label="single models")

    zero = report.get("zero_router") or {}
    zero_aiq = zero.get("aiq")
    if zero_aiq is None and max_cost > 0:
        zero_aiq = aiq(mc, mq, max_cost=max_cost)
    zc, zq = _hull_curve(mc, mq, max_cost)
    # one name for both: the hull is the zero router's definition, the policy of that name learns it
    hull_label = "zero_router: hull of the single models" + (
        f" (AIQ {zero_aiq:.3f})" if zero_aiq is not None else ""
    )
    ax.plot(zc, zq, "--", color="0.2", lw=1.2, zorder=2, label=hull_label)

    styles: dict[str, tuple[str, str]] = {}
    policy_marks: list[tuple[float, float]] = []
    for j, (name, (xy, pol_aiq)) in enumerate(policies.items()):
        color, marker = f"C{j % 10}", MARKERS[j % len(MARKERS)]
        styles[name] = (color, marker)
        shown = "zero_router, learned" if name == "zero_router" else name
        label = shown if pol_aiq is None else f"{shown} (AIQ {float(pol_aiq):.3f})"
        line = "-" if j < 10 else "--"
        if not xy:
            ax.plot([], [], marker=marker, ls=line, color=color, label=f"{shown} (no points)")
            continue
        pc, pq = np.array(xy).T
        policy_marks.extend(zip(pc, pq, strict=True))
        xs, ys, marks = _mixing_path(pc, pq)
        ax.plot(
            xs,
            ys,
            marker=marker,
            ls=line,
            markevery=marks,
            color=color,
            ms=4.5,
            lw=1.0,
            zorder=4,
            label=label,
        )
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
    ax.set_title(frontier_title(report), fontsize=10)
    ax.margins(x=0.08, y=0.08)
    legend = ax.legend(
        fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9, borderaxespad=0
    )
    height = 6 + key_h
    fig.subplots_adjust(left=0.07, right=0.70, bottom=(0.6 + key_h) / height, top=1 - 0.42 / height)
    ax.set_xlim(ax.get_xlim())  # freeze: the labels are placed in these coordinates
    ax.set_ylim(ax.get_ylim())

    labels, numbered = _label_models(fig, ax, names, mc, mq, policy_marks, oracle)
    entries = [f"{k + 1:>2}  {short_label(names[i], 28)}" for k, i in enumerate(numbered)]
    if key_rows:  # the band under the plot
        for c in range(KEY_COLUMNS):
            column = entries[c * key_rows : (c + 1) * key_rows]
            fig.text(0.07 + c * 0.16, (key_h - 0.1) / height, "\n".join(column), fontsize=6.5,
                     family="monospace", color="0.25", va="top")  # fmt: skip
    elif entries:  # a few models that found no free spot: under the legend, in two columns if long
        renderer = fig.canvas.get_renderer()
        top = fig.transFigure.inverted().transform(legend.get_window_extent(renderer))[0][1] - 0.02
        per_column = max(1, int(top * height / KEY_LINE_IN))
        for c in range(0, len(entries), per_column):
            fig.text(0.715 + 0.14 * (c // per_column), top, "\n".join(entries[c : c + per_column]),
                     fontsize=6.5, family="monospace", color="0.25", va="top")  # fmt: skip
    info = {
        "labels": labels,
        "numbered": [names[i] for i in numbered],
        "legend": [t.get_text() for t in legend.get_texts()],
        "styles": styles,
    }
    return fig, info


def _label_models(
    fig: Any, ax: Any, names: list[str], mc: np.ndarray, mq: np.ndarray, policy_marks: list, oracle: Any
) -> tuple[dict[str, Any], list[int]]:
    """Label each model beside its dot where it fits (no overlap), else number it; returns the text artists
    by model (None for numbered ones) and the numbered models' indices, in key order."""
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    dots = to_px(np.column_stack([mc, mq]))
    r = 4.0  # a dot's half-size in pixels (s=22 at dpi 100, with a margin)
    obstacles: list[Box] = [(x - r, y - r, x + r, y + r) for x, y in dots]
    if oracle:
        ox, oy = to_px(np.array([oracle]))[0]
        obstacles.append((ox - 9, oy - 9, ox + 9, oy + 9))
    soft = [(x - 3, y - 3, x + 3, y + 3) for x, y in (to_px(np.array(policy_marks)) if policy_marks else [])]
    order = list(np.lexsort((mc, -mq)))  # the best models first: they get the first pick of positions
    texts = {i: short_label(names[i]) for i in order}
    sizes = []
    for i in order:
        probe = ax.text(0, 0, texts[i], fontsize=6.5)
        box = probe.get_window_extent(renderer)
        sizes.append((box.width + 2, box.height + 1))
        probe.remove()
    bounds = tuple(ax.get_window_extent(renderer).extents)
    fit = (
        place_labels(
            [tuple(dots[i]) for i in order], sizes, obstacles=obstacles, soft=soft, bounds=bounds,
            points_to_px=fig.dpi / 72.0,
        )
        if len(names) <= NUMBERED_ABOVE
        else [None] * len(order)
    )  # fmt: skip
    labels: dict[str, Any] = {}
    numbered = [i for i, f in zip(order, fit, strict=True) if f is None]
    numbered.sort(key=lambda i: (mc[i], -mq[i]))  # the key reads left to right along the cost axis
    for i, f in zip(order, fit, strict=True):
        if f is None:
            labels[names[i]] = None
            ax.annotate(
                str(numbered.index(i) + 1), (mc[i], mq[i]), xytext=(0, 4), textcoords="offset points",
                ha="center", va="bottom", fontsize=6, color="0.2", fontweight="bold",
            )  # fmt: skip
            continue
        (dx, dy), ha, va = f
        labels[names[i]] = ax.annotate(
            texts[i], (mc[i], mq[i]), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
            fontsize=6.5, color="0.3", zorder=6, bbox={"boxstyle": "square,pad=0.05", "fc": "white",
            "ec": "none", "alpha": 0.7},
        )  # fmt: skip
    return labels, numbered


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
