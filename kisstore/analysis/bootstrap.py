"""Bootstrap confidence intervals over items for the off-diagonal statistics: pure numpy.

A replicate draws N items with replacement (``numpy.random.default_rng(seed).integers(0, N,
size=(n_boot, N))``, the same draws for every layer, quantity and pair set) and recomputes the
statistics over the off-diagonal entries of the resampled N×N sub-matrix ``M[b][:, b]``.
A pair of two copies of the same item is that item's diagonal entry (P = 1, cosine 1): it is no
interference between two facts, so it is left out; every other pair of copies counts, so the
pair (i, j) of distinct items weighs ``w_i·w_j`` (w: how often each item was drawn). Each
replicate is thus a weighted version of the data and is computed from the sorted entries and
these weights without building the sub-matrix: moments (mean, std, excess kurtosis, skewness
as scipy computes them on the expanded replicate) from weighted power sums, quantiles exactly
as ``numpy.quantile`` (linear) would give on the expanded replicate. The interval is the
percentile interval of the replicates (NaN replicates, e.g. a pair set with no pair drawn,
are left out).
"""

from __future__ import annotations

import numpy as np

from kisstore.analysis.stats import QUANTILES, STAT_NAMES

DEFAULT_N_BOOT = 200
DEFAULT_CONFIDENCE = 0.95
METHOD = ("percentile bootstrap over items: N items drawn with replacement, the statistics of the "
          "resampled matrix's off-diagonal entries, pairs of two copies of one item left out")
_BLOCK_ENTRIES = 4_000_000  # replicates × pairs handled at a time (bounds memory to ~50 MB)


def draw_counts(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_items) int64: how often each item is drawn in each replicate."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_items, size=(n_boot, n_items))
    out = np.zeros((n_boot, n_items), dtype=np.int64)
    np.add.at(out, (np.repeat(np.arange(n_boot), n_items), idx.ravel()), 1)
    return out


def _moments(total: np.ndarray, raw: np.ndarray, shift: float) -> np.ndarray:
    """(B, 4): mean, population std, excess kurtosis, skewness from the weighted power sums
    ``raw`` (B, 4) of ``y = x − shift`` (k = 1..4) and the total weights ``total`` (B,)."""
    out = np.full((raw.shape[0], 4), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        e = raw / total[:, None]  # E[y^k]
        mu = e[:, 0]
        m2 = np.maximum(e[:, 1] - mu ** 2, 0.0)
        m3 = e[:, 2] - 3 * mu * e[:, 1] + 2 * mu ** 3
        m4 = e[:, 3] - 4 * mu * e[:, 2] + 6 * mu ** 2 * e[:, 1] - 3 * mu ** 4
        out[:, 0] = mu + shift
        out[:, 1] = np.sqrt(m2)
        out[:, 2] = m4 / m2 ** 2 - 3.0
        out[:, 3] = m3 / m2 ** 1.5
        flat = m2 <= (np.finfo(np.float64).resolution * out[:, 0]) ** 2  # all equal: as stats.describe
        out[flat, 2:] = np.nan
    return out


def _quantiles(sorted_values: np.ndarray, cum: np.ndarray) -> np.ndarray:
    """(B, len(QUANTILES)): ``numpy.quantile`` (linear) of each expanded replicate, from the
    cumulative integer weights ``cum`` (B, E) of the ascending ``sorted_values`` (E,)."""
    levels = np.array(list(QUANTILES.values()))
    out = np.full((cum.shape[0], levels.size), np.nan)
    for b in range(cum.shape[0]):
        n_eff = int(cum[b, -1])
        if n_eff == 0:
            continue
        h = levels * (n_eff - 1)
        lo = np.floor(h)
        hi = np.minimum(lo + 1, n_eff - 1)
        x_lo = sorted_values[np.searchsorted(cum[b], lo, side="right")]
        x_hi = sorted_values[np.searchsorted(cum[b], hi, side="right")]
        out[b] = x_lo + (h - lo) * (x_hi - x_lo)
    return out


def weighted_describe(sorted_values: np.ndarray, weights: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """STAT_NAMES of each row of integer ``weights`` (B, E) over ``sorted_values`` (E,), ascending.

    Equals ``stats.describe`` of ``np.repeat(sorted_values, w)`` for each row w (to rounding);
    ``shift`` (e.g. the unweighted mean) only improves the moments' rounding."""
    v = np.asarray(sorted_values, dtype=np.float64)
    w = np.asarray(weights)
    y = v - shift
    raw = w.astype(np.float64) @ np.stack([y, y * y, y ** 3, y ** 4], axis=1)
    return np.concatenate([_moments(w.sum(axis=1).astype(np.float64), raw, shift),
                           _quantiles(v, np.cumsum(w, axis=1))], axis=1)


def replicates(matrix: np.ndarray, counts: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(S, B, len(STAT_NAMES)): each pair set's statistics in each replicate.

    ``matrix`` (N, N), ``counts`` (B, N) from ``draw_counts``, ``masks`` (S, N, N) bool
    off-diagonal pair sets (``pairs.pair_set_masks``). The moments come from ``w X w`` products
    (X: the set's entries raised to the powers 1..4), the quantiles from the set's sorted
    entries and their pair weights ``w_i w_j`` (exact integers)."""
    m = np.asarray(matrix, dtype=np.float64)
    counts = np.asarray(counts)
    n_boot = counts.shape[0]
    w = counts.astype(np.float64)
    # pair weights w_i·w_j in the narrowest exact integer type (int16 while max w² fits: ~6× faster
    # than int32 here, the quantiles' gathers being memory-bound); their running sums reach N²
    wi = counts.astype(np.int16 if int(counts.max(initial=0)) <= 181 else np.int64)
    cum_dtype = np.int32 if m.shape[0] <= 46000 else np.int64
    out = np.full((masks.shape[0], n_boot, len(STAT_NAMES)), np.nan)
    for s, mask in enumerate(masks):
        mask = mask & np.isfinite(m)
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            continue
        values = m[rows, cols]
        shift = float(values.mean())
        y = np.where(mask, m - shift, 0.0)
        raw = np.empty((n_boot, 4))
        power = np.ones_like(y)
        total = np.einsum("bi,ij,bj->b", w, mask.astype(np.float64), w)
        for k in range(4):
            power = power * y
            raw[:, k] = np.einsum("bj,bj->b", w @ power, w)
        out[s, :, :4] = _moments(total, raw, shift)
        order = np.argsort(values, kind="stable")
        v, r, c = values[order], rows[order], cols[order]
        block = max(1, min(n_boot, _BLOCK_ENTRIES // max(v.size, 1)))
        for start in range(0, n_boot, block):
            wb = wi[start:start + block]
            pw = np.take(wb, r, axis=1) * np.take(wb, c, axis=1)  # (block, E) pair weights
            out[s, start:start + block, 4:] = _quantiles(v, np.cumsum(pw, axis=1, dtype=cum_dtype))
    return out


def interval(reps: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> np.ndarray:
    """Percentile interval over the replicate axis (−2): (..., stat, 2) with (low, high), each
    ``numpy.quantile`` (linear) of the finite replicates; NaN where none is finite."""
    r = np.sort(np.asarray(reps, dtype=np.float64), axis=-2)  # NaN sort last
    count = np.isfinite(r).sum(axis=-2, keepdims=True)
    bounds = []
    for level in ((1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0):
        h = level * np.maximum(count - 1, 0)
        lo = np.floor(h).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
        x_lo = np.take_along_axis(r, lo, axis=-2)
        x_hi = np.take_along_axis(r, hi, axis=-2)
        with np.errstate(invalid="ignore"):
            q = x_lo + (h - lo) * (x_hi - x_lo)
        bounds.append(np.where(count > 0, q, np.nan)[..., 0, :])
    return np.stack(bounds, axis=-1)


def matrix_intervals(matrix: np.ndarray, counts: np.ndarray, masks: np.ndarray,
                     confidence: float = DEFAULT_CONFIDENCE) -> np.ndarray:
    """(S, len(STAT_NAMES), 2): each pair set's percentile interval (see the module's docstring)."""
    return interval(replicates(matrix, counts, masks), confidence)


def convergence_intervals(matrix: np.ndarray, sizes, n_boot: int, seed: int,
                          confidence: float = DEFAULT_CONFIDENCE) -> np.ndarray:
    """(len(sizes), len(STAT_NAMES), 2): for each n in ``sizes``, the percentile interval of the
    statistics of the first n items' block, its n items resampled (``draw_counts(n, n_boot, seed)``):
    the uncertainty of each point of the convergence curve."""
    m = np.asarray(matrix, dtype=np.float64)
    out = []
    for n in sizes:
        n = int(n)
        off = ~np.eye(n, dtype=bool)[None]
        out.append(matrix_intervals(m[:n, :n], draw_counts(n, n_boot, seed), off, confidence)[0])
    return np.stack(out)
