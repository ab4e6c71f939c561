"""Two-model routing metrics of RouteLLM: PGR, APGR and CPT against the share of strong-model calls.

Reference: I. Ong et al., "RouteLLM: Learning to Route LLMs with Preference Data", 2024, arXiv:2406.18665,
section 5.1. With q_weak and q_strong the mean qualities of always calling the weak or the strong model:

    PGR(router) = (q(router) - q_weak) / (q_strong - q_weak)          (performance gap recovered)
    APGR        = integral over strong-call share s in [0, 1] of PGR(s) ds
    CPT(x)      = least strong-call share at which PGR reaches x       (call-performance threshold)

A router traced over its threshold (here: over the cost weight) gives points (s, PGR); the curve is completed
with (0, 0) (always weak) and (1, 1) (always strong), taken as its upper envelope in s (a router can always
mix to reach any share between two points) and integrated by the trapezoid rule.
"""

from __future__ import annotations

import numpy as np


def pgr(quality: float | np.ndarray, q_weak: float, q_strong: float) -> np.ndarray:
    """Performance gap recovered, elementwise. Raises if the strong model is not better than the weak one."""
    if not q_strong > q_weak:
        raise ValueError(f"PGR needs q_strong > q_weak, got {q_strong} and {q_weak}")
    return (np.asarray(quality, dtype=np.float64) - q_weak) / (q_strong - q_weak)


def pgr_curve(strong_share: np.ndarray, pgr_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The router's PGR curve: points sorted by share, endpoints (0, 0) and (1, 1) added, and each point
    raised to the best PGR reachable at or below its share (running maximum): (M,), (M,)."""
    s = np.asarray(strong_share, dtype=np.float64)
    p = np.asarray(pgr_values, dtype=np.float64)
    if s.ndim != 1 or s.shape != p.shape:
        raise ValueError(
            f"strong_share and pgr_values must be 1-D of equal length, got {s.shape} and {p.shape}"
        )
    if ((s < -1e-12) | (s > 1 + 1e-12)).any():
        raise ValueError("strong_share values must lie in [0, 1]")
    s = np.concatenate([[0.0], np.clip(s, 0.0, 1.0), [1.0]])
    p = np.concatenate([[0.0], p, [1.0]])
    order = np.lexsort((-p, s))
    s, p = s[order], np.maximum.accumulate(p[order])
    return s, p


def apgr(strong_share: np.ndarray, pgr_values: np.ndarray) -> float:
    """Average PGR: the area under :func:`pgr_curve` over shares in [0, 1] (trapezoid rule)."""
    s, p = pgr_curve(strong_share, pgr_values)
    return float(np.sum(np.diff(s) * (p[1:] + p[:-1]) / 2.0))


def cpt(strong_share: np.ndarray, pgr_values: np.ndarray, target: float) -> float:
    """Least strong-call share at which the (interpolated) PGR curve reaches ``target`` in (0, 1]."""
    if not 0 < target <= 1:
        raise ValueError(f"target PGR must be in (0, 1], got {target}")
    s, p = pgr_curve(strong_share, pgr_values)
    j = int(np.argmax(p >= target))  # exists: the curve ends at (1, 1)
    if j == 0 or p[j] == target:
        return float(s[j])
    t = (target - p[j - 1]) / (p[j] - p[j - 1])
    return float(s[j - 1] + t * (s[j] - s[j - 1]))


def two_model_summary(
    strong_share: np.ndarray, quality: np.ndarray, q_weak: float, q_strong: float
) -> dict[str, float]:
    """APGR, CPT(50%) and CPT(80%) of a router's (strong share, quality) points."""
    values = pgr(quality, q_weak, q_strong)
    return {
        "apgr": apgr(strong_share, values),
        "cpt50": cpt(strong_share, values, 0.5),
        "cpt80": cpt(strong_share, values, 0.8),
    }
