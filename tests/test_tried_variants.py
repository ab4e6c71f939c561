"""experiments/tried_variants.py: the measured-and-dropped variants of the default compute what RESULTS.md
says they do (a gated kNN share, an average of networks)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

from tried_variants import BlendEnsemble, BlendKNN  # noqa: E402

from router_rl.policies.blend import BlendLinUCB  # noqa: E402
from router_rl.policies.lowrank import LowRankLinUCB  # noqa: E402

MODELS = ["big", "mid", "small"]
DIM = 16


def lookup_tables(n_prompts: int = 20, copies: int = 30, seed: int = 0):
    """Few distinct prompts, each repeated, with grades drawn per prompt: a lookup that kNN recovers."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_prompts, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, copies, axis=0)
    quality = np.repeat((rng.random((n_prompts, 3)) < 0.5).astype(float), copies, axis=0)
    cost = np.tile([1.0, 0.3, 0.05], (len(x), 1))
    latency = np.tile([2.0, 1.0, 0.5], (len(x), 1))
    return x, quality, cost, latency


def noise_tables(n: int = 150, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    quality = (rng.random((n, 3)) < np.array([0.8, 0.7, 0.6])).astype(float)
    return x, quality, np.tile([1.0, 0.3, 0.05], (n, 1)), np.tile([2.0, 1.0, 0.5], (n, 1))


def test_the_ensemble_averages_networks_from_different_seeds() -> None:
    x, q, c, lat = lookup_tables()
    one = BlendLinUCB(list(MODELS), DIM, mlp_weight=0.5, device="cpu", seed=3)
    one.warm_start(x, q, c, lat)
    same = BlendEnsemble(list(MODELS), DIM, n_nets=1, mlp_weight=0.5, device="cpu", seed=3)
    same.warm_start(x, q, c, lat)
    np.testing.assert_allclose(same.estimates(x[:40]), one.estimates(x[:40]))
    three = BlendEnsemble(list(MODELS), DIM, n_nets=3, mlp_weight=0.5, device="cpu", seed=3)
    three.warm_start(x, q, c, lat)
    nets = three.net.nets
    outs = [net.estimates(x[:40]) for net in nets]
    assert len(nets) == 3 and not np.allclose(outs[0], outs[1])  # different seeds, different networks
    np.testing.assert_allclose(outs[0], one.net.estimates(x[:40]))  # the first is the default's own
    linear = LowRankLinUCB.estimates(three, x[:40])
    np.testing.assert_allclose(three.estimates(x[:40]), 0.5 * linear + 0.5 * np.mean(outs, axis=0))


def test_the_knn_share_moves_only_on_evidence() -> None:
    x, q, c, lat = noise_tables()
    gated = BlendKNN(list(MODELS), DIM, mlp_weight="auto", stack_from=0.5, knn_gate=0.99, device="cpu")
    gated.warm_start(x, q, c, lat)
    assert gated.knn_weight == 0.0
    np.testing.assert_allclose(gated.estimates(x[:10]), BlendLinUCB.estimates(gated, x[:10]))
    x, q, c, lat = lookup_tables()
    chase = BlendKNN(list(MODELS), DIM, mlp_weight="auto", stack_from=0.5, knn_gate=None, device="cpu")
    chase.warm_start(x, q, c, lat)
    assert 0.0 < chase.knn_weight <= 0.5  # kNN reads the lookup exactly
    base, near = BlendLinUCB.estimates(chase, x[:10]), chase.knn.estimates(x[:10])
    np.testing.assert_allclose(
        chase.estimates(x[:10]), (1 - chase.knn_weight) * base + chase.knn_weight * near
    )
