"""The reward model: learns prompt-dependent quality, calibrated to [0, 1]; metrics; persistence; warm start."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from router_rl.reward_model import (
    Feedback,
    RewardModel,
    cross_validate,
    evaluate,
    log_metrics,
    model_mean_baseline,
    pseudo_feedback,
    rank_correlation,
    warm_start,
)

MODELS = ("generalist", "coder", "poet")
DIM = 16


def synthetic(n: int = 240, seed: int = 0, noise: float = 0.08) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings, true quality, graded quality with NaN holes): the coder is good where x0 > 0, the poet
    where x0 < 0, the generalist is middling everywhere."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = x[:, 0] * np.sqrt(DIM)  # ~N(0, 1)
    true = np.stack([np.full(n, 0.6), 1 / (1 + np.exp(-2.5 * s)), 1 / (1 + np.exp(2.5 * s))], axis=1)
    graded = np.clip(true + rng.normal(0, noise, size=true.shape), 0, 1)
    graded[rng.random(graded.shape) < 0.1] = np.nan  # some pairs were never graded
    return x, true, graded


FAST = {"hidden": 32, "epochs": 150, "patience": 20, "lr": 0.01}


@pytest.fixture(scope="module")
def fitted() -> tuple[RewardModel, np.ndarray, np.ndarray, np.ndarray]:
    x, true, graded = synthetic()
    train, test = np.arange(180), np.arange(180, 240)
    rm = RewardModel(MODELS, DIM, device="cpu", seed=0, **FAST)
    report = rm.fit(x[train], graded[train])
    assert report["n_prompts"] == 180 and report["n_valid_prompts"] == 27 and report["best_epoch"] >= 1
    return rm, x[test], true[test], graded[test]


def test_learns_prompt_dependent_quality_better_than_model_means(fitted) -> None:
    rm, x, true, graded = fitted
    pred = rm.predict(x)
    assert pred.shape == (60, 3) and pred.dtype == np.float64
    assert (pred >= 0).all() and (pred <= 1).all()
    ours = evaluate(pred, graded)
    base = evaluate(model_mean_baseline(graded, 60), graded)
    assert ours["mae"] < 0.12 < base["mae"]  # measured ~0.08 vs ~0.2
    assert ours["rank_corr"] > 0.8 > base["rank_corr"] + 0.3
    assert ours["top1_gap"] < 0.05 < base["top1_gap"]
    assert ours["calibration_error"] < 0.06
    assert np.abs(pred - true).mean() < 0.08  # close to the noiseless truth, not only to the noisy grades


def test_evaluate_and_rank_correlation_known_values() -> None:
    q = np.array([[0.1, 0.5, 0.9], [0.9, 0.5, 0.1], [0.3, 0.3, np.nan], [0.2, np.nan, np.nan]])
    pred = np.array([[0.2, 0.4, 0.8], [0.2, 0.4, 0.8], [0.1, 0.9, 0.5], [0.7, 0.1, 0.1]])
    rho = rank_correlation(pred, q)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(-1.0)
    assert np.isnan(rho[2]) and np.isnan(rho[3])  # tied grades / one graded model: no ranking
    m = evaluate(pred, q)
    err = np.abs(pred - q)[~np.isnan(q)]
    assert m["mae"] == pytest.approx(err.mean()) and m["n_pairs"] == 9 and m["n_prompts"] == 4
    assert m["rank_corr"] == pytest.approx(0.0) and m["n_ranked"] == 2
    # picked: 0.9 (best), 0.1 (best 0.9), 0.3 (best 0.3), 0.2 (only one)
    assert m["top1_gap"] == pytest.approx((0 + 0.8 + 0 + 0) / 4)
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate(pred[:2], q)


def test_calibration_maps_into_unit_interval_and_is_monotone() -> None:
    x, _, graded = synthetic(n=120, seed=3)
    rm = RewardModel(MODELS, DIM, device="cpu", seed=1, **FAST)
    rm.fit(x, graded)
    a, b = rm.calibration
    assert a > 0 and np.isfinite(b)
    z = rm.net(__import__("torch").as_tensor(x)).detach().numpy()
    p = rm.predict(x)
    order = np.argsort(z[:, 1])
    assert (np.diff(p[order, 1]) >= -1e-12).all()  # Platt scaling keeps the ranking


def test_deterministic_and_save_load_round_trip(fitted, tmp_path: Path) -> None:
    rm, x, _, _ = fitted
    x_all, _, graded = synthetic()
    again = RewardModel(MODELS, DIM, device="cpu", seed=0, **FAST)
    again.fit(x_all[:180], graded[:180])
    np.testing.assert_allclose(again.predict(x), rm.predict(x), atol=1e-6)
    rm.save(tmp_path / "rm")
    loaded = RewardModel.load(tmp_path / "rm", device="cpu")
    assert loaded.models == list(MODELS) and loaded.report["n_prompts"] == 180
    np.testing.assert_allclose(loaded.predict(x), rm.predict(x), atol=1e-7)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "reward_model.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a router-rl-reward-model"):
        RewardModel.load(tmp_path / "bad")


def test_fit_rejects_bad_inputs() -> None:
    rm = RewardModel(MODELS, DIM, device="cpu")
    x = np.zeros((4, DIM), np.float32)
    with pytest.raises(ValueError, match=r"quality must be \(N, K\)"):
        rm.fit(x, np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        rm.fit(x, np.full((4, 3), 1.5))
    with pytest.raises(ValueError, match="no graded pairs"):
        rm.fit(x, np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match=r"embeddings must be \(N, 16\)"):
        rm.predict(np.zeros((2, 5)))


def test_cross_validate_reports_out_of_fold_accuracy() -> None:
    x, _, graded = synthetic(n=100, seed=5)
    res = cross_validate(x, graded, MODELS, folds=3, seed=0, device="cpu", **{**FAST, "epochs": 60})
    assert res["oof"].shape == graded.shape and not np.isnan(res["oof"]).any()
    assert res["reward_model"]["n_pairs"] == int((~np.isnan(graded)).sum())
    assert res["reward_model"]["mae"] < res["model_mean"]["mae"]
    assert len(res["fold_reports"]) == 3


def test_pseudo_feedback_warm_starts_a_bandit(fitted) -> None:
    from router_rl.policies.linucb import LinUCB

    rm, x, true, _ = fitted
    cost = np.array([0.5, 0.2, 0.2])
    fb = pseudo_feedback(rm, x, cost=cost)
    assert isinstance(fb, Feedback) and len(fb) == 60 * 3
    x_b, actions, quality, c, latency = fb  # unpacks in Policy.update's argument order
    assert x_b.shape == (180, DIM) and (actions[:3] == [0, 1, 2]).all()
    np.testing.assert_allclose(quality.reshape(60, 3), rm.predict(x))
    assert (c.reshape(60, 3) == cost).all() and (latency == 0).all()
    some = pseudo_feedback(rm, x, cost=0.1, per_prompt=2, noise_std=0.05, rng=np.random.default_rng(0))
    assert len(some) == 120 and all(len(set(some.actions[i : i + 2])) == 2 for i in range(0, 120, 2))
    assert (some.quality >= 0).all() and (some.quality <= 1).all()

    policy = LinUCB(models=list(MODELS), dim=DIM, ridge=1.0, bias_ridge=0.01)
    assert warm_start(policy, rm, x, cost=cost) == 180
    chosen = policy.probs(x, cost_weight=0.0).argmax(axis=1)
    best = true.argmax(axis=1)
    assert (chosen == best).mean() > 0.85  # routes by prompt with no real feedback at all
    with pytest.raises(ValueError, match="same models in the same order"):
        warm_start(LinUCB(models=["a", "b", "c"], dim=DIM), rm, x, cost=cost)
    with pytest.raises(ValueError, match="cost must be"):
        pseudo_feedback(rm, x, cost=np.ones(5))


def test_metrics_reach_mlflow_through_the_tracker(fitted) -> None:
    """Through the real Tracker down to its mlflow.log_metrics call (a recording stand-in for the mlflow
    module: creating a fresh MLflow sqlite store takes ~15 s here; experiments/judge_feedback.py logs to a
    real one)."""
    from router_rl.tracking import Tracker

    class RecordingMlflow:
        logged: list[tuple[dict[str, float], int | None]] = []

        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            self.logged.append((metrics, step))

    rm, x, _, graded = fitted
    metrics = {"heldout": evaluate(rm.predict(x), graded), "fit": rm.report, "note": "text is skipped"}
    tracker = Tracker(True)
    tracker._mlflow = RecordingMlflow()
    log_metrics(tracker, metrics, step=3)
    (logged, step), *rest = RecordingMlflow.logged
    assert not rest and step == 3
    assert logged["reward_model/heldout/mae"] == pytest.approx(metrics["heldout"]["mae"])
    assert logged["reward_model/heldout/rank_corr"] == pytest.approx(metrics["heldout"]["rank_corr"])
    assert logged["reward_model/fit/n_prompts"] == 180.0
    assert not any("note" in k for k in logged)
    log_metrics(Tracker(False), metrics)  # a disabled tracker logs nothing and does not fail


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda(fitted) -> None:
    rm, x, _, graded = fitted
    x_all, _, g_all = synthetic()
    gpu = RewardModel(MODELS, DIM, device="cuda", seed=0, **FAST)
    gpu.fit(x_all[:180], g_all[:180])
    assert gpu.device == "cuda"
    assert abs(evaluate(gpu.predict(x), graded)["mae"] - evaluate(rm.predict(x), graded)["mae"]) < 0.02
