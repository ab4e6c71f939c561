"""Per-model ridge regressions with separate quality, cost and latency heads: the core of the linear bandits.

Each model (arm) k keeps a ridge regression over the context x (the query embedding plus a constant feature):

    A_k = R + sum_t w_t x_t x_t^T,   R = diag(ridge, ..., ridge, bias_ridge),
    b_k^{(h)} = sum_t w_t y_t^{(h)} x_t,   theta_k^{(h)} = A_k^{-1} b_k^{(h)}

for the three heads h in (quality, cost / cost_scale, latency); w_t = 1 for real feedback and the warm-start
weight for pseudo-observations. The heads share A_k (same design), so one inverse serves them, and A_k^{-1} is
updated with the Woodbury identity (Sherman-Morrison for one row), never re-inverted, except when a batch has
more rows than dimensions (then the direct inverse is cheaper). Read as Bayesian linear regression with prior
theta ~ N(0, s^2 R^{-1}) and noise variance s^2, the posterior of theta_k^{(h)} is N(theta_k^{(h)}, s^2 A_k^{-1}):
LinUCB, linear Thompson sampling and epsilon-greedy differ only in how they explore around it.

Arms are model names: :meth:`RidgeArms.add_model` appends an arm at its prior (A = R, b = 0) and
:meth:`RidgeArms.remove_model` drops one arm's state, so the catalog changes without retraining.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router_rl.policies.base import check_batch, check_model_change
from router_rl.policies.bonus import WidthCache

HEADS = ("quality", "cost", "latency")


def add_bias(x: np.ndarray) -> np.ndarray:
    """(B, d) -> (B, d + 1) with a trailing constant 1 feature."""
    x = np.asarray(x, dtype=np.float64)
    return np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)


def woodbury_update(a_inv: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Inverse of ``A + X^T X`` from ``A^{-1}`` (D, D) and the new rows ``X`` (n, D).

    (A + X^T X)^{-1} = A^{-1} - A^{-1} X^T (I_n + X A^{-1} X^T)^{-1} X A^{-1}; for n = 1 this is
    Sherman-Morrison.
    """
    ax = a_inv @ x.T  # (D, n)
    inner = np.eye(x.shape[0]) + x @ ax  # (n, n)
    return a_inv - ax @ np.linalg.solve(inner, ax.T)


def add_rows_to_inverse(a_inv: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``(A + X^T X)^{-1}``: Woodbury for n <= D new rows, a direct (symmetrised) inverse for larger batches."""
    if x.shape[0] <= x.shape[1]:
        return woodbury_update(a_inv, x)
    a = np.linalg.inv(a_inv) + x.T @ x
    inv = np.linalg.inv(a)
    return 0.5 * (inv + inv.T)


def add_rows_in_place(a_inv: np.ndarray, x: np.ndarray) -> None:
    """Overwrite the C-contiguous symmetric ``a_inv`` (D, D) with ``(A + X^T X)^{-1}``, as
    :func:`add_rows_to_inverse` but without temporaries of size D^2: with ``C C^T = I_n + X A^{-1} X^T``
    (Cholesky) and ``Z = C^{-1} X A^{-1}``, Woodbury reads ``A^{-1} - Z^T Z``, one in-place BLAS rank-n update."""
    from scipy.linalg import blas, solve_triangular

    n, d = x.shape
    if n > d or not a_inv.flags.c_contiguous:
        a_inv[...] = add_rows_to_inverse(a_inv, x)
        return
    ax = a_inv @ x.T  # (D, n)
    chol = np.linalg.cholesky(np.eye(n) + x @ ax)
    z = solve_triangular(chol, ax.T, lower=True, check_finite=False)  # (n, D)
    # a_inv.T is the Fortran view BLAS updates in place; a_inv is symmetric, so a_inv.T -= Z^T Z is a_inv -= Z^T Z
    blas.dgemm(-1.0, z, z, beta=1.0, c=a_inv.T, trans_a=1, overwrite_c=1)


def posterior_width(x: np.ndarray, a_inv: np.ndarray) -> np.ndarray:
    """sqrt(x^T A_k^{-1} x) for contexts (B, D) and inverses (K, D, D) -> (B, K)."""
    quad = np.einsum("kbj,bj->bk", x[None] @ a_inv, x)  # one batched matmul per arm, no (B, K, D, D) temp
    return np.sqrt(np.maximum(quad, 0.0))


def prior_precision(dim: int, ridge: float, bias_ridge: float) -> np.ndarray:
    """(d + 1,) diagonal of R: ``ridge`` on the embedding weights, ``bias_ridge`` on the constant."""
    prior = np.full(dim + 1, float(ridge))
    prior[-1] = float(bias_ridge)
    return prior


def stack_heads(quality: Any, cost: Any, latency: Any) -> np.ndarray:
    """Targets (..., ) x 3 -> (..., 3) in HEADS order."""
    return np.stack([np.asarray(v, dtype=np.float64) for v in (quality, cost, latency)], axis=-1)


class RidgeArms:
    """Shared state and learning of the linear bandits (LinUCB, linear TS, epsilon-greedy).

    Subclasses add the exploration rule (``probs``) and their own constructor arguments.

    Args:
        models: arm names, in order.
        dim: context dimension d (the embedding size; a constant feature is added).
        ridge: prior precision of the embedding weights of every head.
        bias_ridge: prior precision of the constant feature (each model's mean).
    """

    name = "ridge"

    def __init__(self, models: list[str], dim: int, ridge: float = 1.0, bias_ridge: float = 0.01) -> None:
        if ridge <= 0 or bias_ridge <= 0:
            raise ValueError(f"{self.name}: ridge and bias_ridge must be > 0, got {ridge} and {bias_ridge}")
        self.models = list(models)
        self.dim = int(dim)
        self.ridge = float(ridge)
        self.bias_ridge = float(bias_ridge)
        k, d1 = len(self.models), self.dim + 1
        self.a_inv = np.tile(np.diag(1.0 / self._prior()), (k, 1, 1))
        self.b = np.zeros((k, len(HEADS), d1))
        self.counts = np.zeros(k)
        self._theta = np.zeros((k, len(HEADS), d1))
        self._width_cache: WidthCache | None = None

    def _prior(self) -> np.ndarray:
        return prior_precision(self.dim, self.ridge, self.bias_ridge)

    # ------------------------------------------------------------------------------------- estimates
    def theta(self) -> np.ndarray:
        """(K, 3, D) ridge estimates for the quality, cost and latency heads (kept current by ``update``)."""
        return self._theta

    def estimates(self, x: np.ndarray) -> np.ndarray:
        """(3, B, K) predicted quality, normalised cost and latency of every model for contexts (B, d)."""
        theta = self.theta()
        k, h, d1 = theta.shape
        return (add_bias(x) @ theta.reshape(k * h, d1).T).reshape(-1, k, h).transpose(2, 0, 1)

    def mean_scores(self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0) -> np.ndarray:
        """(B, K) estimated reward ``q - w c - lambda l`` of every model."""
        q, c, lat = self.estimates(x)
        return q - cost_weight * c - latency_weight * lat

    def widths(self, xb: np.ndarray, *, float32: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(w, err)``, each (B, K): ``sqrt(x^T A_k^{-1} x)`` of contexts ``xb`` (B, d + 1) (bias included) and
        a bound on its error, from cached triangular factors (:class:`router_rl.policies.bonus.WidthCache`)."""
        if getattr(self, "_width_cache", None) is None:
            self._width_cache = WidthCache(threads=getattr(self, "threads", 1))
        return self._width_cache.widths(xb, self.a_inv, float32=float32)

    # -------------------------------------------------------------------------------------- learning
    def update(self, x, actions, quality, cost, latency) -> None:
        x = np.asarray(x)
        actions = check_batch(self, x, actions, quality, cost, latency)
        self._observe(add_bias(x), actions, stack_heads(quality, cost, latency))

    def _observe(
        self,
        xb: np.ndarray,
        actions: np.ndarray,
        y: np.ndarray,
        weight: float | np.ndarray = 1.0,
        count: bool = True,
    ) -> None:
        """Add rows ``xb`` (n, D) with targets ``y`` (n, 3) to the arms ``actions`` (n,), with ``weight`` (a
        scalar or (n,)): A_k += sum w x x^T, b_k += sum w y x; ``count`` adds the weights to ``counts``."""
        w = np.broadcast_to(np.asarray(weight, dtype=np.float64), actions.shape)
        if not self.a_inv.flags.c_contiguous:
            self.a_inv = np.ascontiguousarray(self.a_inv)
        for k in np.unique(actions):
            rows = np.flatnonzero(actions == k)
            xk, wk = xb[rows], w[rows]
            add_rows_in_place(self.a_inv[k], np.sqrt(wk)[:, None] * xk)
            self.b[k] += (wk[:, None] * y[rows]).T @ xk
            if count:
                self.counts[k] += wk.sum()
            self._theta[k] = self.b[k] @ self.a_inv[k]  # A^{-1} is symmetric

    def warm_start(self, x, quality, cost, latency, weight: float = 1.0) -> None:
        """Start from a supervised prior: every (prompt, model) cell becomes a pseudo-observation.

        Args:
            x: (N, d) contexts.
            quality, cost, latency: (N, K) full-information outcomes (cost in the ``update`` unit, cost_usd /
                cost_scale), or another router's predictions of them (see :meth:`warm_start_from`).
            weight: weight of each pseudo-observation relative to one real observation (0 < weight; 1 means
                "as if observed once", 0.1 a weak prior that online feedback soon overrides).
        Pseudo-observations do not count in ``counts`` (real feedback only).
        """
        if not weight > 0:
            raise ValueError(f"{self.name}: warm_start weight must be > 0, got {weight}")
        xb = add_bias(np.asarray(x))
        y = stack_heads(quality, cost, latency)  # (N, K, 3)
        if y.shape[:2] != (xb.shape[0], len(self.models)):
            raise ValueError(
                f"{self.name}: warm_start needs (N, K) = ({xb.shape[0]}, {len(self.models)}) outcome tables, "
                f"got {y.shape[:2]}"
            )
        for k in range(len(self.models)):
            ok = np.isfinite(y[:, k]).all(axis=1)
            if ok.any():
                self._observe(xb[ok], np.full(int(ok.sum()), k), y[ok, k], weight=float(weight), count=False)

    def warm_start_from(self, policy: Any, x: np.ndarray, weight: float = 1.0) -> None:
        """Warm start from another router's predictions (``policy.estimates(x)`` -> (3, N, K)) on contexts x."""
        quality, cost, latency = policy.estimates(np.asarray(x))
        if list(getattr(policy, "models", self.models)) != self.models:
            raise ValueError(f"{self.name}: warm_start_from needs the same models in the same order")
        self.warm_start(x, quality, cost, latency, weight=weight)

    # ------------------------------------------------------------------------------------ the catalog
    def add_model(self, name: str) -> None:
        """Append arm ``name`` at its prior (A = R, b = 0); the other arms keep what they learned."""
        check_model_change(self, name, adding=True)
        d1 = self.dim + 1
        self.models.append(name)
        self.a_inv = np.concatenate([self.a_inv, np.diag(1.0 / self._prior())[None]])
        self.b = np.concatenate([self.b, np.zeros((1, len(HEADS), d1))])
        self.counts = np.append(self.counts, 0.0)
        self._theta = np.concatenate([self._theta, np.zeros((1, len(HEADS), d1))])

    def remove_model(self, name: str) -> None:
        """Drop arm ``name`` and its state; the other arms are unchanged."""
        k = check_model_change(self, name, adding=False)
        self.models.pop(k)
        self.a_inv, self.b, self.counts, self._theta = (
            np.delete(a, k, axis=0) for a in (self.a_inv, self.b, self.counts, self._theta)
        )

    # --------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        return {"a_inv": self.a_inv.copy(), "b": self.b.copy(), "counts": self.counts.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        k, d1 = len(self.models), self.dim + 1
        expected = {"a_inv": (k, d1, d1), "b": (k, len(HEADS), d1), "counts": (k,)}
        for key, shape in expected.items():
            if key not in state or tuple(state[key].shape) != shape:
                got = None if key not in state else tuple(state[key].shape)
                raise ValueError(f"{self.name} state: {key!r} must have shape {shape}, got {got}")
        self.a_inv = np.asarray(state["a_inv"], dtype=np.float64).copy()
        self.b = np.asarray(state["b"], dtype=np.float64).copy()
        self.counts = np.asarray(state["counts"], dtype=np.float64).copy()
        self._theta = np.einsum("kij,khj->khi", self.a_inv, self.b)

    def config(self) -> dict[str, Any]:
        return {"ridge": self.ridge, "bias_ridge": self.bias_ridge}

    def linear_head(self) -> dict[str, np.ndarray]:
        """The serving form: per-head weights (K, D) on [x, 1] and the inverse design for the bonus."""
        theta = self.theta()
        return {
            "theta_quality": theta[:, 0],
            "theta_cost": theta[:, 1],
            "theta_latency": theta[:, 2],
            "a_inv": self.a_inv,
        }
