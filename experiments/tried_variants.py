"""Variants of the default policy that were measured and not kept, runnable in default_wins.py's harness.

Each is the default ``blend`` plus one change; the figures are in RESULTS.md ("Tried and not kept") and
``results/tried_*.md``. Recompute them with, for example::

    python experiments/tried_variants.py --variants arena arena-8models \\
        --policies default blend_knn blend_knn_argmax --seeds 0 1 2 --out /tmp/tried.json

- ``blend_knn`` / ``blend_knn_argmax``: a third component, the kNN router (k = 20, cosine) fitted on the same
  warm-start rows. Its share c in {0, 0.1, ..., 0.5} of ``(1 - c) * blend + c * knn`` is chosen out of fold on
  the stacking's folds, by the blend's own routing score; ``blend_knn`` moves from 0 only when the paired
  bootstrap excludes zero at ``knn_gate`` (the weight's rule), ``blend_knn_argmax`` takes the best share.
- ``blend_logreg`` / ``blend_logreg_argmax``: the same with the per-model logistic regressions (the ``logreg``
  yardstick, C = 1) as the third component, share c in {0, 0.1, ..., 1}, gated at 0.99 or the best share.
- ``blend_ens3`` / ``blend_ens5``: the exported network is the average of 3 (5) networks trained from different
  seeds for the passes chosen out of fold (an average of one-hidden-layer networks is one wider network, so
  it would serve unchanged).
- ``blend_max1``: ``stack_max: 1.0``, the weight may give the network the whole estimate.
- ``blend_std`` / ``mlp_std``: the network trains on standardised inputs (``mlp.standardize: true``, the
  scaling folded into its first layer), in the blend and in the MLP alone (run with ``--override
  embedder=static`` for the static encoder).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from router_rl.policies.blend import STACK_GRID, BlendLinUCB  # noqa: E402
from router_rl.policies.knn import KNNRouter  # noqa: E402
from router_rl.policies.logreg import LogisticRouter  # noqa: E402

TRIED = {  # label -> (option, overrides), as default_wins.PREVIOUS
    "blend_knn": ("blend", {"_target_": "tried_variants.BlendKNN", "knn_gate": 0.99}),
    "blend_knn_argmax": ("blend", {"_target_": "tried_variants.BlendKNN", "knn_gate": None}),
    "blend_logreg": ("blend", {"_target_": "tried_variants.BlendLogistic", "knn_gate": 0.99, "knn_max": 1.0}),
    "blend_logreg_argmax": (
        "blend",
        {"_target_": "tried_variants.BlendLogistic", "knn_gate": None, "knn_max": 1.0},
    ),
    "blend_ens3": ("blend", {"_target_": "tried_variants.BlendEnsemble", "n_nets": 3}),
    "blend_ens5": ("blend", {"_target_": "tried_variants.BlendEnsemble", "n_nets": 5}),
    "blend_max1": ("blend", {"stack_max": 1.0}),
    "blend_std": ("blend", {"mlp": {"standardize": True}}),
    "mlp_std": ("mlp", {"standardize": True}),
}


def fold_estimates(policy: BlendLinUCB, x, quality, cost, latency, weight: float) -> tuple[np.ndarray, ...]:
    """(2, N, K) out-of-fold quality and cost estimates of the linear heads, the network (at the chosen
    passes) and the third component (kNN, or the logistic regressions) on the blend's stacking folds (its fold ids and fold models; the first two are trained
    again here, a study's cost, to leave the policy's own stacking untouched)."""
    x, quality, cost = (
        np.asarray(x),
        np.asarray(quality, dtype=np.float64),
        np.asarray(cost, dtype=np.float64),
    )
    latency = np.asarray(latency, dtype=np.float64)
    folds = policy._stack_fold_ids(len(x))
    linear, net, knn = (np.full((2, *quality.shape), np.nan) for _ in range(3))
    for f in range(policy.stack_folds):
        fit, held = folds != f, folds == f
        rows = (x[fit], quality[fit], cost[fit], latency[fit])
        part = policy._linear_part()
        part.warm_start(*rows, weight=weight)
        linear[:, held] = part.estimates(x[held])[:2]
        net[:, held] = policy._new_net().fit(*rows).estimates(x[held])[:2]
        knn[:, held] = policy._third().fit(*rows).estimates(x[held])[:2]
    return linear, net, knn


class BlendKNN(BlendLinUCB):
    """The blend with a kNN share chosen out of fold: ``(1 - c) * blend + c * knn``."""

    def __init__(
        self, *args: Any, knn_gate: float | None = 0.99, knn_max: float = 0.5, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.knn_gate, self.knn_max, self.knn_weight = knn_gate, float(knn_max), 0.0
        self.knn = self._third()

    def _third(self) -> Any:
        """An unfitted third component."""
        return KNNRouter(list(self.models), self.dim)

    def estimates(self, x: np.ndarray) -> np.ndarray:
        base = super().estimates(x)
        if self.knn_weight == 0.0:
            return base
        near = self.knn.estimates(x)
        return (1.0 - self.knn_weight) * base + self.knn_weight * np.where(np.isfinite(near), near, base)

    def warm_start(self, x, quality, cost, latency, weight: float = 1.0) -> None:
        super().warm_start(x, quality, cost, latency, weight=weight)
        if not (self.auto_weight and self.fitted and len(x) >= 2 * self.stack_folds):
            return
        linear, net, knn = fold_estimates(self, x, quality, cost, latency, weight)
        quality, cost = np.asarray(quality, dtype=np.float64), np.asarray(cost, dtype=np.float64)
        blend = (1.0 - self.mlp_weight) * linear + self.mlp_weight * net
        knn = np.where(np.isfinite(knn), knn, blend)
        grid = STACK_GRID[STACK_GRID <= self.knn_max + 1e-12]  # noqa: SIM300
        mixes = [(1.0 - c) * blend + c * knn for c in grid]
        scores = [self._stack_score(m, quality, cost) for m in mixes]
        best = int(np.argmax(scores))
        moved = grid[best] > 0
        if moved and self.knn_gate is not None:
            moved = self._stack_test(mixes[best], blend, quality, cost, level=self.knn_gate)["low"] > 0.0
        self.knn_weight = float(grid[best]) if moved else 0.0
        if self.knn_weight > 0:
            self.knn.fit(x, quality, cost, latency)


class BlendLogistic(BlendKNN):
    """The blend with a share of the per-model logistic regressions (the ``logreg`` yardstick's settings)
    chosen out of fold: ``(1 - c) * blend + c * logreg``."""

    def _third(self) -> Any:
        return LogisticRouter(list(self.models), self.dim)


class _Average:
    """The mean estimates of several fitted MLPRouters."""

    def __init__(self, nets: list[Any]) -> None:
        self.nets = nets

    def estimates(self, x: np.ndarray) -> np.ndarray:
        return np.mean([net.estimates(x) for net in self.nets], axis=0)


class BlendEnsemble(BlendLinUCB):
    """The blend whose network is the average of ``n_nets`` networks from different seeds."""

    def __init__(self, *args: Any, n_nets: int = 3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n_nets = int(n_nets)

    def warm_start(self, x, quality, cost, latency, weight: float = 1.0) -> None:
        super().warm_start(x, quality, cost, latency, weight=weight)
        if not self.fitted:
            return
        others = [self._new_net(seed=self.seed * 1000 + 7 * j + 1) for j in range(1, self.n_nets)]
        self.net = _Average([self.net, *(net.fit(x, quality, cost, latency) for net in others)])


if __name__ == "__main__":
    import default_wins

    default_wins.PREVIOUS.update(TRIED)
    default_wins.main()
