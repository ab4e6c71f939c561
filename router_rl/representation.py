"""What a prompt becomes before the encoder reads it: shared affixes removed, then a token window or chunks.

Prompts of one application share long templates (a system prompt, a few-shot block, a trailing instruction),
and an encoder that reads only the first 256 tokens then sees one identical text for all of them. A
:class:`Representation` keeps what varies, in two steps applied identically at training and serving time:

1. **Affixes**: prefixes (and suffixes) shared by many training prompts, learned by :func:`learn_affixes`
   and stored in the artifact, are cut off (the longest one that matches; a prompt that is nothing but the
   affix is kept whole).
2. **Window** over the tokens of what remains (the encoder's tokenizer, special tokens excluded):
   ``head`` (the first ``max_seq_length`` tokens: what sentence-transformers does), ``head_tail`` (the
   first ``head_tokens`` and the last ``tail_tokens``), or ``chunks`` (consecutive chunks of
   ``chunk_tokens`` tokens, at most ``max_chunks``, encoded separately and mean-pooled, weighted by length).

The encoder applies the window (it owns the tokenizer); this module holds the pure parts: affix learning
and removal, token windows, the manifest block and its validation, the fingerprint that keys the embedding
cache, and the identical-embedding count behind ``router-rl train``'s warning. numpy and the standard
library only: the serving module imports it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

WINDOWS = ("head", "head_tail", "chunks")
AFFIX_MODES = ("drop", "pool", "center")
VERSION = 1  # bump when apply() changes meaning for the same fields
WHITESPACE = " \t\n\r\f\v"


class RepresentationError(ValueError):
    """A representation whose fields are out of range or of the wrong type."""


@dataclass(frozen=True)
class Representation:
    """How prompts are turned into encoder input (see the module docstring).

    Attributes:
        prefixes: learned shared prefixes, removed from a prompt that starts with one (longest first).
        suffixes: learned shared suffixes, removed likewise from the end.
        window: ``head``, ``head_tail`` or ``chunks``.
        head_tokens: ``head_tail``: tokens kept from the start.
        tail_tokens: ``head_tail``: tokens kept from the end.
        chunk_tokens: ``chunks``: tokens per chunk.
        max_chunks: ``chunks``: most chunks per prompt (the first ``max_chunks - 1`` and the last).
        affix_mode: ``drop`` (encode only what varies), ``pool`` (what varies plus the matched affixes'
            own embedding, equal weights: prompts keep which template they came with) or ``center`` (what
            varies plus the matched affixes' embedding less its mean over the training prompts, a prompt
            without affixes counting as zero: one template that every prompt shares adds nothing, several
            say which one a prompt came with).
        affix_counts: ``center``: (prefix index, suffix index, training prompts) for each combination of
            affixes the training prompts matched, -1 for none (:func:`count_affixes`); the mean is taken
            over them.
        learned: how the affixes were learned (settings and counts), for the record only.
    """

    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    window: str = "head"
    head_tokens: int = 0
    tail_tokens: int = 0
    chunk_tokens: int = 0
    max_chunks: int = 8
    affix_mode: str = "drop"
    affix_counts: tuple[tuple[int, int, int], ...] = ()
    learned: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefixes", tuple(sorted(set(self.prefixes), key=lambda s: (-len(s), s))))
        object.__setattr__(self, "suffixes", tuple(sorted(set(self.suffixes), key=lambda s: (-len(s), s))))
        check(self)

    # ------------------------------------------------------------------ identity
    @property
    def is_plain(self) -> bool:
        """Nothing beyond the encoder's own truncation: the text is encoded as given."""
        return not self.prefixes and not self.suffixes and self.window == "head"

    @property
    def needs_tokens(self) -> bool:
        """Whether the encoder must window the prompt's tokens itself (not just truncate)."""
        return self.window != "head"

    def settings(self) -> dict[str, Any]:
        """The fields that change what is encoded (no ``learned`` record), JSON-ready."""
        out: dict[str, Any] = {"version": VERSION, "window": self.window}
        if self.window == "head_tail":
            out.update(head_tokens=self.head_tokens, tail_tokens=self.tail_tokens)
        elif self.window == "chunks":
            out.update(chunk_tokens=self.chunk_tokens, max_chunks=self.max_chunks)
        if self.affix_mode != "drop":
            out["affix_mode"] = self.affix_mode
        if self.affix_counts:
            out["affix_counts"] = [list(c) for c in self.affix_counts]
        out.update(prefixes=list(self.prefixes), suffixes=list(self.suffixes))
        return out

    @property
    def fingerprint(self) -> str:
        """16 hex digits of sha256 over :meth:`settings`: part of the embedding cache key."""
        blob = json.dumps(self.settings(), sort_keys=True, ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> str:
        """A short label for logs: ``head_tail 128+126, 1 prefix``."""
        if self.window == "head_tail":
            label = f"head_tail {self.head_tokens}+{self.tail_tokens}"
        elif self.window == "chunks":
            label = f"chunks {self.chunk_tokens}x{self.max_chunks}"
        else:
            label = "head"
        n_p, n_s = len(self.prefixes), len(self.suffixes)
        if (n_p or n_s) and self.affix_mode == "pool":
            label += ", affixes pooled"
        elif (n_p or n_s) and self.affix_mode == "center":
            label += ", affixes centered"
        if n_p:
            label += f", {n_p} prefix{'es' if n_p > 1 else ''}"
        if n_s:
            label += f", {n_s} suffix{'es' if n_s > 1 else ''}"
        return label

    # ------------------------------------------------------------------ manifest
    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``embedder.representation`` block."""
        out = self.settings()
        if self.learned:
            out["learned"] = dict(self.learned)
        return out

    @classmethod
    def from_manifest(cls, block: Any) -> Representation:
        """The representation a manifest block records; :class:`RepresentationError` when malformed.

        A missing block (``None``: an artifact from before representations) is the plain representation."""
        if block is None:
            return cls()
        if not isinstance(block, dict):
            raise RepresentationError(f"representation must be an object, got {type(block).__name__}")
        known = {
            "version",
            "window",
            "head_tokens",
            "tail_tokens",
            "chunk_tokens",
            "max_chunks",
            "affix_mode",
            "affix_counts",
        }
        known |= {"prefixes", "suffixes", "learned"}
        unknown = sorted(set(block) - known)
        if unknown:
            raise RepresentationError(f"representation has unknown field(s) {unknown}")
        version = block.get("version", VERSION)
        if version != VERSION:
            raise RepresentationError(
                f"representation version {version!r} is not supported (this router-rl reads {VERSION})"
            )
        for key in ("prefixes", "suffixes"):
            value = block.get(key, [])
            if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
                raise RepresentationError(f"representation.{key} must be a list of non-empty strings")
        for key in ("head_tokens", "tail_tokens", "chunk_tokens", "max_chunks"):
            value = block.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool):
                raise RepresentationError(f"representation.{key} is {value!r}, expected an integer")
        learned = block.get("learned", {})
        if not isinstance(learned, dict):
            raise RepresentationError("representation.learned must be an object")
        counts = block.get("affix_counts", [])
        if not isinstance(counts, list) or not all(
            isinstance(c, list)
            and len(c) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) for v in c)
            for c in counts
        ):
            raise RepresentationError(
                "representation.affix_counts must be a list of [prefix index, suffix index, count] integers"
            )
        return cls(
            prefixes=tuple(block.get("prefixes", [])),
            suffixes=tuple(block.get("suffixes", [])),
            window=block.get("window", "head"),
            head_tokens=block.get("head_tokens", 0),
            tail_tokens=block.get("tail_tokens", 0),
            chunk_tokens=block.get("chunk_tokens", 0),
            max_chunks=block.get("max_chunks", 8),
            affix_mode=block.get("affix_mode", "drop"),
            affix_counts=tuple(tuple(c) for c in counts),
            learned=learned,
        )

    def with_affixes(
        self, prefixes: Sequence[str], suffixes: Sequence[str], learned: dict[str, Any] | None = None
    ) -> Representation:
        return replace(
            self,
            prefixes=tuple(prefixes),
            suffixes=tuple(suffixes),
            affix_counts=(),
            learned=dict(learned or {}),
        )

    def with_counts(self, texts: Sequence[str]) -> Representation:
        """``center``: this representation with :attr:`affix_counts` taken over ``texts`` (the training
        prompts); other modes: unchanged."""
        if self.affix_mode != "center" or not (self.prefixes or self.suffixes):
            return self
        return replace(self, affix_counts=count_affixes(self, texts))

    def affix_weights(self) -> list[tuple[str, float]]:
        """``center``: (matched affix text, share of the training prompts) for each combination counted; the
        prompts that matched none make up the rest of the total. Its weighted sum of the affixes'
        embeddings is the mean subtracted."""
        total = sum(c for _, _, c in self.affix_counts)
        out = []
        for p, s, c in self.affix_counts:
            text = (self.prefixes[p] if p >= 0 else "") + (self.suffixes[s] if s >= 0 else "")
            if text and total:
                out.append((text, c / total))
        return out

    # ------------------------------------------------------------------ applying
    def remove_affixes(self, text: str) -> str:
        """``text`` without its longest learned prefix and suffix; ``text`` itself when nothing else remains."""
        return self.split(text)[0]

    def match(self, text: str) -> tuple[str, int, int]:
        """(what varies, index of the prefix matched, index of the suffix matched; -1 for none): what
        :meth:`split` cuts, by position in :attr:`prefixes` and :attr:`suffixes`."""
        out, pi, si = text, -1, -1
        for i, p in enumerate(self.prefixes):  # longest first
            if out.startswith(p):
                out, pi = out[len(p) :], i
                break
        for i, s in enumerate(self.suffixes):
            if len(out) > len(s) and out.endswith(s):
                out, si = out[: len(out) - len(s)], i
                break
        return (out, pi, si) if out.strip() else (text, -1, -1)

    def split(self, text: str) -> tuple[str, str]:
        """(what varies, the affixes it matched: prefix + suffix, '' when none): ``text`` less its longest
        learned prefix and suffix; (``text``, '') when nothing else would remain."""
        out, pi, si = self.match(text)
        return out, (self.prefixes[pi] if pi >= 0 else "") + (self.suffixes[si] if si >= 0 else "")

    def pieces(self, ids: Sequence[int], budget: int | None) -> list[list[int]]:
        """The token pieces the encoder runs for one prompt's content tokens ``ids`` (no special tokens).

        ``budget``: content tokens one encoder pass can take (``max_seq_length`` less the special tokens;
        None: unlimited, a static encoder). ``head``: the first ``budget`` tokens. ``head_tail``: the first
        ``head_tokens`` and the last ``tail_tokens`` (the whole prompt when it is no longer). ``chunks``:
        consecutive chunks, the first ``max_chunks - 1`` and the last when there are more. Always at least
        one piece (possibly empty, for an empty prompt).
        """
        ids = list(ids)
        if self.window == "head":
            return [ids if budget is None else ids[:budget]]
        if self.window == "head_tail":
            h, t = self.head_tokens, self.tail_tokens
            if budget is not None and h + t > budget:
                raise RepresentationError(
                    f"head_tokens + tail_tokens = {h + t} exceed the encoder's {budget} tokens per pass"
                )
            return [ids if len(ids) <= h + t else ids[:h] + (ids[len(ids) - t :] if t else [])]
        size = self.chunk_tokens if budget is None else min(self.chunk_tokens, budget)
        chunks = [ids[i : i + size] for i in range(0, len(ids), size)] or [[]]
        if len(chunks) > self.max_chunks:
            chunks = chunks[: self.max_chunks - 1] + chunks[-1:]
        return chunks


def count_affixes(rep: Representation, texts: Sequence[str]) -> tuple[tuple[int, int, int], ...]:
    """(prefix index, suffix index, distinct texts) for each combination of ``rep``'s affixes that the
    distinct ``texts`` match, -1 for none (the combination (-1, -1) is the texts that match nothing)."""
    counts: dict[tuple[int, int], int] = {}
    for text in dict.fromkeys(str(t) for t in texts):
        _, p, s = rep.match(text)
        counts[(p, s)] = counts.get((p, s), 0) + 1
    return tuple((p, s, c) for (p, s), c in sorted(counts.items()))


def check(rep: Representation) -> None:
    """Raise :class:`RepresentationError` when ``rep``'s window settings are out of range."""
    if rep.affix_mode not in AFFIX_MODES:
        raise RepresentationError(
            f"representation affix_mode {rep.affix_mode!r} is unknown; expected one of {AFFIX_MODES}"
        )
    for p, s, c in rep.affix_counts:
        if not (-1 <= p < len(rep.prefixes) and -1 <= s < len(rep.suffixes) and c >= 0):
            raise RepresentationError(
                f"representation affix_counts entry {[p, s, c]} does not name a learned prefix and suffix "
                f"({len(rep.prefixes)} prefixes, {len(rep.suffixes)} suffixes) with a count >= 0"
            )
    if rep.window not in WINDOWS:
        raise RepresentationError(
            f"representation window {rep.window!r} is unknown; expected one of {WINDOWS}"
        )
    if rep.window == "head_tail" and (rep.head_tokens < 1 or rep.tail_tokens < 0):
        raise RepresentationError(
            f"representation head_tail needs head_tokens >= 1 and tail_tokens >= 0, got {rep.head_tokens} and {rep.tail_tokens}"
        )
    if rep.window == "chunks" and (rep.chunk_tokens < 1 or rep.max_chunks < 1):
        raise RepresentationError(
            f"representation chunks needs chunk_tokens >= 1 and max_chunks >= 1, got {rep.chunk_tokens} and {rep.max_chunks}"
        )


def from_config(cfg: Any) -> tuple[Representation, dict[str, Any]]:
    """(the window settings as a :class:`Representation` without affixes, the affix-learning settings) of an
    ``embedder.representation`` config block (any mapping; missing keys take the defaults below)."""
    cfg = cfg if cfg is not None else {}
    affixes = cfg.get("affixes") or {}
    mode = str(affixes.get("mode", "drop"))
    if mode not in (*AFFIX_MODES, "auto"):
        raise RepresentationError(
            f"embedder.representation.affixes.mode {mode!r} is unknown; expected one of {(*AFFIX_MODES, 'auto')}"
        )
    rep = Representation(
        window=str(cfg.get("window", "head")),
        head_tokens=int(cfg.get("head_tokens", 0) or 0),
        tail_tokens=int(cfg.get("tail_tokens", 0) or 0),
        chunk_tokens=int(cfg.get("chunk_tokens", 0) or 0),
        max_chunks=int(cfg.get("max_chunks", 8) or 8),
        affix_mode="drop" if mode == "auto" else mode,
    )
    learn = {
        "auto": mode == "auto",
        "auto_alpha": float(affixes.get("auto_alpha", 0.01)),
        "enabled": bool(affixes.get("enabled", False)),
        "min_share": float(affixes.get("min_share", 0.01)),
        "min_prompts": int(affixes.get("min_prompts", 5)),
        "min_chars": int(affixes.get("min_chars", 200)),
        "suffixes": bool(affixes.get("suffixes", True)),
        "max_affixes": int(affixes.get("max_affixes", 128)),
    }
    return rep, learn


# ------------------------------------------------------------------------------------------ learning
def _lcp(a: str, b: str) -> int:
    """Length of the longest common prefix of ``a`` and ``b`` (binary search over C-speed slice compares)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _at_boundary(prefix: str) -> str:
    """``prefix`` cut back to just after its last whitespace, so that no word is split ('' if none)."""
    cut = max(prefix.rfind(c) for c in WHITESPACE)
    return prefix[: cut + 1] if cut >= 0 else ""


def shared_prefixes(texts: Sequence[str], *, min_count: int, min_chars: int) -> list[tuple[str, int]]:
    """Prefixes of at least ``min_chars`` characters that at least ``min_count`` of ``texts`` start with.

    The distinct texts are sorted, so that texts sharing a prefix are neighbours; the longest common prefix
    of each maximal run of neighbours (an LCP interval, found with a stack over the neighbours' common
    prefix lengths) is a candidate. A run's prefix is kept when the run holds ``min_count`` texts; a
    longer prefix nested inside a kept one (a cluster within the cluster: one system prompt, then one of
    several few-shot blocks) is kept too when it adds at least ``min_chars`` characters, so that a common
    opening such as "Which of the following" after a kept template is not taken for a template. Every kept
    prefix is cut back to a whitespace boundary. Returns (prefix, number of texts starting with it), the
    most shared first. O(N log N) comparisons.
    """
    uniq = sorted(set(texts))
    n = len(uniq)
    if n < max(2, min_count):
        return []
    lcp = [_lcp(uniq[i], uniq[i + 1]) for i in range(n - 1)]
    # LCP intervals: (depth, lo, hi) with every neighbour pair in lo..hi sharing >= depth characters
    intervals: list[tuple[int, int, int]] = []
    stack: list[tuple[int, int]] = []  # (depth, lo)
    for i, depth in enumerate([*lcp, -1]):
        lo = i
        while stack and stack[-1][0] > depth:
            d, lo = stack.pop()
            intervals.append((d, lo, i))  # texts lo..i share d characters
        if depth >= 0 and (not stack or stack[-1][0] < depth):
            stack.append((depth, lo))
    # keep top-down: an interval is kept if big and long enough, and (when nested in a kept one) longer
    # than that one by min_chars
    intervals.sort(key=lambda x: (x[1], -(x[2] - x[1]), x[0]))
    kept: dict[str, int] = {}
    open_kept: list[tuple[int, int, int]] = []  # kept intervals enclosing the current one: (hi, depth, lo)
    for depth, lo, hi in intervals:
        while open_kept and open_kept[-1][0] < hi:
            open_kept.pop()
        count = hi - lo + 1
        if count < min_count or depth < min_chars:
            continue
        parent_depth = open_kept[-1][1] if open_kept else 0
        if open_kept and depth - parent_depth < min_chars:
            continue
        prefix = _at_boundary(uniq[lo][:depth])
        if len(prefix) < min_chars or len(prefix) - parent_depth < (min_chars if open_kept else 0):
            continue
        kept[prefix] = max(kept.get(prefix, 0), count)
        open_kept.append((hi, len(prefix), lo))
    return sorted(kept.items(), key=lambda kv: (-kv[1], -len(kv[0]), kv[0]))


def learn_affixes(
    texts: Sequence[str],
    *,
    min_share: float = 0.01,
    min_prompts: int = 5,
    min_chars: int = 200,
    suffixes: bool = True,
    max_affixes: int = 128,
) -> tuple[list[str], list[str], dict[str, Any]]:
    """Prefixes (and suffixes) shared by many of ``texts``: (prefixes, suffixes, record for the manifest).

    An affix is kept when at least ``max(min_prompts, min_share * N)`` of the N distinct texts carry it and
    it is at least ``min_chars`` characters long (see :func:`shared_prefixes`); suffixes are the prefixes of
    the reversed texts, cut at a whitespace boundary. At most ``max_affixes`` of each, the most shared first.
    """
    uniq = list(dict.fromkeys(str(t) for t in texts))
    need = max(int(min_prompts), int(np.ceil(float(min_share) * len(uniq))))
    pre = shared_prefixes(uniq, min_count=need, min_chars=int(min_chars))[:max_affixes]
    suf: list[tuple[str, int]] = []
    if suffixes:
        rev = shared_prefixes([t[::-1] for t in uniq], min_count=need, min_chars=int(min_chars))
        suf = [(s[::-1], c) for s, c in rev[:max_affixes]]
    rep = Representation(prefixes=tuple(p for p, _ in pre), suffixes=tuple(s for s, _ in suf))
    stripped = sum(rep.remove_affixes(t) != t for t in uniq)
    record = {
        "min_share": float(min_share),
        "min_prompts": int(min_prompts),
        "min_chars": int(min_chars),
        "prompts": len(uniq),
        "prompts_stripped": int(stripped),
        "prefix_counts": [c for _, c in pre],
        "suffix_counts": [c for _, c in suf],
    }
    return [p for p, _ in pre], [s for s, _ in suf], record


def templates_inform(
    rep: Representation, texts: Sequence[str], quality: np.ndarray, alpha: float = 0.01
) -> dict[str, Any]:
    """Whether the templates the training prompts matched tell their outcomes apart: ``mode: auto``'s test.

    The prompts are grouped by the affixes they matched (no affix is a group of its own); for each model a
    one-way ANOVA F-test of its quality across the groups, the smallest p-value times the number of models
    (Bonferroni) against ``alpha``. ``quality``: (N, K), the rows of ``texts``. Returns ``{"center": bool,
    "p_value", "groups", "prompts"}``: center when the groups differ at level ``alpha``.
    """
    from scipy.stats import f as f_dist

    q = np.asarray(quality, dtype=np.float64)
    if q.ndim != 2 or q.shape[0] != len(texts):
        raise ValueError(f"quality has shape {q.shape}; expected ({len(texts)}, models)")
    keys = [rep.match(str(t))[1:] for t in texts]
    labels = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    g = np.array([labels[k] for k in keys], dtype=np.int64)
    n, n_groups = len(g), len(labels)
    out: dict[str, Any] = {"center": False, "p_value": 1.0, "groups": n_groups, "prompts": n}
    if n_groups < 2:
        return out
    best = 1.0
    for k in range(q.shape[1]):
        seen = np.isfinite(q[:, k])  # a model without an outcome on some prompts: tested on the rest
        col, gk = q[seen, k], g[seen]
        sizes = np.bincount(gk, minlength=n_groups).astype(np.float64)
        present = sizes > 0
        m, n_k = int(present.sum()), len(col)
        if m < 2 or n_k <= m:
            continue
        means = np.bincount(gk, weights=col, minlength=n_groups) / np.maximum(sizes, 1.0)
        between = float(np.sum(sizes * (means - col.mean()) ** 2)) / (m - 1)
        within = float(np.sum((col - means[gk]) ** 2)) / (n_k - m)
        if within <= 0.0:
            p = 0.0 if between > 0.0 else 1.0
        else:
            p = float(f_dist.sf(between / within, m - 1, n_k - m))
        best = min(best, p)
    p_value = min(1.0, best * q.shape[1])
    out.update(center=bool(p_value < alpha), p_value=p_value)
    return out


# ------------------------------------------------------------------------------------------ diagnostics
def identical_embeddings(texts: Sequence[str], vectors: np.ndarray) -> tuple[int, int]:
    """(prompts whose embedding equals that of a prompt with a different text, groups of them).

    Bitwise equality of the float32 vectors: what a truncated template produces. Repeated identical texts
    are not counted (they should embed identically)."""
    groups: dict[bytes, set[str]] = {}
    counts: dict[bytes, int] = {}
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    for text, row in zip(texts, x, strict=True):
        key = row.tobytes()
        groups.setdefault(key, set()).add(str(text))
        counts[key] = counts.get(key, 0) + 1
    collided = [k for k, g in groups.items() if len(g) > 1]
    return sum(counts[k] for k in collided), len(collided)
