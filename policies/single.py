"""Always the same model: the single-model baselines of every report."""

from __future__ import annotations

from typing import Any

import numpy as np


class SingleModel:
    """Sends every request to ``model``."""

    def __init__(self, models: list[str], model: str, dim: int | None = None) -> None:
        if model not in models:
            raise ValueError(f"single-model policy: unknown model {model!r}; expected one of {list(models)}")
        self.models = list(models)
        self.model = model
        self.name = f"single:{model}"
        self._index = self.models.index(model)

    def probs(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        out = np.zeros((np.asarray(x).shape[0], len(self.models)))
        out[:, self._index] = 1.0
        return out

    def update(self, x, actions, quality, cost, latency) -> None:  # noqa: D102 - nothing to learn
        return None

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        return None

    def config(self) -> dict[str, Any]:
        return {"model": self.model}
