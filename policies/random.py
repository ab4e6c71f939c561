"""Uniform random routing: the floor every learned router must clear."""

from __future__ import annotations

from typing import Any

import numpy as np


class RandomPolicy:
    """Picks every model with probability 1/K, whatever the context and cost weight."""

    name = "random"

    def __init__(self, models: list[str], dim: int | None = None) -> None:
        self.models = list(models)

    def probs(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        return np.full((np.asarray(x).shape[0], len(self.models)), 1.0 / len(self.models))

    def update(self, x, actions, quality, cost, latency) -> None:  # noqa: D102 - nothing to learn
        return None

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        return None

    def config(self) -> dict[str, Any]:
        return {}
