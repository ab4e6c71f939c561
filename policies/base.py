"""The policy protocol every router implements, and helpers shared by all of them.

A policy maps contexts to action probabilities over an ordered list of models (the arms), learns from batches
of bandit feedback (the chosen model's quality, normalised cost and latency only), and exposes its state for
checkpoints and export. Keeping quality, cost and latency estimates apart lets one trained policy serve any
cost weight at decision time.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Policy(Protocol):
    """What the trainer, the evaluation and the exporter rely on.

    Shapes: ``x`` is (B, d) float contexts; ``actions`` (B,) int indices into ``models``; ``quality``,
    ``cost`` (cost_usd / cost_scale) and ``latency`` (seconds) are (B,) floats of the chosen models.
    """

    name: str
    models: list[str]

    def probs(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        """(B, K) action probabilities; rows sum to 1. ``explore=False`` gives the greedy decision."""
        ...

    def update(
        self, x: np.ndarray, actions: np.ndarray, quality: np.ndarray, cost: np.ndarray, latency: np.ndarray
    ) -> None:
        """Learn from one batch of bandit feedback."""
        ...

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays that restore the policy together with ``config()``."""
        ...

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (without ``models`` and ``dim``)."""
        ...


def greedy_probs(scores: np.ndarray, *, atol: float = 1e-12) -> np.ndarray:
    """One-hot probabilities of the best score per row, ties split evenly.

    Args:
        scores: (B, K) scores; ``-inf`` marks an unavailable action.
    Returns:
        (B, K) probabilities.
    """
    scores = np.asarray(scores, dtype=np.float64)
    best = scores.max(axis=1, keepdims=True)
    ties = scores >= best - atol
    return ties / ties.sum(axis=1, keepdims=True)


def sample_actions(probs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one action per row of ``probs`` (B, K); returns (actions (B,), propensities (B,))."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    actions = np.minimum((u > cdf).sum(axis=1), probs.shape[1] - 1)
    return actions, probs[np.arange(len(actions)), actions]


def check_batch(policy: Policy, x: np.ndarray, actions: np.ndarray, *arrays: np.ndarray) -> np.ndarray:
    """Validate a feedback batch; returns ``actions`` as int64."""
    actions = np.asarray(actions)
    if x.ndim != 2:
        raise ValueError(f"{policy.name}: contexts must be (B, d), got shape {x.shape}")
    if actions.shape != (x.shape[0],):
        raise ValueError(f"{policy.name}: actions must be ({x.shape[0]},), got shape {actions.shape}")
    if len(actions) and (actions.min() < 0 or actions.max() >= len(policy.models)):
        raise ValueError(
            f"{policy.name}: actions must lie in [0, {len(policy.models)}), got {actions.min()}..{actions.max()}"
        )
    for arr in arrays:
        if np.asarray(arr).shape != actions.shape:
            raise ValueError(
                f"{policy.name}: feedback arrays must be ({len(actions)},), got {np.asarray(arr).shape}"
            )
    return actions.astype(np.int64)
