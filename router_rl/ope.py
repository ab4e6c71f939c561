"""Off-policy evaluation: the value of a target policy from decisions logged with their propensities.

The chain (as in Open Bandit Pipeline): logged feedback ``(context, action, reward, propensity)`` -> the
target policy's action probabilities on the same contexts -> estimators on plain arrays. With n logged
rounds, logging propensities mu_i = mu(a_i | x_i), target probabilities pi_i = pi(a_i | x_i), importance
weights w_i = pi_i / mu_i and, for DR, a reward model q_hat(x, a):

    IPS   V = 1/n sum_i w_i r_i                                                  (Horvitz & Thompson, 1952)
    SNIPS V = sum_i w_i r_i / sum_i w_i                                           (Swaminathan & Joachims, 2015)
    DR    V = 1/n sum_i [ sum_a pi(a|x_i) q_hat(x_i, a) + w_i (r_i - q_hat(x_i, a_i)) ]   (Dudik et al., 2011)

Confidence intervals are normal approximations: IPS and DR from the sample variance of their per-round terms,
SNIPS by the delta method, var ~ 1/n * mean(w^2 (r - V)^2) / mean(w)^2.

Two policies on one log (:func:`paired_difference`): V(a) - V(b) with the interval of the per-round
differences of their terms (SNIPS: of their influence terms w (r - V) / mean(w)), which is far narrower than
two separate intervals when the policies agree on most rounds, as a candidate and its champion do.

Which interval is which (:func:`prediction_interval`): the confidence interval is for the policy's value, the
mean reward over the distribution the logged contexts came from. What a deployed policy then realises is a
sample mean over the next ``m`` rounds, a different sample with its own spread var(r) / m; an interval for
that quantity must add it: V +- z sqrt(s^2 / n + s^2 / m), with s^2 the per-round variance of the estimator's
terms standing in for var(r) (the classic prediction interval for the mean of m new draws).

Selection-free evidence (:func:`sample_split`): an interval computed on the rows that also chose the policy
(promote the candidate whose estimate clears a bar) covers less than its level for the chosen policy, because
the policies chosen are those whose sample ran high (the winner's curse). Splitting the evaluation rows into a
decision part and a disjoint estimate part, and reporting the chosen policy's value from the estimate part only,
restores the level: the decision is independent of the estimate part's noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm


@dataclass(frozen=True)
class Estimate:
    """An off-policy estimate with its ``level`` confidence interval and effective sample size."""

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    ess: float

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _check(rewards, propensities, target_probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = np.asarray(rewards, dtype=np.float64)
    mu = np.asarray(propensities, dtype=np.float64)
    pi = np.asarray(target_probs, dtype=np.float64)
    if r.ndim != 1 or r.size == 0 or mu.shape != r.shape or pi.shape != r.shape:
        raise ValueError(
            f"rewards, propensities and target_probs must be non-empty 1-D arrays of equal length, "
            f"got {r.shape}, {mu.shape}, {pi.shape}"
        )
    if not np.isfinite(r).all():
        raise ValueError("rewards must be finite")
    if not ((mu > 0) & (mu <= 1)).all():
        raise ValueError(
            f"propensities must lie in (0, 1]; got min {mu.min()}: a logged action with propensity 0 cannot be "
            "reweighted (log with exploration)"
        )
    if not ((pi >= 0) & (pi <= 1)).all():
        raise ValueError("target_probs must lie in [0, 1]")
    return r, mu, pi


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    return float(norm.ppf(0.5 + level / 2))


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2."""
    w = np.asarray(weights, dtype=np.float64)
    denom = float(np.sum(w**2))
    return float(np.sum(w) ** 2 / denom) if denom > 0 else 0.0


def _mean_ci(name: str, terms: np.ndarray, weights: np.ndarray, level: float) -> Estimate:
    n = terms.size
    value = float(terms.mean())
    half = _z(level) * float(terms.std(ddof=1)) / np.sqrt(n) if n > 1 else float("inf")
    return Estimate(name, value, value - half, value + half, n, effective_sample_size(weights))


def ips(rewards, propensities, target_probs, *, level: float = 0.95) -> Estimate:
    """Inverse propensity scoring. Args are (n,) arrays: observed rewards, logging propensities of the logged
    actions, and the target policy's probabilities of the logged actions."""
    r, mu, pi = _check(rewards, propensities, target_probs)
    w = pi / mu
    return _mean_ci("ips", w * r, w, level)


def snips(rewards, propensities, target_probs, *, level: float = 0.95) -> Estimate:
    """Self-normalised IPS: biased for small n but with far lower variance when weights are large."""
    r, mu, pi = _check(rewards, propensities, target_probs)
    w = pi / mu
    n = r.size
    if w.sum() <= 0:
        raise ValueError("SNIPS is undefined: the target policy never takes any logged action")
    value = float(np.sum(w * r) / np.sum(w))
    var = float(np.mean(w**2 * (r - value) ** 2) / np.mean(w) ** 2) / n
    half = _z(level) * np.sqrt(var)
    return Estimate("snips", value, value - half, value + half, n, effective_sample_size(w))


def doubly_robust(
    rewards, propensities, target_probs, actions, target_probs_all, q_hat, *, level: float = 0.95
) -> Estimate:
    """Doubly robust estimate.

    Args:
        rewards, propensities, target_probs: (n,) as in :func:`ips`.
        actions: (n,) logged action indices.
        target_probs_all: (n, K) the target policy's probabilities of every action.
        q_hat: (n, K) a reward model's predicted reward of every action (the direct-method part).
    """
    r, mu, pi = _check(rewards, propensities, target_probs)
    a = np.asarray(actions, dtype=np.int64)
    p_all = np.asarray(target_probs_all, dtype=np.float64)
    q = np.asarray(q_hat, dtype=np.float64)
    n = r.size
    if a.shape != (n,) or p_all.ndim != 2 or p_all.shape[0] != n or q.shape != p_all.shape:
        raise ValueError(
            f"actions must be ({n},), target_probs_all and q_hat (n, K) alike; got {a.shape}, {p_all.shape}, {q.shape}"
        )
    if (a < 0).any() or (a >= p_all.shape[1]).any():
        raise ValueError(f"actions must lie in [0, {p_all.shape[1]})")
    if not np.allclose(p_all[np.arange(n), a], pi):
        raise ValueError("target_probs must equal target_probs_all at the logged actions")
    w = pi / mu
    terms = (p_all * q).sum(axis=1) + w * (r - q[np.arange(n), a])
    return _mean_ci("dr", terms, w, level)


def estimate_all(
    rewards, propensities, actions, target_probs_all, q_hat=None, *, level: float = 0.95
) -> dict[str, Estimate]:
    """IPS, SNIPS and (when ``q_hat`` is given) DR for one target policy, from logged arrays."""
    a = np.asarray(actions, dtype=np.int64)
    p_all = np.asarray(target_probs_all, dtype=np.float64)
    pi = p_all[np.arange(a.size), a]
    out = {
        "ips": ips(rewards, propensities, pi, level=level),
        "snips": snips(rewards, propensities, pi, level=level),
    }
    if q_hat is not None:
        out["dr"] = doubly_robust(rewards, propensities, pi, a, p_all, q_hat, level=level)
    return out


def _influence(name: str, r, mu, a, p_all, q_hat) -> tuple[float, np.ndarray, np.ndarray]:
    """The estimate, its per-round influence terms (mean zero; variance / n = the estimate's variance) and
    importance weights of one policy (``p_all`` (n, K)) under estimator ``name``."""
    n = r.size
    pi = p_all[np.arange(n), a]
    w = pi / mu
    if name == "ips":
        terms = w * r
        return float(terms.mean()), terms - terms.mean(), w
    if name == "snips":
        if w.sum() <= 0:
            raise ValueError("SNIPS is undefined: the target policy never takes any logged action")
        value = float(np.sum(w * r) / np.sum(w))
        return value, w * (r - value) / w.mean(), w
    if name == "dr":
        if q_hat is None:
            raise ValueError("DR needs q_hat, the reward model's (n, K) predictions")
        terms = (p_all * q_hat).sum(axis=1) + w * (r - q_hat[np.arange(n), a])
        return float(terms.mean()), terms - terms.mean(), w
    raise ValueError(f"unknown estimator {name!r}; expected ips, snips or dr")


def paired_difference(
    rewards,
    propensities,
    actions,
    probs_a,
    probs_b,
    q_hat=None,
    *,
    estimator: str = "dr",
    level: float = 0.95,
) -> Estimate:
    """V(a) - V(b) of two target policies on the same logged rounds, with a paired interval.

    Args:
        rewards, propensities, actions: (n,) logged arrays as in :func:`estimate_all`.
        probs_a, probs_b: (n, K) each policy's probabilities of every action.
        q_hat: (n, K) reward model (DR only).
    Returns:
        An :class:`Estimate` named ``"<estimator>_difference"`` whose ``ess`` is policy a's.
    """
    a = np.asarray(actions, dtype=np.int64)
    pa, pb = np.asarray(probs_a, dtype=np.float64), np.asarray(probs_b, dtype=np.float64)
    if pa.ndim != 2 or pa.shape != pb.shape or pa.shape[0] != a.size:
        raise ValueError(f"probs_a and probs_b must be (n={a.size}, K) alike; got {pa.shape} and {pb.shape}")
    if (a < 0).any() or (a >= pa.shape[1]).any():
        raise ValueError(f"actions must lie in [0, {pa.shape[1]})")
    r, mu, _ = _check(rewards, propensities, pa[np.arange(a.size), a])
    _check(rewards, propensities, pb[np.arange(a.size), a])
    q = None if q_hat is None else np.asarray(q_hat, dtype=np.float64)
    if q is not None and q.shape != pa.shape:
        raise ValueError(f"q_hat must be {pa.shape}; got {q.shape}")
    va, ia, wa = _influence(estimator, r, mu, a, pa, q)
    vb, ib, _ = _influence(estimator, r, mu, a, pb, q)
    n = r.size
    value = va - vb
    half = _z(level) * float((ia - ib).std(ddof=1)) / np.sqrt(n) if n > 1 else float("inf")
    return Estimate(
        f"{estimator}_difference", value, value - half, value + half, n, effective_sample_size(wa)
    )


def sample_split(n: int, share: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0 .. n - 1`` into a decision part and a disjoint estimate part.

    The estimate part is ``round(share * n)`` positions, the first of a permutation drawn by
    ``numpy.random.default_rng(seed)``; the decision part is the rest. Both are returned sorted (int64 arrays).
    ``share = 0`` returns every position as the decision part and an empty estimate part.
    """
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1), got {share}")
    if share == 0:
        return np.arange(n), np.arange(0)
    n_estimate = int(round(share * n))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_estimate:]), np.sort(perm[:n_estimate])


def prediction_interval(estimate: Estimate, n_next: int) -> tuple[float, float]:
    """An interval, at the level of ``estimate``'s confidence interval, for the mean reward the policy realises
    on ``n_next`` new rounds drawn like the logged ones (for a :func:`paired_difference`: the mean difference
    of the two policies' rewards on those rounds).

    The confidence half-width ``h = z s / sqrt(n)`` gives ``s``, the sd of the estimator's per-round terms;
    the realised mean adds its own sampling variance, taken as ``s^2 / n_next``:

        V +- z sqrt(s^2 / n + s^2 / n_next) = V +- h sqrt(1 + n / n_next)

    ``s^2`` stands in for the variance of the per-round reward: above it for importance-weighted terms (their
    variance exceeds the reward's when the weights exceed 1), so the interval errs wide rather than narrow.
    """
    if n_next < 1:
        raise ValueError(f"n_next must be a positive number of rounds, got {n_next}")
    half = (estimate.ci_high - estimate.ci_low) / 2 * float(np.sqrt(1.0 + estimate.n / n_next))
    return estimate.value - half, estimate.value + half
