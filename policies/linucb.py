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
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router_rl.policies.base import check_batch, greedy_probs

HEADS = ("quality", "cost", "latency")


def add_bias(x: np.ndarray) -> np.ndarray:
    """(B, d) -> (B, d + 1) with a trailing constant 1 feature."""
    x = np.asarray(x, dtype=np.float64)
    return np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)


def woodbury_update(a_inv: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Inverse of ``A + X^T X`` from ``A^{-1}`` (D, D) and the new rows ``X`` (n, D).

    (A + X^T X)^{-1} = A^{-1} - A^{-1} X^T (I_n + X A^{-1} X^T)^{-1} X A^{-1}; for n = 1 this is
    Sherman-Morrison.
    """
    ax = a_inv @ x.T  # (D, n)
    inner = np.eye(x.shape[0]) + x @ ax  # (n, n)
    return a_inv - ax @ np.linalg.solve(inner, ax.T)


def ucb_bonus(x: np.ndarray, a_inv: np.ndarray) -> np.ndarray:
    """sqrt(x^T A_k^{-1} x) for contexts (B, D) and inverses (K, D, D) -> (B, K)."""
    quad = np.einsum("kbj,bj->bk", x[None] @ a_inv, x)  # one batched matmul per arm, no (B, K, D, D) temp
    return np.sqrt(np.maximum(quad, 0.0))


class LinUCB:
    """Disjoint LinUCB over models, learning quality, cost and latency apart.

    Args:
        models: arm names, in order.
        dim: context dimension d (the embedding size; a constant feature is added).
        alpha: width of the confidence bonus while exploring.
        ridge: ridge regulariser (prior precision) of the embedding weights of every head.
        bias_ridge: regulariser of the constant feature (each model's mean).
    """

    name = "linucb"

    def __init__(
        self, models: list[str], dim: int, alpha: float = 0.5, ridge: float = 1.0, bias_ridge: float = 0.01
    ) -> None:
        if alpha < 0:
            raise ValueError(f"linucb: alpha must be >= 0, got {alpha}")
        if ridge <= 0 or bias_ridge <= 0:
            raise ValueError(f"linucb: ridge and bias_ridge must be > 0, got {ridge} and {bias_ridge}")
        self.models = list(models)
        self.dim = int(dim)
        self.alpha = float(alpha)
        self.ridge = float(ridge)
        self.bias_ridge = float(bias_ridge)
        k, d1 = len(self.models), self.dim + 1
        prior = np.full(d1, self.ridge)
        prior[-1] = self.bias_ridge
        self.a_inv = np.tile(np.diag(1.0 / prior), (k, 1, 1))
        self.b = np.zeros((k, len(HEADS), d1))
        self.counts = np.zeros(k)
        self._theta = np.zeros((k, len(HEADS), d1))

    def theta(self) -> np.ndarray:
        """(K, 3, D) ridge estimates for the quality, cost and latency heads (kept current by ``update``)."""
        return self._theta

    def estimates(self, x: np.ndarray) -> np.ndarray:
        """(3, B, K) predicted quality, normalised cost and latency of every model for contexts (B, d)."""
        return np.einsum("bi,khi->hbk", add_bias(x), self.theta())

    def scores(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        """(B, K) decision scores (with the exploration bonus when ``explore``)."""
        q, c, lat = self.estimates(x)
        s = q - cost_weight * c - latency_weight * lat
        if explore and self.alpha > 0:
            s = s + self.alpha * ucb_bonus(add_bias(x), self.a_inv)
        return s

    def probs(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        return greedy_probs(
            self.scores(x, cost_weight=cost_weight, latency_weight=latency_weight, explore=explore)
        )

    def update(self, x, actions, quality, cost, latency) -> None:
        x = np.asarray(x)
        actions = check_batch(self, x, actions, quality, cost, latency)
        xb = add_bias(x)
        y = np.stack([np.asarray(v, dtype=np.float64) for v in (quality, cost, latency)], axis=1)  # (B, 3)
        for k in np.unique(actions):
            rows = actions == k
            self.a_inv[k] = woodbury_update(self.a_inv[k], xb[rows])
            self.b[k] += y[rows].T @ xb[rows]
            self.counts[k] += rows.sum()
            self._theta[k] = self.b[k] @ self.a_inv[k]  # A^{-1} is symmetric

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"a_inv": self.a_inv.copy(), "b": self.b.copy(), "counts": self.counts.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        k, d1 = len(self.models), self.dim + 1
        expected = {"a_inv": (k, d1, d1), "b": (k, len(HEADS), d1), "counts": (k,)}
        for key, shape in expected.items():
            if key not in state or tuple(state[key].shape) != shape:
                got = None if key not in state else tuple(state[key].shape)
                raise ValueError(f"linucb state: {key!r} must have shape {shape}, got {got}")
        self.a_inv = np.asarray(state["a_inv"], dtype=np.float64).copy()
        self.b = np.asarray(state["b"], dtype=np.float64).copy()
        self.counts = np.asarray(state["counts"], dtype=np.float64).copy()
        self._theta = np.einsum("kij,khj->khi", self.a_inv, self.b)

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "ridge": self.ridge, "bias_ridge": self.bias_ridge}

    def linear_head(self) -> dict[str, np.ndarray]:
        """The serving form: per-head weights (K, D) on [x, 1] and the inverse design for the bonus."""
        theta = self.theta()
        return {
            "theta_quality": theta[:, 0],
            "theta_cost": theta[:, 1],
            "theta_latency": theta[:, 2],
            "a_inv": self.a_inv,
        }
