"""The routing environment: a one-step contextual bandit over a routing dataset."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from router_rl.envs.defaults import resolve
from router_rl.envs.latency import expected_latency, fill_latency_priors, fill_output_tokens, sample_latency
from router_rl.reward import default_cost_scale, reward
from router_rl.types import RoutingData

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from router_rl.envs.traffic import Request, Traffic

INFO_KEYS = ("prompt_index", "model", "quality", "cost_usd", "cost", "latency_s")
"""The keys of the ``info`` returned by :meth:`RoutingEnv.step`: the chosen model's outcome only."""
SIM_INFO_KEYS = ("step", "served_by", "status", "first_status", "wait_s")
"""Further ``info`` keys of a simulated env (``simulator``, ``tiers`` or ``scenario`` given); with tiers also
``tier``, ``latency_budget_s``, ``sla_violated``, ``sla_penalty``; with several caller regions ``region``."""


class RoutingEnv(gym.Env[np.ndarray, np.int64]):
    """Route one prompt to one model of the catalog and observe only that model's outcome.

    ## Description

    A one-step contextual bandit over a routing dataset (:class:`router_rl.types.RoutingData`). Each episode
    draws one prompt; the observation is the prompt's sentence embedding; the action picks a model; the
    reward is that model's recorded judge quality minus its weighted, scaled cost minus its weighted latency.
    Only the chosen model's outcome is revealed (bandit feedback), never the rest of the dataset row.

    Quality and cost are the recorded values. Latency is the measured ``latency_s`` where the data has one
    for the (prompt, model) pair, and is otherwise sampled from the catalog's latency priors with
    :func:`router_rl.envs.latency.sample_latency`; those priors are assumptions, not measurements.

    With ``simulator``, ``tiers`` or ``scenario`` (all None by default, which is exactly v0) the env is
    *simulated*: each request also gets a latency-budget tier and a caller region (both in the observation),
    latency follows :mod:`router_rl.envs.simulator` (network round trip, time to first token, decoding,
    heavy-tailed noise, provider load, the caller's concurrency limit and queue, 429s, timeouts and the
    fallback's extra cost and delay), and the scenario changes prices, quality and availability over the
    request stream. Requests keep their order across episodes: the queues and the scenario's clock run on
    until a seeded ``reset``.

    ## Action Space

    ``Discrete(K)``: the index of a model in ``env.models`` (the dataset's model order).

    ## Observation Space

    ``Box(-1, 1, (d,), float32)``: the prompt's L2-normalised sentence embedding (clipped to [-1, 1]).
    A simulated env appends ``env.context_dim`` one-hot features: the request's tier (when ``tiers`` is set),
    then its caller region (when the simulator's ``caller_mix`` has more than one region).

    ## Rewards

    ``quality - cost_weight * cost_usd / cost_scale - latency_weight * latency_s``, computed by
    :func:`router_rl.reward.reward`. ``info`` carries the components of the chosen model only:
    ``prompt_index`` (row of the dataset), ``model`` (name), ``quality``, ``cost_usd``, ``cost``
    (``cost_usd / cost_scale``) and ``latency_s``. ``reset`` returns ``info = {"prompt_index": row}``.
    Nothing in ``info`` depends on the wall clock, so two runs with the same seed give the same infos.
    A simulated env subtracts the tier's ``penalty`` when the latency exceeds the tier's budget and adds
    :data:`SIM_INFO_KEYS` (and the tier's) to ``info``; its ``reset`` info adds ``step`` (and ``tier``,
    ``region``).

    ## Episode End

    Every episode is one step: ``step`` returns ``terminated=True, truncated=False`` and the prompt's
    observation again. Stepping again without ``reset`` raises ``RuntimeError``. Vectorise with
    :func:`make_vector_env` (``AutoresetMode.SAME_STEP``).

    ## Arguments

    - ``data``: the routing dataset; default (None): the bundled arena set (:mod:`router_rl.envs.defaults`).
    - ``embeddings``: (N, d) float32 sentence embeddings, one row per prompt of ``data``; default (None): the
      default encoder's, from the on-disk embedding cache (computed there once if absent).
    - ``rows``: prompt row indices (or an (N,) boolean mask) this env samples from; default every complete
      row (``data.complete_rows()``). Rows with a missing quality or cost raise ``ValueError``.
    - ``cost_weight``: weight of the scaled cost in the reward, >= 0.
    - ``cost_scale``: dollars per unit of cost; ``None`` uses
      :func:`router_rl.reward.default_cost_scale` of ``data.cost_usd[rows]``.
    - ``latency_weight``: weight of latency (per second) in the reward, >= 0.
    - ``latency_sigma``: log-normal noise of sampled latencies (median 1), >= 0.
    - ``shuffle``: ``True`` draws each prompt uniformly from ``rows`` with ``np_random``; ``False`` cycles
      through ``rows`` in order (evaluation), restarting at the first row whenever ``reset`` gets a seed.

    - ``simulator``: options of :func:`router_rl.envs.simulator.parse_simulator` (keys of
      :data:`router_rl.envs.simulator.DEFAULTS`), e.g. ``{"tail_prob": 0.05, "concurrency": 8}``.
    - ``tiers``: ``"default"`` or ``{name: {budget_s, share, penalty}}`` (:mod:`router_rl.envs.tiers`).
    - ``scenario``: a list of drift events (:mod:`router_rl.envs.scenarios`).
    - ``clock_offset``, ``clock_stride``: this env's requests have indices ``offset + stride * n``
      (:func:`make_vector_env` sets them so that indices count the decisions of the whole vector env).

    ``reset(options={"row": i})`` forces prompt row ``i`` (which must be one of ``rows``).

    ```python
    import gymnasium as gym
    import router_rl.envs  # registers router_rl/Routing-v0

    env = gym.make("router_rl/Routing-v0")  # the bundled data; or data=..., embeddings=..., cost_weight=0.5
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    ```

    ## Version History

    - v0: initial version; later gained the keyword arguments ``simulator``, ``tiers``, ``scenario``,
      ``clock_offset`` and ``clock_stride``, whose defaults keep v0's behaviour exactly.
    ``router_rl/SimulatedRouting-v0`` registers this class with the simulator on by default (heavy tails,
    three caller regions, provider load, concurrency limits with a queue, fallback to the cheapest model) and
    the default tiers. (A separate name, not ``Routing-v1``, so that making ``Routing-v0`` raises no
    "out of date" warning.)
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        *,
        data: RoutingData | None = None,
        embeddings: np.ndarray | None = None,
        rows: np.ndarray | None = None,
        cost_weight: float = 0.0,
        cost_scale: float | None = None,
        latency_weight: float = 0.0,
        latency_sigma: float = 0.25,
        shuffle: bool = True,
        render_mode: str | None = None,
        simulator: Mapping[str, Any] | None = None,
        tiers: str | Mapping[str, Any] | None = None,
        scenario: Sequence[Mapping[str, Any]] | None = None,
        clock_offset: int = 0,
        clock_stride: int = 1,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"RoutingEnv does not render; got render_mode={render_mode!r}, expected None")
        self.render_mode = None
        for name, value in (
            ("cost_weight", cost_weight),
            ("latency_weight", latency_weight),
            ("latency_sigma", latency_sigma),
        ):
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

        data, embeddings = resolve(data, embeddings)
        self._data = data
        self._rows = _check_rows(data, rows)
        self._row_set = frozenset(self._rows.tolist())
        self._embeddings = _check_embeddings(embeddings, data, self._rows)
        self._models = tuple(data.models)
        self._cost_weight = float(cost_weight)
        self._latency_weight = float(latency_weight)
        self._latency_sigma = float(latency_sigma)
        self._shuffle = bool(shuffle)

        if cost_scale is None:
            cost_scale = default_cost_scale(data.cost_usd[self._rows])
        elif not (np.isfinite(cost_scale) and cost_scale > 0):
            raise ValueError(f"cost_scale must be a finite number > 0, got {cost_scale!r}")
        self._cost_scale = float(cost_scale)

        catalog = data.catalog
        if tuple(catalog.models) != self._models:
            missing = sorted(set(self._models) - set(catalog.models))
            if missing:
                raise ValueError(f"data.catalog has no entry for the dataset's models {missing}")
            catalog = catalog.subset(self._models)
        self._ttft_s, self._tokens_per_s = fill_latency_priors(catalog.ttft_s, catalog.output_tokens_per_s)
        self._output_tokens = fill_output_tokens(data.output_tokens)
        self._ttft_list, self._tps_list = self._ttft_s.tolist(), self._tokens_per_s.tolist()

        self._traffic: Traffic | None = None
        if simulator is not None or tiers is not None or scenario is not None:
            from router_rl.envs.traffic import Traffic

            self._traffic = Traffic(
                data,
                simulator=simulator,
                tiers=tiers,
                scenario=scenario,
                latency_sigma=self._latency_sigma,
                clock_offset=clock_offset,
                clock_stride=clock_stride,
            )
        self._request: Request | None = None

        self.action_space = spaces.Discrete(len(self._models))
        dim = self._embeddings.shape[1] + self.context_dim
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(dim,), dtype=np.float32)

        self._cursor = 0
        self._row: int | None = None
        self._done = False

    # ------------------------------------------------------------------ read-only views
    @property
    def models(self) -> tuple[str, ...]:
        """Model names; action ``a`` routes to ``models[a]``."""
        return self._models

    @property
    def cost_scale(self) -> float:
        """Dollars per unit of cost in the reward."""
        return self._cost_scale

    @property
    def cost_weight(self) -> float:
        return self._cost_weight

    @property
    def latency_weight(self) -> float:
        return self._latency_weight

    @property
    def n_prompts(self) -> int:
        """How many prompt rows this env samples from (``len(rows)``)."""
        return len(self._rows)

    @property
    def rows(self) -> np.ndarray:
        """(n_prompts,) the dataset row indices this env samples from (a copy)."""
        return self._rows.copy()

    @property
    def traffic(self) -> Traffic | None:
        """The request stream of a simulated env (its ``scenario``, ``config``, ``sim``), else None."""
        return self._traffic

    @property
    def context_dim(self) -> int:
        """Features appended to the embedding in the observation (0 for v0)."""
        return 0 if self._traffic is None else self._traffic.context_dim

    def expected_outcomes(self, step: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, K) expected ``(quality, cost_usd, latency_s)`` of every (prompt, model) at request ``step``.

        v0: the recorded quality and cost and :func:`router_rl.envs.latency.expected_latency`. Simulated:
        :meth:`router_rl.envs.simulator.RequestSimulator.expected` (the scenario's regime at ``step``, base
        provider load, no queueing, no tier penalty).
        """
        if self._traffic is None:
            return self._data.quality, self._data.cost_usd, expected_latency(self._data, self._latency_sigma)
        return self._traffic.sim.expected(step)

    def expected_rewards(self, step: int = 0) -> np.ndarray:
        """(N, K) expected reward of every (prompt, model) under this env's weights (see
        :meth:`expected_outcomes`); the per-row maximum is the benchmark of pseudo-regret."""
        q, c, lat = self.expected_outcomes(step)
        return reward(
            q,
            c,
            lat,
            cost_weight=self._cost_weight,
            cost_scale=self._cost_scale,
            latency_weight=self._latency_weight,
        )

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._cursor = 0
            if self._traffic is not None:
                self._traffic.reset()
        options = options or {}
        unknown = set(options) - {"row"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; RoutingEnv.reset accepts only 'row'")
        if "row" in options:
            row = options["row"]
            if (
                isinstance(row, bool)
                or not isinstance(row, (int, np.integer))
                or int(row) not in self._row_set
            ):
                raise ValueError(f"options['row'] must be one of this env's prompt rows, got {row!r}")
            row = int(row)
        elif self._shuffle:
            row = int(self._rows[self.np_random.integers(len(self._rows))])
        else:
            row = int(self._rows[self._cursor % len(self._rows)])
            self._cursor += 1
        self._row = row
        self._done = False
        if self._traffic is None:
            return self._embeddings[row].copy(), {"prompt_index": row}
        self._request = self._traffic.next_request(self.np_random)
        info: dict[str, Any] = {"prompt_index": row, "step": self._request.step}
        if self._traffic.n_tiers:
            info["tier"] = self._traffic.tiers.names[self._request.tier]
        if self._traffic.n_regions:
            info["region"] = self._traffic.config.regions[self._request.region]
        return self._observation(row), info

    def _observation(self, row: int) -> np.ndarray:
        if self._traffic is None or not self._traffic.context_dim:
            return self._embeddings[row].copy()
        return np.concatenate([self._embeddings[row], self._traffic.context(self._request)])

    def step(self, action: np.int64) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._row is None:
            raise RuntimeError("RoutingEnv.step() called before reset(); call reset() to draw a prompt first")
        if self._done:
            raise RuntimeError(
                "RoutingEnv.step() called on a finished episode (every episode is one step); call reset() first"
            )
        n_models = len(self._models)
        fast_ok = type(action) in (int, np.int64) and 0 <= action < n_models
        if not fast_ok and not self.action_space.contains(action):
            raise ValueError(
                f"invalid action {action!r}: expected an integer in [0, {len(self._models)}) "
                f"indexing the models {list(self._models)}"
            )
        a, row = int(action), self._row
        if self._traffic is not None:
            return self._simulated_step(a, row)
        quality = float(self._data.quality.item(row, a))
        cost_usd = float(self._data.cost_usd.item(row, a))
        latency_s = float(self._data.latency_s.item(row, a))
        if not math.isfinite(latency_s):
            ttft, tps, tokens = self._ttft_list[a], self._tps_list[a], float(self._output_tokens.item(row, a))
            if ttft >= 0 and tps > 0 and 0 <= tokens < math.inf and ttft < math.inf and tps < math.inf:
                # sample_latency's value: the same float64 operations and one log-normal draw from np_random
                noise = float(self.np_random.lognormal(mean=0.0, sigma=self._latency_sigma))
                latency_s = (ttft + tokens / tps) * noise
            else:  # invalid priors: sample_latency raises its error
                latency_s = float(
                    sample_latency(
                        self.np_random,
                        self._ttft_s[a],
                        self._tokens_per_s[a],
                        self._output_tokens[row, a],
                        self._latency_sigma,
                    )
                )
        # router_rl.reward.reward's operations, in the same order, on Python floats (IEEE doubles)
        r = quality - self._cost_weight * cost_usd / self._cost_scale - self._latency_weight * latency_s
        self._done = True
        info = {
            "prompt_index": row,
            "model": self._models[a],
            "quality": quality,
            "cost_usd": cost_usd,
            "cost": cost_usd / self._cost_scale,
            "latency_s": latency_s,
        }
        return self._embeddings[row].copy(), r, True, False, info

    def _simulated_step(self, a: int, row: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        served, violated = self._traffic.serve(self.np_random, row, a, self._request)
        extra = self._traffic.info(self._request, served, violated)
        r = float(
            reward(
                served.quality,
                served.cost_usd,
                served.latency_s,
                cost_weight=self._cost_weight,
                cost_scale=self._cost_scale,
                latency_weight=self._latency_weight,
            )
        ) - float(extra.get("sla_penalty", 0.0))
        self._done = True
        info = {
            "prompt_index": row,
            "model": self._models[a],
            "quality": served.quality,
            "cost_usd": served.cost_usd,
            "cost": served.cost_usd / self._cost_scale,
            "latency_s": served.latency_s,
            **extra,
        }
        return self._observation(row), r, True, False, info


def make_vector_env(num_envs: int, **kwargs: Any) -> gym.vector.SyncVectorEnv:
    """``num_envs`` :class:`RoutingEnv` copies in a ``SyncVectorEnv`` with ``AutoresetMode.SAME_STEP``.

    Every step ends every sub-episode, so with ``SAME_STEP`` each sub-env is reset inside the same ``step``
    call: the returned observations are the NEXT prompts, and the outcome of the step lives in
    ``infos["final_info"]``, a dict of (num_envs,) arrays (``quality``, ``cost_usd``, ``cost``, ``latency_s``
    float64, ``prompt_index`` int64, ``model`` object) with their ``_key`` masks; ``infos["final_obs"]`` holds
    the observations the actions were taken on and ``infos["prompt_index"]`` the next prompts' rows.
    :func:`step_outcomes` extracts the outcome arrays.

    ``vec_env.reset(seed=s)`` seeds sub-env ``i`` with ``s + i`` (Gymnasium's rule), so the sub-envs draw
    different prompts. Sub-env ``i`` gets ``clock_offset=i, clock_stride=num_envs``, so the request indices of
    a simulated env's scenario count the decisions of the whole vector env. The dataset and embeddings are
    shared, not copied. With ``shuffle=False`` every
    sub-env cycles through the same ``rows``; for evaluation give each its own rows or use a single env.

    Args:
        num_envs: number of sub-environments, >= 1.
        **kwargs: :class:`RoutingEnv` arguments, shared by every sub-env.
    """
    if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
        raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    if "clock_offset" in kwargs or "clock_stride" in kwargs:
        raise ValueError("make_vector_env sets clock_offset and clock_stride itself; do not pass them")
    # Defaults resolved and embeddings converted once, so the sub-envs share one read-only array.
    data, embeddings = resolve(kwargs.pop("data", None), kwargs.pop("embeddings", None))
    kwargs.update(data=data, embeddings=_as_observations(embeddings))
    n = int(num_envs)
    return gym.vector.SyncVectorEnv(
        [lambda i=i: RoutingEnv(**kwargs, clock_offset=i, clock_stride=n) for i in range(n)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def step_outcomes(infos: dict[str, Any]) -> dict[str, np.ndarray]:
    """The chosen models' outcomes from the ``infos`` of a vector env's step, whatever its autoreset mode.

    ``SAME_STEP`` (:func:`make_vector_env`): a sub-env whose episode ended has its outcome in
    ``infos["final_info"]`` (every sub-env of one-step episodes). ``NEXT_STEP``
    (``gymnasium.make_vec(id, vectorization_mode="sync" | "async")``, Gymnasium's default): the outcomes are
    in ``infos`` itself, and a sub-env whose episode ended on the previous step is reset by this one instead
    of stepping (its action ignored, reward 0): with one-step episodes every second step steps no sub-env.

    Returns:
        ``{key: (num_envs,) array}`` for every key of :data:`INFO_KEYS`, plus ``stepped``, the (num_envs,)
        bool mask of the sub-envs that took their action (all True with ``SAME_STEP``); a sub-env that did
        not step has NaN (``quality``, ``cost_usd``, ``cost``, ``latency_s``), -1 (``prompt_index``) or None
        (``model``).
    """
    masks = [np.asarray(v) for k, v in infos.items() if k.startswith("_")]
    if not masks:
        raise ValueError("infos is not a vector env's infos (no '_<key>' masks); expected a vector env step")
    n = len(masks[0])
    final = infos.get("final_info") or {}
    from_final = np.asarray(infos.get("_final_info", np.zeros(n, dtype=bool)), dtype=bool)
    from_final = from_final & np.asarray(final.get("_quality", np.zeros(n, dtype=bool)), dtype=bool)
    direct = np.asarray(infos.get("_quality", np.zeros(n, dtype=bool)), dtype=bool) & ~from_final
    stepped = from_final | direct
    if from_final.any() and any(key not in final for key in INFO_KEYS):
        raise ValueError(
            f"infos['final_info'] lacks some of {list(INFO_KEYS)}; expected a router_rl vector env"
        )
    out: dict[str, np.ndarray] = {"stepped": stepped}
    for key in INFO_KEYS:
        fill = {"prompt_index": -1, "model": None}.get(key, np.nan)
        values = np.full(n, fill, dtype=object if key == "model" else np.asarray(fill).dtype)
        if from_final.any():
            values[from_final] = np.asarray(final[key])[from_final]
        if direct.any():
            values[direct] = np.asarray(infos[key])[direct]
        out[key] = values
    return out


# ---------------------------------------------------------------------- argument checks
def _check_rows(data: RoutingData, rows: np.ndarray | None) -> np.ndarray:
    n = data.n_prompts
    complete = data.complete_rows()
    if rows is None:
        idx = np.flatnonzero(complete)
        if idx.size == 0:
            raise ValueError(f"dataset {data.name!r} has no prompt with a quality and cost for every model")
        return idx
    arr = np.asarray(rows)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"a boolean rows mask must have shape ({n},), got {arr.shape}")
        arr = np.flatnonzero(arr)
    elif arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(
            f"rows must be a 1-D array of integer row indices, got dtype {arr.dtype}, shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError("rows is empty; the env needs at least one prompt row")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= n:
        raise ValueError(
            f"rows must index the dataset's {n} prompts, got values in [{arr.min()}, {arr.max()}]"
        )
    bad = arr[~complete[arr]]
    if bad.size:
        raise ValueError(
            f"{bad.size} of the {arr.size} rows have a missing quality or cost for some model "
            f"(first: row {bad[0]}, prompt_id {data.prompt_ids[bad[0]]!r}); "
            "pass only complete rows, e.g. rows=np.flatnonzero(data.complete_rows())"
        )
    return arr


def _as_observations(embeddings: np.ndarray) -> np.ndarray:
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (prompts, dim) array, got shape {emb.shape}")
    if ((emb < -1.0) | (emb > 1.0)).any():
        emb = np.clip(emb, -1.0, 1.0)
    emb = emb.view()
    emb.flags.writeable = False
    return emb


def _check_embeddings(embeddings: np.ndarray, data: RoutingData, rows: np.ndarray) -> np.ndarray:
    emb = _as_observations(embeddings)
    if emb.shape[0] != data.n_prompts:
        raise ValueError(f"embeddings has {emb.shape[0]} rows, expected one per prompt ({data.n_prompts})")
    if emb.shape[1] < 1:
        raise ValueError("embeddings has dimension 0")
    if not np.isfinite(emb[rows]).all():
        raise ValueError("embeddings of the env's rows must be finite (found NaN or inf)")
    return emb
