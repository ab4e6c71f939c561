"""Gymnasium wrappers that change where the routing env's quality feedback comes from.

- :class:`NoisyJudge`: the policy sees a noisy, biased judge's grade instead of the recorded quality, so it
  learns from feedback as noisy as real judges give (evaluation still uses the recorded grades).
- :class:`RewardModelQuality`: (prompt, model) pairs without a recorded grade get the reward model's
  predicted quality (its mean, or a draw around it); :func:`fill_missing_pairs` builds the complete dataset
  such an env runs on.
- :func:`make_feedback_vector_env`: the ``SAME_STEP`` vector env of :class:`~router_rl.envs.routing.RoutingEnv`
  with the wrappers a ``judge`` config asks for (``configs/judge/``: ``recorded``, ``noisy``,
  ``reward_model``); a drop-in replacement for :func:`router_rl.envs.make_vector_env`.

Both wrappers recompute the reward from the replaced quality (the reward is linear in it) and put the
recorded value in ``info["true_quality"]``; their randomness comes from a generator seeded by ``reset(seed=)``
(apart from the inner env's), so a noisy run draws the same prompts and latencies as a noiseless one.
"""

from __future__ import annotations

import fnmatch
import functools
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from router_rl.types import RoutingData

if TYPE_CHECKING:
    from router_rl.reward_model import RewardModel

_NOISE_TAG = 0x6A756467  # separates the wrappers' random streams from the inner env's
_JUDGE_KEYS = {
    "recorded": {"source"},
    "noisy": {"source", "noise_std", "bias", "model_bias", "step", "seed"},
    "reward_model": {
        "source",
        "checkpoint",
        "draw",
        "spread",
        "noise_std",
        "bias",
        "model_bias",
        "step",
        "seed",
        "model",
    },
}


def _model_offsets(models: tuple[str, ...], model_bias: Mapping[str, float] | None) -> np.ndarray:
    """(K,) bias per model from ``{pattern: bias}`` (fnmatch patterns, e.g. ``gpt-4*``; the last match wins)."""
    offsets = np.zeros(len(models))
    for pattern, value in dict(model_bias or {}).items():
        hits = [i for i, m in enumerate(models) if fnmatch.fnmatchcase(m, str(pattern))]
        if not hits:
            raise ValueError(f"model_bias pattern {pattern!r} matches none of the models {list(models)}")
        offsets[hits] = float(value)
    return offsets


def judge_grade(
    quality: np.ndarray | float,
    rng: np.random.Generator,
    *,
    noise_std: float = 0.0,
    bias: float | np.ndarray = 0.0,
    step: float = 0.0,
) -> np.ndarray:
    """A simulated judge's grade of answers whose true quality is ``quality``.

        grade = clip(quality + bias + noise_std * z, 0, 1),  z ~ N(0, 1),   rounded to multiples of ``step``

    ``step = 0.1`` mimics a 1-10 judge (grade / 10); 0 keeps it continuous. ``bias`` broadcasts (per-model
    biases model self-preference or verbosity bias).
    """
    q = np.asarray(quality, dtype=np.float64) + np.asarray(bias, dtype=np.float64)
    if noise_std > 0:
        q = q + noise_std * rng.standard_normal(q.shape)
    q = np.clip(q, 0.0, 1.0)
    if step > 0:
        q = np.clip(np.round(np.round(q / step) * step, 12), 0.0, 1.0)  # 0.6, not 0.6000000000000001
    return q


class _QualityWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Replaces ``info["quality"]`` and the reward by :meth:`_grade`, keeping the recorded value."""

    def __init__(self, env: gym.Env, seed: int | None = None) -> None:
        gym.Wrapper.__init__(self, env)
        base = self.env.unwrapped
        self._models = tuple(base.models)
        self._seed = seed
        self._rng: np.random.Generator | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        if seed is not None:
            self._rng = np.random.default_rng([_NOISE_TAG, int(seed)])
        elif self._rng is None:
            self._rng = np.random.default_rng(
                [_NOISE_TAG, int(self._seed)] if self._seed is not None else None
            )
        return obs, info

    def _served(self, info: dict[str, Any], action: Any) -> int:
        """Index of the model that answered: the chosen one, or in a simulated env the fallback named by
        ``info["served_by"]`` (``""`` when the request failed: -1, no answer for a judge to grade)."""
        if "served_by" not in info:
            return int(action)
        name = info["served_by"]
        return self._models.index(name) if name in self._models else -1

    def _grade(self, row: int, model: int, quality: float) -> float:
        """The grade the policy sees for ``model``'s answer to prompt ``row`` whose recorded quality is ``quality``."""
        raise NotImplementedError

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        true_q = float(info["quality"])
        served = self._served(info, action)
        graded = true_q if served < 0 else float(self._grade(int(info["prompt_index"]), served, true_q))
        info = {**info, "quality": graded, "true_quality": true_q}
        return obs, float(reward) - true_q + graded, terminated, truncated, info


class NoisyJudge(_QualityWrapper):
    """Feedback from a noisy, biased judge instead of the recorded grade.

    The chosen model's revealed quality becomes :func:`judge_grade` of its recorded quality: plus ``bias``
    (everyone) and ``model_bias`` (per model, by name pattern: a judge that prefers its own family), plus
    Gaussian noise of ``noise_std``, clipped to [0, 1] and rounded to ``step``. The reward uses the graded
    quality; ``info["true_quality"]`` keeps the recorded one.

    Args:
        env: a :class:`~router_rl.envs.routing.RoutingEnv` (possibly wrapped).
        noise_std: standard deviation of the judge's noise on the [0, 1] quality scale.
        bias: added to every grade.
        model_bias: ``{model name pattern: bias}`` added to that model's grades.
        step: grade resolution (0.1 = a 1-10 judge); 0 = continuous.
        seed: seeds the noise when ``reset`` gets no seed.
    """

    def __init__(
        self,
        env: gym.Env,
        *,
        noise_std: float = 0.1,
        bias: float = 0.0,
        model_bias: Mapping[str, float] | None = None,
        step: float = 0.0,
        seed: int | None = None,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, noise_std=noise_std, bias=bias, model_bias=model_bias, step=step, seed=seed
        )
        super().__init__(env, seed)
        for name, value in (("noise_std", noise_std), ("step", step)):
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not np.isfinite(bias):
            raise ValueError(f"bias must be finite, got {bias!r}")
        self.noise_std, self.step_size = float(noise_std), float(step)
        self.bias = float(bias) + _model_offsets(self._models, model_bias)

    def _grade(self, row: int, model: int, quality: float) -> float:
        return float(
            judge_grade(
                quality, self._rng, noise_std=self.noise_std, bias=self.bias[model], step=self.step_size
            )
        )


class RewardModelQuality(_QualityWrapper):
    """Quality from a reward model for the (prompt, model) pairs that have no recorded grade.

    Where ``recorded[row, action]`` is True the recorded quality passes through; elsewhere the revealed
    quality is ``predicted[row, action]`` (``draw="mean"``) or a draw around it, clipped to [0, 1]
    (``draw="sample"``: Gaussian with ``spread``, e.g. the reward model's held-out RMSE). ``info`` gains
    ``imputed`` (bool). The inner env must run on data whose missing pairs were filled
    (:func:`fill_missing_pairs`) so that it accepts those rows.

    Args:
        env: a routing env over the filled dataset.
        predicted: (N, K) reward-model quality of every pair of the dataset.
        recorded: (N, K) True where the quality was recorded.
        draw: ``mean`` or ``sample``.
        spread: standard deviation of ``sample`` draws.
        seed: seeds the draws when ``reset`` gets no seed.
    """

    def __init__(
        self,
        env: gym.Env,
        *,
        predicted: np.ndarray,
        recorded: np.ndarray,
        draw: str = "mean",
        spread: float = 0.0,
        seed: int | None = None,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, predicted=predicted, recorded=recorded, draw=draw, spread=spread, seed=seed
        )
        super().__init__(env, seed)
        predicted, recorded = np.asarray(predicted, dtype=np.float64), np.asarray(recorded, dtype=bool)
        k = len(self._models)
        if predicted.shape != recorded.shape or predicted.ndim != 2 or predicted.shape[1] != k:
            raise ValueError(
                f"predicted {predicted.shape} and recorded {recorded.shape} must both be (N, K={k}), one row per "
                "prompt of the dataset"
            )
        if draw not in ("mean", "sample"):
            raise ValueError(f"draw must be 'mean' or 'sample', got {draw!r}")
        if not (np.isfinite(spread) and spread >= 0):
            raise ValueError(f"spread must be a finite number >= 0, got {spread!r}")
        self.predicted, self.recorded, self.draw, self.spread = predicted, recorded, draw, float(spread)

    def _grade(self, row: int, model: int, quality: float) -> float:
        if self.recorded[row, model]:
            return quality
        q = self.predicted[row, model]
        if self.draw == "sample" and self.spread > 0:
            q = q + self.spread * self._rng.standard_normal()
        return float(np.clip(q, 0.0, 1.0))

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        served = self._served(info, action)
        info["imputed"] = served >= 0 and not bool(self.recorded[int(info["prompt_index"]), served])
        return obs, reward, terminated, truncated, info


# --------------------------------------------------------------------------------- missing pairs
def estimated_costs(data: RoutingData) -> np.ndarray:
    """(N, K) cost_usd with missing pairs estimated: the prompt's input tokens (recorded for another model)
    and the model's mean output tokens, priced by the catalog; a model without prices or tokens falls back
    to its mean recorded cost."""
    from router_rl.envs.latency import fill_output_tokens

    cost = np.array(data.cost_usd, dtype=np.float64)
    missing = np.isnan(cost)
    if not missing.any():
        return cost
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: handled by the fallbacks below
        tokens_in = np.nanmean(data.input_tokens, axis=1, keepdims=True)
        tokens_in = np.where(np.isnan(tokens_in), np.nanmean(data.input_tokens), tokens_in)
        mean_cost = np.nanmean(cost, axis=0)
    tokens_out = fill_output_tokens(data.output_tokens) if np.isfinite(data.output_tokens).any() else None
    priced = (
        (tokens_in * data.catalog.usd_per_1m_input + tokens_out * data.catalog.usd_per_1m_output) / 1e6
        if tokens_out is not None
        else np.full(cost.shape, np.nan)
    )
    fill = np.where(np.isfinite(priced), priced, mean_cost[None, :])
    fill = np.where(np.isfinite(fill), fill, np.nanmean(cost) if np.isfinite(cost).any() else 0.0)
    return np.where(missing, fill, cost)


def fill_missing_pairs(data: RoutingData, predicted: np.ndarray) -> tuple[RoutingData, np.ndarray]:
    """A complete copy of ``data``: ungraded pairs get the reward model's quality and an estimated cost.

    Args:
        data: a dataset with NaN where a (prompt, model) pair has no outcome.
        predicted: (N, K) reward-model quality of every pair.
    Returns:
        (filled data, (N, K) bool mask of the pairs whose quality was recorded).
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    if predicted.shape != data.quality.shape:
        raise ValueError(f"predicted must be {data.quality.shape} like data.quality, got {predicted.shape}")
    recorded = ~np.isnan(data.quality)
    filled = RoutingData(
        name=data.name,
        prompt_ids=data.prompt_ids,
        prompts=data.prompts,
        models=data.models,
        quality=np.where(recorded, data.quality, np.clip(predicted, 0.0, 1.0)),
        cost_usd=estimated_costs(data),
        input_tokens=data.input_tokens,
        output_tokens=data.output_tokens,
        latency_s=data.latency_s,
        split=data.split,
        catalog=data.catalog,
        groups=data.groups,
    )
    return filled, recorded


# ------------------------------------------------------------------------------------ the factory
def check_judge_config(judge: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``judge`` config as a dict, checked: a known ``source`` with only its own keys."""
    judge = dict(judge or {"source": "recorded"})
    source = judge.get("source", "recorded")
    if source == "llm":
        raise ValueError(
            "judge=llm grades answers over HTTP in `router-rl collect`; the simulator learns from a table's "
            "grades: use judge=recorded (or noisy / reward_model) with the collected table"
        )
    if source not in _JUDGE_KEYS:
        raise ValueError(
            f"judge.source must be one of {sorted(_JUDGE_KEYS)} for the simulator, got {source!r}"
        )
    unknown = set(judge) - _JUDGE_KEYS[source]
    if unknown:
        raise ValueError(
            f"judge (source {source}): unknown keys {sorted(unknown)}; expected some of {sorted(_JUDGE_KEYS[source])}"
        )
    return judge


def fit_reward_model(
    data: RoutingData, embeddings: np.ndarray, rows: np.ndarray | None, judge: Mapping[str, Any]
) -> RewardModel:
    """The reward model a ``reward_model`` judge config asks for: loaded from ``checkpoint``, or fitted on
    the recorded grades of ``rows`` (the training prompts; all prompts when None) with ``judge.model``'s
    hyperparameters."""
    from router_rl.reward_model import RewardModel

    if judge.get("checkpoint"):
        rm = RewardModel.load(judge["checkpoint"])
        if list(rm.models) != list(data.models):
            missing = sorted(set(data.models) - set(rm.models))
            if missing:
                raise ValueError(f"reward model {judge['checkpoint']} has no output for models {missing}")
        return rm
    rows = np.arange(data.n_prompts) if rows is None else np.asarray(rows)
    if rows.dtype == bool:
        rows = np.flatnonzero(rows)
    rm = RewardModel(data.models, embeddings.shape[1], **dict(judge.get("model") or {}))
    rm.fit(np.asarray(embeddings)[rows], data.quality[rows])
    return rm


def _reorder(rm: RewardModel, predicted: np.ndarray, models: tuple[str, ...]) -> np.ndarray:
    return predicted[:, [rm.models.index(m) for m in models]]


def make_feedback_vector_env(
    num_envs: int,
    *,
    judge: Mapping[str, Any] | None = None,
    reward_model: RewardModel | None = None,
    **kwargs: Any,
) -> gym.vector.SyncVectorEnv:
    """:func:`router_rl.envs.make_vector_env` with the feedback a ``judge`` config asks for.

    - ``source: recorded`` (or ``judge=None``): the plain env.
    - ``source: noisy``: every sub-env wrapped in :class:`NoisyJudge` (``noise_std``, ``bias``, ``model_bias``,
      ``step``).
    - ``source: reward_model``: a reward model (``reward_model`` if given, else ``judge.checkpoint``, else
      fitted on the recorded grades of ``kwargs["rows"]``) fills the pairs without a grade
      (:func:`fill_missing_pairs`) and every sub-env is wrapped in :class:`RewardModelQuality` (``draw``,
      ``spread``), then in :class:`NoisyJudge` when ``noise_std`` or a bias is set. ``rows`` may then include
      prompts with missing pairs. When every pair of ``rows`` is graded, no reward model is fitted or used.

    Args:
        num_envs: sub-environments.
        judge: the ``judge`` config group as a mapping.
        reward_model: a fitted reward model to use instead of fitting or loading one.
        **kwargs: :class:`~router_rl.envs.routing.RoutingEnv` arguments (``data``, ``embeddings``, ``rows``...).
    """
    from router_rl.envs.routing import RoutingEnv, make_vector_env

    judge = check_judge_config(judge)
    source = judge.get("source", "recorded")
    if source == "recorded":
        return make_vector_env(num_envs, **kwargs)
    if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
        raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    kwargs = dict(kwargs)
    seed = judge.get("seed")
    layers: list[Any] = []
    data: RoutingData = kwargs["data"]
    rows = kwargs.get("rows")
    needed = np.isnan(data.quality if rows is None else data.quality[np.asarray(rows)]).any()
    if source == "reward_model" and needed:  # every pair graded: nothing to fill, no model to fit
        rm = reward_model or fit_reward_model(data, kwargs["embeddings"], kwargs.get("rows"), judge)
        predicted = _reorder(rm, rm.predict(kwargs["embeddings"]), tuple(data.models))
        kwargs["data"], recorded = fill_missing_pairs(data, predicted)
        opts = {"draw": judge.get("draw", "mean"), "spread": float(judge.get("spread") or 0.0)}
        layers.append(
            lambda env: RewardModelQuality(env, predicted=predicted, recorded=recorded, seed=seed, **opts)
        )
    noise = {k: judge[k] for k in ("noise_std", "bias", "model_bias", "step") if judge.get(k) is not None}
    if source == "noisy" or any(noise.get(k) for k in ("noise_std", "bias", "model_bias")):
        layers.append(lambda env: NoisyJudge(env, seed=seed, **noise))

    def build(index: int) -> gym.Env:
        # one clock for the whole vector env: scenario timing counts every sub-env's requests
        env: gym.Env = RoutingEnv(**kwargs, clock_offset=index, clock_stride=int(num_envs))
        for layer in layers:
            env = layer(env)
        return env

    if "embeddings" in kwargs:  # convert once: the sub-envs then share one array instead of each copying
        kwargs["embeddings"] = np.asarray(kwargs["embeddings"], dtype=np.float32)
    return gym.vector.SyncVectorEnv(
        [functools.partial(build, i) for i in range(int(num_envs))],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
