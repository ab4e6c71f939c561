"""Neural-linear Thompson sampling: a shared MLP representation with Bayesian linear heads per model.

The MLP of :mod:`router_rl.policies.mlp` (3K outputs: quality, normalised cost and latency of every model) is
trained periodically on the replay buffer of observed (context, model) -> outcome cells, with the masked loss
(from its seeded initialisation, on the per-cell means of each distinct context, weighted by their counts).
Its last hidden layer phi(x) is the representation; on top of it every model keeps the Bayesian linear
regression of :mod:`router_rl.policies.ridge` (separate quality, cost and latency heads sharing one design),
refitted on the whole buffer after each retraining and updated by Woodbury in between. Their design
A_k = R + sum_i n_ik phi_i phi_i^T counts every observation (a cell mean weighs as many observations as it
holds). Their mean is, with ``head_mean: network`` (default), the trained output layer itself (a Laplace-style
Bayesian last layer: the network's prediction, with the heads' posterior covariance for exploration; b = A
theta_net, so feedback between retrainings moves it as usual), or with ``head_mean: refit`` the ridge
regression on phi refitted from the buffer (the original neural-linear algorithm of Riquelme, Tucker and Snoek,
2018, "Deep Bayesian bandits showdown"). Decisions are linear Thompson sampling on phi(x) with the exact
propensities of :mod:`router_rl.policies.thompson`.

``fit`` (full information) trains the representation and the heads on the given tables, a supervised prior
that bandit feedback then keeps refining (warm start as in PILOT). Device: the MLP runs on ``device`` (``auto``
= cuda when available); the heads are small (K x (h+1)^2) and stay in numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from router_rl.policies import torch_mlp as tm
from router_rl.policies.base import greedy_probs
from router_rl.policies.mlp import MLPRouter
from router_rl.policies.ridge import RidgeArms, add_bias
from router_rl.policies.thompson import argmax_probabilities, mc_argmax_probabilities


class NeuralLinearTS(MLPRouter):
    """Neural-linear Thompson sampling over models.

    Args:
        models: arm names, in order.
        dim: context dimension d.
        hidden: hidden layer sizes; the last one is the representation the linear heads use.
        scale: posterior scale of the linear heads (0 = greedy on their means).
        ridge: prior precision of the heads' representation weights.
        bias_ridge: prior precision of the heads' constant feature.
        head_mean: ``network`` (the trained output layer) or ``refit`` (ridge on phi from the buffer).
        propensity: ``quadrature`` or ``mc`` (see :mod:`router_rl.policies.thompson`).
        n_draws: Monte Carlo draws when ``propensity: mc``.
        epochs, train_every, batch_size, lr, weight_decay, buffer_size, device, seed: as
            :class:`router_rl.policies.mlp.MLPRouter`.
    """

    name = "neural_ts"
    supervised = False  # a bandit: learns from feedback (``fit`` is an optional supervised prior)

    def __init__(
        self,
        models: list[str],
        dim: int,
        hidden: list[int] | tuple[int, ...] = (128,),
        scale: float = 1.0,
        ridge: float = 1.0,
        bias_ridge: float = 0.01,
        head_mean: str = "network",
        propensity: str = "quadrature",
        n_draws: int = 1000,
        epochs: int = 30,
        train_every: int = 2000,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 1e-3,
        buffer_size: int = 100_000,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        if scale < 0 or propensity not in ("quadrature", "mc") or n_draws < 1:
            raise ValueError(
                f"neural_ts: need scale >= 0, propensity quadrature|mc, n_draws >= 1; got {scale}, {propensity!r}, {n_draws}"
            )
        super().__init__(
            models,
            dim,
            hidden=hidden,
            epochs=epochs,
            train_every=train_every,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            epsilon=0.0,
            buffer_size=buffer_size,
            device=device,
            seed=seed,
        )
        if head_mean not in ("network", "refit"):
            raise ValueError(f"neural_ts: head_mean must be 'network' or 'refit', got {head_mean!r}")
        self.scale, self.propensity, self.n_draws = float(scale), propensity, int(n_draws)
        self.head_mean = head_mean
        self.heads = RidgeArms(self.models, self.hidden[-1], ridge=ridge, bias_ridge=bias_ridge)
        self.rng = np.random.default_rng(self.seed)

    def features(self, x: np.ndarray) -> np.ndarray:
        """(B, h) the representation phi(x): the MLP's last hidden layer (after its ReLU)."""
        return tm.forward_numpy(self.net, np.asarray(x), self.device, upto=len(self.net) - 1)

    def estimates(self, x: np.ndarray) -> np.ndarray:
        """(3, B, K) posterior-mean quality, normalised cost and latency from the linear heads."""
        return self.heads.estimates(self.features(x))

    def score_distribution(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sd), each (B, K): the posterior of every model's reward at contexts x."""
        phi = self.features(x)
        mean = self.heads.mean_scores(phi, cost_weight=cost_weight, latency_weight=latency_weight)
        norm = np.sqrt(1.0 + cost_weight**2 + latency_weight**2)
        return mean, self.scale * norm * self.heads.widths(add_bias(phi))[0]

    def probs(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        if not explore or self.scale == 0:  # greedy: the heads' means only, no posterior widths
            phi = self.features(x)
            return greedy_probs(
                self.heads.mean_scores(phi, cost_weight=cost_weight, latency_weight=latency_weight)
            )
        mean, sd = self.score_distribution(x, cost_weight=cost_weight, latency_weight=latency_weight)
        if self.propensity == "mc":
            return mc_argmax_probabilities(mean, sd, n_draws=self.n_draws, rng=self.rng)
        return argmax_probabilities(mean, sd)

    # -------------------------------------------------------------------------------------- learning
    def _after_update(self, x: np.ndarray, actions: np.ndarray, y: np.ndarray) -> None:
        self.heads._observe(add_bias(self.features(x)), actions, y)

    def _retrain(self, on_epoch: Callable[[int], Any] | None = None) -> None:
        super()._retrain(on_epoch)
        self._refit_heads()

    def _refit_heads(self) -> None:
        """Exact Bayesian linear regression of every model's heads on phi over the whole buffer."""
        fresh = RidgeArms(
            self.models, self.hidden[-1], ridge=self.heads.ridge, bias_ridge=self.heads.bias_ridge
        )
        if len(self.buf_x):
            phi = add_bias(self.features(self.buf_x))
            mean, seen = self.cell_means()
            for k in range(len(self.models)):
                rows = np.flatnonzero(seen[:, k])
                if len(rows):  # every observation of a cell counts: weight = count, target = cell mean
                    fresh._observe(
                        phi[rows], np.full(len(rows), k), mean[rows, k], weight=self.buf_cnt[rows, k]
                    )
        if self.head_mean == "network" and self.n_trainings > 0:
            theta = self.network_heads()
            fresh.b = np.einsum("kij,khj->khi", np.linalg.inv(fresh.a_inv), theta)  # b = A theta
            fresh._theta = theta
        self.heads = fresh

    def network_heads(self) -> np.ndarray:
        """(K, 3, h + 1) the trained output layer as linear heads on [phi, 1], in raw (unstandardised) units."""
        layer = self.net[-1]
        w = layer.weight.detach().double().cpu().numpy() * self.col_sd[:, None]  # (3K, h)
        c = layer.bias.detach().double().cpu().numpy() * self.col_sd + self.col_mean  # (3K,)
        theta = np.concatenate([w, c[:, None]], axis=1)  # (3K, h + 1), head-major
        return theta.reshape(tm.HEADS, len(self.models), -1).transpose(1, 0, 2)

    # ------------------------------------------------------------------------------------ the catalog
    def add_model(self, name: str) -> None:
        """Append model ``name``: zero output row in the MLP and a linear head at its prior."""
        super().add_model(name)
        self.heads.add_model(name)

    def remove_model(self, name: str) -> None:
        """Drop model ``name`` from the MLP outputs, the buffer and the linear heads."""
        super().remove_model(name)
        self.heads.remove_model(name)

    # --------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        heads = {f"heads.{k}": v for k, v in self.heads.state_dict().items()}
        return {**super().state_dict(), **heads}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        super().load_state_dict(state)
        self.heads.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("heads.")})

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        del cfg["epsilon"]
        return {
            **cfg,
            "scale": self.scale,
            "ridge": self.heads.ridge,
            "bias_ridge": self.heads.bias_ridge,
            "head_mean": self.head_mean,
            "propensity": self.propensity,
            "n_draws": self.n_draws,
        }
