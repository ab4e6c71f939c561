"""The oracle: per prompt the model with the best reward, read from the full outcome table.

Evaluation only: it sees every model's recorded outcome, which no deployable router can. At cost weight 0 it
takes the best quality, cheapest among ties (DESIGN's oracle); at a positive cost weight it maximises
``quality - w * cost_usd / cost_scale``, which traces the per-prompt upper bound of the frontier.
"""

from __future__ import annotations

import numpy as np


class Oracle:
    """Full-information upper bound over a table of outcomes.

    Args:
        quality: (N, K) recorded quality.
        cost_usd: (N, K) recorded cost.
        cost_scale: dollars per unit of cost weight (see :mod:`router_rl.reward`).
    """

    name = "oracle"

    def __init__(self, quality: np.ndarray, cost_usd: np.ndarray, cost_scale: float) -> None:
        self.quality = np.asarray(quality, dtype=np.float64)
        self.cost_usd = np.asarray(cost_usd, dtype=np.float64)
        self.cost_scale = float(cost_scale)

    def choose(self, rows: np.ndarray | None = None, *, cost_weight: float = 0.0) -> np.ndarray:
        """(B,) the oracle's model index for each of ``rows`` (all rows when None)."""
        q = self.quality if rows is None else self.quality[rows]
        c = self.cost_usd if rows is None else self.cost_usd[rows]
        value = q - cost_weight * c / self.cost_scale
        best = value.max(axis=1, keepdims=True)
        # among the best, the cheapest: mask the others with +inf cost
        cost_if_best = np.where(value >= best - 1e-12, c, np.inf)
        return cost_if_best.argmin(axis=1)

    def probs(self, rows: np.ndarray | None = None, *, cost_weight: float = 0.0) -> np.ndarray:
        choice = self.choose(rows, cost_weight=cost_weight)
        out = np.zeros((len(choice), self.quality.shape[1]))
        out[np.arange(len(choice)), choice] = 1.0
        return out
