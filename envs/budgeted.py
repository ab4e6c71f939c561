"""A budgeted episode: route a stream of requests under a dollar budget (router_rl/BudgetedRouting-v0)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from router_rl.envs.defaults import resolve
from router_rl.envs.routing import INFO_KEYS, _as_observations, _check_embeddings, _check_rows
from router_rl.envs.simulator import Served
from router_rl.envs.traffic import Request, Traffic
from router_rl.reward import default_cost_scale, reward
from router_rl.types import RoutingData

BUDGET_MODES = ("hard", "soft")
DROPPED = Served(
    quality=0.0,
    cost_usd=0.0,
    latency_s=0.0,
    served_by=-1,
    status="dropped",
    first_status="dropped",
    wait_s=0.0,
)
"""The outcome of a request that arrives after a hard budget is spent."""


class BudgetedRoutingEnv(gym.Env[dict, np.int64]):
    """Route ``n_requests`` requests, arriving over time, under a dollar budget and an optional latency SLO.

    ## Description

    One episode is a stream of ``n_requests`` prompts drawn uniformly from ``rows`` (a day of traffic, say),
    with a budget of ``budget_usd`` dollars for all of them. Each step routes the current request to a model;
    the serving simulator (:mod:`router_rl.envs.simulator`) answers it with that model's recorded quality and
    cost, a simulated latency, and possibly a 429, timeout or fallback; the next request arrives. Spending
    early leaves nothing for later requests: a real sequential decision problem, where a one-step bandit
    needs budget pacing (:class:`router_rl.policies.pacing.BudgetPacer`) and an RL agent can learn it.

    ## Action Space

    ``Discrete(K)``: the index of a model in ``env.models``.

    ## Observation Space

    ``Dict``:

    - ``embedding``: ``Box(-1, 1, (d,), float32)``, the prompt's sentence embedding;
    - ``context``: ``Box(0, 1, (c,), float32)``, tier and caller-region one-hots (only when ``c > 0``);
    - ``budget_left``: ``Box(-1, 1, (1,), float32)``, the unspent share of the budget (negative once overspent);
    - ``budget_per_request``: ``Box(0, 4, (1,), float32)``, the unspent budget per request still to route, in
      ``cost_scale`` units (1 = the most expensive model's mean cost; clipped to [0, 4]): what a pacer aims at;
    - ``time_left``: ``Box(0, 1, (1,), float32)``, the share of the episode's requests not yet routed;
    - ``load``: ``Box(0, 1, (K,), float32)``, the caller's own load on every model (busy slots plus queue over
      concurrency plus queue size; 0 for unlimited models).

    ## Rewards

    ``quality - cost_weight * cost_usd / cost_scale - latency_weight * latency_s - sla_penalty`` per request,
    as in :class:`router_rl.envs.routing.RoutingEnv` (``cost_weight`` defaults to 0 here: the budget prices
    cost). ``budget_mode="hard"``: once the spend reaches the budget, every further request is dropped
    (quality 0, ``info["status"] == "dropped"``), so the spend exceeds the budget by at most the last served
    request's cost. ``budget_mode="soft"``: nothing is dropped; the last step subtracts
    ``overspend_penalty * n_requests * max(0, spend - budget) / budget``.

    ## Episode End

    ``terminated=True`` after the ``n_requests``-th request; never truncated. The final observation repeats the
    last prompt with ``time_left = 0``.

    ## Arguments

    - ``data``, ``embeddings`` (default: the bundled data and its cached embeddings), ``rows``, ``cost_scale``, ``latency_weight``, ``latency_sigma``,
      ``simulator``, ``tiers``, ``scenario``, ``clock_offset``, ``clock_stride``: as for ``RoutingEnv``
      (queues and the clock restart with every episode; the scenario's request index runs on until a seeded
      reset).
    - ``n_requests``: requests per episode, >= 1.
    - ``budget_usd``: the episode's budget; ``None`` = ``budget_share * cost_scale * n_requests``, i.e.
      ``budget_share`` of what the most expensive model would cost on average.
    - ``budget_mode``, ``overspend_penalty``: see Rewards.
    - ``cost_weight``: an extra price on cost in the reward, >= 0.
    - ``latency_slo_s``, ``slo_penalty``: an optional latency objective for every request and its penalty.

    ``info`` holds the chosen model's outcome (``RoutingEnv``'s keys and the simulator's), ``spent_usd``,
    ``budget_usd``, ``budget_left_usd`` and ``requests_left`` (after this step); ``reset`` returns
    ``prompt_index``, ``step``, ``budget_usd``, ``budget_left_usd`` and ``requests_left``.

    ## Version History

    - v0: initial version.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        *,
        data: RoutingData | None = None,
        embeddings: np.ndarray | None = None,
        rows: np.ndarray | None = None,
        n_requests: int = 100,
        budget_usd: float | None = None,
        budget_share: float = 0.25,
        budget_mode: str = "hard",
        overspend_penalty: float = 1.0,
        cost_weight: float = 0.0,
        cost_scale: float | None = None,
        latency_weight: float = 0.0,
        latency_sigma: float = 0.25,
        latency_slo_s: float | None = None,
        slo_penalty: float = 0.2,
        simulator: Mapping[str, Any] | None = None,
        tiers: str | Mapping[str, Any] | None = None,
        scenario: Sequence[Mapping[str, Any]] | None = None,
        clock_offset: int = 0,
        clock_stride: int = 1,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(
                f"BudgetedRoutingEnv does not render; got render_mode={render_mode!r}, expected None"
            )
        self.render_mode = None
        if isinstance(n_requests, bool) or not isinstance(n_requests, (int, np.integer)) or n_requests < 1:
            raise ValueError(f"n_requests must be an integer >= 1, got {n_requests!r}")
        if budget_mode not in BUDGET_MODES:
            raise ValueError(f"budget_mode must be one of {list(BUDGET_MODES)}, got {budget_mode!r}")
        for name, value in (
            ("budget_share", budget_share),
            ("overspend_penalty", overspend_penalty),
            ("cost_weight", cost_weight),
            ("latency_weight", latency_weight),
            ("latency_sigma", latency_sigma),
        ):
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        data, embeddings = resolve(data, embeddings)
        self._data = data
        self._rows = _check_rows(data, rows)
        self._embeddings = _check_embeddings(embeddings, data, self._rows)
        self._models = tuple(data.models)
        if cost_scale is None:
            cost_scale = default_cost_scale(data.cost_usd[self._rows])
        elif not (np.isfinite(cost_scale) and cost_scale > 0):
            raise ValueError(f"cost_scale must be a finite number > 0, got {cost_scale!r}")
        self._cost_scale = float(cost_scale)
        self._n = int(n_requests)
        if budget_usd is None:
            budget_usd = budget_share * self._cost_scale * self._n
        if not (np.isfinite(budget_usd) and budget_usd > 0):
            raise ValueError(f"budget_usd must be a finite number > 0, got {budget_usd!r}")
        self._budget = float(budget_usd)
        self._mode, self._overspend_penalty = budget_mode, float(overspend_penalty)
        self._cost_weight, self._latency_weight = float(cost_weight), float(latency_weight)
        self._traffic = Traffic(
            data,
            simulator=simulator,
            tiers=tiers,
            scenario=scenario,
            latency_sigma=float(latency_sigma),
            latency_slo_s=latency_slo_s,
            slo_penalty=slo_penalty,
            clock_offset=clock_offset,
            clock_stride=clock_stride,
        )
        k, d, c = len(self._models), self._embeddings.shape[1], self._traffic.context_dim
        obs = {"embedding": spaces.Box(-1.0, 1.0, shape=(d,), dtype=np.float32)}
        if c:
            obs["context"] = spaces.Box(0.0, 1.0, shape=(c,), dtype=np.float32)
        obs["budget_left"] = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        obs["budget_per_request"] = spaces.Box(0.0, 4.0, shape=(1,), dtype=np.float32)
        obs["time_left"] = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        obs["load"] = spaces.Box(0.0, 1.0, shape=(k,), dtype=np.float32)
        self.observation_space = spaces.Dict(obs)
        self.action_space = spaces.Discrete(k)
        self._i = 0
        self._spent = 0.0
        self._row: int | None = None
        self._request: Request | None = None
        self._done = True

    # ------------------------------------------------------------------ read-only views
    @property
    def models(self) -> tuple[str, ...]:
        return self._models

    @property
    def cost_scale(self) -> float:
        return self._cost_scale

    @property
    def cost_weight(self) -> float:
        return self._cost_weight

    @property
    def latency_weight(self) -> float:
        return self._latency_weight

    @property
    def budget_usd(self) -> float:
        return self._budget

    @property
    def n_requests(self) -> int:
        return self._n

    @property
    def traffic(self) -> Traffic:
        """The request stream (its ``scenario``, ``config`` and ``sim``)."""
        return self._traffic

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if options:
            raise ValueError(f"BudgetedRoutingEnv.reset takes no options, got {sorted(options)}")
        if seed is not None:
            self._traffic.reset()
        self._traffic.new_window()
        self._i, self._spent, self._done = 0, 0.0, False
        self._next_request()
        return self._observation(), self._budget_info({"prompt_index": self._row, "step": self._request.step})

    def step(self, action: np.int64) -> tuple[dict, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("BudgetedRoutingEnv.step() called on a finished episode; call reset() first")
        if not self.action_space.contains(action):
            raise ValueError(
                f"invalid action {action!r}: expected an integer in [0, {len(self._models)}) "
                f"indexing the models {list(self._models)}"
            )
        a, row, request = int(action), self._row, self._request
        if self._mode == "hard" and self._spent >= self._budget:
            served, violated = DROPPED, False
        else:
            served, violated = self._traffic.serve(self.np_random, row, a, request)
        extra = self._traffic.info(request, served, violated)
        quality, cost_usd, latency_s = served.quality, served.cost_usd, served.latency_s
        penalty = float(extra.get("sla_penalty", 0.0))
        self._spent += cost_usd
        r = (
            float(
                reward(
                    quality,
                    cost_usd,
                    latency_s,
                    cost_weight=self._cost_weight,
                    cost_scale=self._cost_scale,
                    latency_weight=self._latency_weight,
                )
            )
            - penalty
        )
        self._i += 1
        terminated = self._i >= self._n
        if terminated:
            self._done = True
            if self._mode == "soft":
                r -= self._overspend_penalty * self._n * max(0.0, self._spent - self._budget) / self._budget
        else:
            self._next_request()
        info = {
            "prompt_index": row,
            "model": self._models[a],
            "quality": quality,
            "cost_usd": cost_usd,
            "cost": cost_usd / self._cost_scale,
            "latency_s": latency_s,
            **extra,
        }
        return self._observation(), r, terminated, False, self._budget_info(info)

    # ------------------------------------------------------------------ helpers
    def _next_request(self) -> None:
        self._row = int(self._rows[self.np_random.integers(len(self._rows))])
        self._request = self._traffic.next_request(self.np_random)

    def _budget_info(self, info: dict[str, Any]) -> dict[str, Any]:
        info["spent_usd"] = self._spent
        info["budget_usd"] = self._budget
        info["budget_left_usd"] = self._budget - self._spent
        info["requests_left"] = self._n - self._i
        return info

    def _observation(self) -> dict[str, np.ndarray]:
        obs = {"embedding": self._embeddings[self._row].copy()}
        if self._traffic.context_dim:
            obs["context"] = self._traffic.context(self._request)
        left = np.clip((self._budget - self._spent) / self._budget, -1.0, 1.0)
        obs["budget_left"] = np.array([left], dtype=np.float32)
        rate = (self._budget - self._spent) / max(self._n - self._i, 1) / self._cost_scale
        obs["budget_per_request"] = np.array([np.clip(rate, 0.0, 4.0)], dtype=np.float32)
        obs["time_left"] = np.array([(self._n - self._i) / self._n], dtype=np.float32)
        obs["load"] = np.clip(self._traffic.occupancy(self._request.now), 0.0, 1.0).astype(np.float32)
        return obs


def make_budgeted_vector_env(num_envs: int, **kwargs: Any) -> gym.vector.SyncVectorEnv:
    """``num_envs`` :class:`BudgetedRoutingEnv` copies in a ``SyncVectorEnv`` with ``AutoresetMode.SAME_STEP``
    (a finished episode's sub-env starts the next episode within the same ``step``; the finished step's info is
    in ``infos["final_info"]``). Sub-env ``i`` gets ``clock_offset=i, clock_stride=num_envs``."""
    if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
        raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    if "clock_offset" in kwargs or "clock_stride" in kwargs:
        raise ValueError(
            "make_budgeted_vector_env sets clock_offset and clock_stride itself; do not pass them"
        )
    data, embeddings = resolve(kwargs.pop("data", None), kwargs.pop("embeddings", None))
    kwargs.update(data=data, embeddings=_as_observations(embeddings))
    n = int(num_envs)
    return gym.vector.SyncVectorEnv(
        [lambda i=i: BudgetedRoutingEnv(**kwargs, clock_offset=i, clock_stride=n) for i in range(n)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


__all__ = ["INFO_KEYS", "BudgetedRoutingEnv", "make_budgeted_vector_env"]
