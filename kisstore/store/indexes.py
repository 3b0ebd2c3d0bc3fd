"""Index coordinates whose values ride in the metadata, so that opening a store reads no chunk.

xarray builds an index for every dimension coordinate (``layer``, ``item``, ``stat``, …) when it
opens a group, and reads each one's chunk to do so: over S3 two requests per coordinate (s3fs
asks an object's size before a whole-object GET), 30 of a demo store's 38 on a plain open.
kisstore writes the values of each small dimension coordinate into that array's own attributes
(``layout.INDEX_VALUES``), in the same ``zarr.json`` as its metadata, which the root's
consolidated metadata carries. ``open_store`` opens without reading indexes and builds them from
those values: the whole tree, labelled, from the root ``zarr.json``. A coordinate without the
attribute (larger than ``layout.INDEX_VALUES_MAX`` values, or written by kisstore < 0.2.1) is read
from its chunk as before. The chunks stay the coordinates' data for every other reader.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from kisstore.store import layout


def _jsonable(values: np.ndarray) -> list | None:
    """``values`` as a JSON list that reads back equal, or None (too many, or not plain numbers/text)."""
    if values.ndim != 1 or values.size > layout.INDEX_VALUES_MAX:
        return None
    kind = values.dtype.kind
    if kind in "iub":
        return values.tolist()
    if kind == "f":
        return values.tolist() if np.isfinite(values).all() else None
    if kind in "OUT":
        out = [v for v in values.tolist()]
        return out if all(isinstance(v, str) for v in out) else None
    return None


def with_index_values(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with each small dimension coordinate carrying its values in ``layout.INDEX_VALUES``
    (any such attribute read along with ``ds`` is dropped first: it described what was read)."""
    ds = ds.copy()
    for name, var in ds.variables.items():
        attrs = {k: v for k, v in var.attrs.items() if k != layout.INDEX_VALUES}
        if var.dims == (name,):
            values = _jsonable(np.asarray(var.values))
            if values is not None:
                attrs[layout.INDEX_VALUES] = values
        var.attrs = attrs
    return ds


def _restored(var: xr.Variable, name: str) -> xr.Variable | None:
    """The in-memory coordinate ``name`` from its stored values, None when it has none."""
    values = var.attrs.get(layout.INDEX_VALUES)
    if not isinstance(values, list) or len(values) != var.shape[0]:
        return None
    attrs = {k: v for k, v in var.attrs.items() if k != layout.INDEX_VALUES}
    # in the stored data type, as xarray reads it (StringDType for text)
    return xr.Variable((name,), np.array(values, dtype=var.dtype), attrs, encoding=var.encoding)


def indexed(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` (opened with ``create_default_indexes=False``) with an index on every dimension
    coordinate: from its stored values where it has them, else read from its chunk."""
    coords: dict[str, Any] = {}
    for name in ds.dims:
        if name not in ds.coords or ds[name].dims != (name,):
            continue
        var = ds[name].variable
        coords[name] = _restored(var, name)
        if coords[name] is None:  # read as xarray would have read it
            coords[name] = var.load()
    ds = ds.assign_coords({k: v for k, v in coords.items() if v is not None})
    for var in ds.variables.values():  # the attribute is kisstore's, not the data's
        if layout.INDEX_VALUES in var.attrs:
            var.attrs = {k: v for k, v in var.attrs.items() if k != layout.INDEX_VALUES}
    return ds


def indexed_tree(tree: xr.DataTree) -> xr.DataTree:
    """``tree`` (opened with ``create_default_indexes=False``) with :func:`indexed` applied to every node."""
    return xr.DataTree.from_dict({node.path: indexed(node.to_dataset(inherit=False)) for node in tree.subtree})
