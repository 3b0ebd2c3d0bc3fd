"""Write an analysis into its store and read it back.

The default analysis lives at ``/analysis/<model>`` and ``/analysis/scaling``; a named one
(``analyze --name NAME``) at ``/analyses/<NAME>/<model>`` and ``/analyses/<NAME>/scaling``, so
analyses with other settings, items or layers coexist. Each records its ``settings``. A run
into an analysis that already holds a model merges its layers into it (same settings and items:
the layers it did not compute stay), refuses other settings unless ``replace``, and keeps the
other models it holds (the scaling table spans them all).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from kisstore.analysis import scaling, stats
from kisstore.errors import InputError
from kisstore.store import Store, layout


def _quiet(_: str) -> None:
    pass


def write_analysis(store: Store, result: xr.DataTree, progress: Callable[[str], None] = _quiet,
                   name: str | None = None, replace: bool = False) -> dict[str, xr.Dataset]:
    """Compute and write each model's analysis into the analysis ``name`` (default: /analysis),
    then its scaling dataset; consolidate.

    Each model is computed in one Dask pass while it is written (the shared gram is
    computed once per layer) into ``/_staging/<analysis>/<model>``; only when every model and
    the scaling table are complete are they moved into place. So a run that fails
    (a layer whose C cannot be whitened, an interrupt, settings that differ from the stored
    analysis) leaves every earlier analysis and the store's consolidated metadata as they were.
    A model the analysis already holds with the same settings and items keeps the layers this
    run did not compute; with other settings the run is refused (InputError) unless
    ``replace``, which replaces the whole analysis ``name`` (models not in this run leave it).
    Returns the stored per-model datasets, reopened lazily.
    """
    from kisstore.store import commit

    root = layout.analysis_root(name)
    models = [m for m in result[layout.ANALYSIS].children if m != scaling.GROUP]
    present = stored_models(store, name)
    plan = {} if replace else _merge_plan(store, result, models, present, name)
    others = [] if replace else [m for m in present if m not in models]
    if plan or others:  # stored layers and models this run copies: intact, or a one-line error now
        from kisstore.store import integrity

        integrity.check_for_reading(store, [layout.analysis_path(m, name) for m in [*plan, *others]])
    staging = commit.staged(root)
    commit.discard(store, staging)  # what an interrupted run left behind
    try:
        staged: dict[str, xr.Dataset] = {}
        for i, model in enumerate(models, 1):
            ds = result[f"{layout.ANALYSIS}/{model}"].to_dataset()
            kept = plan.get(model)
            ds = _merged(read_analysis(store, model, name), kept, ds) if kept else ds
            ds.attrs["analysis_name"] = name if name_is_set(name) else None
            # text that is /items text at the case ids beside it is not stored (read_analysis joins it)
            ds = ds.drop_vars([v for v in layout.joined_text() if v in ds.variables])
            merge_note = f", keeping stored layer(s) {_short_list(kept)}" if kept else ""
            progress(f"[{i}/{len(models)}] {model}: {ds.sizes['layer']} layers × {ds.sizes['item']} items "
                     f"(d_ff {ds.attrs.get('d_ff', '?')}) → {root}/{model}{merge_note}")
            start = time.perf_counter()
            path = f"{staging}/{layout.check_group_name(model)}"
            _compute_to_the_end(store.write_dataset(path, ds, compute=False))
            store.seal(path)  # the chunk manifest, from the bytes just stored (before any consolidation)
            staged[model] = _open(store, path)
            progress(f"      done in {time.perf_counter() - start:.1f} s")
        table = scaling.scaling_dataset({**staged, **{m: read_analysis(store, m, name) for m in others}}).compute()
        table.attrs["analysis_name"] = name if name_is_set(name) else None
        store.write_dataset(f"{staging}/{scaling.GROUP}", table)
    except BaseException:
        commit.discard(store, staging)
        raise
    dropped = [m for m in present if m not in models] if replace else []
    # one commit: a kill from here on is completed by the next writer (kisstore.store.commit)
    commit.commit(store, [commit.move(f"{staging}/{m}", layout.analysis_path(m, name)) for m in models]
                  + [commit.delete(layout.analysis_path(m, name)) for m in dropped]
                  + [commit.move(f"{staging}/{scaling.GROUP}", f"{root}/{scaling.GROUP}"),
                     commit.delete(staging)]
                  + ([commit.delete_if_empty(staging.rsplit("/", 1)[0])] if name_is_set(name) else []))
    return {model: read_analysis(store, model, name) for model in models}


def name_is_set(name: str | None) -> bool:
    """Whether ``name`` is a named analysis (not the default /analysis)."""
    return layout.analysis_root(name) != layout.ANALYSIS


def stored_models(store: Store, name: str | None = None) -> list[str]:
    """The models the stored analysis ``name`` holds (none when it does not exist)."""

    root = layout.analysis_root(name)
    if not store.has(root):
        return []
    group = store.open_group(root)
    return sorted(m for m, g in group.groups() if m != scaling.GROUP and "model" in g.attrs)


def _merge_plan(store: Store, result: xr.DataTree, models: list[str], present: list[str],
                name: str | None) -> dict[str, list[int]]:
    """For each model of this run the analysis already holds: the stored layers to keep (those
    this run does not compute). Refuses (InputError) a run whose settings or items differ from
    any model the analysis holds, naming the first difference."""
    where = (f"/{layout.ANALYSIS}" if layout.analysis_root(name) == layout.ANALYSIS
             else f"'{name}' (/{layout.analysis_root(name)})")
    plan = {}
    new_attrs = {m: result[f"{layout.ANALYSIS}/{m}"].attrs for m in models}
    some_new = new_attrs[models[0]] if models else {}
    for m in present:
        old = read_analysis(store, m, name)
        mine = m in new_attrs
        diffs = setting_differences(old.attrs, new_attrs[m] if mine else some_new, same_model=mine)
        if mine and not diffs:
            new = result[f"{layout.ANALYSIS}/{m}"]
            if not np.array_equal(np.asarray(old["item"].values), np.asarray(new["item"].values)):
                diffs.append(f"items: {old.sizes['item']} stored facts, {new.sizes['item']} in this run "
                             "(another selection)" if old.sizes["item"] != new.sizes["item"]
                             else "items: the same number, other facts")
            missing = sorted(set(new.to_dataset().data_vars) ^ set(old.data_vars))
            covered = set(int(v) for v in old["layer"].values) <= set(int(v) for v in new["layer"].values)
            if not diffs and missing and not covered:  # a run over every stored layer replaces an older version's
                diffs.append(f"arrays {', '.join(missing[:4])} in only one of them (another kisstore version)")
        if diffs:
            raise InputError(f"the analysis {where} holds {m!r} made with other settings ({'; '.join(diffs)}): "
                             "pass --name NAME to keep both side by side, or --replace to replace it")
        if mine:
            new_layers = set(int(v) for v in result[f"{layout.ANALYSIS}/{m}"]["layer"].values)
            plan[m] = [int(v) for v in old["layer"].values if int(v) not in new_layers]
    return plan


def settings_of(attrs: dict[str, Any]) -> dict[str, Any]:
    """An analysis' settings: its ``settings`` attr, or for one written by kisstore 0.1 what its
    other attrs say (the item subset, ridge, top-k, max_cond; n_items as the count analysed)."""
    if isinstance(attrs.get("settings"), dict):
        return dict(attrs["settings"])
    return {"items": attrs.get("items"), "n_items": attrs.get("n_items"), "ridge": attrs.get("ridge"),
            "top_k": attrs.get("top_k_requested", attrs.get("top_k")), "max_cond": attrs.get("max_cond"),
            "convergence_sizes": None, "kde_grid": None, "written_by": "kisstore 0.1"}


def setting_differences(old: dict[str, Any], new: dict[str, Any], same_model: bool = True) -> list[str]:
    """The settings in which two analyses' attrs differ, as ``"ridge 0.0 stored, 0.01 now"``.
    For two models (``same_model=False``) only the settings common to every model count."""
    a, b = settings_of(old), settings_of(new)
    legacy = "written_by" in a or "written_by" in b
    keys = ["items", "ridge", "top_k", "max_cond"]
    if not legacy:
        keys += ["n_items", "kde_grid", "convergence_sizes", "rank_by", "exclude_same_subject",
                 "exclude_same_token", "bootstrap", "bootstrap_seed"]
    elif same_model:
        a = {**a, "convergence_sizes": old.get("convergence_sizes")}  # compare what both ran
        b = {**b, "convergence_sizes": new.get("convergence_sizes")}
        keys += ["convergence_sizes"]
    out = []
    for key in keys:
        if not _same(a.get(key), b.get(key)):
            out.append(f"{key} {_fmt(a.get(key))} stored, {_fmt(b.get(key))} now")
    return out


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
        return float(x) == float(y)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_same(u, v) for u, v in zip(x, y, strict=True))
    return x == y


def _fmt(v: Any) -> str:
    if v is None:
        return "default"
    if isinstance(v, (list, tuple)) and len(v) > 6:
        return f"[{len(v)} values]"
    return str(v)


def _short_list(values: list[int]) -> str:
    return ",".join(map(str, values[:8])) + (f",… ({len(values)})" if len(values) > 8 else "")


def _merged(stored: xr.Dataset, keep: list[int], new: xr.Dataset) -> xr.Dataset:
    """``new`` with the stored layers ``keep`` added (lazily), in layer order, one chunk per layer."""
    old = stored.sel(layer=keep)
    # positional dimensions an older analysis labelled with 0…n−1 (rank, fact_rank, grid)
    old = old.drop_vars([d for d in ("rank", "fact_rank", "grid") if d in old.coords and d not in new.coords])
    for var in old.variables.values():
        var.encoding = {}
    # the per-fact labels do not depend on the layer (and an analysis by kisstore 0.1 has none)
    labels = {k: new[k] for k in new.coords
              if k not in new.dims and new[k].dims and set(new[k].dims) <= {"item", "item_"}}
    old = old.assign_coords(labels)
    # strings come back from the store as StringDType: give them the new run's dtypes, in
    # memory (the text arrays are small: (layer, rank) and (item,))
    for k, var in new.variables.items():
        if k in old.variables and k not in old.dims and var.dtype.kind in "OTU":
            values = np.asarray(old[k].values).astype(var.dtype)
            if not isinstance(var.data, np.ndarray):  # lazy in the new run: lazy here too (dask needs
                import dask.array  # explicit chunks for strings)

                values = dask.array.from_array(values, chunks=tuple(max(n, 1) for n in values.shape))
            old[k] = old[k].copy(data=values)
    out = xr.concat([old, new], dim="layer", data_vars="all", coords="different", compat="equals",
                    join="exact", combine_attrs="override")
    out = out.isel(layer=np.argsort(out["layer"].values, kind="stable"))
    for k, var in new.data_vars.items():  # per-analysis arrays (pair_count): the same items, so the new run's
        if "layer" not in var.dims:
            out[k] = var
    out.attrs = dict(new.attrs)
    # what the new run holds in memory (labels, names) stays in memory; the rest one chunk per layer
    held = [k for k, var in new.variables.items() if isinstance(var.data, np.ndarray) and k not in new.dims]
    kept = {k: (out[k].dims, np.asarray(out[k].values), out[k].attrs) for k in held}
    coords = [k for k in held if k in out.coords]
    out = out.drop_vars(held).chunk({dim: (1 if dim == "layer" else -1) for dim in out.dims})
    out = out.assign_coords({k: kept[k] for k in coords})
    out = out.assign({k: kept[k] for k in held if k not in coords})
    return out


def _compute_to_the_end(work) -> None:
    """``dask.compute(work)``; when a task fails, return (raise) only once no task is still
    running, so that deleting the staged group afterwards is final: dask's local scheduler
    raises at the first failure while other layers' tasks go on writing chunks. Local work
    runs on a thread pool of our own, shut down (waited for) before the error propagates; on a
    distributed cluster tasks may still finish after the error, leaving staged chunks that the
    next run removes (readers never see /_staging: it is never consolidated)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import dask
    import dask.threaded

    scheduler = dask.base.get_scheduler()
    if scheduler not in (None, dask.threaded.get):
        dask.compute(work)
        return
    with ThreadPoolExecutor(max_workers=dask.config.get("num_workers", None) or os.cpu_count() or 1) as pool:
        dask.compute(work, scheduler="threads", pool=pool)


def _open(store: Store, path: str) -> xr.Dataset:
    ds = store.open_dataset(path)
    return canonical(ds)


def canonical(ds: xr.Dataset) -> xr.Dataset:
    """An analysis with this version's stat labels: kisstore 0.1 stored scipy's Fisher kurtosis
    as ``kurtosis``; it reads as ``excess_kurtosis`` (the values are the same statistic)."""
    if "stat" in ds.coords and any(str(s) in stats.LEGACY_STAT_NAMES for s in ds["stat"].values):
        ds = ds.assign_coords(stat=np.array(stats.canonical_stat_names(ds["stat"].values), dtype=object))
    return ds


def read_analysis(store: Store, model: str, name: str | None = None) -> xr.Dataset:
    """A stored ``/analysis/<model>`` (or ``/analyses/<name>/<model>``) dataset, lazily (Dask,
    one chunk per layer)."""
    path = layout.analysis_path(model, name)
    if not store.has(path):
        where = "the default analysis" if layout.analysis_root(name) == layout.ANALYSIS else f"analysis {name!r}"
        have = ", ".join(stored_models(store, name)) or "no models"
        raise InputError(f"{where} has no model {model!r} ({have})")
    from kisstore.store import text

    ds = _open(store, path)
    if store.has(layout.ITEMS):  # the top pairs' text, joined from /items through their case ids (lazily)
        items = store.open_dataset(layout.ITEMS)
        ds = text.join_item_text(ds, items)
    return ds


def read_scaling(store: Store, name: str | None = None) -> xr.Dataset:
    """The stored scaling dataset of the analysis ``name`` (default: ``/analysis/scaling``)."""
    return _open(store, f"{layout.analysis_root(name)}/{scaling.GROUP}")


def list_analyses(store: Store) -> dict[str, dict[str, Any]]:
    """Every stored analysis by name (``"default"`` for /analysis): its path, settings and, per
    model, layers and number of items (what ``kisstore info`` shows)."""
    from kisstore.store.inspect import analyses_summary

    return analyses_summary(store)
