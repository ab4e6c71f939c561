"""Exploration from the policy's own posterior, with exact propensities for the decision log.

Bonus softmax: among the models a request allows (finite greedy score: its ``candidates``, ``max_cost_usd``
and ``latency_budget_s`` already applied), draw model k with probability

    p_k = exp((s_k + beta * u_k - m) / T) / sum_j exp((s_j + beta * u_j - m) / T),   u_k = sqrt(x^T A_k^{-1} x)

where s_k is the greedy score, u_k the LinUCB width of the context x (bias feature appended) under the
artifact's inverse design ``a_inv`` (K, d + 1, d + 1) (absent: u = 0, a plain Boltzmann draw), beta the
bonus, T the temperature and m the largest exponent (for stability). For a ``linear+mlp`` artifact u_k is
scaled by the linear heads' share (1 - mlp_weight) of the estimate: the network part is fixed, no posterior. The propensity logged is p of the
model drawn: exact, so IPS/SNIPS/DR can reweight any target policy within the allowed set, and a forbidden
model has probability 0. Unlike Thompson sampling, whose propensities need Monte Carlo, this is closed form.
"""

from __future__ import annotations

import numpy as np

from router_rl.serve.artifact import WEIGHTS, Artifact
from router_rl.serve.router import Decision

A_INV = "a_inv"
_UNSET = object()


def posterior_inverse(artifact: Artifact) -> np.ndarray | None:
    """(K, d + 1, d + 1) float64 inverse design matrices stored in the artifact's weights, or None; read once
    per loaded artifact (the weights were verified by the loader)."""
    cached = artifact.__dict__.get("_a_inv", _UNSET)
    if cached is not _UNSET:
        return cached
    from safetensors import safe_open

    a_inv = None
    with safe_open(str(artifact.path / WEIGHTS), framework="np") as f:
        if A_INV in list(f.keys()):  # safe_open supports keys(), not `in`
            a_inv = np.asarray(f.get_tensor(A_INV), dtype=np.float64)
    k, d = len(artifact.models), int(artifact.manifest["embedder"]["dim"]) + 1
    if a_inv is not None and a_inv.shape != (k, d, d):
        a_inv = None  # not this catalog's designs: explore without the bonus rather than fail a request
    artifact.__dict__["_a_inv"] = a_inv
    return a_inv


def bonus_softmax_probs(
    scores: np.ndarray, widths: np.ndarray, *, bonus: float, temperature: float
) -> np.ndarray:
    """(K,) probabilities from greedy ``scores`` (K,; ``-inf`` or NaN: not allowed) and posterior ``widths``
    (K,): softmax of ``(scores + bonus * widths) / temperature`` over the allowed models, 0 elsewhere."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = np.asarray(scores, dtype=np.float64)
    allowed = np.isfinite(s)
    if not allowed.any():
        raise ValueError("no model is allowed: every score is excluded")
    z = np.where(allowed, (np.where(allowed, s, 0.0) + bonus * widths) / temperature, -np.inf)
    e = np.exp(z - z[allowed].max())
    return e / e.sum()


def explore_softmax(
    decision: Decision,
    embedding: np.ndarray,
    artifact: Artifact,
    *,
    bonus: float,
    temperature: float,
    rng: np.random.Generator,
) -> Decision:
    """Draw the served model from :func:`bonus_softmax_probs` around ``decision`` (the greedy one); the
    returned decision carries the drawn model and its exact propensity, scores and estimates unchanged."""
    models = artifact.models
    scores = np.array([np.nan if decision.scores[m] is None else decision.scores[m] for m in models])
    a_inv = posterior_inverse(artifact) if bonus > 0 else None
    if a_inv is None:
        widths = np.zeros(len(models))
    else:
        xb = np.append(np.asarray(embedding, dtype=np.float64), 1.0)
        widths = np.sqrt(np.maximum(np.einsum("d,kde,e->k", xb, a_inv, xb), 0.0))
        widths *= 1.0 - artifact.mlp_weight  # a linear+mlp artifact: the linear heads' share of the estimate
    p = bonus_softmax_probs(scores, widths, bonus=bonus, temperature=temperature)
    k = int(rng.choice(len(models), p=p))
    return Decision(
        model=models[k],
        scores=decision.scores,
        propensity=float(p[k]),
        estimates=decision.estimates,
        policy_version=decision.policy_version,
        decision_id=decision.decision_id,
    )
