"""The blend policy (low-rank LinUCB heads + an MLP fitted at the warm start) and its ``linear+mlp`` artifact:
the blend formula, its serving form computing the same estimates (numpy and torch paths), the manifest's
checks, and ``learn`` continuing the linear heads while keeping the network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router_rl.export import export_artifact
from router_rl.learn import learn
from router_rl.policies.blend import BlendLinUCB
from router_rl.policies.lowrank import LowRankLinUCB
from router_rl.serve.artifact import (
    MANIFEST,
    WEIGHTS,
    ArtifactError,
    decision_scores,
    linear_estimates,
    load_artifact,
    mlp_estimates,
    write_manifest,
)
from router_rl.serve.decision_log import DecisionLog

MODELS = ["big", "mid", "small"]
DIM = 16


def tables(n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Contexts and full-information outcomes where quality is a nonlinear function of the prompt (|x_0|)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    hard = np.abs(x[:, :1]) * 4  # no linear function of x sees this
    quality = np.clip(np.c_[0.9 - 0.1 * hard, 0.8 - 0.3 * hard, 0.7 - 0.6 * hard], 0, 1)
    cost = np.tile([1.0, 0.3, 0.05], (n, 1)) * (1 + 0.1 * x[:, 1:2])
    latency = np.tile([2.0, 1.0, 0.5], (n, 1))
    return x, quality, cost, latency


def fitted(beta: float = 0.5, seed: int = 0) -> BlendLinUCB:
    x, q, c, lat = tables()
    policy = BlendLinUCB(list(MODELS), DIM, mlp_weight=beta, mlp={"epochs": 60}, device="cpu", seed=seed)
    policy.warm_start(x, q, c, lat)
    return policy


def export(policy: BlendLinUCB, out: Path) -> Path:
    context = {
        "catalog_models": [
            {
                "name": m,
                "usd_per_1m_input": p,
                "usd_per_1m_output": p,
                "ttft_s": None,
                "output_tokens_per_s": None,
            }
            for m, p in zip(MODELS, (10.0, 1.0, 0.1), strict=True)
        ],
        "embedder": {"id": "toy", "dim": DIM, "max_seq_length": 256},
        "cost_scale": 0.01,
        "cost_weight": 0.2,
        "latency_weight": 0.0,
    }
    return export_artifact(policy, context, out)


def test_estimates_are_the_blend_of_the_linear_heads_and_the_network() -> None:
    policy = fitted(0.3)
    x = tables(20, seed=1)[0]
    linear = LowRankLinUCB.estimates(policy, x)
    assert np.allclose(policy.estimates(x), 0.7 * linear + 0.3 * policy.net.estimates(x))
    zero = fitted(0.0)  # beta 0 is lowrank_warm exactly
    ref = LowRankLinUCB(list(MODELS), DIM)
    ref.warm_start(*tables())
    assert np.allclose(zero.estimates(x), ref.estimates(x))


def test_the_blend_fits_what_the_linear_heads_cannot() -> None:
    x, q, c, lat = tables(400, seed=2)
    blend, linear = fitted(0.5), LowRankLinUCB(list(MODELS), DIM)
    linear.warm_start(*tables())
    err_blend = np.abs(blend.estimates(x)[0] - q).mean()
    err_linear = np.abs(linear.estimates(x)[0] - q).mean()
    assert err_blend < 0.8 * err_linear


def test_before_a_warm_start_the_network_has_no_say() -> None:
    policy = BlendLinUCB(list(MODELS), DIM, device="cpu")
    x = tables(10)[0]
    assert policy.blend_weight == 0.0
    assert np.allclose(policy.estimates(x), LowRankLinUCB.estimates(policy, x))


def test_feedback_moves_the_linear_heads_and_not_the_network() -> None:
    policy = fitted()
    x = tables(50, seed=3)[0]
    before_net = policy.net.estimates(x)
    before = policy.estimates(x)
    policy.update(x, np.zeros(50, dtype=int), np.zeros(50), np.ones(50), np.ones(50))
    assert np.array_equal(policy.net.estimates(x), before_net)
    assert policy.estimates(x)[0, :, 0].mean() < before[0, :, 0].mean()  # big's quality learned down


def test_state_round_trip_and_catalog_changes() -> None:
    policy = fitted()
    x = tables(10, seed=4)[0]
    again = BlendLinUCB(list(MODELS), DIM, device="cpu")
    again.load_state_dict(policy.state_dict())
    assert np.allclose(again.estimates(x), policy.estimates(x))
    policy.add_model("new")
    assert policy.estimates(x).shape == (3, 10, 4)
    policy.remove_model("mid")
    assert policy.estimates(x).shape == (3, 10, 3) and policy.models == ["big", "small", "new"]


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="mlp_weight"):
        BlendLinUCB(list(MODELS), DIM, mlp_weight=1.5)
    with pytest.raises(ValueError, match="auto"):
        BlendLinUCB(list(MODELS), DIM, mlp_weight="best")
    with pytest.raises(ValueError, match="unknown mlp setting"):
        BlendLinUCB(list(MODELS), DIM, mlp={"layers": 2})


def test_the_artifact_computes_the_policy_estimates_and_decisions(tmp_path: Path) -> None:
    policy = fitted()
    art = load_artifact(export(policy, tmp_path / "art"), device="cpu")
    assert art.manifest["policy_kind"] == "linear+mlp"
    assert art.manifest["blend"] == {"mlp_weight": 0.5, "mlp_layers": 2}
    x = tables(64, seed=5)[0].astype(np.float32)
    served = linear_estimates(art, x)  # numpy path
    assert isinstance(served, np.ndarray)
    assert np.allclose(served, policy.estimates(x), atol=1e-5)
    import torch

    on_torch = linear_estimates(art, torch.as_tensor(x)).numpy()  # the accelerator path, here on the CPU
    assert np.allclose(on_torch, served, atol=1e-5)
    scores, _ = decision_scores(art, x, cost_weight=0.2)
    expected = policy.mean_scores(x, cost_weight=0.2)
    assert np.array_equal(scores.argmax(axis=1), expected.argmax(axis=1))


def test_without_a_fitted_network_the_export_is_linear(tmp_path: Path) -> None:
    policy = BlendLinUCB(list(MODELS), DIM, device="cpu")
    art = load_artifact(export(policy, tmp_path / "art"), device="cpu")
    assert art.manifest["policy_kind"] == "linear" and art.mlp_numpy is None and art.mlp_weight == 0.0


def rewrite(art_dir: Path, manifest_change=None, drop: str | None = None, reshape: str | None = None) -> None:
    """Change an exported artifact's manifest or weights and reseal it (as a buggy writer would)."""
    from safetensors.numpy import load_file, save_file

    manifest = json.loads((art_dir / MANIFEST).read_text())
    if manifest_change:
        manifest_change(manifest)
    arrays = load_file(str(art_dir / WEIGHTS))
    if drop:
        arrays.pop(drop)
    if reshape:
        arrays[reshape] = arrays[reshape][..., :-1]  # one input (or output) too few
    save_file(arrays, str(art_dir / WEIGHTS))
    for key in ("files", "manifest_sha256"):
        manifest.pop(key, None)
    write_manifest(art_dir, manifest, [WEIGHTS])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"manifest_change": lambda m: m["blend"].update(mlp_weight=2.0)}, "blend.mlp_weight is 2.0"),
        ({"manifest_change": lambda m: m.pop("blend")}, "blend"),
        ({"manifest_change": lambda m: m["blend"].update(mlp_layers=0)}, "blend.mlp_layers is 0"),
        ({"drop": "mlp.1.bias"}, "'mlp.1.bias' missing"),
        ({"reshape": "mlp.0.weight"}, "'mlp.0.weight' has shape"),
        ({"reshape": "mlp.col_sd"}, "'mlp.col_sd' has shape"),
    ],
)
def test_a_bad_network_is_refused_in_one_line(tmp_path: Path, change: dict, message: str) -> None:
    art_dir = export(fitted(), tmp_path / "art")
    with pytest.raises(
        ArtifactError, match=message
    ) as err:  # the writer refuses a bad manifest, the loader both
        rewrite(art_dir, **change)
        load_artifact(art_dir, device="cpu")
    assert "\n" not in str(err.value)


def test_learn_continues_the_linear_heads_and_keeps_the_network(tmp_path: Path) -> None:
    policy = fitted()
    art_dir = export(policy, tmp_path / "art")
    art = load_artifact(art_dir, device="cpu")
    rng = np.random.default_rng(6)
    x = tables(400, seed=6)[0].astype(np.float32)
    log_path = tmp_path / "log.sqlite"
    log = DecisionLog(log_path)
    for i in range(len(x)):
        a = int(rng.integers(3))
        did = f"{i:032x}"
        log.log_decision(
            {
                "decision_id": did,
                "ts": 1000.0 + i,
                "endpoint": "route",
                "policy_version": art.version,
                "models": json.dumps(MODELS),
                "action": a,
                "model": MODELS[a],
                "propensity": 1 / 3,
                "scores": json.dumps([0.0, 0.0, 0.0]),
                "pred_quality": json.dumps([0.5, 0.5, 0.5]),
                "pred_cost_usd": json.dumps([0.01, 0.001, 0.0001]),
                "cost_weight": 0.2,
                "cost_scale": 0.01,
                "limits": "{}",
                "prompt_sha256": f"{i:064x}",
                "prompt": None,
                "embedding": x[i].tobytes(),
                "api_key": None,
            }
        )
        log.add_feedback(did, 1.0 if a == 2 else 0.0, cost_usd=0.0001, latency_s=0.5)  # small is always right
    log.close()
    result = learn(str(log_path), art_dir, tmp_path / "out", holdout=0.3)
    cand = load_artifact(result.artifact, device="cpu")
    assert cand.manifest["policy_kind"] == "linear+mlp" and cand.mlp_weight == 0.5
    assert np.array_equal(mlp_estimates(cand, x), mlp_estimates(art, x))  # the network as deployed
    moved = linear_estimates(cand, x)[0] - linear_estimates(art, x)[0]
    assert moved[:, 2].mean() > 0.02 and moved[:, 0].mean() < -0.02  # small learned up, big down
    assert result.ope["n_evaluated"] == 120


def test_auto_weight_follows_the_out_of_fold_error() -> None:
    x, q, c, lat = tables(1000)
    nonlinear = BlendLinUCB(list(MODELS), DIM, mlp_weight="auto", mlp={"epochs": 60}, device="cpu")
    nonlinear.warm_start(x, q, c, lat)
    assert nonlinear.mlp_weight >= 0.7  # the network sees |x_0|, the linear heads cannot
    scores = nonlinear.stacking["scores"]
    assert nonlinear.mlp_weight == nonlinear.stacking["grid"][int(np.argmax(scores))]
    rng = np.random.default_rng(7)
    linear_q = np.clip(0.5 + x[:, :3] * 2 + 0.05 * rng.standard_normal((len(x), 3)), 0, 1)  # a linear truth
    few = slice(0, 150)  # few rows: the network overfits, the shrunk linear heads do not
    linear = BlendLinUCB(list(MODELS), DIM, mlp_weight="auto", ridge=1.0, mlp={"epochs": 60}, device="cpu")
    linear.warm_start(x[few], linear_q[few], c[few], lat[few])
    assert linear.mlp_weight <= 0.5
    again = BlendLinUCB(list(MODELS), DIM, mlp_weight="auto", device="cpu")
    again.load_state_dict(linear.state_dict())  # the chosen weight travels with the state
    assert again.mlp_weight == linear.mlp_weight and again.config()["mlp_weight"] == "auto"


def noise_tables(seed: int, n: int = 120) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Few rows whose grades are coin flips: no weight routes them better than another but by chance."""
    x, _, c, lat = tables(n)
    rng = np.random.default_rng(seed)
    return x, (rng.random((n, 3)) < np.array([0.8, 0.7, 0.6])).astype(float), c, lat


@pytest.mark.parametrize("seed", [0, 2])
def test_auto_weight_keeps_its_prior_without_evidence(seed: int) -> None:
    x, q, c, lat = noise_tables(seed)
    chase = BlendLinUCB(list(MODELS), DIM, mlp_weight="auto", device="cpu")
    chase.warm_start(x, q, c, lat)
    assert chase.mlp_weight != 0.5  # the plain out-of-fold argmax follows the noise
    kept = BlendLinUCB(list(MODELS), DIM, mlp_weight="auto", stack_from=0.5, device="cpu")
    kept.warm_start(x, q, c, lat)
    assert kept.mlp_weight == 0.5 and kept.stacking["moved"] is False
    assert kept.stacking["best"] == chase.mlp_weight  # the same folds and scores, a different decision
    assert kept.stacking["test"]["low"] <= 0.0 < kept.stacking["test"]["high"]


@pytest.mark.parametrize("stack_by", ["aiq", "mse"])
def test_auto_weight_leaves_its_prior_on_evidence_and_stays_under_its_cap(stack_by: str) -> None:
    x, q, c, lat = tables(1000)
    policy = BlendLinUCB(
        list(MODELS), DIM, mlp_weight="auto", stack_from=0.5, stack_max=0.9, stack_level=0.99,
        stack_by=stack_by, mlp={"epochs": 60}, device="cpu",
    )  # fmt: skip
    policy.warm_start(x, q, c, lat)
    assert 0.5 < policy.mlp_weight <= 0.9  # the network sees |x_0|; the linear heads keep a share
    assert policy.stacking["moved"] is True and policy.stacking["test"]["low"] > 0.0
    assert max(policy.stacking["grid"]) == 0.9
    assert policy.config()["stack_from"] == 0.5 and policy.bonus_alpha > 0.0


def test_bad_stacking_settings_are_named() -> None:
    for bad, name in (
        ({"stack_max": 1.5}, "stack_max"),
        ({"stack_from": 0.95, "stack_max": 0.9}, "stack_from"),
        ({"stack_level": 1.0}, "stack_level"),
        ({"stack_boot": 2}, "stack_boot"),
    ):
        with pytest.raises(ValueError, match=name):
            BlendLinUCB(list(MODELS), DIM, mlp_weight="auto", **bad)


def test_fit_masked_on_epoch_sees_every_pass_and_can_stop_it() -> None:
    import torch

    from router_rl.policies import torch_mlp as tm

    x, q, c, lat = tables(200)
    y = tm.head_major(np.stack([q, c, lat], axis=2))
    mask = np.ones_like(y)

    def trained(epochs: int, stop_at: int | None = None) -> tuple[list[int], dict]:
        net = tm.build_mlp(DIM, [8], y.shape[1], seed=3)
        seen: list[int] = []

        def hook(done: int, mean: np.ndarray, sd: np.ndarray) -> bool:
            assert mean.shape == sd.shape == (y.shape[1],) and not net.training
            seen.append(done)
            return done == stop_at

        tm.fit_masked(
            net, x, y, mask, epochs=epochs, batch_size=32, lr=1e-2, weight_decay=0.0, seed=5,
            device=torch.device("cpu"), on_epoch=hook,
        )  # fmt: skip
        return seen, net.state_dict()

    seen, stopped = trained(10, stop_at=3)
    assert seen == [1, 2, 3]  # a true return stops after that pass
    _, three = trained(3)
    assert all(torch.equal(stopped[k], three[k]) for k in three)  # the same net as three passes alone
    assert trained(4)[0] == [1, 2, 3, 4]


def test_fit_masked_standardize_folds_the_scaling_into_the_first_layer() -> None:
    """Standardised training fits badly scaled inputs (a tiny and a huge dimension carry the signal) far
    better, and the net takes raw inputs in every ``on_epoch`` call and afterwards: its outputs there are
    exactly those of the returned network, the fold reproduces the standardised net and the next pass starts
    from the unfolded parameters (the same result with or without a hook)."""
    import torch

    from router_rl.policies import torch_mlp as tm

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)) * np.array([1e-3, 1.0, 1.0, 1.0, 1.0, 50.0]) + 5.0
    y = np.c_[np.tanh(x[:, 0] * 2e3), np.tanh(x[:, 5] / 50.0), x[:, 1]]
    mask = np.ones_like(y)
    cpu = torch.device("cpu")

    def fit(standardize: bool, hook: bool = False) -> tuple[Any, np.ndarray, list[np.ndarray]]:
        net = tm.build_mlp(6, [32], 3, seed=1)
        seen: list[np.ndarray] = []

        def on_epoch(done: int, mean: np.ndarray, sd: np.ndarray) -> None:
            seen.append(tm.forward_numpy(net, x, cpu) * sd + mean)

        mean, sd, _ = tm.fit_masked(
            net, x, y, mask, epochs=40, batch_size=32, lr=1e-2, weight_decay=0.0, seed=2, device=cpu,
            on_epoch=on_epoch if hook else None, standardize=standardize,
        )  # fmt: skip
        return net, tm.forward_numpy(net, x, cpu) * sd + mean, seen

    _, raw, _ = fit(False)
    net, std, seen = fit(True, hook=True)
    mse_raw, mse_std = ((raw - y) ** 2).mean(), ((std - y) ** 2).mean()
    assert mse_std < 0.25 * mse_raw  # the raw net cannot use the 1e-3-scale dimension
    np.testing.assert_allclose(seen[-1], std, atol=1e-6)  # the hook saw the folded (raw-input) network
    _, unhooked, _ = fit(True)
    np.testing.assert_allclose(unhooked, std, atol=1e-5)  # folding for the hook did not disturb training
    assert len(seen) == 40


@pytest.mark.parametrize("stack_by", ["mse", "aiq"])
def test_stack_epochs_trains_the_passes_that_scored_best_out_of_fold(stack_by: str) -> None:
    x, q, c, lat = noise_tables(0, n=300)
    settings = {
        "mlp_weight": "auto",
        "stack_epochs": True,
        "stack_by": stack_by,
        "stack_from": 0.5,
        "mlp": {"epochs": 40, "lr": 0.01},
        "device": "cpu",
    }
    noise = BlendLinUCB(list(MODELS), DIM, **settings)
    noise.warm_start(x, q, c, lat)
    scores = noise.stacking["epoch_scores"]
    assert len(scores) == 40 and noise.net_epochs == int(np.argmax(scores)) + 1
    assert noise.net.epochs == noise.net_epochs == noise.stacking["epochs"]  # the final network's passes
    signal = BlendLinUCB(list(MODELS), DIM, **settings)
    signal.warm_start(*tables(1000))
    assert signal.net_epochs >= 20  # |x_0| takes passes to learn, and held-out rows show it
    if stack_by == "mse":  # coin flips: every pass after the first only fits the noise
        assert noise.net_epochs <= 5 and scores[-1] < max(scores)
    plain = BlendLinUCB(
        list(MODELS), DIM, mlp_weight="auto", stack_epochs=False, mlp={"epochs": 40}, device="cpu"
    )
    plain.warm_start(x, q, c, lat)
    assert plain.net_epochs is None and plain.stacking["epoch_scores"] is None and plain.net.epochs == 40
    assert noise.config()["stack_epochs"] is True and plain.config()["stack_epochs"] is False


def test_stack_repick_chooses_the_passes_again_at_the_weight_moved_to() -> None:
    settings = {
        "mlp_weight": "auto", "stack_epochs": True, "stack_from": 0.5, "stack_max": 0.9,
        "mlp": {"epochs": 40, "lr": 0.01}, "device": "cpu",
    }  # fmt: skip
    x, q, c, lat = tables(1000)
    once = BlendLinUCB(list(MODELS), DIM, **settings)
    once.warm_start(x, q, c, lat)
    again = BlendLinUCB(list(MODELS), DIM, stack_repick=True, **settings)
    again.warm_start(x, q, c, lat)
    assert once.stacking["moved"] and again.mlp_weight == once.mlp_weight > 0.5  # the same folds, same move
    assert once.net_epochs == int(np.argmax(once.stacking["epoch_scores"])) + 1  # scored at 0.5
    at_weight = again.stacking["epoch_scores_at_weight"]
    assert len(at_weight) == 40 and "epoch_scores_at_weight" not in once.stacking
    assert again.net_epochs == int(np.argmax(at_weight)) + 1 == again.stacking["epochs"] == again.net.epochs
    assert max(at_weight) > at_weight[once.net_epochs - 1] or again.net_epochs == once.net_epochs
    assert again.config()["stack_repick"] is True and once.config()["stack_repick"] is False
    noise = noise_tables(0, n=300)  # the weight stays at its prior: nothing to choose again
    kept = BlendLinUCB(list(MODELS), DIM, stack_repick=True, **settings)
    kept.warm_start(*noise)
    plain = BlendLinUCB(list(MODELS), DIM, **settings)
    plain.warm_start(*noise)
    assert kept.mlp_weight == 0.5 and kept.net_epochs == plain.net_epochs
    assert "epoch_scores_at_weight" not in kept.stacking


def test_the_chosen_weight_is_reported_with_its_reason() -> None:
    from router_rl.training import describe_choices, fitted_choices

    x, q, c, lat = noise_tables(0)
    kept = BlendLinUCB(list(MODELS), DIM, mlp_weight="auto", stack_from=0.5, stack_level=0.99, device="cpu")
    kept.warm_start(x, q, c, lat)
    chosen = fitted_choices(kept)
    assert chosen["mlp_weight"] == 0.5 and chosen["mlp_epochs"] is None and chosen["stacking"]["rows"] == 120
    line = describe_choices(chosen)
    assert line.startswith("mlp_weight 0.5 (auto: out of fold over 120 rows the best was ") and "kept" in line
    tiny = BlendLinUCB(list(MODELS), DIM, mlp_weight="auto", stack_from=0.5, device="cpu")
    tiny.warm_start(x[:4], q[:4], c[:4], lat[:4])
    assert describe_choices(fitted_choices(tiny)) == "mlp_weight 0.5 (auto: too few rows (4) to hold any out)"
    assert fitted_choices(fitted(0.5)) is None  # a fixed weight chose nothing
