"""Vowpal Wabbit's contextual bandit (``--cb_explore_adf``) as a router-rl policy: the peer to compare with.

Optional: needs ``pip install vowpalwabbit`` (imported on first use, with a clear error when missing).

Features (action-dependent features, ADF): the query embedding is the *shared* namespace ``s`` and each
action is one model, described by a one-hot feature of its name in namespace ``a``; the default arguments
add ``-q sa`` so that every model gets its own linear function of the embedding (without it the shared
features would shift every action's score alike). Adding or removing a model is just offering another set
of actions, as ADF intends: a new model's feature starts with zero weights.

Reward convention: VW minimises cost, so each observation is labelled with cost = -reward =
-(quality - w * cost - lambda * latency), and the probability of the chosen action under the policy that
chose it (the propensity VW's estimators need). ``probs(..., explore=True)`` returns VW's PMF as is;
``explore=False`` the one-hot of its greedy action (VW's largest probability).

Cost weight: a VW model learns one scalar cost, so it cannot change the trade-off at decision time. To trace
a frontier on the same stream, the policy keeps one VW workspace per weight of ``cost_weights``, and every
workspace learns from the same logged decisions and propensities with its own cost (off-policy for all but
the acting one, which VW's ``mtr``/``dr`` estimators are built for). ``probs`` at weight w uses the
workspace whose weight is nearest on a log scale.

Which workspace acts while exploring (``act``): ``cycle`` (default) takes them in turn, one exploring call
(batch) each, so every workspace gathers on-policy data for its own trade-off; ``nearest`` lets only the one
nearest the training cost weight act. With ``nearest`` the others learn only about the actions the acting one
plays, importance-weighted, and SquareCB's exploration fades as its gamma grows (``gamma_scale *
t^gamma_exponent``): once the acting workspace settles on one model, every workspace has seen that model's
outcomes and hardly any other's, so they all rank it alike, at every cost weight: how a run can send every
prompt to one model at all 17 weights (issue 12). On the toy problem of the tests (trained at w = 1, where the
free model is best) the w = 0 workspace routes 79% of prompts right with ``nearest``, 93% with ``cycle``.
"""

from __future__ import annotations

import re
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from router_rl.policies.base import check_batch, check_model_change

DEFAULT_ARGS = "--cb_explore_adf --squarecb -q sa --power_t 0 -l 0.05"


def import_vw() -> Any:
    """The ``vowpalwabbit`` module, or an ImportError that says how to install it."""
    try:
        import vowpalwabbit
    except ImportError as err:
        raise ImportError(
            "the vw policy needs Vowpal Wabbit: pip install vowpalwabbit (or pip install 'router-rl[dev]')"
        ) from err
    return vowpalwabbit


def action_feature(model: str) -> str:
    """A VW-safe, stable feature name for ``model`` (no spaces, ``:`` or ``|``; a crc32 suffix keeps it unique)."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', model)}_{zlib.crc32(model.encode()):08x}"


def shared_lines(x: np.ndarray) -> list[str]:
    """``shared |s 0:v0 1:v1 ...`` for every context row of x (B, d)."""
    template = "shared |s " + " ".join(f"{i}:%.6g" for i in range(x.shape[1]))
    return [template % tuple(row) for row in np.asarray(x, dtype=np.float64)]


def adf_example(shared: str, actions: list[str], label: tuple[int, float, float] | None = None) -> list[str]:
    """The multi-line ADF example; ``label = (chosen index, cost, probability)`` marks the chosen action."""
    lines = [shared]
    for i, feat in enumerate(actions):
        prefix = f"0:{label[1]:.8g}:{label[2]:.8g} " if label is not None and label[0] == i else ""
        lines.append(f"{prefix}|a {feat}")
    return lines


def nearest_weight(grid: np.ndarray, w: float) -> int:
    """Index of the grid weight nearest ``w`` on a log(0.01 + w) scale."""
    return int(np.argmin(np.abs(np.log(0.01 + grid) - np.log(0.01 + max(w, 0.0)))))


class VWPolicy:
    """Vowpal Wabbit ``--cb_explore_adf`` on the embedding (shared) and model one-hot (per action) features.

    Args:
        models: arm names, in order.
        dim: context dimension d.
        args: VW arguments (``--quiet`` and ``--random_seed`` are added); must contain ``--cb_explore_adf``.
        cost_weights: one VW workspace per weight (see the module docstring).
        seed: VW's ``--random_seed``.
        act: which workspace acts while exploring: ``cycle`` (in turn, per call) or ``nearest`` (the one
            nearest the requested cost weight).
    """

    name = "vw"

    def __init__(
        self,
        models: list[str],
        dim: int,
        args: str = DEFAULT_ARGS,
        cost_weights: list[float] | tuple[float, ...] = (0.0, 0.05, 0.2, 0.5, 1.0, 3.0, 10.0),
        seed: int = 0,
        act: str = "cycle",
    ) -> None:
        if act not in ("cycle", "nearest"):
            raise ValueError(f"vw: act must be 'cycle' or 'nearest', got {act!r}")
        if "--cb_explore_adf" not in args.split():
            raise ValueError(f"vw: args must contain --cb_explore_adf, got {args!r}")
        if not cost_weights or min(cost_weights) < 0:
            raise ValueError(f"vw: cost_weights must be a non-empty list of weights >= 0, got {cost_weights}")
        self.vw = import_vw()
        self.models, self.dim = list(models), int(dim)
        self.args, self.seed = str(args), int(seed)
        self.cost_weights = [float(w) for w in cost_weights]
        self.grid = np.asarray(self.cost_weights)
        self.workspaces = [self._workspace() for _ in self.cost_weights]
        self.act = act
        self._acting = 0  # the workspace that chose the last exploring decisions
        self._turn = 0  # act="cycle": exploring calls so far
        self._latency_weight = 0.0  # the latency weight of the last exploring decisions
        self._cache: tuple[bytes, int, np.ndarray, list[str]] | None = None  # the last exploring probs() call

    def _workspace(self, model_file: str | None = None) -> Any:
        extra = f" -i {model_file}" if model_file else ""
        return self.vw.Workspace(f"{self.args} --quiet --random_seed {self.seed}{extra}")

    def _actions(self) -> list[str]:
        return [action_feature(m) for m in self.models]

    def pmf(self, x: np.ndarray, workspace: int, shared: list[str] | None = None) -> np.ndarray:
        """(B, K) VW's PMF of workspace ``workspace`` for contexts x (B, d)."""
        shared = shared_lines(np.asarray(x)) if shared is None else shared
        actions, ws = self._actions(), self.workspaces[workspace]
        out = np.array([ws.predict(adf_example(line, actions)) for line in shared], dtype=np.float64)
        return out / out.sum(axis=1, keepdims=True)

    def probs(
        self, x: np.ndarray, *, cost_weight: float, latency_weight: float = 0.0, explore: bool = False
    ) -> np.ndarray:
        i = nearest_weight(self.grid, cost_weight)
        if explore and self.act == "cycle":
            i, self._turn = self._turn % len(self.workspaces), self._turn + 1
        x = np.ascontiguousarray(x, dtype=np.float64)
        shared = shared_lines(x)
        p = self.pmf(x, i, shared)
        if explore:
            self._acting = i
            self._latency_weight = float(latency_weight)
            self._cache = (x.tobytes(), i, p, shared)
            return p
        out = np.zeros_like(p)
        out[np.arange(len(p)), p.argmax(axis=1)] = 1.0
        return out

    def update(self, x, actions, quality, cost, latency) -> None:
        """Learn every workspace from the batch, with the acting workspace's propensities."""
        x = np.asarray(x, dtype=np.float64)
        actions = check_batch(self, x, actions, quality, cost, latency)
        key = np.ascontiguousarray(x).tobytes()
        if self._cache is not None and self._cache[0] == key and self._cache[1] == self._acting:
            _, _, pmf, shared = self._cache
        else:  # not the batch the last probs() call saw: recompute (same state, same PMF)
            shared = shared_lines(x)
            pmf = self.pmf(x, self._acting, shared)
        self._cache = None
        prop = np.maximum(pmf[np.arange(len(actions)), actions], 1e-6)
        lam = self._latency_weight
        q, c, lat = (np.asarray(v, dtype=np.float64) for v in (quality, cost, latency))
        names = self._actions()
        for w, ws in zip(self.grid, self.workspaces, strict=True):
            vw_cost = -(q - w * c - lam * lat)  # VW minimises cost = -reward
            for i in range(len(actions)):
                ws.learn(adf_example(shared[i], names, (int(actions[i]), vw_cost[i], prop[i])))

    # ------------------------------------------------------------------------------------ the catalog
    def add_model(self, name: str) -> None:
        """Offer one more action; its one-hot feature starts with zero weights."""
        check_model_change(self, name, adding=True)
        self.models.append(name)

    def remove_model(self, name: str) -> None:
        """Stop offering ``name`` (its feature weights are simply unused)."""
        self.models.pop(check_model_change(self, name, adding=False))

    # --------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        state = {}
        with tempfile.TemporaryDirectory() as tmp:
            for i, ws in enumerate(self.workspaces):
                path = Path(tmp) / f"{i}.vw"
                ws.save(str(path))
                state[f"workspace_{i}"] = np.frombuffer(path.read_bytes(), dtype=np.uint8).copy()
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        keys = [f"workspace_{i}" for i in range(len(self.cost_weights))]
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"vw state: missing {missing}; expected one VW model per cost weight")
        with tempfile.TemporaryDirectory() as tmp:
            loaded = []
            for i, key in enumerate(keys):
                path = Path(tmp) / f"{i}.vw"
                path.write_bytes(np.asarray(state[key], dtype=np.uint8).tobytes())
                loaded.append(self._workspace(str(path)))
        for ws in self.workspaces:
            ws.finish()
        self.workspaces = loaded

    def config(self) -> dict[str, Any]:
        return {
            "args": self.args,
            "cost_weights": list(self.cost_weights),
            "seed": self.seed,
            "act": self.act,
        }
