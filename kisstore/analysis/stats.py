"""Distribution statistics of a pairwise matrix: pure numpy/scipy functions.

The paper's statistics are taken over the N(N−1) off-diagonal entries of an N×N matrix
(the diagonal of P is 1 by construction and would only add a spike).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.stats

QUANTILES = {"min": 0.0, "q01": 0.01, "q05": 0.05, "q25": 0.25, "median": 0.5,
             "q75": 0.75, "q95": 0.95, "q99": 0.99, "max": 1.0}
STAT_NAMES = ("mean", "std", "excess_kurtosis", "skewness", *QUANTILES)
LEGACY_STAT_NAMES = {"kurtosis": "excess_kurtosis"}  # kisstore 0.1 called scipy's Fisher kurtosis "kurtosis"
DEFAULT_KDE_GRID = np.linspace(-1.0, 1.0, 401)  # the fixed grid of kisstore 0.1 (``analyze(kde_grid=...)``)
KDE_POINTS = 801
KDE_TAIL = 0.001  # beyond the 0.1 % / 99.9 % quantiles the grid reaches one central width further
_KDE_CUTOFF = 9.0  # kernel contributions beyond 9 bandwidths are < 3e-18 of the peak
_KDE_TERMS = 20  # Taylor terms of exp(s·u), |s·u| < 1.2: remainder < 1e-17


def off_diagonal(matrix: np.ndarray, n: int | None = None) -> np.ndarray:
    """The off-diagonal entries of the leading n×n block (all of it by default), row by row."""
    m = np.asarray(matrix)
    if n is not None:
        m = m[:n, :n]
    return m[~np.eye(m.shape[0], dtype=bool)]


def describe(values: np.ndarray) -> np.ndarray:
    """Statistics in STAT_NAMES order: mean, population std (ddof=0), excess (Fisher)
    kurtosis and skewness exactly as ``scipy.stats.kurtosis``/``skew`` (bias=True; NaN when the
    values are all equal to rounding, where scipy warns of catastrophic cancellation), quantiles."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return np.full(len(STAT_NAMES), np.nan)
    q = np.quantile(v, list(QUANTILES.values()))
    mean = v.mean()
    if v.var() <= (np.finfo(np.float64).resolution * mean) ** 2:  # (nearly) all equal: shape undefined
        return np.concatenate([[mean, v.std(), np.nan, np.nan], q])  # (scipy would warn, per layer)
    return np.concatenate([[mean, v.std(), scipy.stats.kurtosis(v), scipy.stats.skew(v)], q])


def describe_matrix(matrix: np.ndarray) -> np.ndarray:
    """``describe`` of a matrix's off-diagonal entries."""
    return describe(off_diagonal(matrix))


def describe_sets(matrix: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(S, len(STAT_NAMES)): ``describe`` of the entries of each (N, N) bool mask (a pair set)."""
    m = np.asarray(matrix)
    return np.stack([describe(m[mask]) for mask in np.asarray(masks, dtype=bool)])


def canonical_stat_names(names) -> list[str]:
    """Stat labels as this version names them (0.1's ``kurtosis`` → ``excess_kurtosis``)."""
    return [LEGACY_STAT_NAMES.get(str(s), str(s)) for s in names]


def kde_span(values: np.ndarray, n_points: int = KDE_POINTS) -> np.ndarray:
    """A grid for ``values``' KDE that covers their tails: from min to max, padded by three
    Scott bandwidths, except that it reaches at most one central width (the 0.1 %–99.9 %
    quantile range) beyond those quantiles, so a handful of far outliers cannot stretch the
    grid until the bulk of the density falls between two points (they are counted in the
    share outside instead)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2:
        return np.full(n_points, np.nan)
    q_lo, q_hi = np.quantile(v, [KDE_TAIL, 1.0 - KDE_TAIL])
    width = q_hi - q_lo
    h = scott_bandwidth(v)
    lo = max(float(v.min()), q_lo - width) - 3 * h
    hi = min(float(v.max()), q_hi + width) + 3 * h
    if not hi > lo:
        lo, hi = float(v.min()) - 1.0, float(v.max()) + 1.0
    return np.linspace(lo, hi, n_points)


def kde_outside(values: np.ndarray, grid: np.ndarray) -> float:
    """Share of the finite ``values`` outside [grid[0], grid[-1]]."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    g = np.asarray(grid, dtype=np.float64)
    if v.size == 0 or not np.isfinite(g[[0, -1]]).all():
        return float("nan")
    return float(np.mean((v < g[0]) | (v > g[-1])))


def kde_adaptive(matrix: np.ndarray, grid: np.ndarray | None = None, n_points: int = KDE_POINTS) -> np.ndarray:
    """(2·G + 1,): the KDE of a matrix's off-diagonal entries, its grid (``kde_span`` unless
    ``grid`` is given) and the share of entries outside the grid, concatenated."""
    v = off_diagonal(matrix)
    g = kde_span(v, n_points) if grid is None else np.asarray(grid, dtype=np.float64)
    dens = kde(v, g) if np.isfinite(g).all() else np.full(g.shape, np.nan)
    return np.concatenate([dens, g, [kde_outside(v, g)]])


def scott_bandwidth(values: np.ndarray) -> float:
    """Kernel standard deviation of ``scipy.stats.gaussian_kde`` with Scott's rule (1-D)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return float(np.std(v, ddof=1) * v.size ** (-1.0 / 5.0))


def kde(values: np.ndarray, grid: np.ndarray = DEFAULT_KDE_GRID) -> np.ndarray:
    """Gaussian KDE (Scott's rule) of ``values`` evaluated on ``grid``.

    Equals ``scipy.stats.gaussian_kde(values)(grid)`` to ~1e-14 of the peak (non-finite
    values are dropped) at a fraction of the cost: values are binned (bin width h/4) and
    each bin's kernels are summed through a Taylor expansion of ``exp(s·u)``, exact to
    rounding because |s·u| < 1.2 (a one-dimensional fast Gauss transform).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    g = np.asarray(grid, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return np.full(g.shape, np.nan)
    h = scott_bandwidth(v)
    if not h > 0:
        return np.full(g.shape, np.nan)
    delta = h / 4
    bins, inverse = np.unique(np.floor((v - v.min()) / delta).astype(np.int64), return_inverse=True)
    centers = v.min() + (bins + 0.5) * delta
    u = (v - centers[inverse]) / h  # |u| <= 1/8
    w = np.exp(-0.5 * u * u)
    moments = np.empty((bins.size, _KDE_TERMS))
    power = np.ones_like(u)
    for n in range(_KDE_TERMS):
        moments[:, n] = np.bincount(inverse, weights=w * power, minlength=bins.size) / math.factorial(n)
        power *= u
    # (bin, grid point) pairs within the cutoff
    lo = np.searchsorted(g, centers - (_KDE_CUTOFF + 0.125) * h, side="left")
    hi = np.searchsorted(g, centers + (_KDE_CUTOFF + 0.125) * h, side="right")
    counts = hi - lo
    b = np.repeat(np.arange(bins.size), counts)
    j = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(lo, counts)
    sc = (g[j] - centers[b]) / h
    acc = moments[b, _KDE_TERMS - 1]
    for n in range(_KDE_TERMS - 2, -1, -1):
        acc = acc * sc + moments[b, n]
    out = np.bincount(j, weights=np.exp(-0.5 * sc * sc) * acc, minlength=g.size)
    return out / (v.size * h * math.sqrt(2 * math.pi))


def kde_matrix(matrix: np.ndarray, grid: np.ndarray = DEFAULT_KDE_GRID) -> np.ndarray:
    """``kde`` of a matrix's off-diagonal entries."""
    return kde(off_diagonal(matrix), grid)


def convergence_sizes(n_items: int, start: int = 16) -> list[int]:
    """n = 16, 32, 64, … (doubling) below N, then N itself."""
    sizes = []
    n = start
    while n < n_items:
        sizes.append(n)
        n *= 2
    return [*sizes, n_items]


def convergence(matrix: np.ndarray, sizes: list[int] | np.ndarray) -> np.ndarray:
    """Statistics (rows: sizes, columns: STAT_NAMES) of the first n items' off-diagonal block.

    P restricted to the first n items is the leading n×n block of P (each row is
    normalised by its own diagonal), so this is the paper's Appendix C experiment.
    """
    return np.stack([describe(off_diagonal(matrix, int(n))) for n in sizes])
