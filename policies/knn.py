"""k-nearest-neighbour router on query embeddings (cosine similarity).

For a context x and model k, the estimate of each head h (quality, normalised cost, latency) is the mean over
the k most similar remembered contexts in which model k's outcome was observed:

    y_hat_k^{(h)}(x) = 1/k sum_i a_i y_ik^{(h)},   a_i = 1 if s_i > s_(k),   a_i = (k - n_>) / n_= if s_i = s_(k),

with s_i = cos(x, x_i) over the rows where model k was observed, s_(k) the k-th largest, n_> the rows above it
and n_= the rows tied with it. Every neighbour tied with the k-th counts, with equal weight: the estimate is
the mean over all ways of breaking the tie, deterministic (a prompt among a thousand identical neighbours
uses all of them, not an arbitrary k of them). The decision for cost weight w is greedy on ``q_hat - w c_hat - lambda l_hat`` (RouterBench's kNN router,
Hu et al., 2024). :meth:`KNNRouter.fit` remembers full-information rows (every model observed); bandit
feedback (``update``) is remembered too (one model observed per row), so the router keeps learning
incrementally with no retraining; ``explore=True`` adds epsilon-greedy exploration with exact propensities.
A model with nothing remembered is never chosen greedily (all such rows: uniform).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router_rl.policies.base import check_batch, check_model_change, greedy_probs
from router_rl.policies.ridge import stack_heads


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


TIE_ATOL = 1e-9
"""Similarities within this of the k-th largest are ties (identical embeddings give equal cosines exactly;
the tolerance absorbs the rounding of a dot product)."""


def tie_weights(sims: np.ndarray, k: int, *, atol: float = TIE_ATOL) -> np.ndarray:
    """Neighbour weights a (B, M), rows summing to ``min(k, M)``: 1 for a similarity above the k-th largest,
    ``(k - n_above) / n_tied`` for each one tied with it, 0 below.

    Args:
        sims: (B, M) similarities of the queries to the M candidate rows.
        k: neighbours per query.
    """
    b, m = sims.shape
    kk = min(int(k), m)
    if kk == m:
        return np.ones((b, m))
    kth = -np.partition(-sims, kk - 1, axis=1)[:, kk - 1 : kk]  # (B, 1) the k-th largest similarity
    above = sims > kth + atol
    tied = ~above & (sims >= kth - atol)
    n_above = above.sum(axis=1, keepdims=True)
    share = (kk - n_above) / np.maximum(tied.sum(axis=1, keepdims=True), 1)
    return above + tied * share


def knn_means(sims: np.ndarray, y: np.ndarray, seen: np.ndarray, k: int, *, chunk: int = 512) -> np.ndarray:
    """Tie-aware mean target of the ``k`` most similar rows where each model was observed.

    Args:
        sims: (B, M) similarities of the queries to the M remembered rows.
        y: (M, K, H) remembered targets; seen: (M, K) which cells were observed.
        chunk: queries per block (bounds the (chunk, M) weight matrix).
    Returns:
        (B, K, H) :func:`tie_weights`-weighted means over the neighbours (NaN for a model with no observed row).
    """
    b, n_models, h = sims.shape[0], y.shape[1], y.shape[2]
    out = np.full((b, n_models, h), np.nan)
    for j in range(n_models):
        rows = np.flatnonzero(seen[:, j])
        if len(rows) == 0:
            continue
        kk = min(k, len(rows))
        target = y[rows, j]  # (M_j, H)
        for start in range(0, b, chunk):
            weights = tie_weights(sims[start : start + chunk, rows], kk)
            out[start : start + chunk, j] = weights @ target / kk
    return out


class KNNRouter:
    """Cosine kNN estimates of every model's quality, cost and latency.

    Args:
        models: arm names, in order.
        dim: context dimension d.
        k: neighbours per model.
        epsilon: exploration rate while training (``explore=True``).
        max_memory: most recent rows remembered (``fit`` rows count too).
    """

    name = "knn"
    supervised = True  # an offline baseline: trained by ``fit`` on full information in comparisons

    def __init__(
        self, models: list[str], dim: int, k: int = 20, epsilon: float = 0.1, max_memory: int = 100_000
    ) -> None:
        if k < 1 or max_memory < 1 or not 0.0 <= epsilon <= 1.0:
            raise ValueError(
                f"knn: need k >= 1, max_memory >= 1, epsilon in [0, 1]; got {k}, {max_memory}, {epsilon}"
            )
        self.models = list(models)
        self.dim = int(dim)
        self.k, self.epsilon, self.max_memory = int(k), float(epsilon), int(max_memory)
        self.mem_x = np.zeros((0, self.dim))
        self.mem_y = np.zeros((0, len(self.models), 3))
        self.mem_seen = np.zeros((0, len(self.models)), dtype=bool)
        self._memo: tuple[Any, np.ndarray] | None = None
        self._version = 0  # bumped whenever the memory changes

    def estimates(self, x: np.ndarray) -> np.ndarray:
        """(3, B, K) neighbour means of quality, normalised cost and latency (NaN: model never observed).

        The last batch's estimates are kept until the memory changes, so a sweep of cost weights over the
        same prompts searches the neighbours once."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        key = (x.shape, hash(x.tobytes()), len(self.mem_x), self._version)
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        sims = unit_rows(x) @ self.mem_x.T
        out = knn_means(sims, self.mem_y, self.mem_seen, self.k).transpose(2, 0, 1)
        self._memo = (key, out)
        return out

    def probs(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        q, c, lat = self.estimates(np.asarray(x))
        scores = np.nan_to_num(q - cost_weight * c - latency_weight * lat, nan=-np.inf)
        greedy = greedy_probs(scores)
        if not explore:
            return greedy
        return (1.0 - self.epsilon) * greedy + self.epsilon / len(self.models)

    def fit(self, x, quality, cost, latency) -> KNNRouter:
        """Remember full-information rows: (N, d) contexts and (N, K) outcome tables (cost / cost_scale).

        Replaces the memory; NaN cells are treated as unobserved.
        """
        x = np.asarray(x)
        y = stack_heads(quality, cost, latency)
        if x.ndim != 2 or y.shape[:2] != (x.shape[0], len(self.models)):
            raise ValueError(
                f"knn: fit needs x (N, d) and (N, K={len(self.models)}) tables, got {x.shape}, {y.shape[:2]}"
            )
        seen = np.isfinite(y).all(axis=2)
        self.mem_x = np.zeros((0, self.dim))
        self.mem_y, self.mem_seen = np.zeros((0, len(self.models), 3)), np.zeros((0, len(self.models)), bool)
        self._remember(x, np.where(seen[..., None], y, 0.0), seen)
        return self

    def update(self, x, actions, quality, cost, latency) -> None:
        """Remember the revealed outcomes (incremental; no retraining)."""
        x = np.asarray(x)
        actions = check_batch(self, x, actions, quality, cost, latency)
        b = len(actions)
        y = np.zeros((b, len(self.models), 3))
        y[np.arange(b), actions] = stack_heads(quality, cost, latency)
        seen = np.zeros((b, len(self.models)), dtype=bool)
        seen[np.arange(b), actions] = True
        self._remember(x, y, seen)

    def _remember(self, x: np.ndarray, y: np.ndarray, seen: np.ndarray) -> None:
        self._version += 1
        keep = slice(max(0, len(self.mem_x) + len(x) - self.max_memory), None)
        self.mem_x = np.concatenate([self.mem_x, unit_rows(x)])[keep]
        self.mem_y = np.concatenate([self.mem_y, y])[keep]
        self.mem_seen = np.concatenate([self.mem_seen, seen])[keep]

    def add_model(self, name: str) -> None:
        """Append model ``name`` with nothing remembered (never chosen greedily until observed)."""
        check_model_change(self, name, adding=True)
        self._version += 1
        self.models.append(name)
        self.mem_y = np.pad(self.mem_y, ((0, 0), (0, 1), (0, 0)))
        self.mem_seen = np.pad(self.mem_seen, ((0, 0), (0, 1)))

    def remove_model(self, name: str) -> None:
        """Drop model ``name``'s remembered outcomes (and rows where only it was observed)."""
        k = check_model_change(self, name, adding=False)
        self._version += 1
        self.models.pop(k)
        self.mem_y, self.mem_seen = np.delete(self.mem_y, k, axis=1), np.delete(self.mem_seen, k, axis=1)
        rows = self.mem_seen.any(axis=1)
        self.mem_x, self.mem_y, self.mem_seen = self.mem_x[rows], self.mem_y[rows], self.mem_seen[rows]

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"x": self.mem_x.copy(), "y": self.mem_y.copy(), "seen": self.mem_seen.astype(np.uint8)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        x, y, seen = (np.asarray(state.get(key, np.zeros(0))) for key in ("x", "y", "seen"))
        n, k = len(x), len(self.models)
        if x.shape != (n, self.dim) or y.shape != (n, k, 3) or seen.shape != (n, k):
            raise ValueError(f"knn state: expected x (M, {self.dim}), y (M, {k}, 3), seen (M, {k})")
        self.mem_x, self.mem_y, self.mem_seen = x.astype(np.float64), y.astype(np.float64), seen.astype(bool)
        self._version += 1

    def config(self) -> dict[str, Any]:
        return {"k": self.k, "epsilon": self.epsilon, "max_memory": self.max_memory}
