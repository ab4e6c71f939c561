"""The policy zoo on problems with a known answer: bandits learn, propensities are right, supervised routers
beat random, the RouteLLM threshold hits its target share, warm start cuts early regret, the catalog changes
without retraining, and the Vowpal Wabbit peer runs (when installed)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from router_rl.policies.base import offline_start, sample_actions
from router_rl.policies.eps_greedy import EpsilonGreedy, epsilon_schedule
from router_rl.policies.knn import KNNRouter, tie_weights
from router_rl.policies.linucb import LinUCB
from router_rl.policies.logreg import LogisticRouter
from router_rl.policies.lowrank import LowRankLinTS, LowRankLinUCB, lowrank_prior
from router_rl.policies.mlp import MLPRouter
from router_rl.policies.neural_ts import NeuralLinearTS
from router_rl.policies.ridge import add_rows_to_inverse
from router_rl.policies.routellm_mf import RouteLLMMF, pair_labels, quantile_threshold
from router_rl.policies.thompson import LinTS, argmax_probabilities, mc_argmax_probabilities
from router_rl.policies.torch_mlp import resolve_device
from router_rl.policies.zero_router import ZeroRouter

MODELS = ["cheap", "mid", "frontier"]
COSTS = np.array([0.01, 0.2, 1.0])
DIM = 5


def unit(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class LinearProblem:
    """quality_k(x) = x.w_k + bias_k (+ noise); costs fixed per model."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(3, DIM)) * 0.3
        self.bias = np.array([0.3, 0.5, 0.7])

    def quality(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w.T + self.bias


def run_bandit(
    policy, problem, *, batches: int, seed: int, cost_weight: float = 0.2, batch: int = 32
) -> np.ndarray:
    """Train from bandit feedback; returns the per-batch pseudo-regret."""
    rng = np.random.default_rng(seed)
    regrets = []
    for _ in range(batches):
        x = unit(batch, int(rng.integers(1 << 30)))
        actions, _ = sample_actions(policy.probs(x, cost_weight=cost_weight, explore=True), rng)
        truth = problem.quality(x)
        reward = truth - cost_weight * COSTS
        regrets.append(float((reward.max(1) - reward[np.arange(batch), actions]).sum()))
        q = truth[np.arange(batch), actions] + rng.normal(scale=0.05, size=batch)
        policy.update(x, actions, q, COSTS[actions], np.zeros(batch))
    return np.array(regrets)


def accuracy(policy, problem, cost_weight: float, n: int = 400) -> float:
    x = unit(n, 12345)
    best = (problem.quality(x) - cost_weight * COSTS).argmax(1)
    return float((policy.probs(x, cost_weight=cost_weight).argmax(1) == best).mean())


# --------------------------------------------------------------------------------------- linear bandits
@pytest.mark.parametrize(
    "make",
    [
        lambda: EpsilonGreedy(MODELS, DIM, epsilon=0.2, ridge=1.0),
        lambda: LinTS(MODELS, DIM, scale=0.2, ridge=1.0),
    ],
    ids=["eps_greedy", "lin_ts"],
)
def test_linear_bandits_learn_quality_and_cost_heads(make) -> None:
    problem, policy = LinearProblem(), make()
    run_bandit(policy, problem, batches=120, seed=0)
    for w in (0.0, 0.5):
        assert accuracy(policy, problem, w) > 0.9, w
    x = unit(300, 7)
    q, c, _ = policy.estimates(x)
    np.testing.assert_allclose(c, np.tile(COSTS, (300, 1)), atol=0.02)
    assert np.abs(q - problem.quality(x)).mean() < 0.03
    assert (policy.probs(x, cost_weight=5.0).argmax(1) == 0).all()  # expensive enough: always the cheap model


def test_neural_ts_learns_a_nonlinear_problem_linear_ts_cannot() -> None:
    """The best model depends on |x_0| (not linear in x): neural-linear TS gets it, linear TS does not."""

    class Nonlinear:
        def quality(self, x: np.ndarray) -> np.ndarray:
            far = np.abs(x[:, :1]) > 0.45
            return np.where(far, [0.2, 0.9, 0.3], [0.8, 0.3, 0.4])

    problem = Nonlinear()
    neural = NeuralLinearTS(
        MODELS, DIM, hidden=[32, 16], scale=0.1, epochs=40, train_every=640, seed=0, device="cpu"
    )
    linear = LinTS(MODELS, DIM, scale=0.1, ridge=1.0)
    for policy in (neural, linear):
        run_bandit(policy, problem, batches=100, seed=1, cost_weight=0.0)
    acc_neural, acc_linear = accuracy(neural, problem, 0.0), accuracy(linear, problem, 0.0)
    assert acc_neural > 0.9 and acc_linear < 0.8, (acc_neural, acc_linear)


def test_lowrank_prior_shares_strength_across_models() -> None:
    """Eight models whose quality slopes are multiples of one direction (rank 1), 12 observations each in 16
    dimensions: shrinking toward the shared rank-1 prior recovers the slopes with half the error or less of
    the disjoint ridge regressions (same ridge), and the prior is a fixed point of its alternation."""
    rng = np.random.default_rng(0)
    k, dim, n = 8, 16, 12
    v = rng.normal(size=dim)
    v /= np.linalg.norm(v)
    scale = rng.uniform(0.5, 2.0, size=k)
    models = [f"m{i}" for i in range(k)]
    shared, disjoint = LowRankLinUCB(models, dim, ridge=3.0, rank=1), LinUCB(models, dim, ridge=3.0)
    for j in range(k):
        x = rng.normal(size=(n, dim))
        q = 0.5 + scale[j] * (x @ v) + rng.normal(scale=0.3, size=n)
        for policy in (shared, disjoint):
            policy.update(x, np.full(n, j), q, np.zeros(n), np.zeros(n))
    shared.refit_prior()
    truth = scale[:, None] * v
    err = {
        name: np.linalg.norm(p.theta()[:, 0, :-1] - truth)
        for name, p in (("shared", shared), ("disjoint", disjoint))
    }
    assert err["shared"] < 0.5 * err["disjoint"], err
    prior = shared.prior_b / shared._prior()
    m = lowrank_prior(shared.a_inv, shared.b, shared._prior(), 1, iters=200)
    w = np.einsum("kij,khj->khi", shared.a_inv, shared.b + shared._prior() * m)[:, 0, :-1].T
    u, sv, vt = np.linalg.svd(w, full_matrices=False)
    np.testing.assert_allclose(m[:, 0, :-1].T, sv[0] * np.outer(u[:, 0], vt[0]), atol=1e-8)  # fixed point
    assert np.linalg.norm(prior[:, 0] - m[:, 0]) < 0.05 * np.linalg.norm(m[:, 0])  # 20 alternations: close
    assert not np.any(m[:, :, -1])  # intercepts are each model's own
    with pytest.raises(ValueError, match="rank >= 0"):
        LowRankLinUCB(models, dim, rank=-1)


def test_add_rows_to_inverse_matches_direct_inverse_for_large_batches() -> None:
    rng = np.random.default_rng(0)
    a = np.eye(4) * 3.0
    for n in (2, 9):  # Woodbury (n <= D) and the direct path (n > D)
        x = rng.normal(size=(n, 4))
        np.testing.assert_allclose(
            add_rows_to_inverse(np.linalg.inv(a), x), np.linalg.inv(a + x.T @ x), atol=1e-12
        )


# ----------------------------------------------------------------------------------------- propensities
def test_argmax_probabilities_exact_cases_and_monte_carlo() -> None:
    mean = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.1, -0.2], [0.5, 0.5, -1.0]])
    sd = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.2, 0.05, 0.3], [0.0, 0.0, 0.0]])
    p = argmax_probabilities(mean, sd)
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_allclose(p[0], [1 / 3] * 3, atol=1e-3)  # symmetric
    np.testing.assert_allclose(p[1], [1.0, 0.0, 0.0], atol=1e-9)  # known values: the best
    np.testing.assert_allclose(p[3], [0.5, 0.5, 0.0], atol=1e-9)  # tie of known values split evenly
    mc = mc_argmax_probabilities(mean, sd, n_draws=40000, rng=np.random.default_rng(0))
    np.testing.assert_allclose(p[:3], mc[:3], atol=0.01)  # (Monte Carlo's argmax breaks exact ties by order)
    # two Gaussians: P(A > B) = Phi((mu_a - mu_b) / sqrt(sd_a^2 + sd_b^2)) = Phi(0.3 / 0.5) = 0.72575
    two = argmax_probabilities(np.array([[0.3, 0.0]]), np.array([[0.3, 0.4]]))
    np.testing.assert_allclose(two[0, 0], 0.72575, atol=2e-3)


@pytest.mark.parametrize("propensity", ["quadrature", "mc"])
def test_lin_ts_propensities_match_thompson_draws(propensity: str) -> None:
    """probs(explore=True) are the frequencies with which plain Thompson sampling picks each model."""
    policy = LinTS(MODELS, DIM, scale=0.5, ridge=1.0, propensity=propensity, n_draws=20000, seed=3)
    run_bandit(policy, LinearProblem(), batches=3, seed=2)
    x = unit(4, 99)
    p = policy.probs(x, cost_weight=0.2, explore=True)
    np.testing.assert_allclose(p.sum(1), 1.0)
    draws = np.stack([policy.sample(x, cost_weight=0.2) for _ in range(20000)])  # (n, 4)
    freq = np.stack([(draws == k).mean(0) for k in range(3)], axis=1)
    np.testing.assert_allclose(p, freq, atol=0.02)
    assert (p.max(1) < 0.99).any()  # genuinely stochastic here, so the check has teeth


def test_eps_greedy_propensities_exact_and_empirical() -> None:
    policy = EpsilonGreedy(MODELS, DIM, epsilon=0.3, decay=0.001, min_epsilon=0.05)
    run_bandit(policy, LinearProblem(), batches=10, seed=0)
    eps = epsilon_schedule(0.3, 0.001, 0.05, 320.0)
    assert policy.current_epsilon() == pytest.approx(eps) and eps == pytest.approx(0.3 / 1.32)
    x = unit(1, 5)
    p = policy.probs(x, cost_weight=0.2, explore=True)[0]
    greedy = policy.probs(x, cost_weight=0.2)[0].argmax()
    np.testing.assert_allclose(p, np.where(np.arange(3) == greedy, 1 - eps + eps / 3, eps / 3))
    actions, prop = sample_actions(np.tile(p, (30000, 1)), np.random.default_rng(0))
    np.testing.assert_allclose(np.bincount(actions, minlength=3) / 30000, p, atol=0.01)
    np.testing.assert_allclose(prop, p[actions])


# ------------------------------------------------------------------------------------ supervised routers
def clustered(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four clusters of prompts; in each a different model is good. Returns x, quality, cost (N, K)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(4, DIM) * 3.0
    label = rng.integers(0, 4, n)
    x = centres[label] + rng.normal(scale=0.5, size=(n, DIM))
    table = np.array([[0.9, 0.3, 0.95], [0.2, 0.8, 0.85], [0.7, 0.7, 0.6], [0.1, 0.2, 0.9]])
    quality = np.clip(table[label] + rng.normal(scale=0.05, size=(n, 3)), 0, 1)
    return x, quality, np.tile(COSTS, (n, 1))


@pytest.mark.parametrize(
    "make",
    [
        lambda: KNNRouter(MODELS, DIM, k=10),
        lambda: MLPRouter(MODELS, DIM, hidden=[32], epochs=60, device="cpu"),
        lambda: NeuralLinearTS(MODELS, DIM, hidden=[32, 16], epochs=60, device="cpu"),
        lambda: LogisticRouter(MODELS, DIM, C=10.0, cost_ridge=1.0),
    ],
    ids=["knn", "mlp", "neural_ts", "logreg"],
)
def test_supervised_routers_beat_random_and_near_oracle(make) -> None:
    x, q, c = clustered(600, 0)
    xt, qt, ct = clustered(400, 1)
    policy = make().fit(x, q, c, np.zeros_like(q))
    for w, floor in ((0.0, 0.93), (0.5, 0.95)):
        reward = qt - w * ct
        chosen = policy.probs(xt, cost_weight=w).argmax(1)
        got = reward[np.arange(400), chosen].mean()
        assert got > reward.mean() + 0.15  # random routing
        assert got > floor * reward.max(1).mean(), (w, got, reward.max(1).mean())


def templated(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """300 prompts that embed identically (one shared template, as an ARC cluster under truncation), where
    'cheap' scores 0.9, beside 60 distinct prompts within 0.01 of them where it scores 0.2."""
    rng = np.random.default_rng(seed)
    centre = np.eye(1, DIM)[0]
    x = np.concatenate([np.tile(centre, (300, 1)), centre + rng.normal(scale=0.01, size=(60, DIM))])
    q = np.concatenate([np.tile([0.9, 0.5, 0.5], (300, 1)), np.tile([0.2, 0.5, 0.5], (60, 1))])
    return x, q, np.tile(COSTS, (360, 1)), centre


@pytest.mark.parametrize(
    "make",
    [
        lambda: MLPRouter(MODELS, DIM, hidden=[16], epochs=30, device="cpu"),
        lambda: NeuralLinearTS(MODELS, DIM, hidden=[16], epochs=30, device="cpu"),
    ],
    ids=["mlp", "neural_ts"],
)
def test_identical_contexts_count_with_their_multiplicity(make) -> None:
    """The buffer merges the 300 identical rows into one (cell mean, count 300); the loss must weigh it 300
    times. The network cannot separate points 0.01 apart, so it predicts their count-weighted mean
    (300 * 0.9 + 60 * 0.2) / 360 = 0.78 there; weighing the merged row once gave 0.21."""
    x, q, c, centre = templated(0)
    policy = make().fit(x, q, c, np.zeros_like(q))
    assert len(policy.buf_x) == 61 and policy.buf_cnt[0, 0] == 300
    assert policy.estimates(centre[None])[0, 0, 0] == pytest.approx(0.78, abs=0.05)


def test_knn_uses_every_tied_neighbour_deterministically() -> None:
    """30 identical remembered prompts, 10 of them good for 'cheap', k = 20: each of the 30 weighs 20/30, so
    the estimate is exactly 1/3 whatever the memory order (``argpartition`` kept an arbitrary 20: 0.35)."""
    x = np.tile(np.eye(1, DIM)[0], (30, 1))
    q = np.zeros((30, 3))
    q[::3, 0] = 1.0
    c = np.tile(COSTS, (30, 1))
    for perm in (np.arange(30), np.random.default_rng(0).permutation(30), np.arange(30)[::-1]):
        router = KNNRouter(MODELS, DIM, k=20).fit(x[perm], q[perm], c, np.zeros_like(q))
        assert router.estimates(x[:1])[0, 0, 0] == pytest.approx(1 / 3, abs=1e-12)
    # 2 rows above the k-th similarity, 4 tied with it, k = 4: weights 1, 1 and (4 - 2) / 4 for each tie
    sims = np.array([[0.9, 0.5, 0.5, 0.8, 0.5, 0.5, 0.1]])
    np.testing.assert_allclose(tie_weights(sims, 4), [[1, 0.5, 0.5, 1, 0.5, 0.5, 0]])
    np.testing.assert_allclose(
        tie_weights(sims, 2), [[1, 0, 0, 1, 0, 0, 0]]
    )  # no tie at the 2nd: plain top-k
    np.testing.assert_allclose(tie_weights(sims, 9), np.ones((1, 7)))  # fewer rows than k: all


def two_model_problem(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strong model wins where x_0 > -0.1 (by a margin growing with x_0); weak wins elsewhere."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM))
    weak = np.full(n, 0.6)
    strong = np.clip(0.65 + 0.3 * np.tanh(2 * x[:, 0]) + rng.normal(scale=0.05, size=n), 0, 1)
    return x, np.stack([weak, strong], 1), np.tile([0.05, 1.0], (n, 1))


def test_routellm_mf_scores_rank_and_calibrated_threshold_hits_share() -> None:
    x, q, c = two_model_problem(1500, 0)
    router = RouteLLMMF(["weak", "strong"], DIM, rank=8, epochs=30, device="cpu").fit(
        x, q, c, np.zeros_like(q)
    )
    assert (router.strong, router.weak) == ("strong", "weak")
    xc, xt = two_model_problem(6000, 1)[0], two_model_problem(6000, 2)[0]
    s = router.scores(xt)
    assert spearmanr(s, xt[:, 0]).statistic > 0.95  # the win probability rises with the true margin
    for share in (0.2, 0.5, 0.8):
        mapping = router.calibrate(xc, share)
        # held-out share within tolerance (3.5 binomial sds of the two samples: 0.02 at share 1/2)
        assert abs(router.route(xt).mean() - share) < 3.5 * np.sqrt(2 * share * (1 - share) / 6000), share
        # the reported cost weight makes the same decisions through the cost-weight interface
        p = router.probs(xc, cost_weight=mapping["cost_weight"])
        np.testing.assert_allclose(p[:, 1].mean(), share, atol=2 / len(xc))
    # cost-weight interface: at w = 0 call the strong model where it is better (true gap 0.05 + 0.3 tanh(2 x_0))
    gap = 0.05 + 0.3 * np.tanh(2 * xt[:, 0])
    assert (router.probs(xt, cost_weight=0.0)[:, 1].astype(bool) == (gap > 0)).mean() > 0.95
    shares = [router.probs(xt, cost_weight=w)[:, 1].mean() for w in (0.0, 0.1, 0.2, 0.4)]
    assert shares == sorted(shares, reverse=True) and shares[-1] < 0.1


def test_routellm_helpers_on_hand_values() -> None:
    assert quantile_threshold(np.arange(10) / 10, 0.3) == pytest.approx(0.7)  # 0.7, 0.8, 0.9 >= tau
    assert quantile_threshold(np.arange(10), 0.0) == np.inf
    rows, i, j, label = pair_labels(np.array([[0.5, 0.7, 0.5], [np.nan, 0.2, 0.1]]))
    assert rows.tolist() == [0, 0, 0, 1] and i.tolist() == [0, 0, 1, 1] and j.tolist() == [1, 2, 2, 2]
    assert label.tolist() == [0.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: KNNRouter(MODELS, DIM), r"knn: fit needs"),
        (lambda: MLPRouter(MODELS, DIM, device="cpu"), r"mlp: fit needs"),
        (lambda: RouteLLMMF(MODELS, DIM, device="cpu"), r"routellm_mf: fit needs"),
        (lambda: LinTS(MODELS, DIM), r"lin_ts: warm_start needs"),
    ],
)
def test_full_information_inputs_are_checked(make, message: str) -> None:
    policy = make()
    fit = getattr(policy, "fit", None) or policy.warm_start
    with pytest.raises(ValueError, match=message):
        fit(np.zeros((4, DIM)), np.zeros((4, 2)), np.zeros((4, 2)), np.zeros((4, 2)))


# ------------------------------------------------------------------------------------------- warm start
def test_warm_start_cuts_early_regret() -> None:
    """A supervised prior from 200 offline full-information prompts: less regret in the first 10 batches."""
    problem = LinearProblem()
    x_off = unit(200, 50)
    q_off = problem.quality(x_off) + np.random.default_rng(0).normal(scale=0.05, size=(200, 3))
    c_off = np.tile(COSTS, (200, 1))
    early = {}
    for name, weight in (("cold", None), ("warm", 1.0), ("weak prior", 0.05)):
        policy = LinTS(MODELS, DIM, scale=0.2, ridge=1.0)
        if weight is not None:
            policy.warm_start(x_off, q_off, c_off, np.zeros_like(q_off), weight=weight)
        early[name] = run_bandit(policy, problem, batches=10, seed=3).sum()
        assert policy.counts.sum() == 320  # pseudo-observations are not counted as feedback
    assert early["warm"] < 0.3 * early["cold"], early
    assert early["warm"] <= early["weak prior"] < early["cold"], early
    # from another router's predictions: a kNN fitted offline
    knn = KNNRouter(MODELS, DIM, k=5).fit(x_off, q_off, c_off, np.zeros_like(q_off))
    policy = LinUCB(MODELS, DIM, alpha=0.2, ridge=1.0)
    policy.warm_start_from(knn, x_off, weight=1.0)
    assert run_bandit(policy, problem, batches=10, seed=3).sum() < 0.5 * early["cold"]


# ------------------------------------------------------------------------------------ catalog changes
def trained(make):
    policy = make()
    x, q, c = clustered(64, 3)
    if hasattr(policy, "fit"):
        policy.fit(x, q, c, np.zeros_like(q))
    rng = np.random.default_rng(0)
    for _ in range(3):
        actions, _ = sample_actions(policy.probs(x[:16], cost_weight=0.1, explore=True), rng)
        policy.update(x[:16], actions, q[:16][np.arange(16), actions], COSTS[actions], np.zeros(16))
    return policy


CATALOG_LEARNERS = {
    "linucb": lambda: LinUCB(MODELS, DIM),
    "eps_greedy": lambda: EpsilonGreedy(MODELS, DIM),
    "lin_ts": lambda: LinTS(MODELS, DIM),
    "zero_router": lambda: ZeroRouter(MODELS, DIM),
    "knn": lambda: KNNRouter(MODELS, DIM, k=5),
    "mlp": lambda: MLPRouter(MODELS, DIM, hidden=[8], epochs=2, train_every=1000, device="cpu"),
    "neural_ts": lambda: NeuralLinearTS(MODELS, DIM, hidden=[8, 4], epochs=2, train_every=1000, device="cpu"),
    "logreg": lambda: LogisticRouter(MODELS, DIM),
    "lowrank_linucb": lambda: LowRankLinUCB(MODELS, DIM, ridge=1.0),
    "lowrank_lin_ts": lambda: LowRankLinTS(MODELS, DIM, ridge=1.0, refit_every=20),
}


def old_estimates(policy, x: np.ndarray, keep: list[int]) -> np.ndarray:
    if isinstance(policy, ZeroRouter):
        return policy.means()[:, keep]
    return policy.estimates(x)[:, :, keep]


@pytest.mark.parametrize("name", list(CATALOG_LEARNERS))
def test_add_and_remove_model_is_an_operation(name: str) -> None:
    policy = trained(CATALOG_LEARNERS[name])
    x = clustered(20, 4)[0]
    before = old_estimates(policy, x, [0, 1, 2])
    policy.add_model("new")
    assert policy.models == [*MODELS, "new"]
    np.testing.assert_allclose(old_estimates(policy, x, [0, 1, 2]), before, atol=1e-9)  # nothing forgotten
    p = policy.probs(x, cost_weight=0.1, explore=True)
    assert p.shape == (20, 4) and np.allclose(p.sum(1), 1.0)
    if hasattr(policy, "counts"):
        assert policy.counts[-1] == 0
    if hasattr(policy, "theta"):
        np.testing.assert_allclose(policy.theta()[-1], 0.0)  # the new arm starts at its prior
    policy.update(x[:4], np.array([3, 3, 0, 1]), np.full(4, 0.9), np.zeros(4), np.zeros(4))  # it can learn
    kept = old_estimates(policy, x, [0, 2, 3])
    policy.remove_model("mid")
    assert policy.models == ["cheap", "frontier", "new"]
    np.testing.assert_allclose(old_estimates(policy, x, [0, 1, 2]), kept, atol=1e-9)
    assert policy.probs(x, cost_weight=0.1).shape == (20, 3)
    clone = type(policy)(models=policy.models, dim=DIM, **policy.config())  # the changed state round-trips
    clone.load_state_dict(policy.state_dict())
    np.testing.assert_allclose(clone.probs(x, cost_weight=0.3), policy.probs(x, cost_weight=0.3))
    with pytest.raises(ValueError, match="already one of the arms"):
        policy.add_model("new")
    with pytest.raises(ValueError, match="cannot remove unknown model 'mid'"):
        policy.remove_model("mid")


def test_routellm_keeps_its_pair_when_the_catalog_changes() -> None:
    x, q, c = two_model_problem(300, 0)
    q3, c3 = np.c_[q, q[:, :1]], np.c_[c, c[:, :1]]
    router = RouteLLMMF(["weak", "strong", "other"], DIM, rank=4, epochs=3, weak="weak", device="cpu")
    router.fit(x, q3, c3, np.zeros_like(q3))
    before = router.probs(x, cost_weight=0.1)[:, :2]
    router.add_model("new")
    router.remove_model("other")
    np.testing.assert_allclose(router.probs(x, cost_weight=0.1), np.c_[before, np.zeros(300)])
    with pytest.raises(ValueError, match="strong or weak model"):
        router.remove_model("strong")


def test_device_auto_picks_cuda_when_available() -> None:
    import torch

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"


# -------------------------------------------------------------------------------------- Vowpal Wabbit
def test_vw_learns_with_cost_convention_and_returns_its_pmf() -> None:
    pytest.importorskip("vowpalwabbit", reason="optional peer: pip install vowpalwabbit")
    from router_rl.policies.vw import VWPolicy

    args = "--cb_explore_adf --epsilon 0.05 -q sa"
    policy = VWPolicy(["bad", "good_if_pos", "good_if_neg"], DIM, args=args, cost_weights=[0.0, 1.0], seed=0)
    rng = np.random.default_rng(0)
    for _ in range(40):
        x = unit(32, int(rng.integers(1 << 30)))
        p = policy.probs(x, cost_weight=0.0, explore=True)
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
        assert p.min() >= 0.05 / 3 - 1e-6  # VW's epsilon-greedy PMF: every action keeps eps / K
        actions, _ = sample_actions(p, rng)
        table = np.where(x[:, :1] > 0, [0.1, 0.9, 0.3], [0.1, 0.3, 0.9])
        quality = table[np.arange(32), actions]
        policy.update(x, actions, quality, np.array([0.0, 1.0, 1.0])[actions], np.zeros(32))
    x = unit(300, 8)
    chosen = policy.probs(x, cost_weight=0.0).argmax(1)
    assert ((chosen == 1) == (x[:, 0] > 0)).mean() > 0.85  # rewards were maximised, not minimised
    assert (policy.probs(x, cost_weight=1.0).argmax(1) == 0).mean() > 0.85  # at w = 1 'bad' (free) is best
    clone = VWPolicy(policy.models, DIM, **policy.config())
    clone.load_state_dict(policy.state_dict())
    np.testing.assert_allclose(
        clone.probs(x, cost_weight=0.0, explore=True), policy.probs(x, cost_weight=0.0, explore=True)
    )
    policy.add_model("new")
    assert policy.probs(x, cost_weight=0.0, explore=True).shape == (300, 4)
    policy.remove_model("bad")
    assert policy.probs(x, cost_weight=0.0).shape == (300, 3)


def test_vw_workspaces_take_turns_acting_so_each_learns_its_trade_off() -> None:
    """Trained at w = 1 (the free model is best there): with ``act="cycle"`` the w = 0 workspace acts half
    the time and routes 93% of prompts to the right paid model at w = 0; when only the w = 1 workspace acts
    (``act="nearest"``, the old behaviour) the w = 0 one learns off-policy from its choices: 79%."""
    pytest.importorskip("vowpalwabbit", reason="optional peer: pip install vowpalwabbit")
    from router_rl.policies.vw import VWPolicy

    right = {}
    for act in ("nearest", "cycle"):
        policy = VWPolicy(
            ["free", "good_if_pos", "good_if_neg"], DIM, cost_weights=[0.0, 1.0], seed=0, act=act
        )
        rng = np.random.default_rng(0)
        for _ in range(60):
            x = unit(32, int(rng.integers(1 << 30)))
            actions, _ = sample_actions(policy.probs(x, cost_weight=1.0, explore=True), rng)
            table = np.where(x[:, :1] > 0, [0.3, 0.9, 0.2], [0.3, 0.2, 0.9])
            policy.update(
                x, actions, table[np.arange(32), actions], np.array([0.0, 1.0, 1.0])[actions], np.zeros(32)
            )
        x = unit(300, 8)
        right[act] = (policy.probs(x, cost_weight=0.0).argmax(1) == np.where(x[:, 0] > 0, 1, 2)).mean()
        assert (policy.probs(x, cost_weight=1.0).argmax(1) == 0).all()  # at w = 1 the free model, either way
    assert right["cycle"] > 0.9 and right["nearest"] < 0.85, right
    with pytest.raises(ValueError, match="act must be"):
        VWPolicy(["a", "b"], DIM, act="all")


def test_offline_start_fits_supervised_routers_and_warm_starts_bandits() -> None:
    x, q, c = clustered(40, 5)
    lat = np.zeros_like(q)
    knn, lints, zero = KNNRouter(MODELS, DIM, k=3), LinTS(MODELS, DIM), ZeroRouter(MODELS, DIM)
    neural = NeuralLinearTS(MODELS, DIM, hidden=[8], epochs=1, device="cpu")
    assert offline_start(knn, x, q, c, lat, warm_start_weight=0.0) == "fit" and len(knn.mem_x) == 40
    assert offline_start(lints, x, q, c, lat) == "none" and not lints.b.any()
    assert offline_start(lints, x, q, c, lat, warm_start_weight=0.5) == "warm_start" and lints.b.any()
    assert (
        offline_start(neural, x, q, c, lat, warm_start_weight=1.0) == "warm_start" and neural.n_trainings == 1
    )
    assert offline_start(zero, x, q, c, lat, warm_start_weight=1.0) == "none"


@pytest.mark.parametrize(
    "name",
    ["eps_greedy", "lin_ts", "neural_ts", "mlp", "knn", "routellm_mf", "vw", "logreg", "lowrank_linucb"],
)
def test_checkpoint_round_trip_through_safetensors(name: str, tmp_path) -> None:
    """Every policy's state survives the checkpoint files (dtypes, empty buffers, VW's model bytes)."""
    from router_rl.export import load_checkpoint, write_checkpoint

    if name == "vw":
        pytest.importorskip("vowpalwabbit", reason="optional peer: pip install vowpalwabbit")
        from router_rl.policies.vw import VWPolicy

        make = lambda: VWPolicy(MODELS, DIM, cost_weights=[0.0, 1.0])  # noqa: E731
    else:
        make = {
            "routellm_mf": lambda: RouteLLMMF(MODELS, DIM, rank=4, epochs=2, device="cpu"),
            **CATALOG_LEARNERS,
        }[name]
    x = clustered(20, 6)[0]
    for i, policy in enumerate((make(), trained(make))):  # untrained (empty buffers) and trained
        write_checkpoint(tmp_path / str(i), policy, {"dataset": "synthetic"})
        clone, meta = load_checkpoint(tmp_path / str(i))
        assert meta["dataset"] == "synthetic" and clone.models == policy.models
        np.testing.assert_allclose(clone.probs(x, cost_weight=0.3), policy.probs(x, cost_weight=0.3))


def test_vw_missing_gives_an_install_hint(monkeypatch) -> None:
    import sys

    from router_rl.policies import vw

    monkeypatch.setitem(sys.modules, "vowpalwabbit", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install vowpalwabbit"):
        vw.VWPolicy(MODELS, DIM)
