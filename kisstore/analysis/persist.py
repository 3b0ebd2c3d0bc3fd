"""Write an analysis into its store (``/analysis/<model>``, ``/analysis/scaling``) and read it back."""

from __future__ import annotations

import time
from collections.abc import Callable

import xarray as xr

from kisstore.analysis import scaling
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
    models = [m for m in result[layout.ANALYSIS].children if m != scaling.GROUP]
    staging = f"{layout.STAGING}/{layout.ANALYSIS}"
    store.delete(layout.STAGING)  # what an interrupted run left behind
    try:
        staged: dict[str, xr.Dataset] = {}
        for i, model in enumerate(models, 1):
            ds = result[f"{layout.ANALYSIS}/{model}"].to_dataset()
            progress(f"[{i}/{len(models)}] {model}: {ds.sizes['layer']} layers × {ds.sizes['item']} items "
                     f"(d_ff {ds.attrs.get('d_ff', '?')}) → {layout.ANALYSIS}/{model}")
            start = time.perf_counter()
            path = f"{staging}/{layout.check_group_name(model)}"
            store.write_dataset(path, ds)
            staged[model] = _open(store, path)
            progress(f"      done in {time.perf_counter() - start:.1f} s")
        table = scaling.scaling_dataset(staged).compute()
    except BaseException:
        store.delete(layout.STAGING)
        raise
    for model in models:
        store.replace_group(f"{staging}/{layout.check_group_name(model)}", layout.analysis_path(model))
    store.write_dataset(f"{layout.ANALYSIS}/{scaling.GROUP}", table)
    store.delete(layout.STAGING)
    store.consolidate()
    return {model: read_analysis(store, model) for model in models}


def _open(store: Store, path: str) -> xr.Dataset:
    return xr.open_dataset(store.zstore, group=path, engine="zarr", chunks={}, zarr_format=3, consolidated=False)


def read_analysis(store: Store, model: str) -> xr.Dataset:
    """A stored ``/analysis/<model>`` dataset, lazily (Dask, one chunk per layer)."""
    return _open(store, layout.analysis_path(model))


def read_scaling(store: Store) -> xr.Dataset:
    """The stored ``/analysis/scaling`` dataset."""
    return _open(store, f"{layout.ANALYSIS}/{scaling.GROUP}")
