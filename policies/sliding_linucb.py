"""Sliding-window LinUCB: disjoint LinUCB that forgets, with forced exploration of new arms.

Like :class:`router_rl.policies.linucb.LinUCB` (quality, cost and latency heads sharing one design per model),
but each model's statistics hold only the decisions of the last ``window`` decisions (of all models), so the
estimates track a drifting world (a price cut, a silent quality drop, an outage and its end) instead of
averaging over all of history:

    A_k = R + sum_{t in window, a_t = k} x_t x_t^T,     b_k = sum_{t in window, a_t = k} y_t x_t,
    score_k(x) = x.theta_k^q - w x.theta_k^c - lambda x.theta_k^l + alpha sqrt(x^T A_k^{-1} x)   (exploring)

Forgetting is time-based: a model that is not chosen loses its old observations too, its bonus grows back and
it is re-explored. ``A_k^{-1}`` is kept with Woodbury updates for the rows entering the window and Woodbury
downdates for the rows leaving it, re-inverted exactly every ``refresh_every`` downdates against rounding
drift. Reference: Cheung, Simchi-Levi and Zhu (2019), "Learning to optimize under non-stationarity", AISTATS
(SW-UCB for linear bandits).

Forced exploration: while exploring, a model that is available and has fewer than ``min_pulls`` pulls since
it became available gets all the traffic (uniformly among such models) until it has them. Models are marked
available or not with :meth:`set_available` (an operation, not a retrain); a model that becomes available
starts from a blank prior, so a newly released model is tried at once instead of waiting for its bonus to win.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router_rl.policies.base import check_batch, greedy_probs
from router_rl.policies.bonus import WidthCache, certified_greedy, pair_widths
from router_rl.policies.linucb import HEADS, add_bias, woodbury_update


def woodbury_downdate(a_inv: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Inverse of ``A - X^T X`` from ``A^{-1}`` (D, D) and the leaving rows ``X`` (n, D):
    ``A^{-1} + A^{-1} X^T (I_n - X A^{-1} X^T)^{-1} X A^{-1}``."""
    ax = a_inv @ x.T
    inner = np.eye(x.shape[0]) - x @ ax
    return a_inv + ax @ np.linalg.solve(inner, ax.T)


class SlidingWindowLinUCB:
    """Disjoint LinUCB over the last ``window`` decisions, with forced exploration of new arms.

    Args:
        models: arm names, in order.
        dim: context dimension d (a constant feature is added).
        alpha: width of the confidence bonus while exploring.
        ridge: regulariser of the embedding weights.
        bias_ridge: regulariser of the constant feature (1.0, stronger than LinUCB's 0.01: a model whose data
            left the window is re-explored with a moderate bonus, not an overwhelming one).
        window: decisions remembered (of all models together), >= 1.
        min_pulls: pulls forced on every model after it becomes available (0 disables forcing).
        refresh_every: exact re-inversion of a model's design after this many downdates.
    """

    name = "sliding_linucb"

    def __init__(
        self,
        models: list[str],
        dim: int,
        alpha: float = 1.0,
        ridge: float = 30.0,
        bias_ridge: float = 1.0,
        window: int = 1500,
        min_pulls: int = 10,
        refresh_every: int = 50,
    ) -> None:
        if alpha < 0:
            raise ValueError(f"sliding_linucb: alpha must be >= 0, got {alpha}")
        if ridge <= 0 or bias_ridge <= 0:
            raise ValueError(f"sliding_linucb: ridge and bias_ridge must be > 0, got {ridge}, {bias_ridge}")
        for key, value, low in (
            ("window", window, 1),
            ("min_pulls", min_pulls, 0),
            ("refresh_every", refresh_every, 1),
        ):
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ValueError(f"sliding_linucb: {key} must be an integer >= {low}, got {value}")
        self.models = list(models)
        self.dim = int(dim)
        self.alpha, self.ridge, self.bias_ridge = float(alpha), float(ridge), float(bias_ridge)
        self.window, self.min_pulls, self.refresh_every = int(window), int(min_pulls), int(refresh_every)
        k, d1 = len(self.models), self.dim + 1
        self._prior = np.full(d1, self.ridge)
        self._prior[-1] = self.bias_ridge
        self.pulls = np.zeros(k)  # pulls since the model became available
        self.available = np.ones(k, dtype=bool)
        self.clock = 0  # decisions seen
        # the window: one row per remembered decision
        self._x = np.zeros((0, d1))
        self._y = np.zeros((0, len(HEADS)))
        self._a = np.zeros(0, dtype=np.int64)
        self._t = np.zeros(0, dtype=np.int64)
        self._widths = WidthCache()
        self._rebuild()

    # ------------------------------------------------------------------ statistics
    def _rebuild(self, arms: np.ndarray | None = None) -> None:
        """Exact A^{-1}, b and theta of ``arms`` (all when None) from the window."""
        k = len(self.models)
        if arms is None:
            arms = np.arange(k)
            d1 = self.dim + 1
            self.a_inv = np.zeros((k, d1, d1))
            self.b = np.zeros((k, len(HEADS), d1))
            self._theta = np.zeros((k, len(HEADS), d1))
            self._downdates = np.zeros(k, dtype=np.int64)
        for arm in arms:
            rows = self._a == arm
            x = self._x[rows]
            self.a_inv[arm] = np.linalg.inv(np.diag(self._prior) + x.T @ x)
            self.b[arm] = self._y[rows].T @ x
            self._theta[arm] = self.b[arm] @ self.a_inv[arm]
            self._downdates[arm] = 0

    def theta(self) -> np.ndarray:
        """(K, 3, D) ridge estimates over the window for the quality, cost and latency heads."""
        return self._theta

    def estimates(self, x: np.ndarray) -> np.ndarray:
        """(3, B, K) predicted quality, normalised cost and latency of every model for contexts (B, d)."""
        k, h, d1 = self._theta.shape
        return (add_bias(x) @ self._theta.reshape(k * h, d1).T).reshape(-1, k, h).transpose(2, 0, 1)

    def scores(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        """(B, K) decision scores; ``-inf`` for unavailable models."""
        s = self._mean_scores(x, cost_weight, latency_weight)
        if explore and self.alpha > 0:
            s = s + self.alpha * self._widths.widths(add_bias(x), self.a_inv)[0]
        return np.where(self.available[None, :], s, -np.inf)

    def _mean_scores(self, x: np.ndarray, cost_weight: float, latency_weight: float) -> np.ndarray:
        q, c, lat = self.estimates(x)
        return q - cost_weight * c - latency_weight * lat

    def probs(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        forced = self.available & (self.pulls < self.min_pulls)
        if explore and forced.any():
            return np.tile(forced / forced.sum(), (x.shape[0], 1))
        if not explore or self.alpha == 0:
            return greedy_probs(self.scores(x, cost_weight=cost_weight, latency_weight=latency_weight))
        # as LinUCB: a float32 bonus, with the rows its error bounds cannot certify redone in float64
        xb = add_bias(x)
        w, err = self._widths.widths(xb, self.a_inv, float32=True)
        mean = np.where(self.available[None, :], self._mean_scores(x, cost_weight, latency_weight), -np.inf)
        return greedy_probs(
            certified_greedy(mean, self.alpha, w, err, lambda r, a: pair_widths(xb, self.a_inv, r, a))
        )

    # ------------------------------------------------------------------ learning
    def update(self, x, actions, quality, cost, latency) -> None:
        x = np.asarray(x, dtype=np.float64)
        actions = check_batch(self, x, actions, quality, cost, latency)
        n = len(actions)
        if not n:
            return
        xb = add_bias(x)
        y = np.stack([np.asarray(v, dtype=np.float64) for v in (quality, cost, latency)], axis=1)
        t = self.clock + np.arange(n)
        self.clock += n
        touched = set()
        for k in np.unique(actions):
            rows = actions == k
            self.a_inv[k] = woodbury_update(self.a_inv[k], xb[rows])
            self.b[k] += y[rows].T @ xb[rows]
            self.pulls[k] += rows.sum()
            touched.add(int(k))
        self._x = np.concatenate([self._x, xb])
        self._y = np.concatenate([self._y, y])
        self._a = np.concatenate([self._a, actions])
        self._t = np.concatenate([self._t, t])
        leaving = self._t < self.clock - self.window
        if leaving.any():
            for k in np.unique(self._a[leaving]):
                rows = leaving & (self._a == k)
                self.a_inv[k] = woodbury_downdate(self.a_inv[k], self._x[rows])
                self.b[k] -= self._y[rows].T @ self._x[rows]
                self._downdates[k] += 1
                touched.add(int(k))
            keep = ~leaving
            self._x, self._y, self._a, self._t = self._x[keep], self._y[keep], self._a[keep], self._t[keep]
        stale = [k for k in touched if self._downdates[k] >= self.refresh_every]
        if stale:
            self._rebuild(np.array(stale))
        for k in touched:
            self._theta[k] = self.b[k] @ self.a_inv[k]

    def set_available(self, available: np.ndarray | list[bool] | list[str]) -> None:
        """Mark which models can be chosen: a (K,) bool mask or the list of available model names.

        A model that becomes available forgets what it knew and is forced ``min_pulls`` times; an unavailable
        model gets probability 0.
        """
        if len(available) and isinstance(available[0], str):
            unknown = sorted(set(available) - set(self.models))
            if unknown:
                raise ValueError(f"sliding_linucb: unknown models {unknown}")
            mask = np.array([m in set(available) for m in self.models])
        else:
            mask = np.asarray(available, dtype=bool)
        if mask.shape != (len(self.models),) or not mask.any():
            raise ValueError(
                f"sliding_linucb: available must mark {len(self.models)} models, at least one True"
            )
        new = np.flatnonzero(mask & ~self.available)
        if new.size:
            keep = ~np.isin(self._a, new)
            self._x, self._y, self._a, self._t = self._x[keep], self._y[keep], self._a[keep], self._t[keep]
            self.pulls[new] = 0.0
            self._rebuild(new)
        self.available = mask.copy()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            "window_x": self._x.copy(),
            "window_y": self._y.copy(),
            "window_actions": self._a.copy(),
            "window_t": self._t.copy(),
            "pulls": self.pulls.copy(),
            "available": self.available.astype(np.float64),
            "clock": np.array([self.clock], dtype=np.int64),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        k, d1 = len(self.models), self.dim + 1
        x = np.asarray(state.get("window_x", np.zeros((0, 0))), dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != d1 or set(state) != set(self.state_dict()):
            raise ValueError(
                f"sliding_linucb state: expected keys {sorted(self.state_dict())} with window_x of width {d1}"
            )
        if np.asarray(state["pulls"]).shape != (k,) or np.asarray(state["available"]).shape != (k,):
            raise ValueError(f"sliding_linucb state: pulls and available must have shape ({k},)")
        self._x = x.copy()
        self._y = np.asarray(state["window_y"], dtype=np.float64).reshape(-1, len(HEADS)).copy()
        self._a = np.asarray(state["window_actions"]).astype(np.int64)
        self._t = np.asarray(state["window_t"]).astype(np.int64)
        self.pulls = np.asarray(state["pulls"], dtype=np.float64).copy()
        self.available = np.asarray(state["available"]) > 0.5
        self.clock = int(np.asarray(state["clock"]).reshape(-1)[0])
        self._rebuild()

    def config(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "ridge": self.ridge,
            "bias_ridge": self.bias_ridge,
            "window": self.window,
            "min_pulls": self.min_pulls,
            "refresh_every": self.refresh_every,
        }

    def linear_head(self) -> dict[str, np.ndarray]:
        """The serving form (as LinUCB's): per-head weights (K, D) on [x, 1] and the inverse designs."""
        return {
            "theta_quality": self._theta[:, 0],
            "theta_cost": self._theta[:, 1],
            "theta_latency": self._theta[:, 2],
            "a_inv": self.a_inv,
        }
