"""Budget pacing over any bandit: online primal-dual adjustment of the cost weight.

A routing budget of ``B`` dollars for ``N`` requests is a constraint ``sum_t c_t <= B`` on the bandit's
choices. Its Lagrangian relaxation prices cost with a multiplier ``mu >= 0``: the wrapped policy decides with
cost weight ``w + mu`` (any policy that takes the cost weight at decision time serves), and ``mu`` follows
projected dual (sub)gradient steps after every decision:

    mu <- clip(mu + eta * sum_{t in batch} (c_t - rho) / rho_0, 0, mu_max)

with ``c_t`` the normalised cost (``cost_usd / cost_scale``) of decision ``t``, ``rho`` the target cost per
request and ``rho_0`` the budget's average per request: overspending raises ``mu`` (cheaper models win),
underspending lowers it. Dividing by ``rho_0`` makes ``eta`` free of the budget's scale while keeping the step
bounded when ``rho`` reaches 0. ``rho = rho_0 = target_cost`` by default; in a budgeted episode
(:meth:`BudgetPacer.start_episode`, then :meth:`BudgetPacer.observe_budget` before each decision) ``rho`` is
what is left per request, which also corrects past errors, and each episode starts from the previous
episode's mean ``mu`` (a warm start that ignores the end-of-episode spikes of a nearly spent budget). Reference: Balseiro, Lu and Mirrokni (2020), "Dual mirror descent for online
allocation problems", ICML (here with the Euclidean mirror map).

Budget guard (``guard=True``, for bases with ``estimates(x)`` such as LinUCB): in a budgeted episode a model
whose predicted cost exceeds what is left, less the cheapest predicted cost of every later request, gets
probability 0 (its mass goes to the affordable models; when none is affordable, to the cheapest). The spend
then exceeds the budget only by cost prediction errors.

Measured spend accuracy and the tolerance the tests hold it to are in ``docs/simulator.md``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from router_rl.policies.base import Policy, check_batch, sample_actions

DEFAULT_BASE = {
    "_target_": "router_rl.policies.linucb.LinUCB",
    "alpha": 1.0,
    "ridge": 30.0,
    "bias_ridge": 0.01,
}


def _build_base(
    base: Callable[..., Policy] | Mapping[str, Any] | None, models: list[str], dim: int
) -> Policy:
    if base is None:
        base = DEFAULT_BASE
    if isinstance(base, Mapping):
        spec = {k: v for k, v in base.items() if k not in ("_target_", "_partial_")}
        target = base.get("_target_")
        if not isinstance(target, str) or "." not in target:
            raise ValueError(f"pacing: base must name a policy class in '_target_', got {target!r}")
        module, _, cls = target.rpartition(".")
        base = getattr(importlib.import_module(module), cls)
        return base(models=models, dim=dim, **spec)
    if callable(base):
        return base(models=models, dim=dim)
    raise ValueError(f"pacing: base must be a policy factory or a mapping with '_target_', got {base!r}")


class BudgetPacer:
    """Primal-dual budget pacing around a base bandit policy.

    Args:
        models: arm names.
        dim: context dimension.
        base: the wrapped policy: a factory called as ``base(models=..., dim=...)`` (e.g. a Hydra config
            with ``_partial_: true``), a mapping with ``_target_`` and keyword arguments, or None for LinUCB.
        target_cost: target normalised cost per request ``rho`` (``cost_usd / cost_scale``) until
            :meth:`observe_budget` or :meth:`set_target` says otherwise.
        step_size: dual step ``eta`` per decision.
        max_multiplier: upper bound of ``mu``.
        initial_multiplier: ``mu`` before any feedback.
        guard: mask models the remaining budget cannot afford (see the module docstring).
    """

    name = "pacing"

    def __init__(
        self,
        models: list[str],
        dim: int,
        base: Callable[..., Policy] | Mapping[str, Any] | None = None,
        target_cost: float = 0.25,
        step_size: float = 0.05,
        max_multiplier: float = 20.0,
        initial_multiplier: float = 0.0,
        guard: bool = True,
    ) -> None:
        for key, value in (
            ("target_cost", target_cost),
            ("step_size", step_size),
            ("max_multiplier", max_multiplier),
        ):
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"pacing: {key} must be a finite number > 0, got {value!r}")
        if not 0 <= initial_multiplier <= max_multiplier:
            raise ValueError(
                f"pacing: initial_multiplier must lie in [0, max_multiplier], got {initial_multiplier}"
            )
        self.models = list(models)
        self.dim = int(dim)
        self.base = _build_base(base, self.models, self.dim)
        self.target_cost = float(target_cost)
        self.step_size = float(step_size)
        self.max_multiplier = float(max_multiplier)
        self.initial_multiplier = float(initial_multiplier)
        self.multiplier = float(initial_multiplier)
        self._rho = self._rho0 = self.target_cost
        self._mu_sum, self._mu_n = 0.0, 0
        self.guard = bool(guard)
        self._left: tuple[float, int] | None = None  # (budget left in cost units, requests left)

    # ------------------------------------------------------------------ the budget
    def set_target(self, target_cost: float) -> None:
        """Target normalised cost per request from now on (floored at 1e-9)."""
        self._rho = max(float(target_cost), 1e-9)

    def start_episode(self, budget_usd: float, n_requests: int, cost_scale: float) -> None:
        """A new budgeted episode: ``rho_0`` becomes the budget per request, ``mu`` the last episode's mean."""
        self._rho0 = max(float(budget_usd) / max(int(n_requests), 1) / cost_scale, 1e-9)
        self._rho = self._rho0
        if self._mu_n:
            self.multiplier = self._mu_sum / self._mu_n
        self._mu_sum, self._mu_n = 0.0, 0
        self._left = None

    def observe_budget(self, budget_left_usd: float, requests_left: int, cost_scale: float) -> None:
        """Aim at spending what is left evenly over the requests left (call before each decision)."""
        self.set_target(max(budget_left_usd, 0.0) / max(int(requests_left), 1) / cost_scale)
        self._left = (float(budget_left_usd) / cost_scale, int(requests_left))

    @property
    def target(self) -> float:
        """The current target ``rho``."""
        return self._rho

    # ------------------------------------------------------------------ the protocol
    def probs(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        probs = self.base.probs(
            x, cost_weight=cost_weight + self.multiplier, latency_weight=latency_weight, explore=explore
        )
        estimates = getattr(self.base, "estimates", None)
        if not (self.guard and self._left is not None and estimates is not None):
            return probs
        cost = np.maximum(estimates(np.asarray(x, dtype=np.float64))[1], 0.0)  # (B, K)
        left, requests = self._left
        cheapest = cost.min(axis=1, keepdims=True)
        affordable = cost <= left - (requests - 1) * cheapest
        guarded = np.where(affordable, probs, 0.0)
        total = guarded.sum(axis=1, keepdims=True)
        fallback = (cost == cheapest) / (cost == cheapest).sum(axis=1, keepdims=True)
        return np.where(total > 0, guarded / np.where(total > 0, total, 1.0), fallback)

    def update(self, x, actions, quality, cost, latency) -> None:
        actions = check_batch(self, np.asarray(x), actions, quality, cost, latency)
        self.base.update(x, actions, quality, cost, latency)
        gap = float(np.sum(np.asarray(cost, dtype=np.float64) - self._rho)) / self._rho0
        self.multiplier = float(np.clip(self.multiplier + self.step_size * gap, 0.0, self.max_multiplier))
        self._mu_sum += self.multiplier * len(actions)
        self._mu_n += len(actions)

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {f"base.{k}": v for k, v in self.base.state_dict().items()}
        state["multiplier"] = np.array([self.multiplier])
        state["target"] = np.array([self._rho, self._rho0])
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if "multiplier" not in state or "target" not in state:
            raise ValueError(
                "pacing state: expected 'multiplier', 'target' and the base policy's 'base.*' arrays"
            )
        self.base.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("base.")})
        self.multiplier = float(np.asarray(state["multiplier"]).reshape(-1)[0])
        self._rho, self._rho0 = (float(v) for v in np.asarray(state["target"]).reshape(-1)[:2])

    def config(self) -> dict[str, Any]:
        base = self.base
        return {
            "base": {"_target_": f"{type(base).__module__}.{type(base).__qualname__}", **base.config()},
            "target_cost": self.target_cost,
            "step_size": self.step_size,
            "max_multiplier": self.max_multiplier,
            "initial_multiplier": self.initial_multiplier,
            "guard": self.guard,
        }

    def linear_head(self) -> dict[str, np.ndarray]:
        """The base's serving form with the multiplier folded into the quality head
        (``theta_q - mu theta_c``), so that serving at cost weight ``w`` decides as the pacer at ``w``."""
        head = getattr(self.base, "linear_head", None)
        if head is None:
            raise AttributeError(f"pacing: the base policy {type(self.base).__name__} has no linear_head")
        out = dict(head())
        out["theta_quality"] = out["theta_quality"] - self.multiplier * out["theta_cost"]
        return out


def episode_context(obs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The bandit's context from a :class:`~router_rl.envs.budgeted.BudgetedRoutingEnv` observation: the
    embedding, then the tier and region one-hots when present; shape (1, d)."""
    parts = [obs["embedding"]] + ([obs["context"]] if "context" in obs else [])
    return np.concatenate(parts).astype(np.float64)[None, :]


def run_episode(
    env: Any,
    policy: Policy,
    rng: np.random.Generator,
    *,
    seed: int | None = None,
    explore: bool = True,
    learn: bool = True,
) -> dict[str, float]:
    """One budgeted episode with a bandit policy deciding request by request (and learning, if ``learn``).

    A :class:`BudgetPacer` is told the budget left per request before every decision; any other policy decides
    at the env's cost weight. Dropped requests (hard budget spent) teach the policy nothing.

    Returns:
        ``spend_ratio`` (spend / budget), ``quality`` (mean per request, dropped ones count 0), ``reward``
        (total), ``dropped`` (share of requests), ``sla_violations`` (share), ``fallback`` (share answered by a
        fallback or failed: 429, timeout, outage), ``multiplier`` (the pacer's final
        ``mu``, 0 for others).
    """
    obs, info = env.reset(seed=seed)
    pacer = policy if isinstance(policy, BudgetPacer) else None
    if pacer is not None:
        pacer.start_episode(info["budget_usd"], info["requests_left"], env.cost_scale)
    quality = reward = 0.0
    dropped = violations = fallback = n = 0
    while True:
        if pacer is not None:
            pacer.observe_budget(info["budget_left_usd"], info["requests_left"], env.cost_scale)
        x = episode_context(obs)
        probs = policy.probs(
            x, cost_weight=env.cost_weight, latency_weight=env.latency_weight, explore=explore
        )
        actions, _ = sample_actions(probs, rng)
        obs, r, terminated, _, info = env.step(actions[0])
        n += 1
        quality += info["quality"]
        reward += r
        violations += bool(info.get("sla_violated", False))
        fallback += info["status"] in ("fallback", "failed")
        if info["status"] == "dropped":
            dropped += 1
        elif learn:
            policy.update(x, actions, [info["quality"]], [info["cost"]], [info["latency_s"]])
        if terminated:
            break
    return {
        "spend_ratio": info["spent_usd"] / info["budget_usd"],
        "quality": quality / n,
        "reward": reward,
        "dropped": dropped / n,
        "sla_violations": violations / n,
        "fallback": fallback / n,
        "multiplier": pacer.multiplier if pacer is not None else 0.0,
    }
