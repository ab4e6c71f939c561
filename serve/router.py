"""Decisions from an exported artifact: embed the prompt, score every model, pick the best."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router_rl.embeddings import Embedder
from router_rl.representation import Representation, RepresentationError
from router_rl.serve.artifact import (
    Artifact,
    ArtifactError,
    linear_estimates,
    load_artifact,
    scores_from_estimates,
)

LIMIT_KEYS = ("cost_weight", "latency_weight", "candidates", "max_cost_usd", "latency_budget_s")
INLINE_CHARS = 8000  # a static encoder's prompt up to this long is decided inline (about 0.5 ms at most)


@dataclass
class Decision:
    """One routing decision.

    Attributes:
        model: the chosen model.
        scores: decision score per model (``None`` for excluded models).
        propensity: probability with which the policy chose ``model`` (greedy: 1, or the tie share).
        estimates: per model the predicted ``quality``, ``cost_usd`` and ``latency_s``.
        decision_id: a unique id for feedback and logging.
        policy_version: the artifact's version.
    """

    model: str
    scores: dict[str, float | None]
    propensity: float
    estimates: dict[str, dict[str, float]]
    policy_version: str
    decision_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "scores": self.scores,
            "propensity": self.propensity,
            "decision_id": self.decision_id,
            "policy_version": self.policy_version,
            "estimates": self.estimates,
        }


class Router:
    """An artifact plus the embedder it was trained with, reading prompts as training did: the manifest's
    representation (learned affixes removed, the same token window) and, for a static encoder, the artifact's
    own token table.

    Args:
        artifact: an :class:`Artifact` or the path of an artifact directory.
        device: ``auto`` (``cuda`` when present), ``cpu`` or ``cuda``; used by the embedder and the head.
        cache_dir: optional embedding cache directory.
        embedder: an already loaded :class:`Embedder` to reuse (a hot reload keeps the encoder in memory);
            it must be the artifact's encoder with the artifact's ``max_seq_length`` (or ``max_seq_length``).
        encoder_backend: ``torch``, ``onnx``, ``onnx-int8`` or ``auto`` (see :class:`Embedder`), when no
            ``embedder`` is given; a static encoder (read from the artifact) always runs on ``static``.
        max_seq_length: tokens the encoder reads per prompt; None: the artifact's.
        embedding_cache_size: prompts kept in the embedder's in-memory LRU (0: none).
        threads: CPU threads of an ONNX Runtime encoder (None: all cores).
    """

    def __init__(
        self,
        artifact: Artifact | str | Path,
        *,
        device: str | None = "auto",
        cache_dir: str | Path | None = None,
        embedder: Embedder | None = None,
        encoder_backend: str = "torch",
        max_seq_length: int | None = None,
        embedding_cache_size: int = 0,
        threads: int | None = None,
    ):
        self.artifact = artifact if isinstance(artifact, Artifact) else load_artifact(artifact, device=device)
        spec = encoder_spec(self.artifact)
        emb = self.artifact.manifest["embedder"]
        max_seq_length = int(max_seq_length or emb.get("max_seq_length", 256))
        self._checked_dim = False
        if embedder is not None:
            length = None if spec.kind == "static" else max_seq_length
            if (
                embedder.model_name != emb["id"]
                or embedder.kind != spec.kind
                or embedder.max_seq_length != length
            ):
                raise ArtifactError(
                    f"the artifact needs encoder {emb['id']!r} (max_seq_length {length}), "
                    f"the given embedder is {embedder.model_name!r} (max_seq_length {embedder.max_seq_length})"
                )
            if embedder.representation.fingerprint != spec.representation.fingerprint:
                embedder = embedder.with_representation(spec.representation)  # the model stays loaded
        else:
            embedder = spec.embedder(
                backend=encoder_backend,
                device=self.artifact.device,
                max_seq_length=max_seq_length,
                cache_dir=cache_dir,
                memory_cache_size=embedding_cache_size,
                threads=threads,
            )
            self._checked_dim = _load_encoder(embedder, self.artifact)
        self.embedder = embedder
        self.n_embed_calls = 0  # forward passes of the encoder and of the head, for batching checks and logs
        self.n_head_calls = 0

    @property
    def trained_max_seq_length(self) -> int:
        """The truncation the policy was trained with (the artifact's)."""
        return int(self.artifact.manifest["embedder"].get("max_seq_length", 256))

    @property
    def models(self) -> list[str]:
        return self.artifact.models

    def embed(self, prompts: list[str]) -> np.ndarray:
        self.n_embed_calls += 1
        x = self.embedder.encode(prompts)
        if not self._checked_dim:
            want = int(self.artifact.manifest["embedder"]["dim"])
            if x.shape[1] != want:
                raise ArtifactError(
                    f"embedder {self.embedder.model_name!r} gives dimension {x.shape[1]}, the artifact expects {want}"
                )
            self._checked_dim = True
        return x

    def decide_embedded(self, x: np.ndarray, **limits: Any) -> list[Decision]:
        """Decisions for precomputed embeddings ``x`` (B, d); ``limits`` as in :func:`decision_scores`."""
        return self.decide_rows(x, [limits] * len(x))

    def decide_requests(
        self, prompts: list[str], limits: list[dict[str, Any]]
    ) -> tuple[list[Decision], np.ndarray]:
        """Decisions for a micro-batch of requests, each with its own ``limits`` (keys of :data:`LIMIT_KEYS`).

        One encoder pass and one head pass for the whole batch; each request is then scored with its own
        cost weight, candidates and budgets (row-wise, so a request's decision does not depend on the others
        in its batch). Returns the decisions, in order, and the embeddings (B, d).
        """
        if len(prompts) != len(limits):
            raise ValueError(f"{len(prompts)} prompts but {len(limits)} limit sets")
        x = self.embed(prompts)
        return self.decide_rows(x, limits), x

    def decide_cached(self, prompt: str, limits: dict[str, Any]) -> tuple[Decision, np.ndarray] | None:
        """The decision for ``prompt`` when the embedder's memory cache holds its embedding (only the head
        runs: cheap enough for the event loop), else None. Same decision as :meth:`decide_requests`."""
        v = self.embedder.cached(prompt)
        if v is None:
            return None
        x = v[None, :]
        return self.decide_rows(x, [limits])[0], x

    def decide_inline(self, prompt: str, limits: dict[str, Any]) -> tuple[Decision, np.ndarray] | None:
        """The decision for ``prompt`` computed on the caller's thread when the encoder is a token lookup and
        the prompt is at most :data:`INLINE_CHARS` long (tens to hundreds of microseconds, cheap enough for
        the event loop), else None. Same decision as :meth:`decide_requests`."""
        if self.embedder.kind != "static" or len(prompt) > INLINE_CHARS:
            return None
        x = self.embed([prompt])
        return self.decide_rows(x, [limits])[0], x

    def decide_rows(self, x: np.ndarray, limits: list[dict[str, Any]]) -> list[Decision]:
        """Decisions for embeddings ``x`` (B, d), row ``i`` under ``limits[i]``: one head pass for the batch."""
        if x.shape[0] != len(limits):
            raise ValueError(f"{x.shape[0]} embeddings but {len(limits)} limit sets")
        self.n_head_calls += 1
        est = linear_estimates(self.artifact, x)
        groups: dict[tuple, list[int]] = {}
        for i, lim in enumerate(limits):
            unknown = set(lim) - set(LIMIT_KEYS)
            if unknown:
                raise ValueError(f"unknown limit(s) {sorted(unknown)}; expected some of {LIMIT_KEYS}")
            key = tuple(tuple(lim[k]) if isinstance(lim.get(k), list) else lim.get(k) for k in LIMIT_KEYS)
            groups.setdefault(key, []).append(i)
        out: list[Decision | None] = [None] * len(limits)
        for rows in groups.values():
            lim = limits[rows[0]]
            part = est if len(rows) == len(limits) else est[:, rows]
            scores, sub = scores_from_estimates(self.artifact, part, **lim)
            for i, decision in zip(rows, self._decisions(scores, sub), strict=True):
                out[i] = decision
        return out  # type: ignore[return-value]

    def _decisions(self, scores: np.ndarray, est: np.ndarray) -> list[Decision]:
        models = self.models
        version = self.artifact.version
        best = scores.max(axis=1, keepdims=True)
        ties = scores >= best - 1e-12
        choices = ties.argmax(axis=1).tolist()  # the first of the tied best
        n_ties = ties.sum(axis=1).tolist()
        est = est.copy()
        est[1] *= self.artifact.cost_scale
        # python floats from .tolist(): ~10x cheaper than float() on numpy scalars, same values
        q, c, lat = (e.tolist() for e in est)
        out = []
        for i, row in enumerate(scores.tolist()):
            out.append(
                Decision(
                    model=models[choices[i]],
                    scores={m: (s if math.isfinite(s) else None) for m, s in zip(models, row, strict=True)},
                    propensity=1.0 / n_ties[i],
                    estimates={
                        m: {"quality": qk, "cost_usd": ck, "latency_s": lk}
                        for m, qk, ck, lk in zip(models, q[i], c[i], lat[i], strict=True)
                    },
                    policy_version=version,
                )
            )
        return out

    def decide(self, prompts: list[str], **limits: Any) -> list[Decision]:
        """One decision per prompt; ``limits``: cost_weight, latency_weight, candidates, max_cost_usd,
        latency_budget_s."""
        return self.decide_embedded(self.embed(prompts), **limits)


@dataclass
class EncoderSpec:
    """The artifact's ``embedder`` block as the router applies it: the encoder, its kind, the representation
    training used (affixes, window), and for a static encoder its token table, read from the artifact."""

    id: str
    kind: str
    representation: Representation
    static: Any = None  # a StaticEncoder, for kind "static"

    def embedder(self, *, backend: str, max_seq_length: int, **options: Any) -> Embedder:
        """A new :class:`Embedder` that encodes exactly as training did."""
        if self.kind == "static":
            if backend not in ("auto", "static", "torch"):
                raise ArtifactError(
                    f"encoder {self.id!r} is a static token lookup: it runs on encoder backend auto or static, "
                    f"not {backend!r}"
                )
            return Embedder(
                self.id, name=self.id, backend="static", static_encoder=self.static,
                representation=self.representation, **options,
            )  # fmt: skip
        return Embedder(
            self.id,
            backend=backend,
            max_seq_length=max_seq_length,
            representation=self.representation,
            **options,
        )


def encoder_spec(artifact: Artifact) -> EncoderSpec:
    """Validate the artifact's encoder fields (``kind``, ``representation``, a static encoder's ``files``) and
    read a static encoder's table from the artifact; one-line :class:`ArtifactError` when any is malformed.

    The static files must be listed in the manifest's ``files`` (so the loader checked they lie inside the
    directory); their bytes are read once here and checked against the recorded sha256 again before use."""
    import hashlib

    emb = artifact.manifest["embedder"]
    where = artifact.path / "manifest.json"
    kind = emb.get("kind", "transformer")
    if kind not in ("transformer", "static"):
        raise ArtifactError(f"{where}: embedder.kind is {kind!r}; expected transformer or static")
    try:
        representation = Representation.from_manifest(emb.get("representation"))
    except RepresentationError as err:
        raise ArtifactError(f"{where}: embedder.{err}") from None
    if kind == "transformer":
        return EncoderSpec(emb["id"], kind, representation)
    files = emb.get("files")
    if not isinstance(files, dict) or set(files) != {"weights", "tokenizer"}:
        raise ArtifactError(f"{where}: a static embedder needs files {{weights, tokenizer}}, got {files!r}")
    data = {}
    for role, name in files.items():
        entry = artifact.manifest["files"].get(name) if isinstance(name, str) else None
        if not isinstance(entry, dict):
            raise ArtifactError(f"{where}: embedder.files.{role} {name!r} is not one of the artifact's files")
        blob = (artifact.path / name).read_bytes()
        if hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
            raise ArtifactError(
                f"{artifact.path / name}: sha256 does not match the manifest; the artifact was modified"
            )
        data[role] = blob
    from router_rl.static_encoder import StaticEncoderError, from_bytes

    try:
        static = from_bytes(data["weights"], data["tokenizer"])
    except StaticEncoderError as err:
        raise ArtifactError(f"{where}: embedder.files: {err}") from None
    return EncoderSpec(emb["id"], kind, representation, static)


def _load_encoder(embedder: Embedder, artifact: Artifact) -> bool:
    """Load the artifact's encoder now, so that an encoder that cannot be loaded (an unknown id offline, a
    broken path) or gives the wrong dimension is a one-line :class:`ArtifactError` at construction, not a
    traceback at the first request. Returns True (the dimension is checked)."""
    emb = artifact.manifest["embedder"]
    try:
        dim = embedder.dim
    except Exception as err:  # sentence-transformers, transformers and the hub raise many types
        detail = " ".join(str(err).split())[:300]
        raise ArtifactError(
            f"{artifact.path}: the artifact's encoder {emb['id']!r} cannot be loaded ({type(err).__name__}: "
            f"{detail}); install it, give a local path, or allow downloads"
        ) from None
    if dim != int(emb["dim"]):
        raise ArtifactError(
            f"{artifact.path}: encoder {emb['id']!r} gives dimension {dim}, the artifact expects {emb['dim']}"
        )
    return True


def explore(decision: Decision, epsilon: float, rng: np.random.Generator) -> Decision:
    """Epsilon-greedy on top of a greedy decision, with the propensity of the model finally chosen.

    With probability ``epsilon`` a model is drawn uniformly among the allowed ones (finite score), otherwise
    the greedy choice stands. The returned propensity is the probability of the
    chosen model under this mixture, as off-policy evaluation needs. ``epsilon = 0`` returns ``decision``.
    """
    if epsilon <= 0.0:
        return decision
    allowed = [m for m, s in decision.scores.items() if s is not None]
    model = allowed[int(rng.integers(len(allowed)))] if rng.random() < epsilon else decision.model
    greedy = 1.0 if model == decision.model else 0.0  # the greedy part breaks ties by catalog order
    propensity = (1.0 - epsilon) * greedy + epsilon / len(allowed)
    return Decision(
        model=model,
        scores=decision.scores,
        propensity=propensity,
        estimates=decision.estimates,
        policy_version=decision.policy_version,
        decision_id=decision.decision_id,
    )
