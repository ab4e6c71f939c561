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
  Until then a changed arm's widths come from its dense inverse: in float32 with error bounds for float32
  callers (half the float64 cost; a training loop that updates every batch pays no factorisations), else the
  float64 formula.

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
from concurrent.futures import ThreadPoolExecutor

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
        threads: threads sharing a batch's float32 widths (the block products split into groups of equal
            work); 1 = the calling thread only. Give each thread a core of its own and keep BLAS at one thread.
    """

    def __init__(self, block: int = 48, refactor_rows: int | None = None, threads: int = 1) -> None:
        if int(threads) < 1:
            raise ValueError(f"WidthCache: threads must be >= 1, got {threads}")
        self.block = int(block)
        self.refactor_rows = refactor_rows
        self.threads = int(threads)
        self._pool: ThreadPoolExecutor | None = None
        self._shape: tuple[int, int] | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pool"] = None  # threads do not pickle; a copy starts its own pool when it needs one
        return state

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
        self._m32: np.ndarray | None = (
            None  # float32 copies of the dense inverses (stale arms, float32 callers)
        )
        self._m32_fp = np.full((k, 2 * d), np.nan)
        self._mfrob = np.zeros(k)  # ||A_k^{-1}||_F

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
            dense[:] = True
        w, err = np.zeros((b, k)), np.zeros((b, k))
        if not dense.all():
            w, err = self._factored(x, float32)
        arms = np.flatnonzero(dense)
        if float32:
            w[:, arms], err[:, arms] = self._dense32(x, a_inv, fp, arms)
        elif len(arms) == k:
            w = posterior_width(x, a_inv)
        else:
            for arm in arms:
                w[:, arm] = posterior_width(x, a_inv[arm : arm + 1])[:, 0]
        return w, err

    def _factored(self, x: np.ndarray, float32: bool) -> tuple[np.ndarray, np.ndarray]:
        """Widths of every arm from the cached factors (only the fresh arms' are meaningful)."""
        (b, d), k = x.shape, self._shape[0]
        xs = x.astype(np.float32) if float32 else x
        blocks = list(zip(self._blocks(), self._f32 if float32 else self._f64, strict=True))
        if float32 and self.threads > 1 and b >= 16:
            # the blocks split into groups of equal work, one per thread (numpy's GEMMs release the GIL).
            # Only on the float32 path: its error bound does not depend on the order of the blocks' sums
            # (the float64 path keeps its exact summation order, hence its exact values)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="router-rl-widths")
            groups = self._groups()
            futures = [self._pool.submit(_sum_squares, xs, [blocks[j] for j in g], k) for g in groups[1:]]
            sq = _sum_squares(xs, [blocks[j] for j in groups[0]], k)
            for future in futures:
                sq += future.result()
        else:
            sq = _sum_squares(xs, blocks, k)
        w = np.sqrt(sq)
        if not float32:
            return w, np.zeros((b, k))
        norm = np.linalg.norm(x, axis=1)[:, None]
        bs = int(np.diff(self.edges).max())
        lin = (2 * _U32 + _gamma(d, _U32)) * (1 + _U32) ** 2 + math.sqrt(_gamma(d + 1, _U64))
        return w, 2.0 * (lin * norm * self._frob[None, :] + _gamma(bs + 1, _U32) * w) + 1e-12

    def _groups(self) -> list[list[int]]:
        """Block indices in ``threads`` groups of near-equal multiply-adds (block j costs (D - c0) x bs)."""
        cost = [(self.edges[-1] - c0) * (c1 - c0) for c0, c1 in self._blocks()]
        groups: list[list[int]] = [[] for _ in range(min(self.threads, len(cost)))]
        load = [0] * len(groups)
        for j in sorted(range(len(cost)), key=lambda j: -cost[j]):  # largest first, to the lightest group
            g = load.index(min(load))
            groups[g].append(j)
            load[g] += cost[j]
        return groups

    def _dense32(
        self, x: np.ndarray, a_inv: np.ndarray, fp: np.ndarray, arms: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B, n) widths of ``arms`` from float32 copies of their dense inverses, with error bounds.

        ``q = x^T M x`` in float32 (M and x rounded, a GEMM and a dot of D terms) is within
        ``E = (2 gamma_D + 4 u)(1 + u)^3 |x|^T |M| |x| <= (...) ||M||_F ||x||^2`` of the exact value (plus the
        float64 formula's own ``gamma_D^(64)`` share), so ``w`` lies in ``[sqrt(max(q - E, 0)), sqrt(q + E)]``.
        """
        (b, d), n = x.shape, len(arms)
        if not n:
            return np.zeros((b, 0)), np.zeros((b, 0))
        if self._m32 is None:
            self._m32 = np.zeros(a_inv.shape, dtype=np.float32)
        for arm in arms[~(fp[arms] == self._m32_fp[arms]).all(axis=1)]:
            self._m32[arm] = a_inv[arm]
            self._m32_fp[arm] = fp[arm]
            self._mfrob[arm] = math.sqrt(float(np.einsum("ij,ij->", a_inv[arm], a_inv[arm])))
        x32 = x.astype(np.float32)
        m = self._m32 if n == self._shape[0] else self._m32[arms]
        q = np.einsum("kbj,bj->bk", x32[None] @ m, x32).astype(np.float64)  # (B, n)
        rel = (2 * _gamma(d, _U32) + 4 * _U32) * (1 + _U32) ** 3 + _gamma(d, _U64)
        bound = 2.0 * rel * self._mfrob[arms][None, :] * np.einsum("bi,bi->b", x, x)[:, None] + 1e-300
        w = np.sqrt(np.maximum(q, 0.0))
        lo, hi = np.sqrt(np.maximum(q - bound, 0.0)), np.sqrt(np.maximum(q, 0.0) + bound)
        return w, np.maximum(w - lo, hi - w) + 1e-12


def _sum_squares(xs: np.ndarray, blocks: list[tuple[tuple[int, int], np.ndarray]], k: int) -> np.ndarray:
    """(B, K) float64 sum over ``blocks`` of ``||block [c0, c1) of L_k^T x||^2``."""
    b = xs.shape[0]
    sq = np.zeros((b, k))
    for (c0, c1), f in blocks:
        y = (xs[:, c0:] @ f).reshape(b, k, c1 - c0)  # (B, K, bs): block [c0, c1) of L_k^T x
        sq += np.einsum("bki,bki->bk", y, y)
    return sq


def certified_greedy(
    mean: np.ndarray,
    bonus: float,
    w: np.ndarray,
    err: np.ndarray,
    exact: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    slack: float = 1e-9,
) -> np.ndarray:
    """Scores ``mean + bonus * w`` whose argmax per row equals that of the exact scores.

    Each row's best arm by the approximate scores has the lower bound ``s - bonus * err``. Arms whose upper
    bound ``s + bonus * err`` falls below it by ``slack`` cannot win (nor tie); where any other arm can, the
    contenders (the best arm included) get exact widths ``exact(rows, arms)`` ((n,) for n (row, arm) pairs).
    So ``greedy_probs`` of the result equals ``greedy_probs`` of the exact scores (ties included: tied arms
    are never certified apart), at the cost of a few exact widths.
    """
    s = mean + bonus * w
    rows = np.arange(len(s))
    best = s.argmax(axis=1)
    lower = s[rows, best] - bonus * err[rows, best]
    contender = s + bonus * err + slack >= lower[:, None]
    unsure = contender.sum(axis=1) > 1
    if unsure.any():
        r, a = np.nonzero(contender & unsure[:, None])
        s[r, a] = mean[r, a] + bonus * exact(r, a)
    return s


def pair_widths(x: np.ndarray, a_inv: np.ndarray, rows: np.ndarray, arms: np.ndarray) -> np.ndarray:
    """(n,) ``sqrt(x_r^T A_a^{-1} x_r)`` in float64 for the (row, arm) pairs ``rows``, ``arms``: the formula of
    :func:`router_rl.policies.ridge.posterior_width`, one GEMM per arm (each inverse is read once)."""
    out = np.empty(len(rows))
    for arm in np.unique(arms):
        idx = np.flatnonzero(arms == arm)
        xr = x[rows[idx]]
        out[idx] = np.sqrt(np.maximum(np.einsum("rj,rj->r", xr @ a_inv[arm], xr), 0.0))
    return out
