"""Latency-budget tiers of requests: a chat turn needs a fast answer, a batch job does not.

Every request belongs to one tier, drawn with the tier's ``share``; the tier is part of the request's context
(a one-hot block of the observation) and an answer slower than the tier's ``budget_s`` costs ``penalty``
points of reward. The default budgets, shares and penalties are ASSUMPTIONS chosen to make the trade-off
visible on the bundled data (where a frontier model's long answer takes about 30 s), not measurements.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_TIERS: dict[str, dict[str, float]] = {
    "interactive": {"budget_s": 10.0, "share": 0.3, "penalty": 0.5},  # a chat turn
    "standard": {"budget_s": 30.0, "share": 0.5, "penalty": 0.2},  # an API call with a patient client
    "batch": {"budget_s": 300.0, "share": 0.2, "penalty": 0.05},  # offline work
}


@dataclass(frozen=True)
class Tiers:
    """Tier names and per-tier (T,) latency budgets, shares (summing to 1) and violation penalties."""

    names: tuple[str, ...]
    budget_s: np.ndarray
    share: np.ndarray
    penalty: np.ndarray

    def __len__(self) -> int:
        return len(self.names)


def parse_tiers(value: str | Mapping[str, Mapping[str, Any]] | None) -> Tiers | None:
    """``None`` (no tiers), ``"default"`` (:data:`DEFAULT_TIERS`) or ``{name: {budget_s, share, penalty}}``."""
    if value is None:
        return None
    if isinstance(value, str):
        if value != "default":
            raise ValueError(f"tiers must be None, 'default' or a mapping of tiers, got {value!r}")
        value = DEFAULT_TIERS
    if not isinstance(value, Mapping) or not value:
        raise ValueError(
            f"tiers must be a non-empty mapping name -> {{budget_s, share, penalty}}, got {value!r}"
        )
    names, rows = [], []
    for name, spec in value.items():
        if not isinstance(spec, Mapping) or set(spec) != {"budget_s", "share", "penalty"}:
            got = sorted(spec) if isinstance(spec, Mapping) else spec
            raise ValueError(f"tiers.{name}: expected exactly the keys budget_s, share, penalty; got {got}")
        vals = [spec["budget_s"], spec["share"], spec["penalty"]]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in vals):
            raise ValueError(f"tiers.{name}: budget_s, share and penalty must be finite numbers, got {vals}")
        if vals[0] <= 0 or vals[1] < 0 or vals[2] < 0:
            raise ValueError(f"tiers.{name}: expected budget_s > 0, share >= 0, penalty >= 0; got {vals}")
        names.append(str(name))
        rows.append(vals)
    arr = np.asarray(rows, dtype=np.float64)
    if not arr[:, 1].sum() > 0:
        raise ValueError("tiers: the shares must have a positive sum")
    return Tiers(tuple(names), arr[:, 0], arr[:, 1] / arr[:, 1].sum(), arr[:, 2])
