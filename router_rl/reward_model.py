"""A reward model: predicted judge quality of every model for a prompt embedding, learned from judge grades.

    q_hat_k(x) = sigmoid(a * z_k(x) + b),   z_k(x) = c_k + w_k . h(x),   h(x) = GELU(W x + v)

``c_k`` starts at the logit of model k's mean grade, so with little data the model falls back to the
per-model means and the prompt-specific part only adds what the data supports (weight decay, early stopping
on held-out prompts). It is fitted with binary cross-entropy on soft targets (the grades in [0, 1]), a proper
scoring rule, and then calibrated by Platt scaling (``a``, ``b``) on the held-out prompts, so predictions are
calibrated probabilities-of-quality in [0, 1]. Torch, on ``cuda`` when available (``device="auto"``).

Uses:

- :meth:`RewardModel.predict` ``(N, d) -> (N, K)``: the direct-method part of a doubly robust estimator, and
  the quality of (prompt, model) pairs that have no recorded grade (see ``router_rl.envs.wrappers``).
- :func:`pseudo_feedback` / :func:`warm_start`: feedback batches any policy can ``update()`` on, to start a
  bandit from the reward model instead of from nothing.
- :func:`evaluate` / :func:`cross_validate`: held-out MAE, per-prompt rank correlation, top-1 gap and
  calibration error; :func:`log_metrics` sends them to MLflow through :class:`router_rl.tracking.Tracker`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FORMAT = "router-rl-reward-model"
VERSION = 1


def _torch():
    import torch

    return torch


def _net(dim: int, n_models: int, hidden: int, dropout: float):
    torch = _torch()
    nn = torch.nn

    class QualityNet(nn.Module):
        """(B, d) embeddings -> (B, K) quality logits: per-model bias + per-model weights on a shared trunk."""

        def __init__(self) -> None:
            super().__init__()
            self.trunk = (
                nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout))
                if hidden > 0
                else nn.Identity()
            )
            self.head = nn.Linear(hidden if hidden > 0 else dim, n_models, bias=False)
            self.bias = nn.Parameter(torch.zeros(n_models))
            nn.init.normal_(self.head.weight, std=0.01)

        def forward(self, x):
            return self.head(self.trunk(x)) + self.bias

    return QualityNet()


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


class RewardModel:
    """Predicted judge quality in [0, 1] for (prompt embedding, model).

    Args:
        models: the models (output columns), in order.
        dim: embedding dimension.
        hidden: width of the shared trunk; 0 makes it linear in the embedding.
        dropout: dropout after the trunk while training.
        lr: Adam learning rate.
        weight_decay: decoupled weight decay (AdamW) of the weights.
        epochs: the most passes over the training pairs.
        batch_size: pairs per step (full batch when there are fewer).
        patience: epochs without a better held-out loss before stopping.
        valid_fraction: share of prompts held out for early stopping and calibration.
        calibrate: fit Platt scaling on the held-out prompts.
        device: ``auto`` (``cuda`` when present, else ``cpu``), ``cpu``, ``cuda``...
        cpu_threads: torch intra-op threads while fitting and predicting on CPU (restored afterwards); None
            keeps torch's setting. The default 1 suits this small network: on 2 busy cores a fit measured
            0.4 s with one thread and 2.4-20 s with two (threads spin-waiting on each other).
        seed: seeds the split, the initialisation and dropout (global RNG state is left untouched).
    """

    name = "reward_model"

    def __init__(
        self,
        models: Sequence[str],
        dim: int,
        *,
        hidden: int = 64,
        dropout: float = 0.1,
        lr: float = 3e-3,
        weight_decay: float = 0.05,
        epochs: int = 300,
        batch_size: int = 4096,
        patience: int = 30,
        valid_fraction: float = 0.15,
        calibrate: bool = True,
        device: str | None = "auto",
        cpu_threads: int | None = 1,
        seed: int = 0,
    ) -> None:
        from router_rl.embeddings import pick_device

        if not models:
            raise ValueError("RewardModel needs at least one model")
        if not 0 <= valid_fraction < 1:
            raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
        self.models = list(models)
        self.dim = int(dim)
        self.hparams = {
            "hidden": int(hidden),
            "dropout": float(dropout),
            "lr": float(lr),
            "weight_decay": float(weight_decay),
            "epochs": int(epochs),
            "batch_size": int(batch_size),
            "patience": int(patience),
            "valid_fraction": float(valid_fraction),
            "calibrate": bool(calibrate),
            "seed": int(seed),
        }
        self.device = pick_device(device)
        self.cpu_threads = cpu_threads
        self.calibration = (1.0, 0.0)  # Platt (a, b) on the logits
        self.report: dict[str, Any] = {}
        torch = _torch()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = _net(self.dim, len(self.models), self.hparams["hidden"], self.hparams["dropout"]).to(
                self.device
            )
        self.fitted = False

    # ------------------------------------------------------------------------------------ fitting
    def fit(self, embeddings: np.ndarray, quality: np.ndarray) -> dict[str, Any]:
        """Fit on a wide table: ``embeddings`` (N, d) and ``quality`` (N, K) in [0, 1], NaN where ungraded."""
        quality = np.asarray(quality, dtype=np.float64)
        if quality.shape != (len(embeddings), len(self.models)):
            raise ValueError(
                f"quality must be (N, K) = ({len(embeddings)}, {len(self.models)}), got {quality.shape}"
            )
        p, m = np.nonzero(~np.isnan(quality))
        return self.fit_pairs(embeddings, p, m, quality[p, m])

    def fit_pairs(
        self, embeddings: np.ndarray, prompt_index: np.ndarray, model_index: np.ndarray, quality: np.ndarray
    ) -> dict[str, Any]:
        """Fit on graded pairs in long form (repeated grades of one pair are fine: noisy judges).

        Args:
            embeddings: (N, d) prompt embeddings.
            prompt_index, model_index: (M,) the graded pairs, as rows of ``embeddings`` and indices of ``models``.
            quality: (M,) their grades in [0, 1].
        Returns:
            the fit report (also in ``self.report``): pairs, prompts, epochs, held-out loss and MAE, calibration.
        """
        torch = _torch()
        x_all = np.asarray(embeddings, dtype=np.float32)
        p, m = np.asarray(prompt_index, dtype=np.int64), np.asarray(model_index, dtype=np.int64)
        y = np.asarray(quality, dtype=np.float64)
        if x_all.ndim != 2 or x_all.shape[1] != self.dim:
            raise ValueError(f"embeddings must be (N, {self.dim}), got {x_all.shape}")
        if not (p.shape == m.shape == y.shape and p.ndim == 1):
            raise ValueError(
                f"prompt_index, model_index and quality must be (M,), got {p.shape}, {m.shape}, {y.shape}"
            )
        if len(y) == 0:
            raise ValueError("no graded pairs to fit on")
        if not (np.isfinite(y).all() and (y >= 0).all() and (y <= 1).all()):
            raise ValueError("quality must be finite and in [0, 1]")
        if p.min() < 0 or p.max() >= len(x_all) or m.min() < 0 or m.max() >= len(self.models):
            raise ValueError("prompt_index or model_index out of range")
        hp = self.hparams
        rng = np.random.default_rng(hp["seed"])
        prompts = np.unique(p)
        n_valid = int(round(hp["valid_fraction"] * len(prompts))) if len(prompts) >= 5 else 0
        valid_prompts = rng.permutation(prompts)[:n_valid]
        is_valid = np.isin(p, valid_prompts)
        tr, va = np.flatnonzero(~is_valid), np.flatnonzero(is_valid)

        # per-model mean grade (on the training pairs) as the starting bias; unseen models get the overall mean
        sums, counts = (
            np.bincount(m[tr], y[tr], len(self.models)),
            np.bincount(m[tr], minlength=len(self.models)),
        )
        means = np.where(counts > 0, sums / np.maximum(counts, 1), y[tr].mean())
        dev = self.device
        x_t = torch.as_tensor(x_all, device=dev)
        p_t, m_t = torch.as_tensor(p, device=dev), torch.as_tensor(m, device=dev)
        y_t = torch.as_tensor(y, dtype=torch.float32, device=dev)
        saved_threads = self._limit_threads()
        try:
            best_loss, best_epoch, epoch = self._train(x_t, p_t, m_t, y_t, tr, va, means)
        finally:
            self._restore_threads(saved_threads)
        self.fitted = True
        report: dict[str, Any] = {
            "n_pairs": int(len(y)),
            "n_prompts": int(len(prompts)),
            "n_valid_prompts": int(n_valid),
            "epochs": int(epoch),
            "best_epoch": int(best_epoch),
            "calibration_a": float(self.calibration[0]),
            "calibration_b": float(self.calibration[1]),
        }
        if len(va):
            pred = self.predict(x_all[p[va]])[np.arange(len(va)), m[va]]
            report["valid_loss"] = float(best_loss)
            report["valid_mae"] = float(np.abs(pred - y[va]).mean())
        self.report = report
        return report

    def _train(
        self, x_t: Any, p_t: Any, m_t: Any, y_t: Any, tr: np.ndarray, va: np.ndarray, means: np.ndarray
    ):
        """AdamW on the masked BCE, early stopping on the held-out pairs ``va``, then Platt scaling on them.
        Returns (best held-out loss, best epoch, epochs run)."""
        torch = _torch()
        hp, dev = self.hparams, self.device
        bce = torch.nn.functional.binary_cross_entropy_with_logits

        def logits_of(idx) -> Any:
            return self.net(x_t[p_t[idx]]).gather(1, m_t[idx, None])[:, 0]

        def snapshot() -> dict[str, Any]:
            return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hp["seed"])
            with torch.no_grad():
                self.net.bias.copy_(torch.as_tensor(_logit(means), dtype=torch.float32))
            weights = [q for n, q in self.net.named_parameters() if n != "bias"]
            opt = torch.optim.AdamW(
                [
                    {"params": weights, "weight_decay": hp["weight_decay"]},
                    {"params": [self.net.bias], "weight_decay": 0.0},
                ],
                lr=hp["lr"],
            )
            tr_t, va_t = torch.as_tensor(tr, device=dev), torch.as_tensor(va, device=dev)
            best_loss, best_epoch, best_state = float("inf"), 0, snapshot()
            epoch, bs = 0, max(1, hp["batch_size"])
            for epoch in range(1, hp["epochs"] + 1):
                self.net.train()
                order = tr_t[torch.randperm(len(tr_t), device=dev)] if len(tr_t) > bs else tr_t
                for start in range(0, len(order), bs):
                    idx = order[start : start + bs]
                    loss = bce(logits_of(idx), y_t[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                if not len(va):
                    continue
                self.net.eval()
                with torch.no_grad():
                    valid_loss = float(bce(logits_of(va_t), y_t[va_t]))
                if valid_loss < best_loss - 1e-6:
                    best_loss, best_epoch, best_state = valid_loss, epoch, snapshot()
                elif epoch - best_epoch >= hp["patience"]:
                    break
            self.net.eval()
            self.calibration = (1.0, 0.0)
            if not len(va):
                return float("nan"), epoch, epoch
            self.net.load_state_dict(best_state)
            if hp["calibrate"]:
                with torch.no_grad():
                    z = logits_of(va_t).detach()
                self.calibration = _platt(z, y_t[va_t])
        return best_loss, best_epoch, epoch

    def _limit_threads(self) -> int | None:
        torch = _torch()
        if self.cpu_threads is None or not str(self.device).startswith("cpu"):
            return None
        saved = torch.get_num_threads()
        torch.set_num_threads(int(self.cpu_threads))
        return saved

    def _restore_threads(self, saved: int | None) -> None:
        if saved is not None:
            _torch().set_num_threads(saved)

    # --------------------------------------------------------------------------------- prediction
    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, K) calibrated logits of ``embeddings`` (N, d)."""
        torch = _torch()
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"embeddings must be (N, {self.dim}), got {x.shape}")
        self.net.eval()
        out = []
        saved = self._limit_threads()
        try:
            with torch.no_grad():
                for start in range(0, len(x), 8192):
                    z = self.net(torch.as_tensor(x[start : start + 8192], device=self.device))
                    out.append((self.calibration[0] * z + self.calibration[1]).double().cpu().numpy())
        finally:
            self._restore_threads(saved)
        return np.concatenate(out) if out else np.zeros((0, len(self.models)))

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, K) predicted judge quality in [0, 1] of every model for each of ``embeddings`` (N, d)."""
        return 1.0 / (1.0 + np.exp(-self.logits(embeddings)))

    # -------------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, np.ndarray]:
        state = {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        state["calibration"] = np.asarray(self.calibration, dtype=np.float64)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        torch = _torch()
        state = dict(state)
        self.calibration = tuple(float(v) for v in np.asarray(state.pop("calibration")))
        self.net.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()})
        self.net.to(self.device)
        self.fitted = True

    def config(self) -> dict[str, Any]:
        return dict(self.hparams)

    def save(self, directory: str | Path) -> Path:
        """Write ``reward_model.json`` (models, dim, hyperparameters, fit report) and ``reward_model.safetensors``."""
        from safetensors.numpy import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: np.ascontiguousarray(v) for k, v in self.state_dict().items()},
            str(out / "reward_model.safetensors"),
        )
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "models": self.models,
            "dim": self.dim,
            "config": self.config(),
            "report": self.report,
        }
        (out / "reward_model.json").write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def load(cls, directory: str | Path, *, device: str | None = "auto") -> RewardModel:
        """A model written by :meth:`save`; raises ValueError naming the file when it is not one."""
        from safetensors.numpy import load_file

        path = Path(directory)
        try:
            meta = json.loads((path / "reward_model.json").read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path / 'reward_model.json'}: cannot read a reward model ({err})") from err
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(
                f"{path}: not a {FORMAT} v{VERSION} directory (found {meta.get('format')} v{meta.get('version')})"
            )
        model = cls(meta["models"], meta["dim"], device=device, **meta["config"])
        model.load_state_dict(load_file(str(path / "reward_model.safetensors")))
        model.report = meta.get("report", {})
        return model


def _platt(z: Any, y: Any, steps: int = 200) -> tuple[float, float]:
    """Platt scaling: (a, b) minimising BCE(sigmoid(a z + b), y); a is kept positive (order preserved)."""
    torch = _torch()
    z, y = z.double().cpu(), y.double().cpu()
    log_a = torch.zeros((), dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_a, b], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(log_a.exp() * z + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    a, bb = float(log_a.detach().exp()), float(b.detach())
    return (a, bb) if np.isfinite(a) and np.isfinite(bb) else (1.0, 0.0)


# ------------------------------------------------------------------------------------------ metrics
def rank_correlation(predicted: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """(N,) Spearman correlation per prompt between predicted and graded quality over its graded models.

    Average ranks for ties. NaN for a prompt with fewer than two graded models or constant grades or
    predictions (no ranking to compare).
    """
    pred = np.where(np.isnan(quality), np.nan, np.asarray(predicted, dtype=np.float64))
    rp = pd.DataFrame(pred).rank(axis=1).to_numpy()
    rq = pd.DataFrame(np.asarray(quality, dtype=np.float64)).rank(axis=1).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        cp = rp - np.nanmean(rp, axis=1, keepdims=True)
        cq = rq - np.nanmean(rq, axis=1, keepdims=True)
        num = np.nansum(cp * cq, axis=1)
        den = np.sqrt(np.nansum(cp**2, axis=1) * np.nansum(cq**2, axis=1))
        rho = num / den
    return np.where(den > 1e-12, rho, np.nan)


def evaluate(predicted: np.ndarray, quality: np.ndarray, *, bins: int = 10) -> dict[str, float]:
    """Held-out accuracy of predicted quality against graded quality.

    Args:
        predicted: (N, K) predictions in [0, 1].
        quality: (N, K) grades in [0, 1], NaN where ungraded (those pairs are ignored).
    Returns:
        ``mae`` and ``rmse`` over graded pairs; ``rank_corr``: mean per-prompt Spearman correlation over
        prompts that have a ranking (``n_ranked``); ``top1_gap``: mean over prompts of the best graded quality
        minus the graded quality of the model predicted best (0 = always picks a best model);
        ``calibration_error``: expected calibration error over ``bins`` equal-width bins of the prediction;
        ``n_pairs``, ``n_prompts``.
    """
    predicted, quality = np.asarray(predicted, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    if predicted.shape != quality.shape:
        raise ValueError(f"predicted {predicted.shape} and quality {quality.shape} differ in shape")
    mask = ~np.isnan(quality)
    if not mask.any():
        raise ValueError("no graded pairs to evaluate on")
    err = predicted[mask] - quality[mask]
    rho = rank_correlation(predicted, quality)
    rows = mask.sum(axis=1) >= 1
    masked_pred = np.where(mask, predicted, -np.inf)[rows]
    chosen = quality[rows][np.arange(rows.sum()), masked_pred.argmax(axis=1)]
    top1_gap = np.nanmax(quality[rows], axis=1) - chosen
    which = np.minimum((predicted[mask] * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(predicted[mask][sel].mean() - quality[mask][sel].mean())
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "rank_corr": float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan"),
        "n_ranked": int(np.isfinite(rho).sum()),
        "top1_gap": float(top1_gap.mean()),
        "calibration_error": float(ece),
        "n_pairs": int(mask.sum()),
        "n_prompts": int(rows.sum()),
    }


def model_mean_baseline(quality_train: np.ndarray, n_rows: int) -> np.ndarray:
    """(n_rows, K) the context-free predictor: each model's mean graded quality on the training rows."""
    means = np.nanmean(np.asarray(quality_train, dtype=np.float64), axis=0)
    means = np.where(np.isnan(means), np.nanmean(quality_train), means)
    return np.tile(means, (n_rows, 1))


def cross_validate(
    embeddings: np.ndarray,
    quality: np.ndarray,
    models: Sequence[str],
    *,
    prompt_ids: np.ndarray | None = None,
    folds: int = 5,
    seed: int = 0,
    **model_kwargs: Any,
) -> dict[str, Any]:
    """K-fold cross-fitting over prompts: every prompt is predicted by a model that never saw its grades.

    Returns:
        ``{"reward_model": evaluate(...), "model_mean": evaluate(...) of the per-model-mean baseline,
        "folds": folds, "oof": (N, K) out-of-fold predictions, "fold_reports": [fit reports]}``.
    """
    from router_rl.data import kfold_assignments

    quality = np.asarray(quality, dtype=np.float64)
    ids = np.asarray(
        prompt_ids if prompt_ids is not None else np.arange(len(quality)).astype(str), dtype=object
    )
    assign = kfold_assignments(ids, k=folds, seed=seed)
    oof, base = np.full(quality.shape, np.nan), np.full(quality.shape, np.nan)
    reports = []
    for f in range(folds):
        train, test = assign != f, assign == f
        rm = RewardModel(models, embeddings.shape[1], seed=seed + f, **model_kwargs)
        reports.append(rm.fit(embeddings[train], quality[train]))
        oof[test] = rm.predict(embeddings[test])
        base[test] = model_mean_baseline(quality[train], int(test.sum()))
    return {
        "reward_model": evaluate(oof, quality),
        "model_mean": evaluate(base, quality),
        "folds": folds,
        "oof": oof,
        "fold_reports": reports,
    }


def log_metrics(
    tracker: Any, metrics: dict[str, Any], *, prefix: str = "reward_model", step: int | None = None
) -> None:
    """Log the numeric entries of ``metrics`` (e.g. :func:`evaluate`'s, or :func:`cross_validate`'s nested
    ``reward_model``/``model_mean`` dicts) to MLflow as ``<prefix>/<key>`` through a
    :class:`router_rl.tracking.Tracker` (a disabled tracker logs nothing)."""
    flat: dict[str, float] = {}

    def walk(d: dict[str, Any], path: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{path}/{k}")
            elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                flat[f"{path}/{k}"] = float(v)

    walk(metrics, prefix)
    tracker.log_metrics(flat, step)


# ---------------------------------------------------------------------------------- pseudo feedback
@dataclass
class Feedback:
    """One batch of (pseudo-)bandit feedback in the arguments of ``Policy.update``.

    ``x`` (B, d) contexts, ``actions`` (B,) model indices, ``quality`` (B,), ``cost`` (B,) cost_usd / cost_scale,
    ``latency`` (B,) seconds. ``policy.update(*feedback)`` or ``feedback.apply(policy)``.
    """

    x: np.ndarray
    actions: np.ndarray
    quality: np.ndarray
    cost: np.ndarray
    latency: np.ndarray

    def __iter__(self):
        return iter((self.x, self.actions, self.quality, self.cost, self.latency))

    def __len__(self) -> int:
        return len(self.actions)

    def apply(self, policy: Any, *, batch_size: int = 256) -> None:
        """``policy.update`` on this feedback in batches of ``batch_size``."""
        for s in range(0, len(self), batch_size):
            sl = slice(s, s + batch_size)
            policy.update(self.x[sl], self.actions[sl], self.quality[sl], self.cost[sl], self.latency[sl])


def _per_pair(values: np.ndarray | float | None, n: int, k: int, what: str) -> np.ndarray:
    arr = np.zeros((n, k)) if values is None else np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full((n, k), float(arr))
    elif arr.shape == (k,):
        arr = np.tile(arr, (n, 1))
    if arr.shape != (n, k) or not np.isfinite(arr).all():
        raise ValueError(
            f"{what} must be a number, (K,) = ({k},) or (N, K) = ({n}, {k}) finite array, got {arr.shape}"
        )
    return arr


def pseudo_feedback(
    reward_model: RewardModel,
    embeddings: np.ndarray,
    *,
    cost: np.ndarray | float,
    latency: np.ndarray | float | None = None,
    per_prompt: int | str = "all",
    noise_std: float = 0.0,
    rng: np.random.Generator | None = None,
) -> Feedback:
    """Pseudo-feedback from the reward model that any policy can ``update()`` on (a bandit warm start).

    For each prompt, ``per_prompt`` models (``"all"``: every model; an int: that many distinct models drawn
    uniformly) get the reward model's predicted quality (plus N(0, ``noise_std``) noise, clipped to [0, 1])
    as their observed quality, with the given cost and latency.

    Args:
        reward_model: a fitted model.
        embeddings: (N, d) prompts to warm up on (training prompts only, for honest evaluation).
        cost: cost_usd / cost_scale per pair: a number, (K,) per model (e.g. each model's mean normalised
            cost) or (N, K).
        latency: latency in seconds in the same shapes; None gives zeros.
        per_prompt: ``"all"`` or the number of models per prompt.
        noise_std: standard deviation of noise added to the predicted quality.
        rng: randomness of the drawn models and the noise.
    Returns:
        a :class:`Feedback` of N * per_prompt rows, prompt-major.

    Note: a pseudo-observation counts like a real one in the policy's statistics (LinUCB's design matrix,
    a zero router's counts), so a policy warmed on ``"all"`` models of many prompts is confident in the
    reward model; use fewer prompts or ``per_prompt`` to keep room for exploration.
    """
    rng = rng or np.random.default_rng(0)
    x = np.asarray(embeddings, dtype=np.float64)
    n, k = len(x), len(reward_model.models)
    q = reward_model.predict(x)
    c, lat = _per_pair(cost, n, k, "cost"), _per_pair(latency, n, k, "latency")
    if per_prompt == "all":
        rows, acts = np.repeat(np.arange(n), k), np.tile(np.arange(k), n)
    else:
        m = int(per_prompt)
        if not 1 <= m <= k:
            raise ValueError(f"per_prompt must be 'all' or an int in [1, {k}], got {per_prompt!r}")
        rows = np.repeat(np.arange(n), m)
        acts = np.concatenate([rng.permutation(k)[:m] for _ in range(n)]) if n else np.zeros(0, dtype=int)
    quality = q[rows, acts]
    if noise_std > 0:
        quality = np.clip(quality + rng.normal(0.0, noise_std, size=quality.shape), 0.0, 1.0)
    return Feedback(x[rows], acts.astype(np.int64), quality, c[rows, acts], lat[rows, acts])


def warm_start(policy: Any, reward_model: RewardModel, embeddings: np.ndarray, **kwargs: Any) -> int:
    """Update ``policy`` on :func:`pseudo_feedback` (same keyword arguments); returns the rows applied.

    The policy's ``models`` must be the reward model's, in the same order.
    """
    if list(getattr(policy, "models", reward_model.models)) != list(reward_model.models):
        raise ValueError(
            f"policy models {list(policy.models)} differ from the reward model's {reward_model.models}; "
            "warm start needs the same models in the same order"
        )
    feedback = pseudo_feedback(reward_model, embeddings, **kwargs)
    feedback.apply(policy)
    return len(feedback)
