"""Off-policy estimators against the true value on full-information data, and their input checks."""

from __future__ import annotations

import numpy as np
import pytest

from router_rl.ope import doubly_robust, estimate_all, ips, sample_split, snips


def logged_bandit(seed: int, n: int = 3000, k: int = 4, epsilon: float = 0.3):
    """Full-information data, an epsilon-greedy logger over a noisy greedy behaviour, Bernoulli rewards.
    Returns the logged arrays, a deterministic target policy's probabilities, and its TRUE value."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    means = 1 / (1 + np.exp(-(x @ rng.normal(size=(3, k)) + np.linspace(-0.5, 0.5, k))))  # (n, k) in (0, 1)
    behaviour = np.eye(k)[np.argmax(means + rng.normal(scale=0.5, size=means.shape), axis=1)]
    logging = (1 - epsilon) * behaviour + epsilon / k
    actions = np.array([rng.choice(k, p=p) for p in logging])
    propensities = logging[np.arange(n), actions]
    rewards = (rng.random(n) < means[np.arange(n), actions]).astype(float)
    target = np.eye(k)[np.where(x[:, 0] > 0, k - 1, 0)]  # a deterministic policy unlike the logger
    true_value = float((target * means).sum(axis=1).mean())
    return rewards, propensities, actions, target, means, true_value


def test_estimates_cover_the_true_value_on_one_dataset() -> None:
    r, mu, a, target, means, truth = logged_bandit(0)
    out = estimate_all(r, mu, a, target, q_hat=means)
    for name, est in out.items():
        assert est.ci_low <= truth <= est.ci_high, (name, est, truth)
        assert est.n == len(r)
    # with the true reward model, DR is far tighter than IPS
    assert (out["dr"].ci_high - out["dr"].ci_low) < 0.6 * (out["ips"].ci_high - out["ips"].ci_low)


def test_interval_coverage_is_near_nominal_over_seeds() -> None:
    hits = {"ips": 0, "snips": 0, "dr": 0}
    trials = 60
    for seed in range(trials):
        r, mu, a, target, means, truth = logged_bandit(seed, n=1500)
        wrong_model = np.clip(means + 0.2, 0, 1)  # a biased reward model: DR must stay consistent
        for name, est in estimate_all(r, mu, a, target, q_hat=wrong_model).items():
            hits[name] += est.ci_low <= truth <= est.ci_high
    for name, count in hits.items():
        assert 0.85 <= count / trials <= 1.0, (name, count)


def test_on_real_arena_outcomes_with_uniform_logging() -> None:
    from router_rl.data import load_bundled

    data = load_bundled("arena")
    data = data.take(data.complete_rows())
    q = data.quality  # (270, 16) full information: the true value of any policy is known
    rng = np.random.default_rng(7)
    reps = 8  # log each prompt several times under a uniform logger
    rows = np.repeat(np.arange(data.n_prompts), reps)
    k = data.n_models
    actions = rng.integers(0, k, size=rows.size)
    mu = np.full(rows.size, 1.0 / k)
    rewards = q[rows, actions]
    best = data.models.index("gpt-4-1106-preview")
    cheap = data.models.index("gpt-3.5-turbo")
    target = np.zeros((rows.size, k))
    target[:, best] = 0.7
    target[:, cheap] = 0.3
    truth = float(0.7 * q[:, best].mean() + 0.3 * q[:, cheap].mean())
    for est in estimate_all(rewards, mu, actions, target, q_hat=np.tile(q.mean(0), (rows.size, 1))).values():
        assert est.ci_low <= truth <= est.ci_high, (est, truth)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([1.0, 0.0], [0.5], [1.0, 1.0]), "equal length"),
        (([1.0, 0.0], [0.5, 0.0], [1.0, 1.0]), r"propensities must lie in \(0, 1\]"),
        (([1.0, 0.0], [0.5, 0.5], [1.0, 1.5]), r"target_probs must lie in \[0, 1\]"),
        (([np.nan, 0.0], [0.5, 0.5], [1.0, 1.0]), "rewards must be finite"),
        (([], [], []), "non-empty"),
    ],
)
def test_ips_rejects_bad_inputs(args, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ips(*args)


def test_snips_and_dr_input_errors() -> None:
    with pytest.raises(ValueError, match="never takes any logged action"):
        snips([1.0, 0.0], [0.5, 0.5], [0.0, 0.0])
    with pytest.raises(ValueError, match="must equal target_probs_all"):
        doubly_robust([1.0], [0.5], [1.0], [0], [[0.0, 1.0]], [[0.5, 0.5]])
    with pytest.raises(ValueError, match=r"actions must lie in \[0, 2\)"):
        doubly_robust([1.0], [0.5], [1.0], [2], [[0.0, 1.0]], [[0.5, 0.5]])


def test_hand_computed_values() -> None:
    # w = [2, 0, 1]; IPS = (2*1 + 0 + 1*0)/3 = 2/3; SNIPS = 2 / 3
    r, mu, pi = [1.0, 1.0, 0.0], [0.5, 0.5, 1.0], [1.0, 0.0, 1.0]
    assert ips(r, mu, pi).value == pytest.approx(2 / 3)
    assert snips(r, mu, pi).value == pytest.approx(2 / 3)
    # DR with q_hat = 0.5 everywhere and a deterministic target: 0.5 + w (r - 0.5)
    p_all = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    est = doubly_robust(r, mu, pi, [0, 1, 1], p_all, np.full((3, 2), 0.5))
    assert est.value == pytest.approx(np.mean([0.5 + 2 * 0.5, 0.5 + 0 * 0.5, 0.5 + 1 * -0.5]))


def test_paired_difference_covers_the_true_difference_and_is_narrower() -> None:
    """Two close policies on one log: the paired interval of V(a) - V(b) covers the true difference near the
    nominal rate over seeds, and is much narrower than what two separate intervals allow."""
    from router_rl.ope import paired_difference

    hits = dict.fromkeys(("ips", "snips", "dr"), 0)
    narrower = 0
    trials = 60
    for seed in range(trials):
        r, mu, a, target, means, truth_a = logged_bandit(seed, n=1500)
        k = target.shape[1]
        # b: a, except on the 20% of contexts where a picks the last model, which b sends to model 1
        flip = (target[:, k - 1] == 1) & (np.arange(len(r)) % 5 == 0)
        other = target.copy()
        other[flip] = np.eye(k)[1]
        truth = truth_a - float((other * means).sum(axis=1).mean())
        q = np.clip(means + 0.2, 0, 1)  # a biased reward model
        for name in hits:
            est = paired_difference(r, mu, a, target, other, q, estimator=name)
            hits[name] += est.ci_low <= truth <= est.ci_high
        sep = estimate_all(r, mu, a, target, q_hat=q)["dr"], estimate_all(r, mu, a, other, q_hat=q)["dr"]
        dr = paired_difference(r, mu, a, target, other, q)
        narrower += (dr.ci_high - dr.ci_low) < 0.5 * sum(e.ci_high - e.ci_low for e in sep)
    for name, count in hits.items():
        assert 0.85 <= count / trials <= 1.0, (name, count)
    assert narrower == trials
    with pytest.raises(ValueError, match="DR needs q_hat"):
        paired_difference(r, mu, a, target, other)
    with pytest.raises(ValueError, match="alike"):
        paired_difference(r, mu, a, target, other[:, :2], q)


def test_the_prediction_interval_covers_the_next_windows_realised_mean() -> None:
    """A policy's confidence interval is for its value (the population mean); what it realises on the next
    window is that window's sample mean. With n = 400 logged rounds and m = 200 next ones the confidence
    interval covers the realised mean ~74% of the time (1.96 / sqrt(1 + n / m) sds); the prediction interval
    ~95%, at sqrt(1 + n / m) times the width."""
    from router_rl.ope import prediction_interval

    n, m, k, eps, trials = 400, 200, 3, 0.2, 300
    ci_hits = pi_hits = value_hits = 0
    rng = np.random.default_rng(5)
    weights = rng.normal(size=(3, k))
    grid = rng.normal(size=(200_000, 3))
    value = float(np.max(1 / (1 + np.exp(-grid @ weights)), axis=1).mean())  # the greedy policy's true value
    for _ in range(trials):
        x = rng.normal(size=(n + m, 3))
        means = 1 / (1 + np.exp(-x @ weights))  # (n + m, k); the target is greedy on them
        target = np.eye(k)[np.argmax(means, axis=1)]
        logging = (1 - eps) * target + eps / k  # an exploring copy of the target: on-policy-like weights
        actions = np.array([rng.choice(k, p=p) for p in logging[:n]])
        rewards = means[np.arange(n), actions] + rng.normal(scale=0.05, size=n)
        est = doubly_robust(
            rewards,
            logging[np.arange(n), actions],
            target[np.arange(n), actions],
            actions,
            target[:n],
            means[:n] + 0.05,  # a biased reward model
        )
        realised = float((target[n:] * means[n:]).sum(axis=1).mean())
        low, high = prediction_interval(est, m)
        assert high - low == pytest.approx((est.ci_high - est.ci_low) * np.sqrt(1 + n / m))
        ci_hits += est.ci_low <= realised <= est.ci_high
        pi_hits += low <= realised <= high
        value_hits += est.ci_low <= value <= est.ci_high
    assert 0.88 <= value_hits / trials <= 0.99  # the confidence interval is for the value
    assert 0.9 <= pi_hits / trials <= 1.0
    assert ci_hits / trials < 0.85  # and not for the next window's mean
    with pytest.raises(ValueError, match="n_next"):
        prediction_interval(est, 0)


def _dr_of(choice: np.ndarray, rows: np.ndarray, actions: np.ndarray, rewards: np.ndarray, k: int):
    """DR of the deterministic policy taking arm ``choice[i]`` on round i, on ``rows`` of a uniform log
    (propensity 1 / k) with a reward model that predicts 0.5 everywhere."""
    p = np.eye(k)[choice[rows]]
    a = actions[rows]
    return doubly_robust(
        rewards[rows], np.full(rows.size, 1 / k), p[np.arange(rows.size), a], a, p, np.full(p.shape, 0.5)
    )


def test_selection_free_interval_covers_the_promoted_candidate() -> None:
    """The winner's curse and the sample split that cures it. Per trial: 600 uniformly logged rounds (3 arms,
    Bernoulli rewards, per-round means uniform in [0.35, 0.65], so every policy blind to them is worth 0.5) and
    20 such candidate policies; the gate promotes the candidate with the highest DR lower bound. On the rows
    that chose it, its 95% interval covers its value 0.5 in 75% of 300 trials (it was chosen because its
    sample ran high); on the disjoint half the decision never saw (:func:`sample_split`, decided on the other
    half) in 97%, and its prediction interval covers the mean it realises on the next 600 rounds in 99%."""
    from router_rl.ope import prediction_interval

    n, m, k, n_candidates, trials = 600, 600, 3, 20, 300
    rng = np.random.default_rng(11)
    ci_hits = {"same rows": 0, "split": 0}
    pi_hits = dict.fromkeys(ci_hits, 0)
    for trial in range(trials):
        means = 0.35 + 0.3 * rng.random((n + m, k))
        choice = rng.integers(0, k, size=(n_candidates, n + m))  # candidate j's arm on every round
        actions = rng.integers(0, k, size=n)
        rewards = (rng.random(n) < means[np.arange(n), actions]).astype(float)
        decide, hold = sample_split(n, 0.5, seed=trial)
        assert decide.size == hold.size == n // 2 and np.intersect1d(decide, hold).size == 0
        assert np.array_equal(np.union1d(decide, hold), np.arange(n))

        for name, (d_rows, e_rows) in {
            "same rows": (np.arange(n), np.arange(n)),
            "split": (decide, hold),
        }.items():
            best = max(
                range(n_candidates), key=lambda j, d=d_rows: _dr_of(choice[j], d, actions, rewards, k).ci_low
            )
            est = _dr_of(choice[best], e_rows, actions, rewards, k)
            realised = float(means[n + np.arange(m), choice[best, n:]].mean())
            low, high = prediction_interval(est, m)
            ci_hits[name] += est.ci_low <= 0.5 <= est.ci_high
            pi_hits[name] += low <= realised <= high
    assert ci_hits["same rows"] / trials < 0.85, ci_hits  # the decision's own rows under-cover
    assert 0.9 <= ci_hits["split"] / trials <= 1.0, ci_hits  # the selection-free rows do not
    assert 0.9 <= pi_hits["split"] / trials <= 1.0, pi_hits


@pytest.mark.parametrize("share", [-0.1, 1.0, 1.5, float("nan")])
def test_sample_split_rejects_shares_outside_0_1(share: float) -> None:
    with pytest.raises(ValueError, match=r"share must be in \[0, 1\)"):
        sample_split(10, share)


def test_sample_split_is_seeded_and_share_0_keeps_every_row_deciding() -> None:
    decide, hold = sample_split(10, 0.3, seed=4)
    assert hold.size == 3 and decide.size == 7 and np.intersect1d(decide, hold).size == 0
    again = sample_split(10, 0.3, seed=4)
    assert np.array_equal(again[0], decide) and np.array_equal(again[1], hold)
    assert not np.array_equal(sample_split(10, 0.3, seed=5)[1], hold)
    decide, hold = sample_split(10, 0.0)
    assert np.array_equal(decide, np.arange(10)) and hold.size == 0
