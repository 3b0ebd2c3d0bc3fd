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
    computed once per layer). Returns the stored per-model datasets, reopened lazily.
    """
    stored: dict[str, xr.Dataset] = {}
    models = [m for m in result[layout.ANALYSIS].children if m != scaling.GROUP]
    for i, model in enumerate(models, 1):
        ds = result[f"{layout.ANALYSIS}/{model}"].to_dataset()
        progress(f"[{i}/{len(models)}] {model}: {ds.sizes['layer']} layers × {ds.sizes['item']} items "
                 f"(d_ff {ds.attrs.get('d_ff', '?')}) → {layout.ANALYSIS}/{model}")
        start = time.perf_counter()
        store.write_dataset(layout.analysis_path(model), ds)
        progress(f"      done in {time.perf_counter() - start:.1f} s")
    store.consolidate()
    for model in models:
        stored[model] = read_analysis(store, model)
    store.write_dataset(f"{layout.ANALYSIS}/{scaling.GROUP}", scaling.scaling_dataset(stored).compute())
    store.consolidate()
    return stored


def read_analysis(store: Store, model: str) -> xr.Dataset:
    """A stored ``/analysis/<model>`` dataset, lazily (Dask, one chunk per layer)."""
    return xr.open_dataset(store.zstore, group=layout.analysis_path(model), engine="zarr",
                           chunks={}, zarr_format=3, consolidated=False)


def read_scaling(store: Store) -> xr.Dataset:
    """The stored ``/analysis/scaling`` dataset."""
    return xr.open_dataset(store.zstore, group=f"{layout.ANALYSIS}/{scaling.GROUP}", engine="zarr",
                           chunks={}, zarr_format=3, consolidated=False)
