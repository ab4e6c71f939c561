"""What an env builds on when it is given no ``data`` or ``embeddings``: ``gymnasium.make(id)`` just works.

- ``data``: the bundled default dataset (:data:`DEFAULT_DATASET`, the arena set), loaded once per process.
- ``embeddings``: the prompts of ``data`` under the default encoder (all-MiniLM-L6-v2, the first 256
  tokens), read from the on-disk embedding cache (``$ROUTER_RL_CACHE`` or ``~/.cache/router-rl``) and
  computed there once if absent (about half a minute for the 300 arena prompts on a 2-core CPU); the same
  cache ``router-rl train`` fills. Loaded once per process for the default data.
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from router_rl.types import RoutingData

DEFAULT_DATASET = "arena"
"""The bundled dataset a registered env uses without ``data``."""
DEFAULT_MAX_SEQ_LENGTH = 256
"""Tokens the default encoder reads per prompt (as ``configs/embedder/minilm.yaml``)."""


@functools.lru_cache(maxsize=1)
def default_data() -> RoutingData:
    """The bundled default dataset; its rows without every model's outcome are simply not sampled."""
    from router_rl.data import DataWarning, load_bundled

    with warnings.catch_warnings():  # its dropped empty grades are documented in the dataset's attribution
        warnings.simplefilter("ignore", DataWarning)
        return load_bundled(DEFAULT_DATASET)


@functools.lru_cache(maxsize=1)
def _default_embeddings() -> np.ndarray:
    emb = embed_prompts(default_data())
    emb.flags.writeable = False
    return emb


def embed_prompts(data: RoutingData) -> np.ndarray:
    """(N, d) float32 default-encoder embeddings of ``data``'s prompts, through the on-disk cache."""
    from router_rl.embeddings import DEFAULT_ENCODER, Embedder, default_cache_dir

    embedder = Embedder(DEFAULT_ENCODER, max_seq_length=DEFAULT_MAX_SEQ_LENGTH, cache_dir=default_cache_dir())
    return embedder.encode(list(data.prompts))


def resolve(data: RoutingData | None, embeddings: np.ndarray | None) -> tuple[RoutingData, np.ndarray]:
    """``(data, embeddings)`` with the defaults filled in: the bundled data and/or its default embeddings."""
    if data is None:
        if embeddings is not None:
            raise ValueError(
                "embeddings given without data: pass the RoutingData they embed (data=...), or neither "
                f"for the bundled {DEFAULT_DATASET!r} data"
            )
        return default_data(), _default_embeddings()
    if embeddings is None:
        is_default = default_data.cache_info().currsize and data is default_data()
        return data, (_default_embeddings() if is_default else embed_prompts(data))
    return data, embeddings
