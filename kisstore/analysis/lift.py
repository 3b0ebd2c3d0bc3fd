"""Lift the pure per-layer functions onto labeled, Dask-lazy arrays (one chunk per layer).

Every function here takes and returns ``xr.DataArray``s whose leading ``layer`` dimension
is chunked one layer per block; the numeric work stays in ``geometry`` and ``stats``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import xarray as xr

from kisstore.analysis import geometry, stats

try:  # one BLAS thread per layer task: Dask already runs layers in parallel, and
    # OpenBLAS threads on top of Dask threads oversubscribe the cores (Cholesky 10× slower)
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    def threadpool_limits(*_, **__):
        return contextlib.nullcontext()

ITEM, ITEM_ = "item", "item_"
PAIR = [ITEM, ITEM_]


def _each_matrix(func: Callable, m: np.ndarray) -> np.ndarray:
    """Apply ``func`` to every trailing (N, N) matrix of a block of any leading shape."""
    lead = m.shape[:-2]
    flat = m.reshape(-1, *m.shape[-2:])
    out = np.stack([func(x) for x in flat]) if flat.shape[0] else np.empty((0,))
    return out.reshape(*lead, *out.shape[1:])


def _gram_block(keys, cov, layer, n_tokens, *, ridge: float, max_cond: float) -> tuple[np.ndarray, np.ndarray]:
    with threadpool_limits(limits=1, user_api="blas"):
        pairs = [geometry.gram_and_cond(k, c, ridge, max_cond=max_cond, layer=int(lay), n_tokens=int(nt))
                 for k, c, lay, nt in zip(keys, cov, np.atleast_1d(layer), np.atleast_1d(n_tokens), strict=True)]
    return np.stack([g for g, _ in pairs]), np.array([c for _, c in pairs], dtype=np.float64)


def gram(keys: xr.DataArray, cov: xr.DataArray, n_tokens: xr.DataArray, *,
         ridge: float = 0.0, max_cond: float = geometry.DEFAULT_MAX_COND) -> tuple[xr.DataArray, xr.DataArray]:
    """Whitened gram ``G`` (layer, item, item_) from keys (layer, item, d_ff) and cov (layer, d_ff, d_ff_),
    and the condition number (layer,) of the covariance it whitened with (one factorisation for both)."""
    keys = keys.chunk({"layer": 1, ITEM: -1, "d_ff": -1})
    cov = cov.chunk({"layer": 1, "d_ff": -1, "d_ff_": -1})
    n_tokens = n_tokens.chunk({"layer": 1})
    layer = keys["layer"].chunk({"layer": 1})
    g, cond = xr.apply_ufunc(
        _gram_block, keys, cov, layer, n_tokens,
        input_core_dims=[[ITEM, "d_ff"], ["d_ff", "d_ff_"], [], []],
        output_core_dims=[[ITEM, ITEM_], []],
        dask="parallelized", output_dtypes=[np.float64, np.float64],
        dask_gufunc_kwargs={"output_sizes": {ITEM: keys.sizes[ITEM], ITEM_: keys.sizes[ITEM]}},
        kwargs={"ridge": ridge, "max_cond": max_cond},
    )
    return g.assign_coords({ITEM: keys[ITEM].values, ITEM_: keys[ITEM].values}), cond


def pairwise(func: Callable[[np.ndarray], np.ndarray], matrix: xr.DataArray) -> xr.DataArray:
    """Map an elementwise or (…, N, N) → (…, N, N) function over a pairwise matrix."""
    return xr.apply_ufunc(func, matrix, dask="parallelized", output_dtypes=[np.float64])


def key_pairs(func: Callable[[np.ndarray], np.ndarray], keys: xr.DataArray) -> xr.DataArray:
    """Map a (…, N, d) → (…, N, N) function of the keys (activation space) per layer."""
    keys = keys.chunk({"layer": 1, ITEM: -1, "d_ff": -1})
    items = keys[ITEM].values
    out = xr.apply_ufunc(
        func, keys.rename({ITEM: "_k"}),
        input_core_dims=[["_k", "d_ff"]], output_core_dims=[PAIR],
        dask="parallelized", output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {ITEM: items.size, ITEM_: items.size}},
    )
    return out.assign_coords({ITEM: items, ITEM_: items})


def convergence(matrices: xr.DataArray, sizes: list[int]) -> xr.DataArray:
    """Statistics of the first n items' block for each n in ``sizes`` → (…, n_items, stat)."""
    return xr.apply_ufunc(
        lambda m: _each_matrix(lambda x: stats.convergence(x, sizes), m),
        matrices, input_core_dims=[PAIR], output_core_dims=[["n_items", "stat"]],
        dask="parallelized", output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"n_items": len(sizes), "stat": len(stats.STAT_NAMES)}},
    ).assign_coords(n_items=np.asarray(sizes, dtype=np.int64), stat=list(stats.STAT_NAMES))


def kde_adaptive(matrices: xr.DataArray, grid: np.ndarray | None = None,
                 n_points: int = stats.KDE_POINTS) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """KDE of each matrix's off-diagonal entries on a grid of its own (``stats.kde_span``) or on
    the fixed ``grid``: (density (…, grid), grid values (…, grid), share outside (…))."""
    g = n_points if grid is None else len(grid)
    both = xr.apply_ufunc(
        lambda m: _each_matrix(lambda x: stats.kde_adaptive(x, grid, n_points), m),
        matrices, input_core_dims=[PAIR], output_core_dims=[["_kde"]],
        dask="parallelized", output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"_kde": 2 * g + 1}},
    )
    # `grid` is positional (kde_x holds each point's value): no coordinate
    dens = both.isel(_kde=slice(0, g)).rename(_kde="grid")
    x = both.isel(_kde=slice(g, 2 * g)).rename(_kde="grid")
    return dens, x, both.isel(_kde=2 * g, drop=True)


LABEL = "_l"


def _label_inputs(labels: list[xr.DataArray]) -> list[xr.DataArray]:
    """Per-item label arrays (item,) as whole-chunk inputs of a per-layer task (read lazily)."""
    out = []
    for lab in labels:
        lab = lab.drop_vars([c for c in lab.coords]).rename({ITEM: LABEL})
        out.append(lab.chunk({LABEL: -1}) if lab.chunks else lab)
    return out


def _flat(labels) -> list[np.ndarray]:
    return [np.asarray(x).reshape(-1) for x in labels]  # the block adds singleton loop axes


def with_labels(func: Callable, matrices: xr.DataArray, labels: list[xr.DataArray], out_dims: list[str],
                out_sizes: dict[str, int], dtype=np.float64) -> xr.DataArray:
    """``func(matrix (N, N), *labels (N,))`` for every matrix, the per-item labels (subject,
    relation, token id) read inside the task, so building the result reads nothing."""
    def block(m, *labs):
        labs = _flat(labs)
        with threadpool_limits(limits=1, user_api="blas"):  # 4× faster than BLAS threads under Dask's
            return _each_matrix(lambda x: func(x, *labs), m)

    ins = _label_inputs(labels)
    return xr.apply_ufunc(
        block, matrices, *ins, input_core_dims=[PAIR] + [[LABEL]] * len(ins), output_core_dims=[out_dims],
        dask="parallelized", output_dtypes=[dtype], dask_gufunc_kwargs={"output_sizes": out_sizes},
    )


def labels_only(func: Callable, labels: list[xr.DataArray], out_dim: str, size: int, dtype) -> xr.DataArray:
    """``func(*labels (N,))`` → (``out_dim``,), lazily."""
    ins = _label_inputs(labels)
    return xr.apply_ufunc(
        lambda *labs: func(*_flat(labs)), *ins, input_core_dims=[[LABEL]] * len(ins), output_core_dims=[[out_dim]],
        dask="parallelized", output_dtypes=[dtype], dask_gufunc_kwargs={"output_sizes": {out_dim: size}},
    )


def cond_2norm(cov: xr.DataArray, ridge: float = 0.0) -> xr.DataArray:
    """Exact 2-norm condition number λ_max/λ_min of C (+ ridge) from its eigenvalues, per layer."""
    def block(c):
        with threadpool_limits(limits=1, user_api="blas"):
            return np.array([geometry.condition_number_2norm(x, ridge) for x in c], dtype=np.float64)

    cov = cov.chunk({"layer": 1, "d_ff": -1, "d_ff_": -1})
    return xr.apply_ufunc(block, cov, input_core_dims=[["d_ff", "d_ff_"]], dask="parallelized",
                          output_dtypes=[np.float64])


def ranked_pairs(matrix: xr.DataArray, k: int, labels: list[xr.DataArray], rank: Callable
                 ) -> tuple[xr.DataArray, ...]:
    """``rank(matrix, *labels)`` → (values, rows, cols, flag per label) for each layer, dims (layer, rank)."""
    n_out = 3 + len(labels)

    def block(m, *labs):
        labs = _flat(labs)
        lead = m.shape[:-2]
        res = [rank(x, *labs) for x in m.reshape(-1, *m.shape[-2:])]
        return tuple(np.stack([r[j] for r in res]).reshape(*lead, k) for j in range(n_out))

    ins = _label_inputs(labels)
    outs = xr.apply_ufunc(
        block, matrix, *ins, input_core_dims=[PAIR] + [[LABEL]] * len(ins), output_core_dims=[["rank"]] * n_out,
        dask="parallelized", output_dtypes=[np.float64, np.int64, np.int64] + [bool] * len(labels),
        dask_gufunc_kwargs={"output_sizes": {"rank": k}},
    )
    return outs  # `rank` is positional (0 = strongest): no coordinate, so no index to store and load


def fact_summary(p: xr.DataArray) -> xr.DataArray:
    """``pairs.fact_summary`` per layer → (layer, summary, item)."""
    from kisstore.analysis import pairs

    return xr.apply_ufunc(
        lambda m: _each_matrix(pairs.fact_summary, m), p.rename({ITEM: "_i", ITEM_: "_j"}),
        input_core_dims=[["_i", "_j"]], output_core_dims=[["summary", ITEM]],
        dask="parallelized", output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"summary": 6, ITEM: p.sizes[ITEM]}},
    ).assign_coords({ITEM: p[ITEM].values})


def top_facts(score: xr.DataArray, k: int, dim: str) -> tuple[xr.DataArray, xr.DataArray]:
    """``pairs.top_facts`` of a (layer, item) score → (values, positions) with dims (layer, ``dim``)."""
    from kisstore.analysis import pairs

    def block(s):
        res = [pairs.top_facts(x, k) for x in s.reshape(-1, s.shape[-1])]
        return tuple(np.stack([r[j] for r in res]).reshape(*s.shape[:-1], k) for j in range(2))

    outs = xr.apply_ufunc(
        block, score.rename({ITEM: "_i"}), input_core_dims=[["_i"]], output_core_dims=[[dim]] * 2,
        dask="parallelized", output_dtypes=[np.float64, np.int64],
        dask_gufunc_kwargs={"output_sizes": {dim: k}},
    )
    return outs  # positional: no coordinate


def take_or(positions: xr.DataArray, values, dim: str, missing) -> xr.DataArray:
    """``values[positions]`` for (…, ``dim``) positions into (item,) values (a numpy array or a
    lazy DataArray, read inside the task); position −1 (no such pair) → ``missing``."""
    if isinstance(values, xr.DataArray):
        (lab,) = _label_inputs([values])
        dtype = values.dtype
    else:
        lab, dtype = xr.DataArray(np.asarray(values), dims=LABEL), np.asarray(values).dtype

    def block(pos, vals):
        vals = np.asarray(vals).reshape(-1)
        out = vals[np.where(pos < 0, 0, pos)]
        return np.where(pos < 0, missing, out).astype(vals.dtype) if (pos < 0).any() else out

    return xr.apply_ufunc(block, positions, lab, input_core_dims=[[], [LABEL]], dask="parallelized",
                          output_dtypes=[dtype])
