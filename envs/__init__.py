"""Gymnasium environments of router-rl, registered under the ``router_rl`` namespace.

``import router_rl.envs`` registers every id in :data:`ENV_IDS`; ``gymnasium.make("router_rl/Routing-v0",
data=..., embeddings=...)`` then builds a :class:`RoutingEnv` and ``gymnasium.make_vec`` the ``SAME_STEP``
vector env of :func:`make_vector_env`. The environment modules load on first use, so this import stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium

if TYPE_CHECKING:
    from router_rl.envs.routing import RoutingEnv, make_vector_env, step_outcomes

__all__ = ["ENV_IDS", "RoutingEnv", "make_vector_env", "step_outcomes"]

_SPECS = {
    "router_rl/Routing-v0": {
        "entry_point": "router_rl.envs.routing:RoutingEnv",
        "vector_entry_point": "router_rl.envs.routing:make_vector_env",
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
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
