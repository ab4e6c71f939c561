"""Epsilon-greedy over per-model ridge (or least-squares) estimates of quality, cost and latency.

The estimates are the ridge regressions of :mod:`router_rl.policies.ridge` (``ridge`` -> 0 gives ordinary
least squares); the decision for cost weight w and latency weight lambda is greedy on

    score_k(x) = x.theta_k^q - w x.theta_k^c - lambda x.theta_k^l,

and while exploring every model gets an extra epsilon_t / K, so the propensities are exact:

    P(k | x) = (1 - epsilon_t) 1[k = argmax score] + epsilon_t / K,   epsilon_t = max(min_epsilon, epsilon / (1 + decay n_t))

with n_t the number of observations so far (Sutton and Barto, "Reinforcement Learning", 2nd ed., sec. 2.2;
the decaying schedule after Auer et al., 2002, "Finite-time analysis of the multiarmed bandit problem").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router_rl.policies.base import greedy_probs
from router_rl.policies.ridge import RidgeArms


def epsilon_schedule(epsilon: float, decay: float, min_epsilon: float, n_seen: float) -> float:
    """``max(min_epsilon, epsilon / (1 + decay * n_seen))``; ``decay = 0`` keeps epsilon constant."""
    return max(min_epsilon, epsilon / (1.0 + decay * n_seen))


def epsilon_greedy_probs(scores: np.ndarray, epsilon: float) -> np.ndarray:
    """(B, K) ``(1 - epsilon) * greedy(scores) + epsilon / K`` (greedy ties split evenly)."""
    return (1.0 - epsilon) * greedy_probs(scores) + epsilon / scores.shape[1]


class EpsilonGreedy(RidgeArms):
    """Epsilon-greedy over disjoint per-model ridge regressions with quality, cost and latency heads.

    Args:
        models: arm names, in order.
        dim: context dimension d.
        epsilon: exploration rate while training (``explore=True``).
        decay: epsilon_t = epsilon / (1 + decay * observations); 0 keeps it constant.
        min_epsilon: floor of the decaying rate.
        ridge: prior precision of the embedding weights (1e-6 ~ ordinary least squares).
        bias_ridge: prior precision of the constant feature.
    """

    name = "eps_greedy"

    def __init__(
        self,
        models: list[str],
        dim: int,
        epsilon: float = 0.1,
        decay: float = 0.0,
        min_epsilon: float = 0.0,
        ridge: float = 30.0,
        bias_ridge: float = 0.01,
    ) -> None:
        if not (0.0 <= min_epsilon <= 1.0 and 0.0 <= epsilon <= 1.0):
            raise ValueError(
                f"eps_greedy: epsilon and min_epsilon must lie in [0, 1], got {epsilon}, {min_epsilon}"
            )
        if decay < 0:
            raise ValueError(f"eps_greedy: decay must be >= 0, got {decay}")
        super().__init__(models, dim, ridge=ridge, bias_ridge=bias_ridge)
        self.epsilon = float(epsilon)
        self.decay = float(decay)
        self.min_epsilon = float(min_epsilon)

    def current_epsilon(self) -> float:
        """The exploration rate now (after ``counts.sum()`` observations)."""
        return epsilon_schedule(self.epsilon, self.decay, self.min_epsilon, float(self.counts.sum()))

    def probs(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        scores = self.mean_scores(x, cost_weight=cost_weight, latency_weight=latency_weight)
        return epsilon_greedy_probs(scores, self.current_epsilon() if explore else 0.0)

    def config(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "decay": self.decay,
            "min_epsilon": self.min_epsilon,
            **super().config(),
        }
