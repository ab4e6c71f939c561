"""Fast posterior widths ``w_k(x) = sqrt(x^T A_k^{-1} x)`` for the linear bandits, with their error bounds.

The straightforward formula (:func:`router_rl.policies.ridge.posterior_width`) multiplies every context by
every arm's dense inverse design: B K D^2 multiply-adds in float64, nearly all of a LinUCB decision's time.
:class:`WidthCache` computes the same widths from cached Cholesky factors ``A_k^{-1} = L_k L_k^T`` (L_k lower
triangular), since ``x^T A_k^{-1} x = ||L_k^T x||^2``:

- **Half the work.** Column block ``[c0, c1)`` of ``L_k^T x`` only needs ``x[c0:]`` (the rows above ``c0`` of
  ``L_k`` are zero there). The factors are stored per column block with the arms side by side,
  ``F_j = [L_1[c0:, c0:c1] | ... | L_K[c0:, c0:c1]]``, so a batch costs one GEMM per block for every arm,
  ``Y_j = X[:, c0:] @ F_j``, and about ``(n_blocks + 1) / (2 n_blocks)`` of the dense multiply-adds.
- **Float32 where it cannot change a decision** (``float32=True``): the GEMMs run in float32 (twice the
  throughput) and every width comes with a rigorous bound ``|w_hat - w| <= err``; LinUCB recomputes, with the
  float64 formula, exactly the rows whose best arm the bounds cannot certify (see
  :func:`certified_greedy`), so its decisions are those of the float64 formula.
- **Factors are refreshed lazily**, only for arms whose design changed (detected from a fingerprint of each
  ``A_k^{-1}``: its diagonal and last row, which every update changes), and only once they will be reused: after
  ``refactor_rows`` decision rows since the arm last changed (a Cholesky costs ~D/3 rows of a dense product).
  Until then a changed arm's widths come from the dense float64 formula, so a training loop that updates every
  batch pays no factorisations.

Float32 error bound (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., sec. 3.1 and 3.5),
with unit roundoff u = 2^-24 and gamma_n = n u / (1 - n u): with L and x rounded to float32 and the product
summed in any order, ``||y_hat - L^T x||_2 <= (2 u + gamma_D)(1 + u)^2 ||L||_F ||x||_2``, and, the norm being
1-Lipschitz, the same bounds ``| ||y_hat|| - ||L^T x|| |``. The sums of squares (``bs`` terms per block in
float32, then float64) add a relative error of at most ``gamma_{bs+1}``, and the float64 Cholesky's backward
error ``|L L^T - A^{-1}| <= gamma_{D+1}^{(64)} |L| |L^T|`` at most ``sqrt(gamma_{D+1}^{(64)}) ||L||_F ||x||``.
``err`` is twice their sum. ``||L_k||_F^2 = trace(A_k^{-1})``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

_U32 = 2.0**-24
_U64 = 2.0**-53


def _gamma(n: int, u: float) -> float:
    return n * u / (1.0 - n * u)


def block_edges(dim: int, block: int) -> np.ndarray:
    """Column block edges ``[0, ..., dim]`` of ``ceil(dim / block)`` near-equal blocks."""
    n = max(1, math.ceil(dim / block))
    return np.unique(np.linspace(0, dim, n + 1).round().astype(int))


class WidthCache:
    """Cached triangular factors of the arms' inverse designs, for batched posterior widths.

    Args:
        block: columns per block of the triangular product (smaller blocks skip more zeros, larger ones make
            faster GEMMs; 48 suits D ~ 100-1000 on AVX2 CPUs).
        refactor_rows: decision rows after an arm's change before its factor is recomputed; default D // 2.
    """

    def __init__(self, block: int = 48, refactor_rows: int | None = None) -> None:
        self.block = int(block)
        self.refactor_rows = refactor_rows
        self._shape: tuple[int, int] | None = None

    def _reset(self, k: int, d: int) -> None:
        self._shape = (k, d)
        self.edges = block_edges(d, self.block)
        self._f64 = [np.zeros((d - c0, k * (c1 - c0))) for c0, c1 in self._blocks()]
        self._f32 = [f.astype(np.float32) for f in self._f64]
        self._factor_fp = np.full((k, 2 * d), np.nan)  # fingerprint of A^{-1} when factored (NaN: never)
        self._factor_ok = np.zeros(k, dtype=bool)  # False where the Cholesky failed (dense fallback)
        self._seen_fp = np.full((k, 2 * d), np.nan)  # fingerprint when ``_pending`` started counting
        self._pending = np.zeros(k, dtype=np.int64)  # rows decided since the arm last changed
        self._frob = np.zeros(k)  # ||L_k||_F

    def _blocks(self) -> list[tuple[int, int]]:
        return list(zip(self.edges[:-1].tolist(), self.edges[1:].tolist(), strict=True))

    @staticmethod
    def fingerprint(a_inv: np.ndarray) -> np.ndarray:
        """(K, 2D) each arm's diagonal and last row: any rank-n update or downdate changes them."""
        return np.concatenate([np.diagonal(a_inv, axis1=1, axis2=2), a_inv[:, -1, :]], axis=1)

    def _refactor(self, a_inv: np.ndarray, arm: int, fp: np.ndarray) -> None:
        self._factor_fp[arm] = fp
        try:
            chol = np.linalg.cholesky(a_inv[arm])
        except np.linalg.LinAlgError:  # rounding made A^{-1} indefinite: this arm stays on the dense formula
            self._factor_ok[arm] = False
            return
        self._factor_ok[arm] = True
        self._frob[arm] = math.sqrt(float(np.einsum("ij,ij->", chol, chol)))
        for j, (c0, c1) in enumerate(self._blocks()):
            cols = slice(arm * (c1 - c0), (arm + 1) * (c1 - c0))
            self._f64[j][:, cols] = chol[c0:, c0:c1]
            self._f32[j][:, cols] = chol[c0:, c0:c1]

    def widths(
        self, x: np.ndarray, a_inv: np.ndarray, *, float32: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior widths of contexts ``x`` (B, D) (bias feature included) under inverses ``a_inv`` (K, D, D).

        Returns:
            ``(w, err)``, each (B, K): the widths and a bound on their error, ``|w - sqrt(x^T A_k^{-1} x)| <=
            err`` (float32; about 1e-5 relative) or the float64 rounding (``err`` 0; ~1e-15 relative).
        """
        from router_rl.policies.ridge import posterior_width

        x = np.asarray(x, dtype=np.float64)
        k, d = a_inv.shape[0], a_inv.shape[1]
        if self._shape != (k, d):
            self._reset(k, d)
        b = x.shape[0]
        fp = self.fingerprint(a_inv)
        changed = ~(fp == self._seen_fp).all(axis=1)
        self._seen_fp[changed], self._pending[changed] = fp[changed], 0
        stale = ~(fp == self._factor_fp).all(axis=1)
        self._pending[stale] += b
        limit = d // 2 if self.refactor_rows is None else self.refactor_rows
        for arm in np.flatnonzero(stale & (self._pending >= limit)):
            self._refactor(a_inv, int(arm), fp[arm])
        dense = ~(fp == self._factor_fp).all(axis=1) | ~self._factor_ok
        if dense.sum() >= 0.45 * k:  # the blocks' GEMMs (all arms, ~0.55 of dense) would not pay: all dense
            return posterior_width(x, a_inv), np.zeros((b, k))
        xs = x.astype(np.float32) if float32 else x
        sq = np.zeros((b, k))
        for (c0, c1), f in zip(self._blocks(), self._f32 if float32 else self._f64, strict=True):
            y = (xs[:, c0:] @ f).reshape(b, k, c1 - c0)  # (B, K, bs): block [c0, c1) of L_k^T x
            sq += np.einsum("bki,bki->bk", y, y)
        w = np.sqrt(sq)
        err = np.zeros((b, k))
        if float32:
            norm = np.linalg.norm(x, axis=1)[:, None]
            bs = int(np.diff(self.edges).max())
            lin = (2 * _U32 + _gamma(d, _U32)) * (1 + _U32) ** 2 + math.sqrt(_gamma(d + 1, _U64))
            err = 2.0 * (lin * norm * self._frob[None, :] + _gamma(bs + 1, _U32) * w) + 1e-12
        for arm in np.flatnonzero(dense):
            w[:, arm] = posterior_width(x, a_inv[arm : arm + 1])[:, 0]
            err[:, arm] = 0.0
        return w, err


def certified_greedy(
    mean: np.ndarray,
    bonus: float,
    w: np.ndarray,
    err: np.ndarray,
    exact: Callable[[np.ndarray], np.ndarray],
    *,
    slack: float = 1e-9,
) -> np.ndarray:
    """Scores ``mean + bonus * w`` whose argmax per row equals that of the exact scores.

    Rows whose best arm the error bounds certify (its lower bound beats every other arm's upper bound by
    ``slack``) keep the approximate scores; the others get ``exact(rows)`` ((n, K) exact widths of those rows).
    So ``greedy_probs`` of the result equals ``greedy_probs`` of the exact scores (ties included: tied arms
    are never certified apart).
    """
    s = mean + bonus * w
    rows = np.arange(len(s))
    best = s.argmax(axis=1)
    upper = s + bonus * err
    upper[rows, best] = -np.inf
    unsure = upper.max(axis=1) + slack >= s[rows, best] - bonus * err[rows, best]
    if unsure.any():
        s[unsure] = mean[unsure] + bonus * exact(unsure)
    return s
