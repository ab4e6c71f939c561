"""Two-model routing metrics of RouteLLM: PGR, APGR and CPT against the share of strong-model calls.

Reference: I. Ong et al., "RouteLLM: Learning to Route LLMs with Preference Data", 2024, arXiv:2406.18665,
section 5.1, as computed by its evaluation code (``routellm/evals/evaluate.py`` of lm-sys/RouteLLM). With
q_weak and q_strong the mean qualities of always calling the weak or the strong model, a router traced over
its threshold (here: over the cost weight) gives points (s_j, q_j), s the share of strong-model calls:

    PGR(q)  = (q - q_weak) / (q_strong - q_weak)                      (performance gap recovered)
    APGR    = (trapz(q, s) - q_weak (s_max - s_min)) / ((q_strong - q_weak) (s_max - s_min))
            = the trapezoid mean of PGR over [s_min, s_max], the shares the router reached
    CPT(x)  = numpy.interp(q_weak + x (q_strong - q_weak), q, s)      (call-performance threshold)

with the points sorted by share. Nothing is added: no (0, 0) and (1, 1) end points, no upper envelope, so a
router whose curve stops at a 60% strong share is averaged over the shares it reached only, and a dip in its
curve counts. RouteLLM's thresholds are quantiles of its router's scores, so its own curves run from 0% to
100%; ours run over the shares the cost-weight sweep gives. CPT interpolates the quality -> share map as
``numpy.interp`` does (it assumes increasing qualities; a target below the first point gives the first share,
above the last the last share, as in RouteLLM's code).
"""

from __future__ import annotations

import numpy as np


def pgr(quality: float | np.ndarray, q_weak: float, q_strong: float) -> np.ndarray:
    """Performance gap recovered, elementwise. Raises if the strong model is not better than the weak one."""
    if not q_strong > q_weak:
        raise ValueError(f"PGR needs q_strong > q_weak, got {q_strong} and {q_weak}")
    return (np.asarray(quality, dtype=np.float64) - q_weak) / (q_strong - q_weak)


def sorted_points(strong_share: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The router's points sorted by strong-call share (stable: equal shares keep their order): (M,), (M,)."""
    s = np.asarray(strong_share, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    if s.ndim != 1 or s.shape != q.shape or s.size == 0:
        raise ValueError(
            f"strong_share and quality must be non-empty 1-D arrays of equal length, got {s.shape} and {q.shape}"
        )
    if ((s < -1e-12) | (s > 1 + 1e-12)).any():
        raise ValueError("strong_share values must lie in [0, 1]")
    order = np.argsort(s, kind="stable")
    return np.clip(s[order], 0.0, 1.0), q[order]


def apgr(strong_share: np.ndarray, quality: np.ndarray, q_weak: float, q_strong: float) -> float:
    """RouteLLM's APGR: the trapezoid mean of PGR over the strong-call shares the router reached.

    Args:
        strong_share: (M,) share of strong-model calls at each point (any order).
        quality: (M,) the router's mean quality there.
        q_weak, q_strong: mean quality of always calling the weak / the strong model on the same prompts.
    Returns:
        ``(trapz(q, s) - q_weak (s_max - s_min)) / ((q_strong - q_weak) (s_max - s_min))``. When every point
        has the same share (RouteLLM's code divides 0 by 0 there) the limit of that mean: the mean PGR of
        the points.
    """
    s, q = sorted_points(strong_share, quality)
    values = pgr(q, q_weak, q_strong)
    width = float(s[-1] - s[0])
    if width <= 0:
        return float(values.mean())
    return float(np.sum(np.diff(s) * (values[1:] + values[:-1]) / 2.0) / width)


def cpt(
    strong_share: np.ndarray, quality: np.ndarray, q_weak: float, q_strong: float, target: float
) -> float:
    """RouteLLM's CPT(target): the strong-call share at which quality reaches ``q_weak + target (q_strong -
    q_weak)``, by ``numpy.interp`` of share over quality along the points sorted by share."""
    if not 0 < target <= 1:
        raise ValueError(f"target PGR must be in (0, 1], got {target}")
    s, q = sorted_points(strong_share, quality)
    pgr(q, q_weak, q_strong)  # validates q_strong > q_weak
    return float(np.interp(q_weak + target * (q_strong - q_weak), q, s))


def two_model_summary(
    strong_share: np.ndarray, quality: np.ndarray, q_weak: float, q_strong: float
) -> dict[str, float]:
    """APGR, CPT(50%) and CPT(80%) of a router's (strong share, quality) points, as RouteLLM computes them,
    with the range of shares they cover (``share_min``, ``share_max``)."""
    s, _ = sorted_points(strong_share, quality)
    return {
        "apgr": apgr(strong_share, quality, q_weak, q_strong),
        "cpt50": cpt(strong_share, quality, q_weak, q_strong, 0.5),
        "cpt80": cpt(strong_share, quality, q_weak, q_strong, 0.8),
        "share_min": float(s[0]),
        "share_max": float(s[-1]),
    }
