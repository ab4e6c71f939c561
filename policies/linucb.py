"""Disjoint LinUCB with separate quality, cost and latency heads.

Each model k keeps a ridge regression over the context x (the query embedding plus a constant feature):

    A_k = R + sum_t x_t x_t^T,   R = diag(ridge, ..., ridge, bias_ridge),     b_k^{(h)} = sum_t y_t^{(h)} x_t,     theta_k^{(h)} = A_k^{-1} b_k^{(h)}

for the three heads h in (quality, cost / cost_scale, latency). All heads share A_k (same design), so one
inverse serves them. The constant feature gets its own, weak regulariser ``bias_ridge`` so that a strong
``ridge`` shrinks the prompt-specific part of each estimate toward the model's mean, not toward zero. The decision for cost weight w and latency weight lambda is

    score_k(x) = x.theta_k^q - w x.theta_k^c - lambda x.theta_k^l + alpha sqrt(x^T A_k^{-1} x)

with the bonus only while exploring (Li et al., 2010, "A contextual-bandit approach to personalized news
article recommendation", Algorithm 1). Because the heads are learned apart, the trained policy serves any
cost weight at decision time and traces the whole cost-quality frontier without retraining. A_k^{-1} is kept
up to date with the Woodbury identity (rank-one Sherman-Morrison for single rows), never re-inverted.

The ridge state, its updates, warm start (:meth:`~router_rl.policies.ridge.RidgeArms.warm_start`) and
``add_model``/``remove_model`` live in :mod:`router_rl.policies.ridge`, shared with linear Thompson sampling
and epsilon-greedy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router_rl.policies.base import greedy_probs
from router_rl.policies.bonus import WidthCache, certified_greedy, pair_widths
from router_rl.policies.ridge import HEADS, RidgeArms, add_bias, posterior_width, woodbury_update

__all__ = ["HEADS", "LinUCB", "add_bias", "ucb_bonus", "woodbury_update"]

ucb_bonus = posterior_width
"""sqrt(x^T A_k^{-1} x) for contexts (B, D) and inverses (K, D, D) -> (B, K)."""


class LinUCB(RidgeArms):
    """Disjoint LinUCB over models, learning quality, cost and latency apart.

    Args:
        models: arm names, in order.
        dim: context dimension d (the embedding size; a constant feature is added).
        alpha: width of the confidence bonus while exploring.
        ridge: ridge regulariser (prior precision) of the embedding weights of every head.
        bias_ridge: regulariser of the constant feature (each model's mean).
        threads: threads computing a batch's exploration bonus (1: the caller's only; on the 2-core development
            machine 2 took a 256-row decision from 26-37 to 18-22 us per row). Decisions do not depend on it.
    """

    name = "linucb"

    def __init__(
        self,
        models: list[str],
        dim: int,
        alpha: float = 0.5,
        ridge: float = 1.0,
        bias_ridge: float = 0.01,
        threads: int = 1,
    ) -> None:
        if alpha < 0:
            raise ValueError(f"linucb: alpha must be >= 0, got {alpha}")
        if int(threads) < 1:
            raise ValueError(f"linucb: threads must be >= 1, got {threads}")
        super().__init__(models, dim, ridge=ridge, bias_ridge=bias_ridge)
        self.alpha = float(alpha)
        self.threads = int(threads)
        self._width_cache = WidthCache(threads=self.threads)

    def scores(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        """(B, K) decision scores (with the exploration bonus when ``explore``), in float64."""
        s = self.mean_scores(x, cost_weight=cost_weight, latency_weight=latency_weight)
        alpha = self.bonus_alpha
        if explore and alpha > 0:
            s = s + alpha * self.widths(add_bias(x))[0]
        return s

    @property
    def bonus_alpha(self) -> float:
        """The multiplier of the width in the exploration bonus: ``alpha`` (a subclass whose estimates are
        only partly the linear heads' scales it by their share)."""
        return self.alpha

    def probs(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        """Greedy on :meth:`scores`. While exploring, the bonus is computed in float32 with error bounds and
        the rows whose best model the bounds cannot certify are recomputed in float64, so the decisions are
        those of the float64 formula (:func:`router_rl.policies.bonus.certified_greedy`)."""
        mean = self.mean_scores(x, cost_weight=cost_weight, latency_weight=latency_weight)
        alpha = self.bonus_alpha
        if not explore or alpha == 0:
            return greedy_probs(mean)
        xb = add_bias(x)
        w, err = self.widths(xb, float32=True)
        return greedy_probs(
            certified_greedy(mean, alpha, w, err, lambda r, a: pair_widths(xb, self.a_inv, r, a))
        )

    def config(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            **super().config(),
            **({"threads": self.threads} if self.threads > 1 else {}),
        }
