"""Linear Thompson sampling with separate quality, cost and latency heads, and exact propensities.

Each model k keeps the Bayesian linear regression of :mod:`router_rl.policies.ridge`: posterior
theta_k^{(h)} ~ N(theta_hat_k^{(h)}, s^2 A_k^{-1}) for the heads h (quality, cost, latency). For cost weight w
and latency weight lambda the reward weights are u = (1, -w, -lambda); Thompson sampling draws the reward
estimate of every model from its posterior and routes to the largest draw (Agrawal and Goyal, 2013, "Thompson
sampling for contextual bandits with linear payoffs"). The heads share one design matrix, so the draw of
model k's reward at context x is one Gaussian,

    r_k(x) ~ N(mu_k(x), sigma_k(x)^2),   mu_k = x.theta_hat_k^q - w x.theta_hat_k^c - lambda x.theta_hat_k^l,
                                         sigma_k = s |u| sqrt(x^T A_k^{-1} x),

independent across models (disjoint parameters) and drawn afresh for every decision. Hence the action
probabilities (the propensities logged with every decision) are

    P(k | x) = P(r_k > r_j for all j != k) = E_{z ~ N(0, 1)} [ prod_{j != k} Phi((mu_k + sigma_k z - mu_j) / sigma_j) ],

a one-dimensional integral per model, computed by :func:`argmax_probabilities` with a fixed 64-node quadrature
(``propensity: quadrature``, the default: deterministic, within ~5e-3 of the true probabilities, ~2e-2 when
some posteriors are far narrower than others) or estimated by Monte Carlo with ``n_draws`` draws from the
policy's own seeded generator (``propensity: mc``, error ~ 1 / sqrt(n_draws)). The trainer samples its action
from these probabilities, so the logged propensity is exactly the probability of what was done, and that
behaviour is Thompson sampling up to the quadrature (or Monte Carlo) error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from router_rl.policies.base import greedy_probs
from router_rl.policies.ridge import RidgeArms, add_bias

QUADRATURE_NODES = 64
_SD_FLOOR = 1e-12
_CHUNK_ELEMENTS = 2_000_000
_ONE_ARG = 8.3  # ndtr(x) == 1.0 in float64 for x >= 8.3 (1 - Phi(8.3) = 5e-17 < half an ulp of 1)
_LOG_FLOOR_ARG = float(ndtri(1e-18))  # a factor below this at every node makes the product < 1e-18


def quadrature_nodes(n: int = QUADRATURE_NODES) -> np.ndarray:
    """(n,) standard-normal quantiles at the mid-points of n equal-probability bins: E[f(z)] ~ mean f(nodes)."""
    return ndtri((np.arange(n) + 0.5) / n)


def _ndtr(x: np.ndarray) -> np.ndarray:
    """Phi(x) elementwise: torch's vectorised kernel (~2.5x scipy's ``ndtr``, equal to ~1 ulp), scipy's
    without torch. Used by :func:`argmax_probabilities`, whose cost it dominates."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency; the fallback keeps numpy-only use working
        return ndtr(x)
    return torch.special.ndtr(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def argmax_probabilities(mean: np.ndarray, sd: np.ndarray, *, nodes: np.ndarray | None = None) -> np.ndarray:
    """P(k is the largest) of independent Gaussians N(mean_k, sd_k^2), per row.

    Args:
        mean, sd: (B, K) means and standard deviations (sd = 0 means a known value).
        nodes: standard-normal quadrature nodes (equal weights); default :func:`quadrature_nodes`.
    Returns:
        (B, K) probabilities, rows summing to 1:
        P(k) = E_z[prod_{j != k} Phi((mean_k + sd_k z - mean_j) / sd_j)], ties among known values split evenly.

    Only the factors that matter are evaluated (B K (K - 1) G in the worst case): a factor whose argument is
    at least 8.3 at every node is 1.0 in float64 and skipped, and a model whose product is below 1e-18 at
    every node (some factor's argument below ``ndtri(1e-18)`` at the largest node) gets 0. When less than half
    the factors can be skipped, all are computed, one competitor at a time (faster than gathering them). The
    product is taken directly (``ndtr``), not as ``exp(sum log_ndtr)``; the results agree to ~1e-15.
    """
    mean = np.asarray(mean, dtype=np.float64)
    sd = np.maximum(np.asarray(sd, dtype=np.float64), _SD_FLOOR)
    z = quadrature_nodes() if nodes is None else np.asarray(nodes, dtype=np.float64)
    out = np.zeros_like(mean)
    k = mean.shape[1]
    off_diag = ~np.eye(k, dtype=bool)
    chunk = max(1, _CHUNK_ELEMENTS // (k * k * len(z)))  # bounds the (pairs, G) temporaries
    for start in range(0, mean.shape[0], chunk):
        m, s = mean[start : start + chunk], sd[start : start + chunk]
        shift = (m[:, :, None] - m[:, None, :]) / s[:, None, :]  # (b, K_k, K_j): (m_k - m_j) / s_j
        ratio = s[:, :, None] / s[:, None, :]  # s_k / s_j > 0: the argument grows with z
        live = ~((shift + ratio * z.max() < _LOG_FLOOR_ARG) & off_diag).any(axis=2)  # (b, K)
        need = live[:, :, None] & off_diag & (shift + ratio * z.min() < _ONE_ARG)
        block = out[start : start + chunk]
        if need.sum() > 0.5 * need.size:  # little to skip: every factor, one competitor j at a time
            t = m[:, :, None] + s[:, :, None] * z  # (b, K, G): the draw of model k at each node
            prod = np.ones_like(t)
            for j in range(k):
                phi = _ndtr((t - m[:, j, None, None]) / s[:, j, None, None])
                phi[:, j, :] = 1.0
                prod *= phi
            block[...] = np.where(live, prod.mean(axis=2), 0.0)
            continue
        ib, ik, ij = np.nonzero(need)
        block[live] = 1.0  # models with no factor below 1: product 1 at every node
        if len(ib):
            phi = _ndtr(shift[ib, ik, ij, None] + ratio[ib, ik, ij, None] * z)  # (pairs, G)
            group = ib * k + ik
            first = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
            block.reshape(-1)[group[first]] = np.multiply.reduceat(phi, first, axis=0).mean(axis=1)
    total = out.sum(axis=1, keepdims=True)
    return out / np.where(total > 0, total, 1.0)


def mc_argmax_probabilities(
    mean: np.ndarray, sd: np.ndarray, *, n_draws: int, rng: np.random.Generator
) -> np.ndarray:
    """Monte Carlo estimate of :func:`argmax_probabilities`: the share of ``n_draws`` draws each model wins."""
    mean, sd = np.asarray(mean, dtype=np.float64), np.asarray(sd, dtype=np.float64)
    b, k = mean.shape
    wins = np.zeros((b, k))
    for start in range(0, n_draws, 256):
        n = min(256, n_draws - start)
        draws = mean + sd * rng.standard_normal((n, b, k))
        np.add.at(wins, (np.tile(np.arange(b), n), draws.argmax(axis=2).ravel()), 1.0)
    return wins / n_draws


def thompson_draw(mean: np.ndarray, sd: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(B,) the action of one Thompson draw per row: argmax_k of N(mean_k, sd_k^2)."""
    return (mean + sd * rng.standard_normal(mean.shape)).argmax(axis=1)


class LinTS(RidgeArms):
    """Disjoint linear Thompson sampling over models, learning quality, cost and latency apart.

    Args:
        models: arm names, in order.
        dim: context dimension d.
        scale: posterior scale s (the noise standard deviation of the Bayesian regression); 0 = greedy.
        ridge: prior precision of the embedding weights.
        bias_ridge: prior precision of the constant feature.
        propensity: ``quadrature`` (deterministic, error ~5e-3) or ``mc`` (``n_draws`` Monte Carlo draws).
        n_draws: Monte Carlo draws per decision when ``propensity: mc``.
        seed: seed of the policy's own generator (Monte Carlo propensities, :meth:`sample`).
    """

    name = "lin_ts"

    def __init__(
        self,
        models: list[str],
        dim: int,
        scale: float = 0.3,
        ridge: float = 30.0,
        bias_ridge: float = 0.01,
        propensity: str = "quadrature",
        n_draws: int = 1000,
        seed: int = 0,
    ) -> None:
        if scale < 0:
            raise ValueError(f"lin_ts: scale must be >= 0, got {scale}")
        if propensity not in ("quadrature", "mc"):
            raise ValueError(f"lin_ts: propensity must be 'quadrature' or 'mc', got {propensity!r}")
        if n_draws < 1:
            raise ValueError(f"lin_ts: n_draws must be >= 1, got {n_draws}")
        super().__init__(models, dim, ridge=ridge, bias_ridge=bias_ridge)
        self.scale = float(scale)
        self.propensity = propensity
        self.n_draws = int(n_draws)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    def score_distribution(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sd), each (B, K): the posterior of every model's reward at contexts x (B, d)."""
        mean = self.mean_scores(x, cost_weight=cost_weight, latency_weight=latency_weight)
        norm = np.sqrt(1.0 + cost_weight**2 + latency_weight**2)
        return mean, self.scale * norm * self.widths(add_bias(x))[0]

    def probs(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        if not explore or self.scale == 0:  # greedy: the means only, no posterior widths
            return greedy_probs(self.mean_scores(x, cost_weight=cost_weight, latency_weight=latency_weight))
        mean, sd = self.score_distribution(x, cost_weight=cost_weight, latency_weight=latency_weight)
        if self.propensity == "mc":
            return mc_argmax_probabilities(mean, sd, n_draws=self.n_draws, rng=self.rng)
        return argmax_probabilities(mean, sd)

    def sample(self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0) -> np.ndarray:
        """(B,) actions of plain Thompson sampling (one posterior draw per decision), from the own generator."""
        mean, sd = self.score_distribution(x, cost_weight=cost_weight, latency_weight=latency_weight)
        return thompson_draw(mean, sd, self.rng)

    def config(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            **super().config(),
            "propensity": self.propensity,
            "n_draws": self.n_draws,
            "seed": self.seed,
        }
