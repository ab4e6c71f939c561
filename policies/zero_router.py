"""The zero router: a context-free router that picks the best single model for the cost weight.

It keeps each model's mean quality, normalised cost and latency (learned from bandit feedback with
epsilon-greedy exploration) and, at decision time, takes ``argmax_k q_k - w c_k - lambda l_k``. Across cost
weights its choices walk the vertices of the single models' convex hull: the RouterBench "zero router", the bar
a contextual router must beat.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router_rl.policies.base import check_batch, check_model_change, greedy_probs


class ZeroRouter:
    """Context-free mean estimates per model.

    Args:
        models: arm names.
        epsilon: exploration rate while training (``explore=True``); models never tried are tried first.
    """

    name = "zero_router"

    def __init__(self, models: list[str], dim: int | None = None, epsilon: float = 0.1) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"zero_router: epsilon must lie in [0, 1], got {epsilon}")
        self.models = list(models)
        self.dim = None if dim is None else int(dim)
        self.epsilon = float(epsilon)
        k = len(self.models)
        self.counts = np.zeros(k)
        self.sums = np.zeros((3, k))  # quality, cost, latency

    def means(self) -> np.ndarray:
        """(3, K) mean quality, normalised cost and latency per model (0 before any feedback)."""
        return self.sums / np.maximum(self.counts, 1.0)

    def probs(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        b = np.asarray(x).shape[0]
        k = len(self.models)
        if explore and (self.counts == 0).any():
            untried = (self.counts == 0).astype(float)
            return np.tile(untried / untried.sum(), (b, 1))
        q, c, lat = self.means()
        greedy = greedy_probs(np.tile(q - cost_weight * c - latency_weight * lat, (b, 1)))
        if explore:
            return (1.0 - self.epsilon) * greedy + self.epsilon / k
        return greedy

    def update(self, x, actions, quality, cost, latency) -> None:
        actions = check_batch(self, np.asarray(x), actions, quality, cost, latency)
        np.add.at(self.counts, actions, 1.0)
        for row, values in enumerate((quality, cost, latency)):
            np.add.at(self.sums[row], actions, np.asarray(values, dtype=np.float64))

    def add_model(self, name: str) -> None:
        """Append model ``name`` untried (tried first while exploring); the others keep their means."""
        check_model_change(self, name, adding=True)
        self.models.append(name)
        self.counts = np.append(self.counts, 0.0)
        self.sums = np.concatenate([self.sums, np.zeros((3, 1))], axis=1)

    def remove_model(self, name: str) -> None:
        """Drop model ``name`` and its means."""
        k = check_model_change(self, name, adding=False)
        self.models.pop(k)
        self.counts, self.sums = np.delete(self.counts, k), np.delete(self.sums, k, axis=1)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts.copy(), "sums": self.sums.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.counts = np.asarray(state["counts"], dtype=np.float64).copy()
        self.sums = np.asarray(state["sums"], dtype=np.float64).copy()

    def config(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon}

    def linear_head(self) -> dict[str, np.ndarray]:
        """The serving form: (K, d + 1) heads on ``[x, 1]`` that ignore ``x`` (zeros) and hold each model's
        mean quality, normalised cost and latency in the bias column, so the artifact decides as
        ``probs(explore=False)`` does at every cost weight."""
        if self.dim is None:
            raise AttributeError("zero_router: dim is unknown (built without dim); it has no linear_head")
        heads = np.zeros((3, len(self.models), self.dim + 1))
        heads[:, :, -1] = self.means()
        return {"theta_quality": heads[0], "theta_cost": heads[1], "theta_latency": heads[2]}
