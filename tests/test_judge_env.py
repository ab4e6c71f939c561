"""Judge feedback in the simulator: the noisy-judge and reward-model-quality wrappers, and the judge configs."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from router_rl.envs import ENV_IDS, RoutingEnv, make_vector_env, step_outcomes
from router_rl.envs.wrappers import (
    NoisyJudge,
    RewardModelQuality,
    check_judge_config,
    estimated_costs,
    fill_missing_pairs,
    judge_grade,
    make_feedback_vector_env,
)
from router_rl.types import Catalog, RoutingData

MODELS = ("small", "medium", "large")
N, DIM = 40, 8


def make_data(holes: bool = False, seed: int = 0) -> tuple[RoutingData, np.ndarray]:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "model": list(MODELS),
            "usd_per_1m_input": [0.1, 1.0, 10.0],
            "usd_per_1m_output": [0.4, 4.0, 30.0],
            "ttft_s": [0.2, 0.5, 1.0],
            "output_tokens_per_s": [100.0, 50.0, 25.0],
        }
    )
    catalog = Catalog(
        models=MODELS,
        usd_per_1m_input=table["usd_per_1m_input"].to_numpy(),
        usd_per_1m_output=table["usd_per_1m_output"].to_numpy(),
        ttft_s=table["ttft_s"].to_numpy(),
        output_tokens_per_s=table["output_tokens_per_s"].to_numpy(),
        table=table,
    )
    tokens_in = rng.integers(20, 400, size=(N, 1)).repeat(3, axis=1).astype(float)
    tokens_out = rng.integers(10, 800, size=(N, 3)).astype(float)
    cost = (tokens_in * catalog.usd_per_1m_input + tokens_out * catalog.usd_per_1m_output) / 1e6
    quality = rng.uniform(0.2, 0.8, size=(N, 3))
    emb = rng.normal(size=(N, DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    if holes:
        for arr in (quality, cost, tokens_out):
            arr[1, 2] = arr[5, 0] = np.nan
        tokens_in[5, 0] = np.nan
    data = RoutingData(
        name="synthetic",
        prompt_ids=np.array([f"p{i}" for i in range(N)], dtype=object),
        prompts=np.array([f"prompt {i}" for i in range(N)], dtype=object),
        models=MODELS,
        quality=quality,
        cost_usd=cost,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        latency_s=np.full((N, 3), np.nan),
        split=None,
        catalog=catalog,
    )
    return data, emb


def steps(env: gym.Env, seed: int, n: int) -> list[tuple[float, dict]]:
    out = []
    env.reset(seed=seed)
    for t in range(n):
        if t:
            env.reset()
        _, r, term, trunc, info = env.step(np.int64(t % 3))
        assert not trunc
        out.append((r, info))
    return out


def judge_cfg(option: str, *overrides: str) -> dict:
    with initialize_config_module(config_module="router_rl.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"judge={option}", *overrides])
    return OmegaConf.to_container(cfg.judge, resolve=True)


# ----------------------------------------------------------------------------------------- wrappers
@pytest.mark.parametrize("kind", ["noisy", "reward_model"])
def test_wrapped_envs_pass_the_env_checker(kind: str) -> None:
    data, emb = make_data(holes=kind == "reward_model")
    if kind == "noisy":
        env = NoisyJudge(RoutingEnv(data=data, embeddings=emb), noise_std=0.2, bias=0.05, step=0.1)
    else:
        predicted = np.full((N, 3), 0.5)
        filled, recorded = fill_missing_pairs(data, predicted)
        env = RewardModelQuality(
            RoutingEnv(data=filled, embeddings=emb),
            predicted=predicted,
            recorded=recorded,
            draw="sample",
            spread=0.1,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # the checker notes that it is looking at a wrapper: that is the point here; anything else fails
        warnings.filterwarnings("ignore", message=".*is different from the unwrapped version")
        check_env(env, skip_render_check=True)


def test_noisy_judge_adds_the_configured_noise_and_bias_only_to_quality() -> None:
    data, emb = make_data()
    plain = steps(RoutingEnv(data=data, embeddings=emb, cost_weight=0.5), seed=3, n=1500)
    noisy = steps(
        NoisyJudge(RoutingEnv(data=data, embeddings=emb, cost_weight=0.5), noise_std=0.1, bias=0.05), 3, 1500
    )
    diffs = []
    for (r0, i0), (r1, i1) in zip(plain, noisy, strict=True):
        # the same prompts, costs and latencies: the judge's noise has its own random stream
        assert (i0["prompt_index"], i0["cost_usd"], i0["latency_s"]) == (
            i1["prompt_index"],
            i1["cost_usd"],
            i1["latency_s"],
        )
        assert i1["true_quality"] == i0["quality"]
        assert r1 == pytest.approx(r0 - i0["quality"] + i1["quality"])  # the reward uses the judge's grade
        diffs.append(i1["quality"] - i0["quality"])
    diffs = np.array(diffs)
    assert diffs.mean() == pytest.approx(0.05, abs=0.01)  # qualities in [0.2, 0.8]: clipping is rare
    assert diffs.std() == pytest.approx(0.1, abs=0.01)


def test_noisy_judge_model_bias_steps_and_determinism() -> None:
    data, emb = make_data()

    def make() -> NoisyJudge:
        return NoisyJudge(
            RoutingEnv(data=data, embeddings=emb), noise_std=0.0, model_bias={"lar*": 0.15}, step=0.1
        )

    out = steps(make(), seed=0, n=60)
    for _, info in out:
        expected = np.round((info["true_quality"] + (0.15 if info["model"] == "large" else 0.0)) / 0.1) * 0.1
        assert info["quality"] == pytest.approx(min(1.0, expected))
    noisy = [NoisyJudge(RoutingEnv(data=data, embeddings=emb), noise_std=0.3) for _ in range(2)]
    a, b = steps(noisy[0], seed=7, n=50), steps(noisy[1], seed=7, n=50)
    assert [x[1]["quality"] for x in a] == [x[1]["quality"] for x in b]
    c = steps(noisy[0], seed=8, n=50)
    assert [x[1]["quality"] for x in a] != [x[1]["quality"] for x in c]
    with pytest.raises(ValueError, match="matches none of the models"):
        NoisyJudge(RoutingEnv(data=data, embeddings=emb), model_bias={"gpt-5*": 0.1})
    with pytest.raises(ValueError, match="noise_std must be"):
        NoisyJudge(RoutingEnv(data=data, embeddings=emb), noise_std=-1)


def test_judge_grade_clips_and_rounds() -> None:
    rng = np.random.default_rng(0)
    q = judge_grade(np.array([0.0, 0.44, 0.96, 1.0]), rng, bias=np.array([-0.1, 0.0, 0.1, 0.0]), step=0.1)
    np.testing.assert_allclose(q, [0.0, 0.4, 1.0, 1.0])
    assert judge_grade(0.5, rng).item() == 0.5


def test_missing_pairs_get_reward_model_quality_and_estimated_cost() -> None:
    data, emb = make_data(holes=True)
    predicted = np.full((N, 3), 0.42)
    filled, recorded = fill_missing_pairs(data, predicted)
    assert filled.complete_rows().all() and recorded.sum() == N * 3 - 2
    assert filled.quality[1, 2] == 0.42 and filled.quality[0, 0] == data.quality[0, 0]
    # (1, large): the prompt's input tokens priced at large's rates, with large's mean output tokens
    tokens_out = np.nanmean(data.output_tokens[:, 2])
    assert filled.cost_usd[1, 2] == pytest.approx((data.input_tokens[1, 0] * 10.0 + tokens_out * 30.0) / 1e6)
    # (5, small): no input tokens recorded for that prompt: the dataset's mean input tokens
    assert np.isfinite(estimated_costs(data)[5, 0])
    env = RewardModelQuality(RoutingEnv(data=filled, embeddings=emb), predicted=predicted, recorded=recorded)
    _, info = env.reset(seed=0, options={"row": 1})
    _, r, *_, info = env.step(np.int64(2))
    assert info["imputed"] and info["quality"] == 0.42
    env.reset(options={"row": 1})
    *_, info = env.step(np.int64(0))
    assert not info["imputed"] and info["quality"] == data.quality[1, 0]


# ------------------------------------------------------------------------------------ judge configs
def test_recorded_config_is_the_plain_env() -> None:
    data, emb = make_data()
    a = make_feedback_vector_env(4, judge=judge_cfg("recorded"), data=data, embeddings=emb)
    b = make_vector_env(4, data=data, embeddings=emb)
    for env in (a, b):
        env.reset(seed=1)
    for _ in range(3):
        acts = np.array([0, 1, 2, 0])
        oa, ob = step_outcomes(a.step(acts)[-1]), step_outcomes(b.step(acts)[-1])
        np.testing.assert_array_equal(oa["quality"], ob["quality"])


def test_noisy_config_changes_what_the_policy_sees() -> None:
    data, emb = make_data()
    cfg = judge_cfg("noisy", "judge.noise_std=0.2", "judge.step=0")
    assert cfg == {
        "source": "noisy",
        "noise_std": 0.2,
        "bias": 0.0,
        "model_bias": None,
        "step": 0,
        "seed": None,
    }
    biased = judge_cfg("noisy", "judge.noise_std=0", "judge.step=0", "judge.model_bias={lar*: 0.2}")
    per_model = make_feedback_vector_env(3, judge=biased, data=data, embeddings=emb)
    per_model.reset(seed=0)
    final = per_model.step(np.array([0, 1, 2]))[-1]["final_info"]
    np.testing.assert_allclose(final["quality"] - final["true_quality"], [0.0, 0.0, 0.2])
    envs = make_feedback_vector_env(8, judge=cfg, data=data, embeddings=emb, cost_weight=0.2)
    envs.reset(seed=0)
    seen, true = [], []
    for _ in range(40):
        infos = envs.step(np.zeros(8, dtype=np.int64))[-1]
        seen.append(step_outcomes(infos)["quality"])
        true.append(infos["final_info"]["true_quality"])
    err = np.concatenate(seen) - np.concatenate(true)
    assert 0.15 < err.std() < 0.25


def test_reward_model_config_fits_on_training_rows_and_fills_holes() -> None:
    data, emb = make_data(holes=True)
    cfg = judge_cfg("reward_model", "judge.model.epochs=20", "judge.model.device=cpu")
    rows = np.arange(30)  # the training prompts; prompts 1 and 5 have holes
    envs = make_feedback_vector_env(4, judge=cfg, data=data, embeddings=emb, rows=rows)
    envs.reset(seed=0)
    imputed = 0
    for _ in range(60):
        infos = envs.step(np.array([2, 0, 1, 2]))[-1]
        out = step_outcomes(infos)
        assert np.isfinite(out["quality"]).all() and (out["prompt_index"] < 30).all()
        imputed += int(infos["final_info"]["imputed"].sum())
    assert imputed > 0


def test_bad_judge_configs_are_explained() -> None:
    data, emb = make_data()
    with pytest.raises(ValueError, match="judge=llm grades answers over HTTP in `router-rl collect`"):
        make_feedback_vector_env(2, judge=judge_cfg("llm"), data=data, embeddings=emb)
    with pytest.raises(ValueError, match=r"unknown keys \['noise'\]"):
        check_judge_config({"source": "noisy", "noise": 0.1})
    with pytest.raises(ValueError, match="judge.source must be one of"):
        check_judge_config({"source": "oracle"})


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_noisy_judge_wraps_every_registered_env(env_id: str) -> None:
    """The wrapper needs only ``quality`` and ``prompt_index`` in ``info`` and a reward additive in quality."""
    data, emb = make_data()
    plain = gym.make(env_id, data=data, embeddings=emb, cost_weight=0.3)
    judged = NoisyJudge(gym.make(env_id, data=data, embeddings=emb, cost_weight=0.3), noise_std=0.2, step=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*is different from the unwrapped version")
        check_env(judged.unwrapped, skip_render_check=True)
        check_env(judged, skip_render_check=True)
    for (r0, i0), (r1, i1) in zip(steps(plain, 5, 30), steps(judged, 5, 30), strict=True):
        assert i1["true_quality"] == i0["quality"] and i1["prompt_index"] == i0["prompt_index"]
        assert r1 == pytest.approx(r0 - i0["quality"] + i1["quality"])
        assert i1["quality"] in np.round(np.arange(11) * 0.1, 10) or i1["quality"] == i0["quality"]


def test_reward_model_source_fits_nothing_when_every_pair_is_graded() -> None:
    data, emb = make_data()  # complete

    class Unusable:
        models = list(MODELS)

        def predict(self, x):  # pragma: no cover - must not be called
            raise AssertionError("the reward model was used on a fully graded dataset")

    envs = make_feedback_vector_env(
        2, judge={"source": "reward_model"}, reward_model=Unusable(), data=data, embeddings=emb
    )
    envs.reset(seed=0)
    out = step_outcomes(envs.step(np.array([0, 1]))[-1])
    assert np.isfinite(out["quality"]).all()
