"""Tests of the routing environment (router_rl.envs) and its latency model."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env

import router_rl.envs
from router_rl.envs import ENV_IDS, RoutingEnv, make_vector_env, step_outcomes
from router_rl.envs.latency import fill_latency_priors, fill_output_tokens, sample_latency
from router_rl.envs.routing import INFO_KEYS
from router_rl.reward import default_cost_scale
from router_rl.types import Catalog, RoutingData

N_PROMPTS, MODELS, DIM = 30, ("small", "medium", "large"), 8
TTFT = np.array([0.2, np.nan, 1.0])  # "medium" has no prior: the default 0.5 s applies
TPS = np.array([100.0, 40.0, np.nan])  # "large" has no prior: the default 50 tok/s applies
MEASURED = {(0, 0): 0.75, (5, 2): 3.5}  # (row, model) -> measured latency_s


def make_data(n: int = N_PROMPTS, seed: int = 0) -> tuple[RoutingData, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = len(MODELS)
    table = pd.DataFrame(
        {
            "model": list(MODELS),
            "usd_per_1m_input": [0.1, 1.0, 10.0],
            "usd_per_1m_output": [0.4, 4.0, 30.0],
            "ttft_s": TTFT,
            "output_tokens_per_s": TPS,
        }
    )
    catalog = Catalog(
        models=MODELS,
        usd_per_1m_input=table["usd_per_1m_input"].to_numpy(),
        usd_per_1m_output=table["usd_per_1m_output"].to_numpy(),
        ttft_s=TTFT.copy(),
        output_tokens_per_s=TPS.copy(),
        table=table,
    )
    input_tokens = rng.integers(20, 400, size=(n, 1)).repeat(k, axis=1).astype(float)
    output_tokens = rng.integers(10, 800, size=(n, k)).astype(float)
    cost = (input_tokens * catalog.usd_per_1m_input + output_tokens * catalog.usd_per_1m_output) / 1e6
    latency = np.full((n, k), np.nan)
    for (row, model), value in MEASURED.items():
        latency[row, model] = value
    embeddings = rng.normal(size=(n, DIM)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    data = RoutingData(
        name="synthetic",
        prompt_ids=np.array([f"p{i}" for i in range(n)]),
        prompts=np.array([f"prompt number {i}" for i in range(n)]),
        models=MODELS,
        quality=rng.uniform(0, 1, size=(n, k)) * np.array([0.6, 0.8, 1.0]),
        cost_usd=cost,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        latency_s=latency,
        split=None,
        catalog=catalog,
    )
    return data, embeddings


@pytest.fixture
def data() -> RoutingData:
    return make_data()[0]


@pytest.fixture
def embeddings() -> np.ndarray:
    return make_data()[1]


def rollout(env: RoutingEnv, seed: int, actions: np.ndarray) -> list[tuple]:
    out = []
    obs, info = env.reset(seed=seed)
    for t, action in enumerate(actions):
        if t:
            obs, info = env.reset()
        out.append((obs, info))
        out.append(env.step(action))
    return out


# ---------------------------------------------------------------------- registration and the env checker
def test_env_ids_are_namespaced_and_versioned():
    assert ENV_IDS == (
        "router_rl/Routing-v0",
        "router_rl/SimulatedRouting-v0",
        "router_rl/BudgetedRouting-v0",
    )
    for env_id in ENV_IDS:
        spec = gym.spec(env_id)
        assert spec.namespace == "router_rl" and spec.version == 0
        assert isinstance(spec.entry_point, str) and isinstance(spec.vector_entry_point, str)


SCENARIO = [
    {"kind": "price_cut", "model": "large", "at": 3, "factor": 0.5},
    {"kind": "outage", "model": "medium", "at": 2, "until": 6},
    {"kind": "new_model", "model": "small", "at": 4},
]
CHECK_KWARGS = {
    # Extra keyword arguments per registered id, on top of the fixture's data and embeddings; every id is
    # checked with {} (its registered defaults) and with each of these.
    "router_rl/Routing-v0": {
        "weighted": {"cost_weight": 1.0, "latency_weight": 0.1},
        "cycling": {"shuffle": False},
        "drift": {"scenario": SCENARIO},
        "tiers": {"tiers": "default", "latency_weight": 0.05},
    },
    "router_rl/SimulatedRouting-v0": {
        "weighted": {"cost_weight": 1.0, "latency_weight": 0.1},
        "drift": {"scenario": SCENARIO},
        "no-tiers": {"tiers": None},
    },
    "router_rl/BudgetedRouting-v0": {
        "soft": {"budget_mode": "soft", "n_requests": 5},
        "tight": {"budget_share": 0.01, "n_requests": 8, "tiers": "default", "latency_slo_s": 5.0},
        "drift": {"scenario": SCENARIO, "simulator": {"caller_mix": [0.5, 0.5, 0.0]}},
    },
}
CHECK_CASES = [(i, "default", {}) for i in ENV_IDS] + [
    (i, name, kw) for i in ENV_IDS for name, kw in CHECK_KWARGS.get(i, {}).items()
]


@pytest.mark.parametrize(
    ("env_id", "case", "kwargs"), CHECK_CASES, ids=[f"{i}-{c}" for i, c, _ in CHECK_CASES]
)
def test_check_env(env_id, case, kwargs, data, embeddings):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make(env_id, data=data, embeddings=embeddings, **kwargs)
        check_env(env.unwrapped)
        env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_every_id_is_deterministic_under_a_seed(env_id, data, embeddings):
    def run(seed: int) -> list:
        env = gym.make(env_id, data=data, embeddings=embeddings).unwrapped
        out = [env.reset(seed=seed)]
        actions = np.random.default_rng(3).integers(0, len(MODELS), size=60)
        for a in actions:
            step = env.step(a)
            out.append(step)
            if step[2]:
                out.append(env.reset())
        return out

    first, second, other = run(11), run(11), run(12)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert gym.utils.env_checker.data_equivalence(a, b, exact=True)
    assert not all(gym.utils.env_checker.data_equivalence(a, b) for a, b in zip(first, other, strict=False))


def test_new_keyword_defaults_reproduce_v0(data, embeddings):
    """simulator/tiers/scenario=None and any clock are exactly v0: same observations, rewards and infos."""
    actions = np.random.default_rng(1).integers(0, len(MODELS), size=50)
    kwargs = {"data": data, "embeddings": embeddings, "cost_weight": 0.7, "latency_weight": 0.05}
    plain = rollout(RoutingEnv(**kwargs), 5, actions)
    explicit = rollout(
        RoutingEnv(**kwargs, simulator=None, tiers=None, scenario=None, clock_offset=3, clock_stride=4),
        5,
        actions,
    )
    for a, b in zip(plain, explicit, strict=True):
        assert gym.utils.env_checker.data_equivalence(a, b, exact=True)


def test_reimport_does_not_reregister():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(router_rl.envs)
    assert set(ENV_IDS) <= set(gym.registry)


def test_import_is_cheap():
    code = "import sys, router_rl.envs; heavy = {'torch', 'router_rl.envs.routing'} & set(sys.modules); print(heavy)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "set()"


# ---------------------------------------------------------------------- determinism
def test_two_env_determinism(data, embeddings):
    kwargs = {"data": data, "embeddings": embeddings, "cost_weight": 0.7, "latency_weight": 0.05}
    actions = np.random.default_rng(1).integers(0, len(MODELS), size=200)
    first = rollout(RoutingEnv(**kwargs), 42, actions)
    second = rollout(RoutingEnv(**kwargs), 42, actions)
    assert len(first) == len(second) == 400
    for a, b in zip(first, second, strict=True):
        assert gym.utils.env_checker.data_equivalence(a, b, exact=True)

    other = rollout(RoutingEnv(**kwargs), 43, actions)
    prompts = [step[4]["prompt_index"] for step in first[1::2]]
    other_prompts = [step[4]["prompt_index"] for step in other[1::2]]
    assert prompts != other_prompts
    latencies = [step[4]["latency_s"] for step in first[1::2]]
    other_latencies = [step[4]["latency_s"] for step in other[1::2]]
    assert latencies != other_latencies


def test_shuffle_draws_every_row_and_cycling_is_ordered(data, embeddings):
    env = RoutingEnv(data=data, embeddings=embeddings)
    env.reset(seed=0)
    drawn = {env.reset()[1]["prompt_index"] for _ in range(600)}
    assert drawn == set(range(N_PROMPTS))

    rows = np.array([7, 2, 9])
    env = RoutingEnv(data=data, embeddings=embeddings, rows=rows, shuffle=False)
    seq = [env.reset(seed=0)[1]["prompt_index"]] + [env.reset()[1]["prompt_index"] for _ in range(4)]
    assert seq == [7, 2, 9, 7, 2]
    assert env.reset(seed=5)[1]["prompt_index"] == 7  # a seeded reset restarts the cycle


def test_reset_option_forces_the_prompt(data, embeddings):
    env = RoutingEnv(data=data, embeddings=embeddings, rows=np.arange(10))
    obs, info = env.reset(seed=0, options={"row": 4})
    assert info == {"prompt_index": 4}
    np.testing.assert_array_equal(obs, embeddings[4])
    for bad in (10, -1, 2.0, "4"):
        with pytest.raises(ValueError, match="options\\['row'\\]"):
            env.reset(options={"row": bad})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"rows": 4})


# ---------------------------------------------------------------------- rewards and info
@pytest.mark.parametrize("cost_weight,latency_weight", [(0.0, 0.0), (0.5, 0.0), (2.0, 0.3)])
def test_reward_is_the_formula_of_its_info(data, embeddings, cost_weight, latency_weight):
    env = RoutingEnv(data=data, embeddings=embeddings, cost_weight=cost_weight, latency_weight=latency_weight)
    assert env.cost_scale == pytest.approx(default_cost_scale(data.cost_usd))
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(50):
        obs, info = env.reset()
        action = rng.integers(len(MODELS))
        obs2, r, terminated, truncated, info = env.step(action)
        row = info["prompt_index"]
        assert (terminated, truncated) == (True, False)
        np.testing.assert_array_equal(obs2, obs)
        assert info["model"] == MODELS[action]
        assert info["quality"] == data.quality[row, action]
        assert info["cost_usd"] == data.cost_usd[row, action]
        assert info["cost"] == pytest.approx(info["cost_usd"] / env.cost_scale)
        assert info["latency_s"] > 0
        expected = info["quality"] - cost_weight * info["cost"] - latency_weight * info["latency_s"]
        assert r == pytest.approx(expected, abs=1e-12)


def test_info_holds_only_the_chosen_outcome(data, embeddings):
    env = RoutingEnv(data=data, embeddings=embeddings, cost_weight=1.0)
    obs, info = env.reset(seed=0)
    assert set(info) == {"prompt_index"}
    *_, info = env.step(np.int64(1))
    assert tuple(info) == INFO_KEYS
    for key, value in info.items():
        assert np.ndim(value) == 0, f"info[{key!r}] is not a scalar: {value!r}"
        assert isinstance(value, (int, float, str)), f"info[{key!r}] has type {type(value)}"


def test_measured_latency_is_used_when_present(data, embeddings):
    env = RoutingEnv(data=data, embeddings=embeddings, latency_sigma=0.0)
    for (row, model), measured in MEASURED.items():
        env.reset(seed=0, options={"row": row})
        assert env.step(model)[4]["latency_s"] == measured
    # Unmeasured: the noiseless prior latency, with the default prior where the catalog has none.
    ttft, tps = np.array([0.2, 0.5, 1.0]), np.array([100.0, 40.0, 50.0])
    for model in range(len(MODELS)):
        env.reset(options={"row": 1})
        expected = ttft[model] + data.output_tokens[1, model] / tps[model]
        assert env.step(model)[4]["latency_s"] == pytest.approx(expected)


def test_missing_output_tokens_fall_back_to_the_model_mean(data, embeddings):
    data.output_tokens[1, 0] = np.nan
    env = RoutingEnv(data=data, embeddings=embeddings, latency_sigma=0.0)
    env.reset(seed=0, options={"row": 1})
    expected = 0.2 + np.nanmean(data.output_tokens[:, 0]) / 100.0
    assert env.step(0)[4]["latency_s"] == pytest.approx(expected)


# ---------------------------------------------------------------------- invalid use
def test_incomplete_rows_are_rejected(data, embeddings):
    data.quality[3, 1] = np.nan
    data.cost_usd[8, 0] = np.nan
    with pytest.raises(ValueError, match=r"2 of the 4 rows .*complete_rows\(\)"):
        RoutingEnv(data=data, embeddings=embeddings, rows=np.array([0, 3, 8, 9]))
    env = RoutingEnv(data=data, embeddings=embeddings)  # the default keeps the complete rows only
    assert env.n_prompts == N_PROMPTS - 2
    assert not {3, 8} & set(env.rows.tolist())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"rows": np.array([], dtype=int)}, "rows is empty"),
        ({"rows": np.array([0, 30])}, "index the dataset's 30 prompts"),
        ({"rows": np.array([0.0, 1.0])}, "integer row indices"),
        ({"rows": np.ones(5, dtype=bool)}, "boolean rows mask"),
        ({"embeddings": np.zeros((29, DIM), np.float32)}, "one per prompt"),
        ({"embeddings": np.zeros(DIM, np.float32)}, "2-D"),
        ({"embeddings": np.full((N_PROMPTS, DIM), np.nan, np.float32)}, "finite"),
        ({"cost_weight": -1.0}, "cost_weight"),
        ({"latency_weight": np.nan}, "latency_weight"),
        ({"latency_sigma": -0.1}, "latency_sigma"),
        ({"cost_scale": 0.0}, "cost_scale"),
        ({"render_mode": "human"}, "does not render"),
    ],
)
def test_invalid_arguments(data, embeddings, kwargs, match):
    kwargs = {"data": data, "embeddings": embeddings, **kwargs}
    with pytest.raises(ValueError, match=match):
        RoutingEnv(**kwargs)


def test_invalid_actions_and_order(data, embeddings):
    env = RoutingEnv(data=data, embeddings=embeddings)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(0)
    env.reset(seed=0)
    for bad in (-1, 3, 1.0, "1", np.array([1])):
        with pytest.raises(ValueError, match=r"invalid action .* \[0, 3\)"):
            env.step(bad)
    env.step(np.int64(2))  # the bad actions left the episode running
    with pytest.raises(RuntimeError, match="finished episode"):
        env.step(0)


def test_observations_are_clipped_float32_copies(data, embeddings):
    embeddings[0, 0] = 1.5
    env = RoutingEnv(data=data, embeddings=embeddings)
    obs, _ = env.reset(seed=0, options={"row": 0})
    assert obs.dtype == np.float32 and obs[0] == 1.0 and obs in env.observation_space
    obs[:] = 0.0  # the caller owns the returned array
    assert env.reset(options={"row": 0})[0][0] == 1.0


# ---------------------------------------------------------------------- vector env
def test_vector_env_same_step_autoreset(data, embeddings):
    envs = make_vector_env(4, data=data, embeddings=embeddings, cost_weight=0.5, latency_weight=0.1)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, infos = envs.reset(seed=0)
    assert obs.shape == (4, DIM) and obs.dtype == np.float32
    prompts = infos["prompt_index"]
    assert prompts.shape == (4,) and len(set(prompts.tolist())) > 1  # sub-envs are seeded 0, 1, 2, 3
    rng = np.random.default_rng(0)
    for _ in range(5):
        actions = rng.integers(0, len(MODELS), size=4)
        next_obs, rewards, terminated, truncated, infos = envs.step(actions)
        assert rewards.shape == (4,) and terminated.all() and not truncated.any()
        out = step_outcomes(infos)
        for key in ("quality", "cost_usd", "cost", "latency_s"):
            assert out[key].shape == (4,) and out[key].dtype == np.float64
        np.testing.assert_array_equal(out["prompt_index"], prompts)
        np.testing.assert_array_equal(out["quality"], data.quality[prompts, actions])
        np.testing.assert_array_equal(out["cost_usd"], data.cost_usd[prompts, actions])
        assert list(out["model"]) == [MODELS[a] for a in actions]
        np.testing.assert_allclose(
            rewards, out["quality"] - 0.5 * out["cost"] - 0.1 * out["latency_s"], rtol=0, atol=1e-12
        )
        np.testing.assert_array_equal(np.stack(infos["final_obs"]), obs)
        # SAME_STEP: the returned observations already belong to the next prompts.
        prompts = infos["prompt_index"]
        np.testing.assert_array_equal(next_obs, embeddings[prompts])
        obs = next_obs
    envs.close()


def test_vector_env_is_seeded_and_reproducible(data, embeddings):
    def run(seed: int) -> list[np.ndarray]:
        envs = make_vector_env(4, data=data, embeddings=embeddings)
        _, infos = envs.reset(seed=seed)
        seen = [infos["prompt_index"]]
        for _ in range(3):
            seen.append(envs.step(np.zeros(4, dtype=np.int64))[4]["prompt_index"])
        return seen

    a, b, c = run(7), run(7), run(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_make_vec_uses_the_same_step_helper(data, embeddings):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        envs = gym.make_vec(ENV_IDS[0], num_envs=2, data=data, embeddings=embeddings)
    assert isinstance(envs, gym.vector.SyncVectorEnv)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    envs.reset(seed=0)
    assert step_outcomes(envs.step(np.array([0, 1]))[4])["model"].tolist() == ["small", "medium"]
    envs.close()


@pytest.mark.parametrize("num_envs", [0, -1, 2.0, True])
def test_make_vector_env_rejects_bad_num_envs(data, embeddings, num_envs):
    with pytest.raises(ValueError, match="num_envs"):
        make_vector_env(num_envs, data=data, embeddings=embeddings)


# ---------------------------------------------------------------------- latency model
def test_sample_latency_is_seeded_with_median_one_noise():
    base = 0.5 + 300 / 60.0
    a = sample_latency(np.random.default_rng(0), 0.5, 60.0, np.full(20_000, 300.0), 0.25)
    b = sample_latency(np.random.default_rng(0), 0.5, 60.0, np.full(20_000, 300.0), 0.25)
    np.testing.assert_array_equal(a, b)
    assert np.median(a) == pytest.approx(base, rel=0.02)
    assert np.std(np.log(a / base)) == pytest.approx(0.25, rel=0.03)
    exact = sample_latency(np.random.default_rng(0), np.array([0.1, 1.0]), np.array([10.0, 50.0]), 100.0, 0.0)
    np.testing.assert_allclose(exact, [0.1 + 10.0, 1.0 + 2.0])


@pytest.mark.parametrize(
    "args,match",
    [
        ((np.nan, 50.0, 10.0, 0.1), "ttft_s"),
        ((0.5, 0.0, 10.0, 0.1), "output_tokens_per_s"),
        ((0.5, 50.0, -1.0, 0.1), "output_tokens"),
        ((0.5, 50.0, 10.0, -0.1), "sigma"),
    ],
)
def test_sample_latency_rejects_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        sample_latency(np.random.default_rng(0), *args)


def test_fill_latency_priors_and_output_tokens():
    ttft, tps = fill_latency_priors(TTFT, TPS)
    np.testing.assert_array_equal(ttft, [0.2, 0.5, 1.0])
    np.testing.assert_array_equal(tps, [100.0, 40.0, 50.0])
    assert np.isnan(TTFT[1])  # inputs untouched
    ttft, tps = fill_latency_priors(TTFT, TPS, default_ttft=2.0, default_tps=10.0)
    assert ttft[1] == 2.0 and tps[2] == 10.0

    tokens = np.array([[10.0, np.nan, np.nan], [30.0, 40.0, np.nan]])
    np.testing.assert_array_equal(fill_output_tokens(tokens), [[10.0, 40.0, 80 / 3], [30.0, 40.0, 80 / 3]])
    np.testing.assert_array_equal(
        fill_output_tokens(np.full((2, 2), np.nan), default=7.0), np.full((2, 2), 7.0)
    )


# ---------------------------------------------------------------------- the env config group
def test_every_env_config_builds_its_env_on_the_bundled_data():
    """Each configs/env option, as `router-rl train` passes it (every key but `id` as an env argument), builds
    a valid env on the bundled arena data and its scenario events name real models."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    import router_rl.configs
    from router_rl.data import load_bundled

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arena = load_bundled("arena")
    arena = arena.take(arena.complete_rows())
    emb = np.random.default_rng(0).normal(size=(arena.n_prompts, 4)).astype(np.float32) / 4
    root = Path(router_rl.configs.__file__).parent / "env"
    options = sorted(p.stem for p in root.glob("*.yaml"))
    assert {
        "routing",
        "simulated",
        "drift_price_cut",
        "drift_quality_drop",
        "drift_outage",
        "drift_new_model",
    } <= set(options)
    for option in options:
        with initialize_config_module(config_module="router_rl.configs", version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"env={option}"])
        kwargs = {k: v for k, v in OmegaConf.to_container(cfg.env, resolve=True).items() if k != "id"}
        env = gym.make(cfg.env.id, data=arena, embeddings=emb, **kwargs).unwrapped
        assert env.observation_space.shape == (4,), (
            option
        )  # router-rl train's policies see the embedding only
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_env(env)
        envs = make_vector_env(2, data=arena, embeddings=emb, **kwargs)
        envs.reset(seed=0)
        envs.step(np.array([0, 1]))
        envs.close()


# ---------------------------------------------------------------------- no arguments: the bundled defaults
@pytest.fixture
def default_cache(tmp_path, monkeypatch):
    """A private embedding cache holding fake vectors for the bundled prompts under the default encoder's key,
    so ``gym.make(id)`` reads them (no encoder run; subprocesses of an async vector env inherit the path)."""
    from router_rl.embeddings import DEFAULT_ENCODER, Embedder, EmbeddingCache
    from router_rl.envs import defaults

    monkeypatch.setenv("ROUTER_RL_CACHE", str(tmp_path))
    data = defaults.default_data()
    fake = np.random.default_rng(0).normal(size=(data.n_prompts, 384)).astype(np.float32)
    fake /= np.linalg.norm(fake, axis=1, keepdims=True)
    key = Embedder(DEFAULT_ENCODER, max_seq_length=defaults.DEFAULT_MAX_SEQ_LENGTH).encoder_id
    unique = dict(zip(data.prompts.tolist(), fake, strict=True))  # a repeated text keeps one vector
    cache = EmbeddingCache(tmp_path / "embeddings.sqlite")
    cache.put_many(key, list(unique), np.stack(list(unique.values())))
    cache.close()
    defaults._default_embeddings.cache_clear()
    yield data, np.stack([unique[p] for p in data.prompts.tolist()])
    defaults._default_embeddings.cache_clear()  # no fake vector outlives the test


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_every_id_builds_with_no_arguments(env_id, default_cache):
    data, vectors = default_cache
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make(env_id)
        check_env(env.unwrapped)
    obs, info = env.reset(seed=0)
    first = obs["embedding"] if isinstance(obs, dict) else obs
    np.testing.assert_array_equal(first[:384], vectors[info["prompt_index"]])  # read from the disk cache
    assert env.unwrapped.models == tuple(data.models)
    env.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_make_vec_next_step_autoreset_reports_outcomes(mode, default_cache):
    data, _ = default_cache
    envs = gym.make_vec("router_rl/Routing-v0", num_envs=2, vectorization_mode=mode)
    _, infos = envs.reset(seed=0)
    prompts, stepped = infos["prompt_index"], 0
    for t in range(4):
        actions = np.array([t % 2, 3])
        _, rewards, terminated, _, infos = envs.step(actions)
        out = step_outcomes(infos)
        if t % 2 == 0:  # one-step episodes: this step acts...
            assert out["stepped"].all() and terminated.all()
            np.testing.assert_array_equal(out["prompt_index"], prompts)
            np.testing.assert_array_equal(out["quality"], data.quality[prompts, actions])
            assert list(out["model"]) == [data.models[a] for a in actions]
            stepped += 2
        else:  # ... and NEXT_STEP resets the sub-envs on the following one, ignoring the actions
            assert not out["stepped"].any() and np.isnan(out["quality"]).all() and (rewards == 0).all()
            assert (out["prompt_index"] == -1).all() and list(out["model"]) == [None, None]
            prompts = infos["prompt_index"]
    assert stepped == 4
    envs.close()


def test_own_data_without_embeddings_gets_the_default_encoders(tmp_path, monkeypatch, data):
    from router_rl.embeddings import Embedder

    monkeypatch.setenv("ROUTER_RL_CACHE", str(tmp_path))
    small = data.take(np.arange(3))
    env = RoutingEnv(data=small)
    obs, info = env.reset(seed=0)
    expected = Embedder(max_seq_length=256, cache_dir=tmp_path).encode(list(small.prompts))
    np.testing.assert_allclose(obs, expected[info["prompt_index"]], atol=1e-6)
    with pytest.raises(ValueError, match="embeddings given without data"):
        RoutingEnv(embeddings=expected)
