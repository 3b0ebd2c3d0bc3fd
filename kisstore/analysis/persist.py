"""Write an analysis into its store (``/analysis/<model>``, ``/analysis/scaling``) and read it back."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import xarray as xr

from kisstore.analysis import scaling, stats
from kisstore.store import Store, layout


def _quiet(_: str) -> None:
    pass


def write_analysis(store: Store, result: xr.DataTree, progress: Callable[[str], None] = _quiet) -> dict[str, xr.Dataset]:
    """Compute and write each model's analysis, then the scaling dataset; consolidate.

    Each model is computed in one Dask pass while it is written (the shared gram is
    computed once per layer) into ``/_staging/analysis/<model>``; only when every model and
    the scaling table are complete are they moved into ``/analysis``. So a run that fails
    (a layer whose C cannot be whitened, an interrupt) leaves the previous analysis and the
    store's consolidated metadata as they were. Returns the stored per-model datasets,
    reopened lazily.
    """
    from kisstore.store import commit

    models = [m for m in result[layout.ANALYSIS].children if m != scaling.GROUP]
    staging = commit.staged(layout.ANALYSIS)
    commit.discard(store, staging)  # what an interrupted run left behind
    try:
        staged: dict[str, xr.Dataset] = {}
        for i, model in enumerate(models, 1):
            ds = result[f"{layout.ANALYSIS}/{model}"].to_dataset()
            progress(f"[{i}/{len(models)}] {model}: {ds.sizes['layer']} layers × {ds.sizes['item']} items "
                     f"(d_ff {ds.attrs.get('d_ff', '?')}) → {layout.ANALYSIS}/{model}")
            start = time.perf_counter()
            path = f"{staging}/{layout.check_group_name(model)}"
            _compute_to_the_end(store.write_dataset(path, ds, compute=False))
            store.seal(path)  # the chunk manifest, from the bytes just stored (before any consolidation)
            staged[model] = _open(store, path)
            progress(f"      done in {time.perf_counter() - start:.1f} s")
        table = scaling.scaling_dataset(staged).compute()
        store.write_dataset(f"{staging}/{scaling.GROUP}", table)
    except BaseException:
        commit.discard(store, staging)
        raise
    # one commit: a kill from here on is completed by the next writer (kisstore.store.commit)
    commit.commit(store, [commit.move(f"{staging}/{m}", layout.analysis_path(m)) for m in models]
                  + [commit.move(f"{staging}/{scaling.GROUP}", f"{layout.ANALYSIS}/{scaling.GROUP}"),
                     commit.delete(staging)])
    return {model: read_analysis(store, model) for model in models}


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
    ds = xr.open_dataset(store.zstore, group=path, engine="zarr", chunks={}, zarr_format=3, consolidated=False)
    return canonical(ds)


def canonical(ds: xr.Dataset) -> xr.Dataset:
    """An analysis with this version's stat labels: kisstore 0.1 stored scipy's Fisher kurtosis
    as ``kurtosis``; it reads as ``excess_kurtosis`` (the values are the same statistic)."""
    if "stat" in ds.coords and any(str(s) in stats.LEGACY_STAT_NAMES for s in ds["stat"].values):
        ds = ds.assign_coords(stat=np.array(stats.canonical_stat_names(ds["stat"].values), dtype=object))
    return ds


def read_analysis(store: Store, model: str) -> xr.Dataset:
    """A stored ``/analysis/<model>`` dataset, lazily (Dask, one chunk per layer)."""
    return _open(store, layout.analysis_path(model))


def read_scaling(store: Store) -> xr.Dataset:
    """The stored ``/analysis/scaling`` dataset."""
    return _open(store, f"{layout.ANALYSIS}/{scaling.GROUP}")
