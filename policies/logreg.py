"""Per-model logistic regression of quality on the query embedding: the supervised yardstick.

The baseline a contextual router has to beat before its exploration machinery matters: for every model k, a
logistic regression of the (graded, so fractional) quality on the embedding, fitted on full information
(every model's outcome on every training prompt), with ridge regressions for the cost and latency heads:

    q_hat_k(x) = sigmoid(x.beta_k + beta0_k),   beta_k = argmin sum_i CE(y_ik, sigmoid(.)) + ||beta||^2 / (2 C)
    c_hat_k(x) = [x, 1].theta_k^c,  l_hat_k(x) = [x, 1].theta_k^l   (ridge with prior precision ``cost_ridge``)

CE is the cross-entropy with soft labels (the Bernoulli log-likelihood, which a 0/1 grade makes the usual
logistic regression; sklearn's ``LogisticRegression(C=C)`` for 0/1 labels); the intercept is not penalised.
Decisions are greedy on ``q_hat - w c_hat - lambda l_hat`` for any cost weight w. Fitted by L-BFGS (scipy).
Bandit feedback (``update``) is remembered and the heads are refitted every ``train_every`` observations on
the observed cells, so it also runs (epsilon-greedy) in the bandit loop; as a yardstick it is ``fit`` once.
It has no linear serving form (the sigmoid), so it is not exported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router_rl.policies.base import check_batch, check_model_change, greedy_probs
from router_rl.policies.ridge import add_bias, stack_heads


def fit_logistic(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray, c: float, *, max_iter: int = 500
) -> np.ndarray:
    """Soft-label logistic regression with an unpenalised intercept.

    Args:
        x: (N, d) inputs; y: (N,) targets in [0, 1]; weight: (N,) observation weights (counts, 0 = unused).
        c: inverse L2 strength: the penalty is ``||beta||^2 / (2 c)`` on the summed weighted loss.
    Returns:
        (d + 1,) ``[beta, beta0]``.
    """
    from scipy.optimize import minimize

    xb = add_bias(x)
    t = np.clip(np.asarray(y, dtype=np.float64), 0.0, 1.0)
    wt = np.asarray(weight, dtype=np.float64)
    mean = float((wt * t).sum() / max(wt.sum(), 1e-12))
    start = np.zeros(xb.shape[1])
    start[-1] = np.log(np.clip(mean, 1e-3, 1 - 1e-3) / (1 - np.clip(mean, 1e-3, 1 - 1e-3)))

    def loss_grad(beta: np.ndarray) -> tuple[float, np.ndarray]:
        z = xb @ beta
        p = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid, overflow-free
        loss = float(np.sum(wt * (np.logaddexp(0.0, z) - t * z))) + 0.5 / c * float(beta[:-1] @ beta[:-1])
        grad = xb.T @ (wt * (p - t))
        grad[:-1] += beta[:-1] / c
        return loss, grad

    res = minimize(loss_grad, start, jac=True, method="L-BFGS-B", options={"maxiter": int(max_iter)})
    return res.x


def fit_ridge(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray, ridge: float, bias_ridge: float
) -> np.ndarray:
    """Weighted ridge regression on ``[x, 1]``: (d + 1,) ``(X^T W X + R)^{-1} X^T W y``."""
    xb = add_bias(x)
    prior = np.full(xb.shape[1], float(ridge))
    prior[-1] = float(bias_ridge)
    a = xb.T @ (weight[:, None] * xb) + np.diag(prior)
    return np.linalg.solve(a, xb.T @ (weight * np.asarray(y, dtype=np.float64)))


class LogisticRouter:
    """Per-model logistic quality heads and ridge cost/latency heads, fitted on full information.

    Args:
        models: arm names, in order.
        dim: context dimension d.
        C: inverse L2 strength of the logistic regressions (sklearn's convention; tuned on arena).
        cost_ridge: prior precision of the cost and latency ridge heads' embedding weights.
        epsilon: exploration rate while learning from bandit feedback (``explore=True``).
        train_every: with bandit feedback, refit after this many observations.
    """

    name = "logreg"
    supervised = True  # a yardstick: fitted on the training prompts' full outcome tables in comparisons

    def __init__(
        self,
        models: list[str],
        dim: int,
        C: float = 1.0,
        cost_ridge: float = 10.0,
        epsilon: float = 0.1,
        train_every: int = 2000,
    ) -> None:
        if not C > 0 or not cost_ridge > 0 or not 0.0 <= epsilon <= 1.0 or int(train_every) < 1:
            raise ValueError(
                f"logreg: need C > 0, cost_ridge > 0, epsilon in [0, 1], train_every >= 1; "
                f"got {C}, {cost_ridge}, {epsilon}, {train_every}"
            )
        self.models, self.dim = list(models), int(dim)
        self.C, self.cost_ridge, self.epsilon = float(C), float(cost_ridge), float(epsilon)
        self.train_every = int(train_every)
        self.weights = np.zeros((len(self.models), 3, self.dim + 1))  # logit, cost, latency weights on [x, 1]
        self._x: list[np.ndarray] = []
        self._arm: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self.since_fit = 0

    # ------------------------------------------------------------------------------------- estimates
    def estimates(self, x: np.ndarray) -> np.ndarray:
        """(3, B, K) predicted quality (sigmoid of the logit head), normalised cost and latency."""
        z = np.einsum("bd,khd->hbk", add_bias(np.asarray(x)), self.weights)
        z[0] = 0.5 * (1.0 + np.tanh(0.5 * z[0]))
        return z

    def probs(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        q, c, lat = self.estimates(x)
        greedy = greedy_probs(q - cost_weight * c - latency_weight * lat)
        if not explore:
            return greedy
        return (1.0 - self.epsilon) * greedy + self.epsilon / len(self.models)

    # -------------------------------------------------------------------------------------- learning
    def fit(self, x, quality, cost, latency) -> LogisticRouter:
        """Full-information fit on (N, d) contexts and (N, K) outcome tables (cost in cost_usd / cost_scale);
        NaN cells are unobserved. Replaces what bandit feedback had added."""
        x = np.asarray(x, dtype=np.float64)
        y = stack_heads(quality, cost, latency)
        if x.ndim != 2 or y.shape[:2] != (x.shape[0], len(self.models)):
            raise ValueError(
                f"logreg: fit needs x (N, d) and (N, K={len(self.models)}) tables, got {x.shape} and {y.shape[:2]}"
            )
        self._x, self._arm, self._y = [], [], []
        self._fit_tables(x, y, np.isfinite(y).all(axis=2).astype(np.float64))
        return self

    def _fit_tables(self, x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> None:
        """Fit every model's heads on x (N, d), y (N, K, 3) with cell weights (N, K) (0 = unobserved)."""
        y = np.where(np.isfinite(y), y, 0.0)
        for k in range(len(self.models)):
            w = weight[:, k]
            if not (w > 0).any():
                continue
            self.weights[k, 0] = fit_logistic(x, y[:, k, 0], w, self.C)
            for head in (1, 2):
                self.weights[k, head] = fit_ridge(x, y[:, k, head], w, self.cost_ridge, 0.01)
        self.since_fit = 0

    def update(self, x, actions, quality, cost, latency) -> None:
        """Remember the revealed cells; refit every ``train_every`` observations."""
        x = np.asarray(x, dtype=np.float64)
        actions = check_batch(self, x, actions, quality, cost, latency)
        self._x.append(x)
        self._arm.append(actions)
        self._y.append(stack_heads(quality, cost, latency))
        self.since_fit += len(actions)
        if self.since_fit >= self.train_every:
            xs, arms, ys = np.concatenate(self._x), np.concatenate(self._arm), np.concatenate(self._y)
            table = np.zeros((len(xs), len(self.models), 3))
            table[np.arange(len(xs)), arms] = ys
            weight = np.zeros((len(xs), len(self.models)))
            weight[np.arange(len(xs)), arms] = 1.0
            self._fit_tables(xs, table, weight)

    # ------------------------------------------------------------------------------------ the catalog
    def add_model(self, name: str) -> None:
        """Append model ``name`` with zero weights (quality 1/2, cost 0) until it is refitted."""
        check_model_change(self, name, adding=True)
        self.models.append(name)
        self.weights = np.concatenate([self.weights, np.zeros((1, 3, self.dim + 1))])

    def remove_model(self, name: str) -> None:
        k = check_model_change(self, name, adding=False)
        self.models.pop(k)
        self.weights = np.delete(self.weights, k, axis=0)
        keep = [a != k for a in self._arm]
        self._x = [x[m] for x, m in zip(self._x, keep, strict=True)]
        self._y = [y[m] for y, m in zip(self._y, keep, strict=True)]
        self._arm = [np.where(a[m] > k, a[m] - 1, a[m]) for a, m in zip(self._arm, keep, strict=True)]

    # --------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        """The fitted heads (the bandit-feedback memory is not part of the state)."""
        return {"weights": self.weights.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        shape = (len(self.models), 3, self.dim + 1)
        if "weights" not in state or tuple(np.shape(state["weights"])) != shape:
            raise ValueError(f"logreg state: 'weights' must have shape {shape}")
        self.weights = np.asarray(state["weights"], dtype=np.float64).copy()

    def config(self) -> dict[str, Any]:
        return {
            "C": self.C,
            "cost_ridge": self.cost_ridge,
            "epsilon": self.epsilon,
            "train_every": self.train_every,
        }
