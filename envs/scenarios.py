"""Non-stationary scenarios: scheduled changes of prices, quality and availability.

A scenario is a list of events, each acting on one model from a request index ``at`` on (and, for an outage,
until ``until``). Request indices count the decisions an env has served since its last seeded reset; in a
vector env built by the package's helpers they count the decisions of the whole vector env (sub-env ``i`` of
``n`` serves indices ``i, i + n, i + 2n, ...``), so an event ``at: 5000`` happens after 5,000 decisions in all.

Event kinds (``kind`` key) and their other keys:

- ``price_cut``: ``model``, ``at``, ``factor`` (> 0): both list prices of the model are multiplied by
  ``factor`` (0.5 halves them; a factor above 1 is a price rise). Costs are recorded dollars times the factor.
- ``quality_drop``: ``model``, ``at``, ``factor`` in [0, 1]: the model's judge quality is multiplied by
  ``factor``, silently (nothing in the observation says so).
- ``outage``: ``model``, ``at``, ``until`` (> ``at``, or null for "never recovers"): the model rejects every
  request in ``[at, until)``; the configured fallback answers, or the request fails.
- ``new_model``: ``model``, ``at``: the model does not exist before ``at`` (a request to it is rejected like
  an outage) and is released at ``at``.

Factors of several events on one model multiply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

KINDS = ("price_cut", "quality_drop", "outage", "new_model")


@dataclass(frozen=True)
class Event:
    """One scheduled change: ``kind`` on model index ``model`` from request ``at`` (until ``until``)."""

    kind: str
    model: int
    at: int
    until: int | None = None
    factor: float = 1.0

    def active(self, step: int) -> bool:
        return self.at <= step and (self.until is None or step < self.until)


class Scenario:
    """A list of :class:`Event` over a fixed model list; pure functions of the request index.

    Args:
        events: event mappings as described in the module docstring (for example from a Hydra config).
        models: the env's model names, in action order.
    """

    def __init__(self, events: Sequence[Mapping[str, Any]] | None, models: Sequence[str]) -> None:
        self.models = tuple(models)
        self.events = tuple(_parse(i, e, self.models) for i, e in enumerate(events or ()))

    def __len__(self) -> int:
        return len(self.events)

    def price_factor(self, step: int) -> np.ndarray:
        """(K,) multiplier of every model's prices at request ``step``."""
        return self._factors("price_cut", step)

    def quality_factor(self, step: int) -> np.ndarray:
        """(K,) multiplier of every model's quality at request ``step``."""
        return self._factors("quality_drop", step)

    def available(self, step: int) -> np.ndarray:
        """(K,) bool: False where the model is in an outage or not yet released at request ``step``."""
        ok = np.ones(len(self.models), dtype=bool)
        for e in self.events:
            if (e.kind == "outage" and e.active(step)) or (e.kind == "new_model" and step < e.at):
                ok[e.model] = False
        return ok

    def released(self, step: int) -> np.ndarray:
        """(K,) bool: False only for models whose ``new_model`` release is after ``step`` (what an operator
        knows and can tell a policy; outages are not announced)."""
        ok = np.ones(len(self.models), dtype=bool)
        for e in self.events:
            if e.kind == "new_model" and step < e.at:
                ok[e.model] = False
        return ok

    def change_points(self) -> list[int]:
        """Sorted request indices at which something changes."""
        points = {e.at for e in self.events} | {e.until for e in self.events if e.until is not None}
        return sorted(points)

    def _factors(self, kind: str, step: int) -> np.ndarray:
        f = np.ones(len(self.models))
        for e in self.events:
            if e.kind == kind and e.active(step):
                f[e.model] *= e.factor
        return f


def _parse(i: int, event: Mapping[str, Any], models: tuple[str, ...]) -> Event:
    where = f"scenario event {i}"
    if not isinstance(event, Mapping):
        raise ValueError(f"{where}: expected a mapping with kind, model and at; got {event!r}")
    kind = event.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{where}: kind must be one of {list(KINDS)}, got {kind!r}")
    allowed = {"kind", "model", "at"} | {
        "price_cut": {"factor"},
        "quality_drop": {"factor"},
        "outage": {"until"},
        "new_model": set(),
    }[kind]
    unknown = set(event) - allowed
    if unknown:
        raise ValueError(f"{where} ({kind}): unknown keys {sorted(unknown)}; expected {sorted(allowed)}")
    model = event.get("model")
    if model not in models:
        raise ValueError(f"{where} ({kind}): model {model!r} is not one of the env's models {list(models)}")
    at = event.get("at")
    if isinstance(at, bool) or not isinstance(at, (int, np.integer)) or at < 0:
        raise ValueError(f"{where} ({kind}): 'at' must be a request index >= 0, got {at!r}")
    until, factor = None, 1.0
    if kind == "outage":
        until = event.get("until")
        if until is not None and (
            isinstance(until, bool) or not isinstance(until, (int, np.integer)) or until <= at
        ):
            raise ValueError(
                f"{where} (outage): 'until' must be null or an integer > at ({at}), got {until!r}"
            )
    if kind in ("price_cut", "quality_drop"):
        factor = event.get("factor")
        ok = isinstance(factor, (int, float)) and not isinstance(factor, bool) and np.isfinite(factor)
        ok = ok and (factor > 0 if kind == "price_cut" else 0 <= factor <= 1)
        if not ok:
            expected = "a number > 0" if kind == "price_cut" else "a number in [0, 1]"
            raise ValueError(f"{where} ({kind}): 'factor' must be {expected}, got {factor!r}")
    return Event(
        kind=kind,
        model=models.index(model),
        at=int(at),
        until=None if until is None else int(until),
        factor=float(factor),
    )
