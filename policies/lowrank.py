"""Linear bandits that share strength across models: per-model ridge heads shrunk toward a low-rank prior.

The disjoint ridge regressions of :mod:`router_rl.policies.ridge` learn every model's quality, cost and
latency head from that model's observations only; with 16 models and a few hundred prompts each head sees
little. Their slopes are related, though: a hard prompt lowers every model's grade (weak models' more), a
prompt asking for a long answer raises every model's cost (by its price). Here each head's prior mean is a
rank-r factorisation shared by the models, learned from all of them:

    theta_k^{(h)} ~ N(m_k^{(h)}, s^2 R^{-1}),   [m_1^{(h)} .. m_K^{(h)}] = V^{(h)} U^{(h)}   (D x r)(r x K)

(weights only; every model keeps its own intercept), so the posterior mean is

    theta_k^{(h)} = A_k^{-1} (b_k^{(h)} + R m_k^{(h)}),   A_k = R + sum_t x_t x_t^T   (as in RidgeArms).

V and U are fitted from the sufficient statistics alone by alternating minimisation of
``sum_k ||y_k - X_k theta_k||^2 + (theta_k - m_k)^T R (theta_k - m_k)`` over theta (the formula above) and
over the rank-r m (a truncated SVD of the current weights, :func:`lowrank_prior`): a reduced-rank
multi-task ridge regression (Evgeniou and Pontil, 2004, "Regularized multi-task learning"; rank r as in
Ando and Zhang, 2005). The prior is refitted every ``refit_every`` observations and after a warm start; in
between, feedback updates A_k^{-1} by Woodbury as usual with the prior held fixed. With rank 0 this is the
plain disjoint model. The posterior covariance is the disjoint one (s^2 A_k^{-1}), so exploration
(UCB bonus, Thompson draws) and the serving form (``linear_head``: weights and A^{-1}) are unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router_rl.policies.linucb import LinUCB
from router_rl.policies.ridge import HEADS
from router_rl.policies.thompson import LinTS


def lowrank_prior(
    a_inv: np.ndarray, b: np.ndarray, prior: np.ndarray, rank: int, *, iters: int = 20
) -> np.ndarray:
    """Rank-``rank`` prior means of every head by alternating minimisation.

    Args:
        a_inv: (K, D, D) posterior inverses ``(R + X_k^T X_k)^{-1}`` (bias last).
        b: (K, H, D) ``X_k^T y_k^{(h)}`` per model and head.
        prior: (D,) the diagonal of R.
        rank: r >= 0, at most min(D - 1, K).
        iters: alternations (each: K H matrix-vector products and H SVDs of a (D - 1) x K matrix).
    Returns:
        (K, H, D) prior means m (bias entries 0). From m = 0: theta = A^{-1}(b + R m), then m = the rank-r
        truncated SVD of theta's weights (the Frobenius-nearest rank-r matrix, Eckart-Young), repeated.
    """
    k, h, d = b.shape
    m = np.zeros_like(b)
    if rank <= 0:
        return m
    r = min(int(rank), d - 1, k)
    for _ in range(int(iters)):
        theta = np.einsum("kij,khj->khi", a_inv, b + prior * m)  # A^{-1} symmetric
        for head in range(h):
            w = theta[:, head, :-1].T  # (D - 1, K)
            u, s, vt = np.linalg.svd(w, full_matrices=False)
            m[:, head, :-1] = ((u[:, :r] * s[:r]) @ vt[:r]).T
    return m


class LowRankPrior:
    """Mixin over :class:`~router_rl.policies.ridge.RidgeArms`: heads shrunk toward a shared rank-r prior.

    Keeps ``prior_b`` = R m (K, 3, D), added to ``b`` in every posterior mean. Arguments (besides the base
    policy's): ``rank`` (r; 0 = disjoint), ``refit_every`` (observations between refits of the prior),
    ``prior_iters`` (alternations per refit).
    """

    def _init_prior(self, rank: int, refit_every: int, prior_iters: int) -> None:
        if int(rank) < 0 or int(refit_every) < 1 or int(prior_iters) < 1:
            raise ValueError(
                f"{self.name}: need rank >= 0, refit_every >= 1, prior_iters >= 1; "
                f"got {rank}, {refit_every}, {prior_iters}"
            )
        self.rank, self.refit_every, self.prior_iters = int(rank), int(refit_every), int(prior_iters)
        self.prior_b = np.zeros_like(self.b)
        self.since_refit = 0

    def _observe(self, xb, actions, y, weight=1.0, count=True) -> None:
        super()._observe(xb, actions, y, weight=weight, count=count)
        for k in np.unique(actions):
            self._theta[k] = (self.b[k] + self.prior_b[k]) @ self.a_inv[k]
        self.since_refit += len(actions)
        if count and self.since_refit >= self.refit_every:
            self.refit_prior()

    def warm_start(self, x, quality, cost, latency, weight: float = 1.0) -> None:
        super().warm_start(x, quality, cost, latency, weight=weight)
        self.refit_prior()

    def refit_prior(self) -> None:
        """Refit the shared rank-r prior from the current statistics and recompute every head's mean."""
        self.since_refit = 0
        if self.rank == 0:
            return
        prior = self._prior()
        m = lowrank_prior(self.a_inv, self.b, prior, self.rank, iters=self.prior_iters)
        self.prior_b = prior * m
        self._theta = np.einsum("kij,khj->khi", self.a_inv, self.b + self.prior_b)

    # ------------------------------------------------------------------------------------ the catalog
    def add_model(self, name: str) -> None:
        """Append arm ``name`` at the disjoint prior (no shared mean until the next refit)."""
        super().add_model(name)
        self.prior_b = np.concatenate([self.prior_b, np.zeros((1, *self.prior_b.shape[1:]))])

    def remove_model(self, name: str) -> None:
        k = self.models.index(name) if name in self.models else None
        super().remove_model(name)
        if k is not None:
            self.prior_b = np.delete(self.prior_b, k, axis=0)

    # --------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            **super().state_dict(),
            "prior_b": self.prior_b.copy(),
            "since_refit": np.array([self.since_refit], dtype=np.int64),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        super().load_state_dict(state)
        shape = (len(self.models), len(HEADS), self.dim + 1)
        if "prior_b" not in state or tuple(np.shape(state["prior_b"])) != shape:
            raise ValueError(f"{self.name} state: 'prior_b' must have shape {shape}")
        self.prior_b = np.asarray(state["prior_b"], dtype=np.float64).copy()
        self.since_refit = int(np.asarray(state.get("since_refit", [0]))[0])
        self._theta = np.einsum("kij,khj->khi", self.a_inv, self.b + self.prior_b)

    def prior_config(self) -> dict[str, Any]:
        return {"rank": self.rank, "refit_every": self.refit_every, "prior_iters": self.prior_iters}


class LowRankLinUCB(LowRankPrior, LinUCB):
    """LinUCB (:class:`~router_rl.policies.linucb.LinUCB`) whose heads share a rank-r prior across models.

    Args:
        models, dim, alpha, ridge, bias_ridge, threads: as LinUCB.
        rank: rank of the shared prior of each head (0: plain LinUCB).
        refit_every: observations between refits of the prior.
        prior_iters: alternations per refit.
    """

    name = "lowrank_linucb"

    def __init__(
        self,
        models: list[str],
        dim: int,
        alpha: float = 1.0,
        ridge: float = 100.0,
        bias_ridge: float = 0.01,
        rank: int = 1,
        refit_every: int = 1000,
        prior_iters: int = 20,
        threads: int = 1,
    ) -> None:
        super().__init__(models, dim, alpha=alpha, ridge=ridge, bias_ridge=bias_ridge, threads=threads)
        self._init_prior(rank, refit_every, prior_iters)

    def config(self) -> dict[str, Any]:
        return {**super().config(), **self.prior_config()}


class LowRankLinTS(LowRankPrior, LinTS):
    """Linear Thompson sampling (:class:`~router_rl.policies.thompson.LinTS`) with a shared rank-r prior.

    Args:
        models, dim, scale, ridge, bias_ridge, propensity, n_draws, seed: as LinTS.
        rank, refit_every, prior_iters: as :class:`LowRankLinUCB`.
    """

    name = "lowrank_lin_ts"

    def __init__(
        self,
        models: list[str],
        dim: int,
        scale: float = 0.3,
        ridge: float = 100.0,
        bias_ridge: float = 0.01,
        rank: int = 1,
        refit_every: int = 1000,
        prior_iters: int = 20,
        propensity: str = "quadrature",
        n_draws: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__(
            models,
            dim,
            scale=scale,
            ridge=ridge,
            bias_ridge=bias_ridge,
            propensity=propensity,
            n_draws=n_draws,
            seed=seed,
        )
        self._init_prior(rank, refit_every, prior_iters)

    def config(self) -> dict[str, Any]:
        return {**super().config(), **self.prior_config()}
