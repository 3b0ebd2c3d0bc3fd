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

import warnings

import numpy as np

from kisstore.analysis.stats import QUANTILES, STAT_NAMES

DEFAULT_N_BOOT = 200
DEFAULT_CONFIDENCE = 0.95
METHOD = ("percentile bootstrap over items: N items drawn with replacement, the statistics of the "
          "resampled matrix's off-diagonal entries, pairs of two copies of one item left out")
_BLOCK = 32  # replicates at a time (bounds memory: _BLOCK × pairs float64)


def draw_counts(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_items) int64: how often each item is drawn in each replicate."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_items, size=(n_boot, n_items))
    out = np.zeros((n_boot, n_items), dtype=np.int64)
    np.add.at(out, (np.repeat(np.arange(n_boot), n_items), idx.ravel()), 1)
    return out


def weighted_describe(sorted_values: np.ndarray, weights: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """STAT_NAMES of each row of integer ``weights`` (B, E) over ``sorted_values`` (E,), ascending.

    Equals ``stats.describe`` of ``np.repeat(sorted_values, w)`` for each row w (to rounding);
    ``shift`` (e.g. the unweighted mean) only improves the moments' rounding."""
    v = np.asarray(sorted_values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    out = np.full((w.shape[0], len(STAT_NAMES)), np.nan)
    total = w.sum(axis=1)
    y = v - shift
    powers = np.stack([y, y * y, y ** 3, y ** 4], axis=1)  # (E, 4)
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = (w @ powers) / total[:, None]  # E[y^k], k = 1..4
        mu = raw[:, 0]
        m2 = raw[:, 1] - mu ** 2
        m3 = raw[:, 2] - 3 * mu * raw[:, 1] + 2 * mu ** 3
        m4 = raw[:, 3] - 4 * mu * raw[:, 2] + 6 * mu ** 2 * raw[:, 1] - 3 * mu ** 4
        m2 = np.maximum(m2, 0.0)
        out[:, 0] = mu + shift
        out[:, 1] = np.sqrt(m2)
        out[:, 2] = m4 / m2 ** 2 - 3.0
        out[:, 3] = m3 / m2 ** 1.5
    levels = np.array(list(QUANTILES.values()))
    cum = np.cumsum(w, axis=1)
    for b in range(w.shape[0]):
        n_eff = int(round(total[b]))
        if n_eff == 0:
            out[b] = np.nan
            continue
        h = levels * (n_eff - 1)
        lo = np.floor(h)
        frac = h - lo
        hi = np.minimum(lo + 1, n_eff - 1)
        x_lo = v[np.searchsorted(cum[b], lo, side="right")]
        x_hi = v[np.searchsorted(cum[b], hi, side="right")]
        out[b, 4:] = x_lo + frac * (x_hi - x_lo)
    return out


def replicates(matrix: np.ndarray, counts: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(S, B, len(STAT_NAMES)): each pair set's statistics in each replicate.

    ``matrix`` (N, N), ``counts`` (B, N) from ``draw_counts``, ``masks`` (S, N, N) bool
    off-diagonal pair sets (``pairs.pair_set_masks``)."""
    m = np.asarray(matrix, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    out = np.full((masks.shape[0], counts.shape[0], len(STAT_NAMES)), np.nan)
    for s, mask in enumerate(masks):
        rows, cols = np.nonzero(mask & np.isfinite(m))
        if rows.size == 0:
            continue
        values = m[rows, cols]
        order = np.argsort(values, kind="stable")
        v, r, c = values[order], rows[order], cols[order]
        shift = float(v.mean())
        for start in range(0, counts.shape[0], _BLOCK):
            w = counts[start:start + _BLOCK]
            out[s, start:start + _BLOCK] = weighted_describe(v, w[:, r] * w[:, c], shift)
    return out


def interval(reps: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> np.ndarray:
    """Percentile interval over the replicate axis (−2): (..., stat, 2) with (low, high)."""
    a = (1.0 - confidence) / 2.0
    r = np.asarray(reps, dtype=np.float64)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: an empty pair set
        low = np.nanquantile(r, a, axis=-2)
        high = np.nanquantile(r, 1.0 - a, axis=-2)
    return np.stack([low, high], axis=-1)


def matrix_intervals(matrix: np.ndarray, counts: np.ndarray, masks: np.ndarray,
                     confidence: float = DEFAULT_CONFIDENCE) -> np.ndarray:
    """(S, len(STAT_NAMES), 2): each pair set's percentile interval (see the module's docstring)."""
    return interval(replicates(matrix, counts, masks), confidence)
