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


def check_model_change(policy: Any, name: str, *, adding: bool) -> int:
    """Validate ``add_model(name)`` / ``remove_model(name)`` on ``policy``; returns the arm index.

    Adding: ``name`` must be a new, non-empty string (returns the index it will get). Removing: ``name`` must be
    one of the policy's models and at least one model must remain.
    """
    models = list(policy.models)
    if adding:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{policy.name}: a model name must be a non-empty string, got {name!r}")
        if name in models:
            raise ValueError(f"{policy.name}: model {name!r} is already one of the arms {models}")
        return len(models)
    if name not in models:
        raise ValueError(f"{policy.name}: cannot remove unknown model {name!r}; the arms are {models}")
    if len(models) == 1:
        raise ValueError(f"{policy.name}: cannot remove {name!r}, the only model left")
    return models.index(name)


def offline_start(
    policy: Any,
    x: np.ndarray,
    quality: np.ndarray,
    cost: np.ndarray,
    latency: np.ndarray,
    *,
    warm_start_weight: float = 0.0,
) -> str:
    """Give ``policy`` the full-information rows it takes before (or instead of) the bandit loop.

    Args:
        x: (N, d) training contexts; quality, cost (cost_usd / cost_scale), latency: (N, K) outcome tables.
        warm_start_weight: > 0 gives a bandit a supervised prior (PILOT-style warm start) with this weight.
    Returns:
        ``"fit"``: a supervised router (``policy.supervised``) was fitted; skip the bandit loop for it.
        ``"warm_start"``: a bandit got pseudo-observations (``warm_start``) or was pre-fitted (``fit``);
        run the bandit loop next. ``"none"``: nothing done; run the bandit loop.
    """
    if getattr(policy, "supervised", False):
        policy.fit(x, quality, cost, latency)
        return "fit"
    if warm_start_weight > 0:
        if hasattr(policy, "warm_start"):
            policy.warm_start(x, quality, cost, latency, weight=warm_start_weight)
            return "warm_start"
        if hasattr(policy, "fit"):
            policy.fit(x, quality, cost, latency)
            return "warm_start"
    return "none"
