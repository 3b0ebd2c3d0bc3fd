"""The cross-model scaling table: statistics aligned on (model, layer) with model metadata."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from kisstore.store import layout

GROUP = "scaling"
META = ("model", "family", "n_params", "n_layers", "n_items", "layer", "relative_depth")


def scaling_dataset(analyses: Mapping[str, xr.Dataset]) -> xr.Dataset:
    """Stack each model's ``stats`` into (model, layer, quantity, stat), lazily.

    Models with fewer layers are padded with NaN (outer join on ``layer``);
    ``relative_depth = layer / (n_layers − 1)`` puts models of different depth on one axis.
    """
    names = list(analyses)
    parts = []
    for m in names:
        a = analyses[m]
        layer = a["layer"].values
        depth = xr.DataArray(np.asarray(a["relative_depth"].values, np.float64), dims="layer",
                             coords={"layer": layer})
        parts.append(xr.Dataset({"stats": a["stats"].reset_coords(drop=True), "relative_depth": depth}))
    ds = xr.concat(parts, dim=pd.Index(np.array(names, dtype=object), name="model"), join="outer",
                   data_vars="all", coords="minimal", compat="override")
    meta = {
        "family": [str(analyses[m].attrs.get("family", "unknown")) for m in names],
        "n_params": [int(analyses[m].attrs.get("n_params", -1) or -1) for m in names],
        "n_layers": [int(analyses[m].attrs.get("n_layers", -1) or -1) for m in names],
        "n_items": [int(analyses[m].attrs.get("n_items", -1)) for m in names],
    }
    for key, values in meta.items():
        dtype = object if key == "family" else np.int64
        ds[key] = ("model", np.array(values, dtype=dtype))
    ds = ds.chunk({dim: (1 if dim == "layer" else -1) for dim in ds.dims})
    # variable-length strings (not fixed-width <U), which Zarr v3 specifies
    ds = ds.assign_coords(model=np.array(names, dtype=np.dtypes.StringDType()))
    ds.attrs["description"] = "per (model, layer) statistics of P and both cosines; n_params -1 = unknown"
    return ds


def scaling_table(source: xr.DataTree | xr.Dataset) -> pd.DataFrame:
    """One row per (model, layer): model, family, n_params, n_layers, n_items, layer,
    relative_depth, then ``<quantity>_<stat>`` columns (e.g. ``p_matrix_kurtosis``). Computes."""
    if isinstance(source, xr.DataTree):
        source = source[f"{layout.ANALYSIS}/{GROUP}"].to_dataset()
    ds = source.compute()
    rows = []
    for mi, model in enumerate(ds["model"].values):
        for li, lay in enumerate(ds["layer"].values):
            depth = float(ds["relative_depth"].values[mi, li])
            if np.isnan(depth):
                continue  # this model has no such layer
            row = {
                "model": str(model),
                "family": str(ds["family"].values[mi]),
                "n_params": int(ds["n_params"].values[mi]),
                "n_layers": int(ds["n_layers"].values[mi]),
                "n_items": int(ds["n_items"].values[mi]),
                "layer": int(lay),
                "relative_depth": depth,
            }
            block = ds["stats"].values[mi, li]
            for qi, q in enumerate(ds["quantity"].values):
                for si, s in enumerate(ds["stat"].values):
                    row[f"{q}_{s}"] = float(block[qi, si])
            rows.append(row)
    return pd.DataFrame(rows)


def export_table(table: pd.DataFrame, prefix: str | Path) -> list[Path]:
    """Write ``<prefix>.csv`` and ``<prefix>.parquet``; return both paths."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    csv, parquet = prefix.with_name(prefix.name + ".csv"), prefix.with_name(prefix.name + ".parquet")
    table.to_csv(csv, index=False)
    table.to_parquet(parquet, index=False)
    return [csv, parquet]
