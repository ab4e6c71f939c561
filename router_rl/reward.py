"""The routing reward: quality minus weighted, scaled cost minus weighted latency.

    r = quality - cost_weight * cost_usd / cost_scale - latency_weight * latency_s

``cost_scale`` turns dollars into a unit comparable with quality (by default the mean cost per prompt of the
most expensive model on the training prompts, see :func:`default_cost_scale`), so ``cost_weight = 1`` means
"paying the frontier model's typical price costs one full point of quality".
"""

from __future__ import annotations

import numpy as np


def reward(
    quality: np.ndarray | float,
    cost_usd: np.ndarray | float,
    latency_s: np.ndarray | float,
    *,
    cost_weight: float | np.ndarray,
    cost_scale: float,
    latency_weight: float = 0.0,
) -> np.ndarray:
    """Elementwise reward; all array arguments broadcast together."""
    if not cost_scale > 0:
        raise ValueError(f"cost_scale must be > 0, got {cost_scale}")
    return (
        np.asarray(quality, dtype=np.float64)
        - np.asarray(cost_weight, dtype=np.float64) * np.asarray(cost_usd, dtype=np.float64) / cost_scale
        - latency_weight * np.asarray(latency_s, dtype=np.float64)
    )


def default_cost_scale(cost_usd: np.ndarray) -> float:
    """The largest per-model mean cost per prompt.

    Args:
        cost_usd: (N, K) cost of every model on every prompt, NaN where missing.
    """
    per_model = np.nanmean(np.asarray(cost_usd, dtype=np.float64), axis=0)
    scale = float(np.nanmax(per_model)) if np.isfinite(per_model).any() else float("nan")
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(
            "cannot derive a cost scale: every model's mean cost is zero or missing; set reward.cost_scale"
        )
    return scale
