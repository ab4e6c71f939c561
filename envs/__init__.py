"""Gymnasium environments of router-rl, registered under the ``router_rl`` namespace.

``import router_rl.envs`` registers every id in :data:`ENV_IDS`; ``gymnasium.make("router_rl/Routing-v0")``
then builds a :class:`RoutingEnv` on the bundled data and its cached embeddings (:mod:`router_rl.envs.defaults`;
or pass ``data=..., embeddings=...``), ``gymnasium.make_vec(id, num_envs)`` the ``SAME_STEP`` vector env of
:func:`make_vector_env`, and ``vectorization_mode="sync"`` or ``"async"`` Gymnasium's own ``NEXT_STEP`` vector
envs (:func:`step_outcomes` reads both). The environment modules load on first use, so this import stays cheap.

- ``router_rl/Routing-v0``: the one-step contextual bandit over recorded outcomes (v0 latency model).
- ``router_rl/SimulatedRouting-v0``: the same env with the serving simulator on (:data:`SIMULATED_SIMULATOR`) and the default
  latency-budget tiers in the request context.
- ``router_rl/BudgetedRouting-v0``: :class:`BudgetedRoutingEnv`, a stream of requests under a dollar budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium

if TYPE_CHECKING:
    from router_rl.envs.budgeted import BudgetedRoutingEnv, make_budgeted_vector_env
    from router_rl.envs.routing import RoutingEnv, make_vector_env, step_outcomes

__all__ = [
    "ENV_IDS",
    "BudgetedRoutingEnv",
    "RoutingEnv",
    "make_budgeted_vector_env",
    "make_vector_env",
    "step_outcomes",
]

SIMULATED_SIMULATOR = {
    "tail_prob": 0.05,  # one request in 20 is a heavy-tailed straggler
    "caller_mix": [0.6, 0.25, 0.15],  # callers in us-east, eu-west, ap-southeast
    "provider_load": 0.3,  # providers' base utilisation
    "load_amplitude": 0.2,  # daily load cycle
    "concurrency": 8,  # the caller's concurrent requests per model
    "queue_size": 16,  # then a FIFO queue, then 429
    "timeout_s": 120.0,  # requests abandoned after two minutes
    "fallback": "cheapest",  # failed requests go to the cheapest model
    "arrival_rate": 0.5,  # requests per second per env
}
"""``router_rl/SimulatedRouting-v0``'s simulator options (all ASSUMED, illustrative values; see docs/simulator.md)."""

BUDGETED_SIMULATOR = {
    "tail_prob": 0.05,
    "concurrency": 4,
    "queue_size": 8,
    "timeout_s": 120.0,
    "fallback": "cheapest",
    "arrival_rate": 0.5,
}
"""``router_rl/BudgetedRouting-v0``'s simulator options (ASSUMED): a small account whose per-model concurrency
makes load matter when the agent sends much traffic to one slow model."""

_SPECS = {
    "router_rl/Routing-v0": {
        "entry_point": "router_rl.envs.routing:RoutingEnv",
        "vector_entry_point": "router_rl.envs.routing:make_vector_env",
    },
    "router_rl/SimulatedRouting-v0": {
        "entry_point": "router_rl.envs.routing:RoutingEnv",
        "vector_entry_point": "router_rl.envs.routing:make_vector_env",
        "kwargs": {"simulator": SIMULATED_SIMULATOR, "tiers": "default"},
    },
    "router_rl/BudgetedRouting-v0": {
        "entry_point": "router_rl.envs.budgeted:BudgetedRoutingEnv",
        "vector_entry_point": "router_rl.envs.budgeted:make_budgeted_vector_env",
        "kwargs": {"simulator": BUDGETED_SIMULATOR},
    },
}

ENV_IDS: tuple[str, ...] = tuple(_SPECS)
"""Every environment id this package registers."""

for _env_id, _spec in _SPECS.items():
    if _env_id not in gymnasium.registry:  # re-import (e.g. importlib.reload) must not re-register and warn
        gymnasium.register(id=_env_id, **_spec)


def __getattr__(name: str) -> Any:
    if name in ("RoutingEnv", "make_vector_env", "step_outcomes"):
        from router_rl.envs import routing

        return getattr(routing, name)
    if name in ("BudgetedRoutingEnv", "make_budgeted_vector_env"):
        from router_rl.envs import budgeted

        return getattr(budgeted, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
