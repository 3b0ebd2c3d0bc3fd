"""``analyze``: every derived quantity of every model and layer, as one lazy DataTree."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from kisstore._version import __version__
from kisstore.analysis import geometry, labels, lift, rankings, scaling, stats, subsets
from kisstore.errors import InputError, StoreError
from kisstore.store import layout

QUANTITIES = ("p_matrix", "whitened_cos", "activation_cos", "whitened_angle", "activation_angle")
PROVENANCE = ("model_id", "model_revision", "architecture", "family", "n_params", "n_layers", "d_ff",
              "corpus", "token_position")
DEFAULT_TOP_K = 20


def analyze(
    tree: xr.DataTree,
    models: str | Sequence[str] | None = None,
    items: str = "all",
    n_items: int | None = None,
    layers: str | Sequence[int] | None = None,
    ridge: float = 0.0,
    top_k: int = DEFAULT_TOP_K,
    *,
    kde_grid: np.ndarray | None = None,
    convergence_sizes: Sequence[int] | None = None,
    max_cond: float = geometry.DEFAULT_MAX_COND,
    rank_by: str = "abs",
    exclude_same_subject: bool = False,
    exclude_same_token: bool = False,
    n_boot: int = rankings.bootstrap.DEFAULT_N_BOOT,
    seed: int = 0,
) -> xr.DataTree:
    """Derive the whitened key geometry of each model and layer, lazily.

    Returns a DataTree with ``/analysis/<model>`` (pairwise arrays with dims
    ``(layer, item, item_)``, statistics, KDE, convergence, top pairs) and
    ``/analysis/scaling`` (statistics aligned on ``(model, layer)``). Nothing is
    computed until asked; each layer is one Dask chunk, so selecting a layer costs
    one layer's work. ``items`` is ``all``, ``known`` or ``intersect`` (items every
    complete model knows); ``n_items`` keeps the first N of them; ``ridge`` adds
    ``ridge·mean(diag C)`` to C's diagonal. Top pairs are ranked by |value| (``rank_by="abs"``)
    or signed value, optionally without pairs sharing a subject or a key token; ``n_boot``
    bootstrap replicates over items (0: none, seeded by ``seed``) give every statistic an interval.
    """
    from kisstore.limits import check_ridge

    check_ridge(ridge)
    if int(top_k) < 1:
        raise InputError(f"--top-k must be ≥ 1, got {top_k}")
    if not max_cond > 1:
        raise InputError(f"max_cond must be > 1, got {max_cond}")
    grid = None if kde_grid is None else np.asarray(kde_grid, dtype=np.float64)  # None: a grid per layer and quantity
    ranking = rankings.RankingOptions(top_k=int(top_k), rank_by=rank_by, exclude_same_subject=bool(exclude_same_subject),
                                      exclude_same_token=bool(exclude_same_token), n_boot=int(n_boot), seed=int(seed))
    rankings.check_options(ranking)
    model_ids = subsets.select_models(tree, models)
    if scaling.GROUP in model_ids:
        raise StoreError(f"a model group named {scaling.GROUP!r} clashes with /analysis/{scaling.GROUP}")
    if layout.ITEMS not in tree.children:
        raise StoreError("the store has no /items group (the facts' text): it was not written by extract")
    items_ds = tree[layout.ITEMS].to_dataset()
    _check_unique(items_ds["item"].values, f"/{layout.ITEMS}")
    for m in model_ids:
        _check_unique(tree[f"{layout.MODELS}/{m}"]["item"].values, f"/{layout.MODELS}/{m}")
    per_model = {
        m: analyze_model(tree, m, items_ds, items=items, n_items=n_items, layers=layers, ridge=float(ridge),
                         top_k=int(top_k), grid=grid, sizes=convergence_sizes, max_cond=float(max_cond),
                         ranking=ranking)
        for m in model_ids
    }
    settings = analysis_settings(items, n_items, ridge, top_k, max_cond, convergence_sizes, kde_grid, ranking)
    for ds in per_model.values():
        ds.attrs["settings"] = settings
    nodes: dict[str, xr.Dataset] = {f"{layout.ANALYSIS}/{m}": ds for m, ds in per_model.items()}
    nodes[f"{layout.ANALYSIS}/{scaling.GROUP}"] = scaling.scaling_dataset(per_model)
    out = xr.DataTree.from_dict(nodes)
    out.attrs.update({"kisstore_version": __version__, "models": model_ids})
    return out


def analysis_settings(items: str, n_items: int | None, ridge: float, top_k: int, max_cond: float,
                      convergence_sizes: Sequence[int] | None, kde_grid: np.ndarray | None,
                      ranking: rankings.RankingOptions | None = None) -> dict:
    """The settings that define an analysis (recorded as its ``settings`` attr; a layer-subset
    run merges into a stored analysis only when they are equal). ``None`` means the default."""
    return {
        "items": items,
        "n_items": None if n_items is None else int(n_items),
        "ridge": float(ridge),
        "top_k": int(top_k),
        "max_cond": float(max_cond),
        "convergence_sizes": None if convergence_sizes is None else sorted({int(s) for s in convergence_sizes}),
        "kde_grid": None if kde_grid is None else [float(v) for v in np.asarray(kde_grid, dtype=np.float64)],
        # how the pairs are ranked and the intervals drawn: layers merged into one analysis share them
        **({} if ranking is None else {
            "rank_by": ranking.rank_by, "exclude_same_subject": ranking.exclude_same_subject,
            "exclude_same_token": ranking.exclude_same_token, "bootstrap": ranking.n_boot,
            "bootstrap_seed": ranking.seed}),
    }


MIN_TOKENS_PER_DIM = 10  # below n = 10·d_ff tokens, C's small eigenvalues (and P's spread) are biased


def sample_size_warnings(tree: xr.DataTree, models: Sequence[str] | None = None) -> list[str]:
    """One line per model whose covariance rests on fewer than ``MIN_TOKENS_PER_DIM``·d_ff tokens.

    C is invertible from n > d_ff tokens on, but its smallest eigenvalues are then far too
    small, and whitening amplifies them: with n just above d_ff the spread of P comes out ~25 %
    too wide (a Gaussian check with SmolLM2's layer-29 spectrum); at n/d_ff ≈ 16 it is within ~2 %.
    """
    out = []
    for m in subsets.select_models(tree, models):
        ds = subsets.model_dataset(tree, m)
        n, d = int(ds["n_tokens"].min()), int(ds.sizes["d_ff"])
        if n < MIN_TOKENS_PER_DIM * d:
            out.append(f"warning: {m}: C rests on {n} tokens, {n / d:.1f} per key dimension (d_ff {d}); "
                       f"below {MIN_TOKENS_PER_DIM}·d_ff the whitened statistics are biased (P spreads too "
                       "wide). Extract with more --corpus-tokens for results to compare.")
    return out


def _check_unique(case_ids: np.ndarray, where: str) -> None:
    values, counts = np.unique(case_ids, return_counts=True)
    if (counts > 1).any():
        dup = ", ".join(map(str, values[counts > 1][:5]))
        raise StoreError(f"{where} lists case ids more than once ({dup}): each item needs its own case id; "
                         "the store was not written by kisstore extract, which refuses duplicates")


def analyze_model(
    tree: xr.DataTree,
    model: str,
    items_ds: xr.Dataset,
    *,
    items: str,
    n_items: int | None,
    layers: str | Sequence[int] | None,
    ridge: float,
    top_k: int,
    grid: np.ndarray | None,
    sizes: Sequence[int] | None,
    max_cond: float,
    ranking: rankings.RankingOptions | None = None,
) -> xr.Dataset:
    """The lazy analysis Dataset of one model (see ``analyze``)."""
    ds = subsets.model_dataset(tree, model)
    lay = subsets.select_layers(ds, model, layers)
    case_ids = subsets.select_items(tree, model, items, n_items)
    n = case_ids.size
    sizes = stats.convergence_sizes(n) if sizes is None else sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 2 or sizes[-1] > n:
        raise InputError(f"convergence sizes must lie in 2..{n}, got {sizes}")
    sub = ds[[layout.KEY, "cov", "n_tokens"]].sel(layer=lay, item=case_ids)

    gram, cond = lift.gram(sub[layout.KEY], sub["cov"], sub["n_tokens"], ridge=ridge, max_cond=max_cond)
    p = lift.pairwise(geometry.p_matrix, gram)
    wcos = lift.pairwise(geometry.whitened_cos, gram)
    q = lift.key_pairs(geometry.q_matrix, sub[layout.KEY])
    acos = lift.pairwise(geometry.cosine, q)
    wangle, aangle = lift.pairwise(geometry.angle_deg, wcos), lift.pairwise(geometry.angle_deg, acos)
    quantities = xr.concat([p, wcos, acos, wangle, aangle],
                           dim=pd.Index(np.array(QUANTITIES, dtype=object), name="quantity"))
    quantities = quantities.transpose("layer", "quantity", lift.ITEM, lift.ITEM_)
    _missing_items(case_ids, items_ds)

    kde, kde_x, kde_outside = lift.kde_adaptive(quantities, grid)
    # rankings, pair sets (token, subject, relation), per-fact summaries, bootstrap: kisstore.analysis.rankings
    ranked, ranking_attrs = rankings.ranking_variables(p, wcos, quantities, case_ids, items_ds, ds,
                                                       ranking or rankings.RankingOptions(top_k=top_k), sizes=list(sizes))
    k = ranking_attrs["top_k"]
    out = xr.Dataset(
        {
            "gram": gram,
            "cond": cond,
            "cond_2norm": lift.cond_2norm(sub["cov"], ridge),
            "p_matrix": p,
            "whitened_cos": wcos,
            "whitened_angle": wangle,
            "activation_cos": acos,
            "activation_angle": aangle,
            "q_matrix": q,
            "kde": kde,
            "kde_x": kde_x,
            "kde_outside": kde_outside,
            "convergence": lift.convergence(quantities, list(sizes)).transpose(
                "layer", "n_items", "quantity", "stat"),
            **ranked,
        }
    )
    # one Dask block per layer, whole along every other dim: selecting a layer costs that layer's
    # work, and layers compute in parallel. The store's chunks and shards (store.chunking) are made
    # at write time (Store.write_dataset rechunks each variable into the blocks it writes whole).
    out = out.chunk({dim: (1 if dim == "layer" else -1) for dim in out.dims})
    n_layers = int(ds.attrs.get("n_layers", max(lay) + 1))
    out = out.assign_coords(
        quantity=np.array(QUANTITIES, dtype=object),
        stat=np.array(stats.STAT_NAMES, dtype=object),
        relative_depth=("layer", np.asarray(lay, dtype=np.float64) / max(n_layers - 1, 1)),
    )
    out = labels.assign_labels(out, items_ds)  # subject, relation_id, target_true, position on item/item_
    out.attrs.update(_attrs(ds.attrs, model, items, n, ridge, max_cond, top_k, k, sizes))
    out.attrs.update({key: v for key, v in ranking_attrs.items() if key != "top_k"})
    if grid is not None:
        out.attrs["kde_grid"] = "fixed, given to analyze(kde_grid=...)"
    for name, units, desc in _DESCRIPTIONS:
        if name in out:
            out[name].attrs.update({"long_name": desc, **({"units": units} if units else {})})
    rankings.describe_all(out)
    return out


def _missing_items(case_ids: np.ndarray, items_ds: xr.Dataset) -> None:
    missing = [c for c in case_ids.tolist() if c not in set(items_ds["item"].values.tolist())]
    if missing:
        raise StoreError(f"items {missing[:5]} are in the model's keys but not in /items")


def _attrs(src: dict, model: str, items: str, n: int, ridge: float, max_cond: float,
           top_k: int, k: int, sizes: Sequence[int]) -> dict:
    attrs = {key: src[key] for key in PROVENANCE if key in src and src[key] is not None}
    attrs.setdefault("family", src.get("architecture", "unknown"))
    attrs.update({
        "model": model,
        "source": f"{layout.MODELS}/{model}",
        "items": items,
        "n_items": n,
        "ridge": ridge,
        "ridge_definition": "C + ridge * mean(diag C) * I",
        "max_cond": max_cond,
        "top_k": k,
        "top_k_requested": top_k,
        "convergence_sizes": [int(s) for s in sizes],
        "kde": "scipy.stats.gaussian_kde, Scott's rule, off-diagonal entries",
        "kde_grid": f"per layer and quantity (kde_x): {stats.KDE_POINTS} points from min to max padded by 3 "
                    "bandwidths, reaching at most one 0.1-99.9 % quantile width beyond those quantiles",
        "stats_over": "the N(N-1) off-diagonal entries",
        "kisstore_version": __version__,
    })
    return attrs


_DESCRIPTIONS = (
    ("gram", "", "k_i^T C^-1 k_j (whitening-space gram)"),
    ("cond", "", "1-norm condition number of C (+ ridge), LAPACK pocon estimate from the Cholesky factor "
                 "(a lower bound of ||C||_1 ||C^-1||_1; not the 2-norm: see cond_2norm)"),
    ("cond_2norm", "", "2-norm condition number of C (+ ridge), lambda_max / lambda_min from its eigenvalues"),
    ("p_matrix", "", "P_ij = G_ij / G_ii (interference coefficient, row-normalised)"),
    ("whitened_cos", "", "G_ij / sqrt(G_ii G_jj)"),
    ("whitened_angle", "degree", "arccos(whitened_cos)"),
    ("activation_cos", "", "k_i^T k_j / (|k_i| |k_j|)"),
    ("activation_angle", "degree", "arccos(activation_cos)"),
    ("q_matrix", "", "k_i^T k_j"),
    ("stats", "", "statistics of the off-diagonal entries (excess_kurtosis: Fisher's, scipy.stats.kurtosis)"),
    ("kde", "", "Gaussian KDE (Scott) of the off-diagonal entries, on the grid kde_x"),
    ("kde_x", "", "grid points of kde (units of the quantity: degree for the angles)"),
    ("kde_outside", "1", "share of the off-diagonal entries outside kde_x's range"),
    ("convergence", "", "statistics of the first n items' off-diagonal entries"),
)
