"""Core data types shared by the loader, the simulator, the policies and the evaluation.

Every array is indexed ``[prompt, model]`` with prompts in ``RoutingData.prompt_ids`` order and models in
``RoutingData.models`` order. Missing outcomes are ``NaN``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Catalog:
    """The model catalog: prices and latency priors, one entry per model.

    Attributes:
        models: model names, in catalog order.
        usd_per_1m_input: (K,) price per million input tokens.
        usd_per_1m_output: (K,) price per million output tokens.
        ttft_s: (K,) prior median time to first token in seconds (an assumption unless measured).
        output_tokens_per_s: (K,) prior decode speed (an assumption unless measured).
        table: the validated catalog table, extra per-model feature columns included.
    """

    models: tuple[str, ...]
    usd_per_1m_input: np.ndarray
    usd_per_1m_output: np.ndarray
    ttft_s: np.ndarray
    output_tokens_per_s: np.ndarray
    table: pd.DataFrame = field(repr=False)

    def index(self, model: str) -> int:
        return self.models.index(model)

    def subset(self, models: list[str] | tuple[str, ...]) -> Catalog:
        """The catalog restricted to ``models``, in that order."""
        idx = [self.index(m) for m in models]
        return Catalog(
            models=tuple(models),
            usd_per_1m_input=self.usd_per_1m_input[idx],
            usd_per_1m_output=self.usd_per_1m_output[idx],
            ttft_s=self.ttft_s[idx],
            output_tokens_per_s=self.output_tokens_per_s[idx],
            table=self.table.set_index("model").loc[list(models)].reset_index(),
        )


@dataclass
class RoutingData:
    """A routing dataset in wide form: one row per prompt, one column per model.

    Attributes:
        name: dataset name (``arena``, ``routellm`` or the user's file stem).
        prompt_ids: (N,) prompt identifiers.
        prompts: (N,) prompt texts.
        models: (K,) model names; ``catalog.models`` has the same order.
        quality: (N, K) judge quality in [0, 1]; NaN where no outcome is recorded.
        cost_usd: (N, K) cost of the answer in dollars; NaN where no outcome is recorded.
        input_tokens: (N, K) input tokens (NaN when the data gave dollars only).
        output_tokens: (N, K) output tokens (NaN when the data gave dollars only).
        latency_s: (N, K) measured latency, NaN where the data has none.
        split: (N,) one of ``train``/``valid``/``test``, or None when the data has no split column.
        catalog: the catalog restricted to ``models``.
        groups: (N,) a grouping label per prompt (for example the source benchmark), or None.
    """

    name: str
    prompt_ids: np.ndarray
    prompts: np.ndarray
    models: tuple[str, ...]
    quality: np.ndarray
    cost_usd: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    latency_s: np.ndarray
    split: np.ndarray | None
    catalog: Catalog
    groups: np.ndarray | None = None

    @property
    def n_prompts(self) -> int:
        return len(self.prompt_ids)

    @property
    def n_models(self) -> int:
        return len(self.models)

    def complete_rows(self) -> np.ndarray:
        """(N,) True where every model has a recorded quality and cost for the prompt."""
        return ~(np.isnan(self.quality).any(axis=1) | np.isnan(self.cost_usd).any(axis=1))

    def take(self, rows: np.ndarray) -> RoutingData:
        """A new dataset holding only ``rows`` (integer indices or a boolean mask), in that order."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return RoutingData(
            name=self.name,
            prompt_ids=self.prompt_ids[rows],
            prompts=self.prompts[rows],
            models=self.models,
            quality=self.quality[rows],
            cost_usd=self.cost_usd[rows],
            input_tokens=self.input_tokens[rows],
            output_tokens=self.output_tokens[rows],
            latency_s=self.latency_s[rows],
            split=None if self.split is None else self.split[rows],
            catalog=self.catalog,
            groups=None if self.groups is None else self.groups[rows],
        )


class DataError(ValueError):
    """A user's data broke the data contract. The message names the file, the row or column, and what was
    expected."""
