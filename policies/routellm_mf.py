"""RouteLLM-style two-model router: matrix factorisation of (prompt, model) -> win probability.

Scoring (Ong et al., 2024, "RouteLLM: Learning to route LLMs with preference data", the ``mf`` router): every
model m has a learned vector v_m, the prompt embedding is projected by W, and

    delta(m, x) = w^T (v_m / |v_m|  *  W x) + beta_m,     P(m beats m' | x) = sigmoid(delta(m, x) - delta(m', x)).

:meth:`RouteLLMMF.fit` trains it on every model pair of full-information rows (label 1 if m's quality is
higher, 0 if lower, 1/2 on a tie; binary cross-entropy, Adam). The router's score is the strong model's win
probability over the weak one, s(x) = P(strong beats weak | x), and it calls the strong model when
s(x) >= tau. RouteLLM calibrates tau as a quantile of the scores: :meth:`RouteLLMMF.calibrate` sets
tau = quantile_{1 - share}(s) on calibration prompts so that a target share of calls go to the strong model.

Cost-weight interface (for the sweep): ``fit`` also regresses the strong-minus-weak quality gap on the score,
g(x) ~ a + b s(x), and keeps each model's mean normalised cost c and latency l, so at cost weight w the router
calls the strong model when a + b s(x) >= w (c_s - c_w) + lambda (l_s - l_w), i.e. at the threshold
tau(w) = (w (c_s - c_w) + lambda (l_s - l_w) - a) / b (:meth:`threshold_for`, :meth:`cost_weight_for`).
Only the strong and the weak model are ever routed to. ``update`` (bandit feedback) is a no-op: one revealed
outcome per prompt gives no pairwise label.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router_rl.policies import torch_mlp as tm
from router_rl.policies.base import check_model_change
from router_rl.policies.ridge import stack_heads


def quantile_threshold(scores: np.ndarray, strong_share: float) -> float:
    """RouteLLM's calibration: the (1 - share) quantile tau of ``scores``, taken as the ceil(share * n)-th
    largest score, so that ceil(share * n) of the n scores are >= tau (more only on ties); +inf for share 0."""
    if not 0.0 <= strong_share <= 1.0:
        raise ValueError(f"strong_share must lie in [0, 1], got {strong_share}")
    scores = np.sort(np.asarray(scores, dtype=np.float64).ravel())[::-1]
    n_strong = int(np.ceil(strong_share * len(scores) - 1e-9))
    return float(np.inf) if n_strong == 0 else float(scores[n_strong - 1])


def pair_labels(quality: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All model pairs i < j of every row with both qualities known -> (row, i, j, label in {0, 1/2, 1})."""
    n, k = quality.shape
    i, j = np.triu_indices(k, 1)
    qi, qj = quality[:, i], quality[:, j]  # (N, P)
    ok = np.isfinite(qi) & np.isfinite(qj)
    label = np.where(qi > qj, 1.0, np.where(qi < qj, 0.0, 0.5))
    rows = np.broadcast_to(np.arange(n)[:, None], ok.shape)
    return rows[ok], np.broadcast_to(i, ok.shape)[ok], np.broadcast_to(j, ok.shape)[ok], label[ok]


def _mf_module(dim: int, n_models: int, rank: int, seed: int) -> Any:
    import torch
    from torch import nn

    class MatrixFactorisation(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(dim, rank, bias=False)
            self.models = nn.Parameter(torch.randn(n_models, rank))
            self.classifier = nn.Linear(rank, 1, bias=False)
            self.bias = nn.Parameter(torch.zeros(n_models))

        def forward(self, x: Any) -> Any:  # (B, d) -> (B, K) delta(m, x)
            v = nn.functional.normalize(self.models, dim=1)
            return self.classifier(self.proj(x)[:, None, :] * v[None]).squeeze(-1) + self.bias

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MatrixFactorisation()


class RouteLLMMF:
    """Two-model matrix-factorisation router with a quantile-calibrated threshold.

    Args:
        models: arm names, in order.
        dim: context dimension d.
        strong, weak: the two routed models; None = chosen by ``fit``: strong = best mean quality, weak = best
            mean quality among models costing <= ``weak_max_cost_share`` of the strong one (else the cheapest).
        rank: size of the model vectors and the prompt projection.
        epochs: passes over the training pairs.
        batch_size, lr, weight_decay: Adam minibatches.
        weak_max_cost_share: cost cap of the automatic weak model, as a share of the strong model's cost.
        epsilon: share of exploratory decisions (uniform over the two models) with ``explore=True``.
        device: ``auto`` (cuda when available), ``cpu``, ``cuda``...
        seed: seeds the initial weights and the minibatch order.
    """

    name = "routellm_mf"
    supervised = True  # an offline baseline: trained by ``fit`` on full information in comparisons

    def __init__(
        self,
        models: list[str],
        dim: int,
        strong: str | None = None,
        weak: str | None = None,
        rank: int = 64,
        epochs: int = 20,
        batch_size: int = 256,
        lr: float = 3e-3,
        weight_decay: float = 1e-5,
        weak_max_cost_share: float = 0.1,
        epsilon: float = 0.0,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        for role, m in (("strong", strong), ("weak", weak)):
            if m is not None and m not in models:
                raise ValueError(f"routellm_mf: {role} model {m!r} is not one of {list(models)}")
        if strong is not None and strong == weak:
            raise ValueError(f"routellm_mf: strong and weak must differ, got {strong!r} twice")
        self.models, self.dim = list(models), int(dim)
        self.strong, self.weak = strong, weak
        self.rank, self.epochs, self.batch_size = int(rank), int(epochs), int(batch_size)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.weak_max_cost_share, self.epsilon = float(weak_max_cost_share), float(epsilon)
        self.device_name, self.seed = str(device), int(seed)
        self.device = tm.resolve_device(device)
        self.net = _mf_module(self.dim, len(self.models), self.rank, self.seed).to(self.device)
        k = len(self.models)
        self.gap = np.array([0.0, 1.0])  # (a, b): quality gap ~ a + b * score
        self.means = np.zeros((3, k))  # mean quality, normalised cost, latency per model
        self.threshold: float | None = None  # set by calibrate()
        self.fitted = False

    # ----------------------------------------------------------------------------------------- scores
    def pair(self) -> tuple[int, int]:
        """(strong, weak) indices; raises before ``fit`` when they were not given."""
        if self.strong is None or self.weak is None:
            raise RuntimeError(
                "routellm_mf: strong/weak models unknown; call fit() or pass strong= and weak="
            )
        return self.models.index(self.strong), self.models.index(self.weak)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(B,) s(x) = P(strong beats weak | x)."""
        s, w = self.pair()
        delta = tm.forward_numpy(self.net, np.asarray(x), self.device)
        return 1.0 / (1.0 + np.exp(-(delta[:, s] - delta[:, w])))

    def threshold_for(self, cost_weight: float, latency_weight: float = 0.0) -> float:
        """tau(w) = (w (c_s - c_w) + lambda (l_s - l_w) - a) / b: the score threshold of cost weight w."""
        s, w = self.pair()
        a, b = self.gap
        need = cost_weight * (self.means[1, s] - self.means[1, w]) + latency_weight * (
            self.means[2, s] - self.means[2, w]
        )
        return float((need - a) / b)

    def cost_weight_for(self, threshold: float, latency_weight: float = 0.0) -> float:
        """The cost weight w whose :meth:`threshold_for` is ``threshold`` (NaN when costs are equal)."""
        s, w = self.pair()
        a, b = self.gap
        dc = self.means[1, s] - self.means[1, w]
        dl = latency_weight * (self.means[2, s] - self.means[2, w])
        return float((a + b * threshold - dl) / dc) if dc != 0 else float("nan")

    def calibrate(self, x: np.ndarray, strong_share: float) -> dict[str, float]:
        """Set ``threshold`` so that ``strong_share`` of the prompts x go to the strong model.

        Returns the mapping ``{"strong_share", "threshold", "cost_weight"}``: the quantile threshold and the
        cost weight that gives the same decisions through the cost-weight interface.
        """
        self.threshold = quantile_threshold(self.scores(x), strong_share)
        return {
            "strong_share": float(strong_share),
            "threshold": self.threshold,
            "cost_weight": self.cost_weight_for(self.threshold),
        }

    def route(self, x: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """(B,) True where the strong model is called: s(x) >= threshold (default: the calibrated one)."""
        tau = self.threshold if threshold is None else threshold
        if tau is None:
            raise RuntimeError("routellm_mf: no threshold; call calibrate() or pass one")
        return self.scores(x) >= tau

    def estimates(self, x: np.ndarray) -> np.ndarray:
        """(3, B, K) quality (weak: its mean, strong: weak mean + a + b s(x)), mean cost and latency; NaN for
        the models this router never calls."""
        s, w = self.pair()
        b = np.asarray(x).shape[0]
        out = np.full((3, b, len(self.models)), np.nan)
        for k in (s, w):
            out[:, :, k] = self.means[:, k, None]
        out[0, :, s] = self.means[0, w] + self.gap[0] + self.gap[1] * self.scores(x)
        return out

    def probs(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        if not self.fitted:  # nothing learned yet: uniform over the pair if known, else over every model
            n = np.asarray(x).shape[0]
            if self.strong is None or self.weak is None:
                return np.full((n, len(self.models)), 1.0 / len(self.models))
            out = np.zeros((n, len(self.models)))
            out[:, list(self.pair())] = 0.5
            return out
        s, w = self.pair()
        strong = self.scores(x) >= self.threshold_for(cost_weight, latency_weight)
        out = np.zeros((len(strong), len(self.models)))
        out[:, s], out[:, w] = strong, ~strong
        if explore and self.epsilon > 0:
            out[:, [s, w]] = (1.0 - self.epsilon) * out[:, [s, w]] + self.epsilon / 2
        return out

    # -------------------------------------------------------------------------------------- learning
    def fit(self, x, quality, cost, latency) -> RouteLLMMF:
        """Train on full-information rows: (N, d) contexts, (N, K) outcome tables (cost / cost_scale)."""
        import torch

        x = np.asarray(x, dtype=np.float32)
        y = stack_heads(quality, cost, latency)
        if x.ndim != 2 or y.shape[:2] != (x.shape[0], len(self.models)):
            raise ValueError(
                f"routellm_mf: fit needs x (N, d) and (N, K) tables, got {x.shape}, {y.shape[:2]}"
            )
        self.means = np.nanmean(y, axis=0).T  # (3, K)
        if self.strong is None:
            self.strong = self.models[int(np.nanargmax(self.means[0]))]
        if self.weak is None:
            self.weak = self._auto_weak()
        rows, i, j, label = pair_labels(y[..., 0])
        self.net = _mf_module(self.dim, len(self.models), self.rank, self.seed).to(self.device)
        xt = torch.as_tensor(x, device=self.device)
        it, jt = (torch.as_tensor(a, device=self.device) for a in (i, j))
        rt, lt = (
            torch.as_tensor(rows, device=self.device),
            torch.as_tensor(label, dtype=torch.float32, device=self.device),
        )
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(self.seed)
        self.net.train()
        with tm.cpu_threads(self.device):
            for _ in range(self.epochs):
                for idx in torch.randperm(len(rt), generator=gen).to(self.device).split(self.batch_size):
                    delta = self.net(xt[rt[idx]])
                    logit = delta.gather(1, it[idx, None]).squeeze(1) - delta.gather(
                        1, jt[idx, None]
                    ).squeeze(1)
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, lt[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        self.net.eval()
        s, w = self.pair()
        ok = np.isfinite(y[:, s, 0]) & np.isfinite(y[:, w, 0])
        self.gap = gap_regression(self.scores(x[ok]), y[ok, s, 0] - y[ok, w, 0])
        self.fitted = True
        return self

    def _auto_weak(self) -> str:
        s = self.models.index(self.strong)
        q, c = self.means[0], self.means[1]
        cheap = np.flatnonzero((c <= self.weak_max_cost_share * c[s]) & (np.arange(len(q)) != s))
        if len(cheap):
            return self.models[int(cheap[np.nanargmax(q[cheap])])]
        others = np.delete(np.arange(len(q)), s)
        return self.models[int(others[np.nanargmin(c[others])])]

    def update(self, x, actions, quality, cost, latency) -> None:  # noqa: D102 - see the module docstring
        return None

    # ------------------------------------------------------------------------------------ the catalog
    def add_model(self, name: str) -> None:
        """Append model ``name`` (its vector starts at the mean of the others); it is not routed to."""
        import torch

        check_model_change(self, name, adding=True)
        self.models.append(name)
        with torch.no_grad():
            self.net.models = torch.nn.Parameter(
                torch.cat([self.net.models, self.net.models.mean(0, keepdim=True)])
            )
            self.net.bias = torch.nn.Parameter(torch.cat([self.net.bias, self.net.bias.mean().reshape(1)]))
        self.means = np.concatenate([self.means, np.full((3, 1), np.nan)], axis=1)

    def remove_model(self, name: str) -> None:
        """Drop model ``name`` (not the strong or the weak one: pick another pair first)."""
        import torch

        k = check_model_change(self, name, adding=False)
        if name in (self.strong, self.weak):
            raise ValueError(
                f"routellm_mf: {name!r} is the strong or weak model; set strong=/weak= to others first"
            )
        self.models.pop(k)
        keep = torch.as_tensor(np.delete(np.arange(len(self.models) + 1), k), device=self.device)
        with torch.no_grad():
            self.net.models = torch.nn.Parameter(self.net.models[keep])
            self.net.bias = torch.nn.Parameter(self.net.bias[keep])
        self.means = np.delete(self.means, k, axis=1)

    # --------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            **tm.module_arrays(self.net, "net."),
            "gap": self.gap.copy(),
            "means": self.means.copy(),
            "threshold": np.array([np.nan if self.threshold is None else self.threshold]),
            "fitted": np.array([float(self.fitted)]),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        tm.load_module_arrays(self.net, state, "net.", owner=self.name)
        self.gap = np.asarray(state["gap"], dtype=np.float64).copy()
        self.means = np.asarray(state["means"], dtype=np.float64).copy()
        tau = float(np.asarray(state["threshold"])[0])
        self.threshold = None if np.isnan(tau) else tau
        self.fitted = bool(np.asarray(state.get("fitted", [0.0]))[0])

    def config(self) -> dict[str, Any]:
        return {
            "strong": self.strong,
            "weak": self.weak,
            "rank": self.rank,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "weak_max_cost_share": self.weak_max_cost_share,
            "epsilon": self.epsilon,
            "device": self.device_name,
            "seed": self.seed,
        }


def gap_regression(score: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """(a, b): least squares of ``gap ~ a + b * score``; b is floored at 1e-6 so the threshold stays monotone."""
    design = np.stack([np.ones_like(score), score], axis=1)
    a, b = np.linalg.lstsq(design, gap, rcond=None)[0]
    return np.array([a, max(b, 1e-6)])
