"""An MLP that predicts every model's quality, normalised cost and latency from the query embedding.

The field's supervised baseline (e.g. RouterBench's and RouteLLM's MLP/BERT predictors): an MLP with 3K
outputs (:mod:`router_rl.policies.torch_mlp`) trained on full-information data by :meth:`MLPRouter.fit`, then
routing greedily on ``q_hat_k(x) - w c_hat_k(x) - lambda l_hat_k(x)`` for any cost weight w.

From bandit feedback (``update``) it keeps learning: the revealed (context, model) outcomes go into a replay
buffer (next to the ``fit`` rows) and every ``train_every`` observations the network is retrained (from its
seeded initialisation, so a retraining is a ``fit`` on what has been observed) on the masked loss, for
``epochs`` passes. The buffer keeps sufficient statistics per *distinct* context: the sum and count of every
(context, model) cell. The network trains on the cell means weighted by their counts
(:func:`router_rl.policies.torch_mlp.fit_masked`), so a prompt seen fifty times, or a thousand prompts that
embed identically, weigh as their observations do, while the training cost stays one row per distinct
context. With
``explore=True`` it is epsilon-greedy (exact propensities ``(1 - eps) greedy + eps / K``), so it also runs as a
plain neural bandit. As an offline baseline: call ``fit`` and skip the bandit loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from router_rl.policies import torch_mlp as tm
from router_rl.policies.base import check_batch, check_model_change, greedy_probs
from router_rl.policies.ridge import stack_heads


class MLPRouter:
    """Per-model quality/cost/latency regression with one shared MLP.

    Args:
        models: arm names, in order.
        dim: context dimension d.
        hidden: hidden layer sizes.
        epochs: passes over the data per (re)training.
        train_every: retrain after this many bandit observations.
        batch_size: minibatch size of the Adam steps.
        lr: Adam learning rate.
        weight_decay: Adam weight decay (L2).
        epsilon: exploration rate while training (``explore=True``).
        buffer_size: most recent distinct contexts kept for retraining (``fit`` rows count too).
        device: ``auto`` (cuda when available), ``cpu``, ``cuda``, ``cuda:1``...
        seed: seeds the initial weights and the minibatch order.
        standardize: train on inputs centred and scaled per dimension over the training rows (folded into
            the first layer afterwards: the network and its export take raw embeddings).
    """

    name = "mlp"
    supervised = True  # an offline baseline: trained by ``fit`` on full information in comparisons

    def __init__(
        self,
        models: list[str],
        dim: int,
        hidden: list[int] | tuple[int, ...] = (128,),
        epochs: int = 30,
        train_every: int = 2000,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 1e-3,
        epsilon: float = 0.1,
        buffer_size: int = 100_000,
        device: str = "auto",
        seed: int = 0,
        standardize: bool = False,
    ) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"{self.name}: epsilon must lie in [0, 1], got {epsilon}")
        if min(epochs, train_every, batch_size, buffer_size) < 1 or not hidden:
            raise ValueError(
                f"{self.name}: epochs, train_every, batch_size, buffer_size >= 1 and hidden non-empty"
            )
        self.models = list(models)
        self.dim = int(dim)
        self.hidden = [int(h) for h in hidden]
        self.epochs, self.train_every, self.batch_size = int(epochs), int(train_every), int(batch_size)
        self.lr, self.weight_decay, self.epsilon = float(lr), float(weight_decay), float(epsilon)
        self.buffer_size, self.device_name, self.seed = int(buffer_size), str(device), int(seed)
        self.standardize = bool(standardize)
        self.device = tm.resolve_device(device)
        self.net = tm.build_mlp(self.dim, self.hidden, tm.HEADS * len(self.models), seed=self.seed).to(
            self.device
        )
        k = len(self.models)
        self.col_mean, self.col_sd = np.zeros(tm.HEADS * k), np.ones(tm.HEADS * k)
        self._clear_buffer()
        self.since_train = 0
        self.n_trainings = 0

    # ------------------------------------------------------------------------------------- estimates
    def estimates(self, x: np.ndarray) -> np.ndarray:
        """(3, B, K) predicted quality, normalised cost and latency of every model."""
        out = tm.forward_numpy(self.net, np.asarray(x), self.device) * self.col_sd + self.col_mean
        return out.reshape(out.shape[0], tm.HEADS, len(self.models)).transpose(1, 0, 2)

    def mean_scores(self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0) -> np.ndarray:
        q, c, lat = self.estimates(x)
        return q - cost_weight * c - latency_weight * lat

    def probs(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        greedy = greedy_probs(self.mean_scores(x, cost_weight=cost_weight, latency_weight=latency_weight))
        if not explore:
            return greedy
        return (1.0 - self.epsilon) * greedy + self.epsilon / len(self.models)

    # -------------------------------------------------------------------------------------- learning
    def fit(self, x, quality, cost, latency, *, on_epoch: Callable[[int], Any] | None = None) -> MLPRouter:
        """Full-information training from scratch on (N, d) contexts and (N, K) outcome tables.

        ``cost`` is in the ``update`` unit (cost_usd / cost_scale); NaN cells are treated as unobserved.
        The rows replace the replay buffer; later bandit feedback is added to them. ``on_epoch(passes)`` is
        called after every pass, the router then predicting as trained so far (a true return stops there).
        """
        x = np.asarray(x, dtype=np.float32)
        y = stack_heads(quality, cost, latency)  # (N, K, 3)
        if x.ndim != 2 or y.shape[:2] != (x.shape[0], len(self.models)):
            raise ValueError(
                f"{self.name}: fit needs x (N, d) and (N, K={len(self.models)}) tables, got {x.shape} and {y.shape[:2]}"
            )
        seen = np.isfinite(y).all(axis=2)
        self._clear_buffer()
        self._append(x, np.where(seen[..., None], y, 0.0), seen.astype(np.float64))
        self._retrain(on_epoch)
        return self

    def update(self, x, actions, quality, cost, latency) -> None:
        x = np.asarray(x)
        actions = check_batch(self, x, actions, quality, cost, latency)
        b, k = len(actions), len(self.models)
        y = np.zeros((b, k, tm.HEADS))
        y[np.arange(b), actions] = stack_heads(quality, cost, latency)
        seen = np.zeros((b, k))
        seen[np.arange(b), actions] = 1.0
        self._append(x, y, seen)
        self._after_update(x, actions, y[np.arange(b), actions])
        self.since_train += b
        if self.since_train >= self.train_every:
            self._retrain()

    def _after_update(self, x: np.ndarray, actions: np.ndarray, y: np.ndarray) -> None:
        """Hook for subclasses: incremental learning between retrainings (nothing here)."""

    # ------------------------------------------------------------------------------------ the buffer
    def _clear_buffer(self) -> None:
        k = len(self.models)
        self.buf_x = np.zeros((0, self.dim), dtype=np.float32)  # (U, d) distinct contexts
        self.buf_sum = np.zeros((0, k, tm.HEADS))  # (U, K, 3) sums of the observed outcomes
        self.buf_cnt = np.zeros((0, k))  # (U, K) observation counts
        self._rows: dict[bytes, int] = {}

    def _append(self, x: np.ndarray, y: np.ndarray, cnt: np.ndarray) -> None:
        """Add observations: y (n, K, 3) holds ``cnt`` (n, K) observations' sum per cell of each context x."""
        x = np.asarray(x, dtype=np.float32)
        new_x, rows = [], np.empty(len(x), dtype=np.int64)
        for i, row in enumerate(x):
            key = row.tobytes()
            if key not in self._rows:
                self._rows[key] = len(self.buf_x) + len(new_x)
                new_x.append(row)
            rows[i] = self._rows[key]
        if new_x:
            k = len(self.models)
            self.buf_x = np.concatenate([self.buf_x, np.stack(new_x)])
            self.buf_sum = np.concatenate([self.buf_sum, np.zeros((len(new_x), k, tm.HEADS))])
            self.buf_cnt = np.concatenate([self.buf_cnt, np.zeros((len(new_x), k))])
        np.add.at(self.buf_sum, rows, y * (cnt[..., None] > 0))
        np.add.at(self.buf_cnt, rows, cnt)
        if len(self.buf_x) > self.buffer_size:  # forget the oldest distinct contexts
            self._keep_rows(np.arange(len(self.buf_x) - self.buffer_size, len(self.buf_x)))

    def _keep_rows(self, rows: np.ndarray) -> None:
        self.buf_x, self.buf_sum, self.buf_cnt = self.buf_x[rows], self.buf_sum[rows], self.buf_cnt[rows]
        self._rows = {row.tobytes(): i for i, row in enumerate(self.buf_x)}

    def _keep_rows_from(self, x: np.ndarray) -> None:
        self.buf_x = x.copy()
        self._rows = {row.tobytes(): i for i, row in enumerate(self.buf_x)}

    def cell_means(self) -> tuple[np.ndarray, np.ndarray]:
        """(U, K, 3) mean observed outcome per (distinct context, model) and (U, K) whether observed."""
        seen = self.buf_cnt > 0
        return self.buf_sum / np.maximum(self.buf_cnt, 1.0)[..., None], seen

    def _retrain(self, on_epoch: Callable[[int], Any] | None = None) -> None:
        """Train the network from its seeded initialisation on the buffer's cell means, each weighted by its
        observation count (masked MSE); ``on_epoch`` as in :meth:`fit`."""
        self.since_train = 0
        if len(self.buf_x) == 0:
            return
        y, _ = self.cell_means()
        mask = np.repeat(self.buf_cnt[:, None, :], tm.HEADS, axis=1).reshape(len(self.buf_x), -1)
        self.net = tm.build_mlp(self.dim, self.hidden, tm.HEADS * len(self.models), seed=self.seed).to(
            self.device
        )

        def hook(passes: int, mean: np.ndarray, sd: np.ndarray) -> Any:
            self.col_mean, self.col_sd = mean, sd
            return on_epoch(passes)

        self.col_mean, self.col_sd, _ = tm.fit_masked(
            self.net,
            self.buf_x,
            tm.head_major(y),
            mask,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            seed=self.seed + self.n_trainings,
            device=self.device,
            on_epoch=None if on_epoch is None else hook,
            standardize=self.standardize,
        )
        self.n_trainings += 1

    # ------------------------------------------------------------------------------------ the catalog
    def add_model(self, name: str) -> None:
        """Append model ``name``: a zero output row (predicts its head's average model) and no data yet."""
        check_model_change(self, name, adding=True)
        self._relayout(np.arange(len(self.models)), 1)
        self.models.append(name)

    def remove_model(self, name: str) -> None:
        """Drop model ``name``: its outputs, its buffer cells and the rows where only it was observed."""
        k = check_model_change(self, name, adding=False)
        self._relayout(np.delete(np.arange(len(self.models)), k), 0)
        self.models.pop(k)
        self._keep_rows(np.flatnonzero(self.buf_cnt.sum(axis=1) > 0))

    def _relayout(self, keep: np.ndarray, n_new: int) -> None:
        k = len(self.models)
        tm.resize_output(self.net, keep, n_new, k)
        mean = tm.relayout_columns(self.col_mean, keep, n_new, k, np.nan).reshape(tm.HEADS, -1)
        self.col_mean = np.where(np.isnan(mean), np.nanmean(mean, axis=1, keepdims=True), mean).ravel()
        sd = tm.relayout_columns(self.col_sd, keep, n_new, k, np.nan).reshape(tm.HEADS, -1)
        self.col_sd = np.where(np.isnan(sd), np.nanmean(sd, axis=1, keepdims=True), sd).ravel()
        pad = ((0, 0), (0, n_new))
        self.buf_sum = np.pad(self.buf_sum[:, keep], (*pad, (0, 0)))
        self.buf_cnt = np.pad(self.buf_cnt[:, keep], pad)

    # --------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            **tm.module_arrays(self.net, "net."),
            "col_mean": self.col_mean.copy(),
            "col_sd": self.col_sd.copy(),
            "buffer_x": self.buf_x.copy(),
            "buffer_sum": self.buf_sum.copy(),
            "buffer_count": self.buf_cnt.copy(),
            "counters": np.array([self.since_train, self.n_trainings], dtype=np.int64),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        tm.load_module_arrays(self.net, state, "net.", owner=self.name)
        k = len(self.models)
        for key, shape in (("col_mean", (tm.HEADS * k,)), ("col_sd", (tm.HEADS * k,)), ("counters", (2,))):
            if key not in state or tuple(np.shape(state[key])) != shape:
                raise ValueError(f"{self.name} state: {key!r} must have shape {shape}")
        self.col_mean = np.asarray(state["col_mean"], dtype=np.float64).copy()
        self.col_sd = np.asarray(state["col_sd"], dtype=np.float64).copy()
        self.buf_sum = np.asarray(state["buffer_sum"], dtype=np.float64).copy()
        self.buf_cnt = np.asarray(state["buffer_count"], dtype=np.float64).copy()
        self._keep_rows_from(np.asarray(state["buffer_x"], dtype=np.float32))
        self.since_train, self.n_trainings = (int(v) for v in state["counters"])

    def config(self) -> dict[str, Any]:
        return {
            "hidden": list(self.hidden),
            "epochs": self.epochs,
            "train_every": self.train_every,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "epsilon": self.epsilon,
            "buffer_size": self.buffer_size,
            "device": self.device_name,
            "seed": self.seed,
        }
