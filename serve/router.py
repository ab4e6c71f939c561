"""Decisions from an exported artifact: embed the prompt, score every model, pick the best."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router_rl.embeddings import Embedder
from router_rl.serve.artifact import Artifact, ArtifactError, decision_scores, load_artifact


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
    """An artifact plus the embedder it was trained with.

    Args:
        artifact: an :class:`Artifact` or the path of an artifact directory.
        device: ``auto`` (``cuda`` when present), ``cpu`` or ``cuda``; used by the embedder and the head.
        cache_dir: optional embedding cache directory.
    """

    def __init__(
        self,
        artifact: Artifact | str | Path,
        *,
        device: str | None = "auto",
        cache_dir: str | Path | None = None,
    ):
        self.artifact = artifact if isinstance(artifact, Artifact) else load_artifact(artifact, device=device)
        emb = self.artifact.manifest["embedder"]
        self.embedder = Embedder(
            emb["id"],
            device=self.artifact.device,
            max_seq_length=int(emb.get("max_seq_length", 256)),
            cache_dir=cache_dir,
        )
        self._checked_dim = False

    @property
    def models(self) -> list[str]:
        return self.artifact.models

    def embed(self, prompts: list[str]) -> np.ndarray:
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
        scores, est = decision_scores(self.artifact, x, **limits)
        models = self.models
        scale = self.artifact.cost_scale
        out = []
        for i in range(scores.shape[0]):
            row = scores[i]
            best = row.max()
            ties = np.flatnonzero(row >= best - 1e-12)
            choice = int(ties[0])
            out.append(
                Decision(
                    model=models[choice],
                    scores={
                        m: (None if not np.isfinite(s) else float(s))
                        for m, s in zip(models, row, strict=True)
                    },
                    propensity=1.0 / len(ties),
                    estimates={
                        m: {
                            "quality": float(est[0, i, k]),
                            "cost_usd": float(est[1, i, k] * scale),
                            "latency_s": float(est[2, i, k]),
                        }
                        for k, m in enumerate(models)
                    },
                    policy_version=self.artifact.version,
                )
            )
        return out

    def decide(self, prompts: list[str], **limits: Any) -> list[Decision]:
        """One decision per prompt; ``limits``: cost_weight, latency_weight, candidates, max_cost_usd,
        latency_budget_s."""
        return self.decide_embedded(self.embed(prompts), **limits)
