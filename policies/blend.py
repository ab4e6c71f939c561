"""The low-rank LinUCB of :mod:`router_rl.policies.lowrank` blended with a supervised MLP prior.

A linear head on a sentence embedding misses what only a nonlinear function of the embedding carries (an MLP
on the same warm-start labels is the best single router on the tuning set); an MLP alone has no posterior to
explore with and no statistics to continue from. Here the estimate of every head (quality, normalised cost,
latency) of every model is the fixed convex blend

    f_k(x) = (1 - beta) * theta_k^T [x, 1] + beta * g_k(x)

of the low-rank LinUCB head theta_k and a one-network MLP g (:class:`router_rl.policies.mlp.MLPRouter`) fitted
once, at the warm start, on the same full-information rows. beta is a setting (0.5 by default), or (``mlp_weight: auto``)
chosen at the warm start by stacking: both parts are refitted on ``stack_folds`` folds of the
warm-start rows, and beta is the grid value (0, 0.1, ..., 1) whose blend of their out-of-fold predictions
routes the held-out rows best (Breiman, 1996, "Stacked regressions", with one weight constrained to [0, 1]
and the routing objective as the loss): ``stack_by: aiq`` (default) takes the blend's greedy choice on every
out-of-fold row at each cost weight of a 0 and 10^-3..10^3 sweep, and scores the sweep's (mean cost, mean
quality) points by their AIQ on the rows' recorded outcomes (:func:`router_rl.metrics.aiq`); ``stack_by:
mse`` takes the least squared error of the blended quality predictions instead. With ``stack_from`` (a weight,
0.5 in the default config) the choice starts there and moves only on evidence: the best-scoring grid value
(at most ``stack_max``) replaces it only when the paired bootstrap over the out-of-fold rows
(:func:`router_rl.metrics.paired_bootstrap_aiq`, or of the squared errors for ``mse``) puts its gain over
``stack_from`` above zero at ``stack_level``. A few hundred warm-start rows rarely clear that bar (the
out-of-fold scores of neighbouring weights differ by less than their noise), thousands do. Bandit feedback then moves the linear heads as in
:class:`~router_rl.policies.lowrank.LowRankLinUCB` (Woodbury updates, periodic refits of the shared prior);
the network stays as fitted, so learning online stays a bounded, inspectable linear update. Exploration is the
LinUCB bonus of the linear heads, scaled by their share: alpha (1 - beta) sqrt(x^T A_k^{-1} x).

Averaging a linear and a nonlinear regression fitted on the same rows is the simplest stacking (Breiman, 1996,
"Stacked regressions"): their errors are partly independent, so the blend's error is below the mean of theirs.
The serving form (``linear_head`` plus ``mlp_head``) is exported as the ``linear+mlp`` artifact kind and
computed there by :func:`router_rl.serve.artifact.linear_estimates` with the same formula. Without a warm start
the network predicts each head's average and the policy is LinUCB with shrunk estimates; use
``lowrank_linucb`` for that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router_rl.policies import torch_mlp as tm
from router_rl.policies.lowrank import LowRankLinUCB
from router_rl.policies.mlp import MLPRouter

STACK_BY = ("aiq", "mse")
STACK_GRID = np.round(np.linspace(0.0, 1.0, 11), 2)
STACK_SWEEP = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 41)])  # cost weights on normalised cost
MLP_DEFAULTS: dict[str, Any] = {
    "hidden": [128],
    "epochs": 30,
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 1e-3,
    "standardize": False,
}


def _sweep_outcomes(est: np.ndarray, quality: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W, N) recorded quality and cost of the greedy choices of estimates ``est`` (2, N, K: quality, cost)
    at every weight of :data:`STACK_SWEEP`, on the N rows whose every outcome is recorded (``quality``,
    ``cost`` (rows, K), cost normalised)."""
    rows = np.isfinite(quality).all(axis=1) & np.isfinite(cost).all(axis=1)
    q, c, eq, ec = quality[rows], cost[rows], est[0][rows], est[1][rows]
    picks = np.stack([np.argmax(eq - w * ec, axis=1) for w in STACK_SWEEP])  # (W, N)
    at = np.arange(len(q))[None, :]
    return q[at, picks], c[at, picks]


def _sweep_max_cost(cost: np.ndarray, *point_costs: np.ndarray) -> float:
    """The right end of the AIQ integral: the largest point cost or single model's mean cost (complete rows)."""
    full = cost[np.isfinite(cost).all(axis=1)]
    return float(max(max(float(p.mean(axis=1).max()) for p in point_costs), full.mean(axis=0).max()))


def _routing_aiq(est: np.ndarray, quality: np.ndarray, cost: np.ndarray) -> float:
    """AIQ of the greedy choices of estimates ``est`` (2, N, K: quality, cost) over :data:`STACK_SWEEP`, on
    the rows whose every outcome is recorded (``quality``, ``cost`` (N, K), cost normalised)."""
    from router_rl.metrics import aiq

    q, c = _sweep_outcomes(est, quality, cost)
    if q.shape[1] == 0:
        return 0.0
    return aiq(c.mean(axis=1), q.mean(axis=1), max_cost=_sweep_max_cost(cost, c))


class BlendLinUCB(LowRankLinUCB):
    """Low-rank LinUCB heads blended with an MLP fitted at the warm start.

    Args:
        models, dim, alpha, ridge, bias_ridge, rank, refit_every, prior_iters, threads: as
            :class:`~router_rl.policies.lowrank.LowRankLinUCB`.
        mlp_weight: beta, the network's share of every estimate (0 = plain low-rank LinUCB, 1 = the MLP), or
            ``"auto"``: chosen at the warm start by out-of-fold stacking (see the module docstring).
        stack_folds: folds of the warm-start rows for ``mlp_weight: auto`` (>= 2).
        stack_by: ``aiq`` or ``mse``, what ``mlp_weight: auto`` optimises (see the module docstring).
        stack_from: ``mlp_weight: auto`` keeps this weight unless the out-of-fold gain of the best grid value
            over it is significant (None: the best grid value, however small its lead).
        stack_max: the largest grid value ``mlp_weight: auto`` may choose (below 1 keeps the linear heads,
            which bandit feedback and ``router-rl learn`` move, a share).
        stack_level: the two-sided level of the bootstrap interval that must exclude zero.
        stack_boot: bootstrap resamples of that test.
        stack_epochs: with ``mlp_weight: auto``, also choose the network's passes over the data out of fold:
            the fold networks train for ``mlp.epochs`` passes, their held-out estimates are kept after every
            pass, each pass's estimates blended at the prior weight (``stack_from``, else one half) are scored
            by ``stack_by``, and the final network trains for the best-scoring number of passes (early stopping
            by cross-validation; the weight's stacking then scores those estimates).
        stack_repick: with ``stack_epochs``, when the weight moves from ``stack_from``, choose the passes again
            by the score of the blend at the weight moved to (the same per-pass estimates; no more training).
        mlp: the network's settings (``hidden``, ``epochs``, ``batch_size``, ``lr``, ``weight_decay``; see
            :class:`~router_rl.policies.mlp.MLPRouter`).
        device: where the network trains (``auto``: cuda when available).
        seed: seeds the network's initial weights and minibatch order.
    """

    name = "blend"

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
        mlp_weight: float | str = 0.5,
        stack_folds: int = 3,
        stack_by: str = "aiq",
        stack_from: float | None = None,
        stack_max: float = 1.0,
        stack_level: float = 0.95,
        stack_boot: int = 500,
        stack_epochs: bool = False,
        stack_repick: bool = False,
        mlp: dict[str, Any] | None = None,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__(
            models,
            dim,
            alpha=alpha,
            ridge=ridge,
            bias_ridge=bias_ridge,
            rank=rank,
            refit_every=refit_every,
            prior_iters=prior_iters,
            threads=threads,
        )
        self.auto_weight = isinstance(mlp_weight, str)
        if self.auto_weight and mlp_weight != "auto":
            raise ValueError(
                f"{self.name}: mlp_weight must be a number in [0, 1] or 'auto', got {mlp_weight!r}"
            )
        if not self.auto_weight and not 0.0 <= float(mlp_weight) <= 1.0:
            raise ValueError(f"{self.name}: mlp_weight must lie in [0, 1] or be 'auto', got {mlp_weight}")
        if stack_by not in STACK_BY:
            raise ValueError(f"{self.name}: stack_by must be one of {STACK_BY}, got {stack_by!r}")
        if int(stack_folds) < 2:
            raise ValueError(f"{self.name}: stack_folds must be >= 2, got {stack_folds}")
        if not 0.0 <= float(stack_max) <= 1.0:
            raise ValueError(f"{self.name}: stack_max must lie in [0, 1], got {stack_max}")
        if stack_from is not None and not 0.0 <= float(stack_from) <= float(stack_max):
            raise ValueError(
                f"{self.name}: stack_from must lie in [0, stack_max={stack_max}] or be null, got {stack_from}"
            )
        if not 0.0 < float(stack_level) < 1.0:
            raise ValueError(f"{self.name}: stack_level must lie in (0, 1), got {stack_level}")
        if int(stack_boot) < 10:
            raise ValueError(f"{self.name}: stack_boot must be >= 10 resamples, got {stack_boot}")
        unknown = sorted(set(mlp or {}) - set(MLP_DEFAULTS))
        if unknown:
            raise ValueError(
                f"{self.name}: unknown mlp setting(s) {unknown}; expected some of {sorted(MLP_DEFAULTS)}"
            )
        self.mlp_weight = 0.5 if self.auto_weight else float(mlp_weight)  # auto: set by the warm start
        self.stack_folds, self.stack_by = int(stack_folds), str(stack_by)
        self.stack_from = None if stack_from is None else float(stack_from)
        self.stack_max, self.stack_level = float(stack_max), float(stack_level)
        self.stack_boot, self.stack_epochs = int(stack_boot), bool(stack_epochs)
        self.stack_repick = bool(stack_repick)
        self.net_epochs: int | None = None  # stack_epochs: the passes chosen out of fold
        self.stacking: dict[str, Any] | None = None  # auto: the grid and its out-of-fold scores
        self.mlp_config = {**MLP_DEFAULTS, **dict(mlp or {})}
        self.mlp_config["hidden"] = [int(h) for h in self.mlp_config["hidden"]]
        self.device_name, self.seed = str(device), int(seed)
        self.net = self._new_net()
        self.fitted = False

    def _new_net(self, seed: int | None = None) -> MLPRouter:
        """An untrained network with the policy's settings (the passes chosen, if any), seeded by ``seed``
        (default: the policy's seed)."""
        settings = {**self.mlp_config, **({} if self.net_epochs is None else {"epochs": self.net_epochs})}
        seed = self.seed if seed is None else int(seed)
        return MLPRouter(
            list(self.models), self.dim, device=self.device_name, seed=seed, epsilon=0.0, **settings
        )

    def _stack_fold_ids(self, n: int) -> np.ndarray:
        """(n,) the stacking fold of every warm-start row (seeded by the policy's seed)."""
        return np.random.default_rng([self.seed, 11]).permutation(n) % self.stack_folds

    def _linear_part(self) -> LowRankLinUCB:
        """Linear heads with the policy's settings, for a stacking fold."""
        return LowRankLinUCB(
            list(self.models), self.dim, ridge=self.ridge, bias_ridge=self.bias_ridge, rank=self.rank,
            refit_every=self.refit_every, prior_iters=self.prior_iters,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------- estimates
    @property
    def blend_weight(self) -> float:
        """The network's share in decisions: ``mlp_weight`` once fitted, 0 before (an unfitted net is noise)."""
        return self.mlp_weight if self.fitted else 0.0

    def estimates(self, x: np.ndarray) -> np.ndarray:
        """(3, B, K): (1 - beta) * the linear heads' estimates + beta * the network's."""
        linear = super().estimates(x)
        beta = self.blend_weight
        if beta == 0.0:
            return linear
        return (1.0 - beta) * linear + beta * self.net.estimates(x)

    @property
    def bonus_alpha(self) -> float:
        """LinUCB's bonus scaled by the linear heads' share of the estimate: alpha (1 - beta)."""
        return self.alpha * (1.0 - self.blend_weight)

    # -------------------------------------------------------------------------------------- learning
    def warm_start(self, x, quality, cost, latency, weight: float = 1.0) -> None:
        """The low-rank heads' warm start, and the network fitted on the same rows (full information)."""
        super().warm_start(x, quality, cost, latency, weight=weight)
        if self.auto_weight:
            self.mlp_weight = self._stacked_weight(x, quality, cost, latency, weight)
        if self.mlp_weight > 0:
            self.net = self._new_net().fit(x, quality, cost, latency)
            self.net._clear_buffer()  # the network is not retrained online: keep no buffer
            self.fitted = True

    def _stacked_weight(self, x, quality, cost, latency, weight: float) -> float:
        """beta chosen by out-of-fold stacking (see the module docstring); ``self.stacking`` records why."""
        x, quality = np.asarray(x), np.asarray(quality, dtype=np.float64)
        n = len(x)
        self.net_epochs = None  # the folds train for mlp.epochs passes
        folds = self._stack_fold_ids(n)
        if n < 2 * self.stack_folds:  # too few rows to hold any out: the prior, else an even blend
            self.stacking = {"by": self.stack_by, "grid": None, "scores": None, "rows": n}
            return 0.5 if self.stack_from is None else self.stack_from
        cost = np.asarray(cost, dtype=np.float64)
        linear_oof = np.full((2, *quality.shape), np.nan)  # quality and cost estimates
        net_oof = np.full((2, *quality.shape), np.nan)
        passes = int(self.mlp_config["epochs"]) if self.stack_epochs else 0
        per_pass = np.full((passes, 2, *quality.shape), np.nan)  # stack_epochs: held-out estimates per pass
        for f in range(self.stack_folds):
            fit, held = folds != f, folds == f
            part = self._linear_part()
            part.warm_start(x[fit], quality[fit], cost[fit], latency[fit], weight=weight)
            linear_oof[:, held] = part.estimates(x[held])[:2]
            net = self._new_net()

            def keep(done: int, net: MLPRouter = net, held: np.ndarray = held) -> None:
                per_pass[done - 1][:, held] = net.estimates(x[held])[:2]

            net.fit(x[fit], quality[fit], cost[fit], latency[fit], on_epoch=keep if passes else None)
            if not passes:  # with passes, the chosen pass's estimates are kept in per_pass
                net_oof[:, held] = net.estimates(x[held])[:2]

        def pass_scores(beta: float) -> list[float]:  # each pass's network blended at beta, scored as beta is
            return [
                self._stack_score((1 - beta) * linear_oof + beta * est, quality, cost) for est in per_pass
            ]

        epoch_scores = None
        if passes:
            epoch_scores = pass_scores(0.5 if self.stack_from is None else self.stack_from)
            self.net_epochs = int(np.argmax(epoch_scores)) + 1
            net_oof = per_pass[self.net_epochs - 1]
        grid = STACK_GRID[STACK_GRID <= self.stack_max + 1e-12]  # noqa: SIM300
        blends = [(1 - b) * linear_oof + b * net_oof for b in grid]
        scores = [self._stack_score(est, quality, cost) for est in blends]
        best = float(grid[int(np.argmax(scores))])
        self.stacking = {
            "by": self.stack_by,
            "grid": grid.tolist(),
            "scores": scores,
            "rows": n,
            "best": best,
            "from": self.stack_from,
            "epochs": self.net_epochs,
            "epoch_scores": epoch_scores,
        }
        if self.stack_from is None or best == self.stack_from:
            return best
        prior = (1 - self.stack_from) * linear_oof + self.stack_from * net_oof
        test = self._stack_test(blends[int(np.argmax(scores))], prior, quality, cost)
        moved = bool(test["low"] > 0.0)
        self.stacking.update(
            {"from": self.stack_from, "level": self.stack_level, "test": test, "moved": moved}
        )
        if moved and passes and self.stack_repick:  # the passes again, scored at the weight moved to
            at_weight = pass_scores(best)
            self.net_epochs = int(np.argmax(at_weight)) + 1
            self.stacking.update({"epochs": self.net_epochs, "epoch_scores_at_weight": at_weight})
        return best if moved else self.stack_from

    def _stack_score(self, est: np.ndarray, quality: np.ndarray, cost: np.ndarray) -> float:
        """The out-of-fold score of blended estimates ``est`` (2, N, K): routing AIQ, or minus the MSE."""
        if self.stack_by == "mse":
            seen = np.isfinite(quality)
            return -float(np.mean((est[0] - quality)[seen] ** 2))
        return _routing_aiq(est, quality, cost)

    def _stack_test(
        self, best: np.ndarray, prior: np.ndarray, quality, cost, level: float | None = None
    ) -> dict[str, float]:
        """The paired bootstrap over out-of-fold rows of the best blend's score minus the prior blend's, at
        ``level`` (default ``stack_level``)."""
        level = self.stack_level if level is None else float(level)
        from router_rl.metrics import paired_bootstrap_aiq

        if self.stack_by == "mse":
            seen = np.isfinite(quality)
            rows = seen.any(axis=1)

            def row_error(est: np.ndarray) -> np.ndarray:
                err = np.where(seen, (est[0] - np.where(seen, quality, 0.0)) ** 2, 0.0)
                return err[rows].sum(axis=1)

            gain, cells = row_error(prior) - row_error(best), seen[rows].sum(axis=1)
            draws = np.random.default_rng([self.seed, 13]).integers(
                0, len(gain), (self.stack_boot, len(gain))
            )
            boot = gain[draws].sum(axis=1) / cells[draws].sum(axis=1)
            tail = (1.0 - level) / 2.0
            low, high = np.quantile(boot, [tail, 1.0 - tail])
            return {"diff": float(gain.sum() / cells.sum()), "low": float(low), "high": float(high)}
        qa, ca = _sweep_outcomes(best, quality, cost)
        qb, cb = _sweep_outcomes(prior, quality, cost)
        out = paired_bootstrap_aiq(
            qa[None], ca[None], qb[None], cb[None], max_cost=_sweep_max_cost(cost, ca, cb),
            n_boot=self.stack_boot, level=level, seed=self.seed,
        )  # fmt: skip
        return {k: float(out[k]) for k in ("diff", "low", "high")}

    # ------------------------------------------------------------------------------------ the catalog
    def add_model(self, name: str) -> None:
        """A new arm: its linear head at the prior; the network predicts each head's average model for it."""
        super().add_model(name)
        self.net.add_model(name)

    def remove_model(self, name: str) -> None:
        super().remove_model(name)
        self.net.remove_model(name)

    # --------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        net = self.net.state_dict()
        return {
            **super().state_dict(),
            **{f"mlp.{k}": v for k, v in net.items() if not k.startswith("buffer_")},
            "mlp_fitted": np.array([int(self.fitted)], dtype=np.int64),
            "mlp_weight": np.array([self.mlp_weight]),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        super().load_state_dict({k: v for k, v in state.items() if not k.startswith("mlp")})
        net_state = {k[len("mlp.") :]: v for k, v in state.items() if k.startswith("mlp.")}
        k, d = len(self.models), self.dim
        net_state.setdefault("buffer_x", np.zeros((0, d), dtype=np.float32))
        net_state.setdefault("buffer_sum", np.zeros((0, k, tm.HEADS)))
        net_state.setdefault("buffer_count", np.zeros((0, k)))
        self.net.load_state_dict(net_state)
        self.fitted = bool(int(np.asarray(state.get("mlp_fitted", [0]))[0]))
        if "mlp_weight" in state:
            self.mlp_weight = float(np.asarray(state["mlp_weight"])[0])

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "mlp_weight": "auto" if self.auto_weight else self.mlp_weight,
            "stack_folds": self.stack_folds,
            "stack_by": self.stack_by,
            "stack_from": self.stack_from,
            "stack_max": self.stack_max,
            "stack_level": self.stack_level,
            "stack_boot": self.stack_boot,
            "stack_epochs": self.stack_epochs,
            "stack_repick": self.stack_repick,
            "mlp": dict(self.mlp_config),
            "device": self.device_name,
            "seed": self.seed,
        }

    def mlp_head(self) -> dict[str, np.ndarray]:
        """The network's serving form: its layers (``mlp.<i>.weight`` (out, in), ``mlp.<i>.bias``; ReLU between
        them) and the output de-normalisation ``mlp.col_mean``, ``mlp.col_sd`` (3K, head-major)."""
        arrays = tm.module_arrays(self.net.net, "")
        out: dict[str, np.ndarray] = {}
        layers = sorted({int(name.split(".")[0]) for name in arrays})
        for i, index in enumerate(layers):
            out[f"mlp.{i}.weight"] = arrays[f"{index}.weight"]
            out[f"mlp.{i}.bias"] = arrays[f"{index}.bias"]
        out["mlp.col_mean"] = np.asarray(self.net.col_mean)
        out["mlp.col_sd"] = np.asarray(self.net.col_sd)
        return out
