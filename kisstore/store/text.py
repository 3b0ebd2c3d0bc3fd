"""A numeric copy of every text array, for Zarr readers without the ``string`` data type.

Zarr v3's core spec has no text type: kisstore's text arrays (item fields, top-pair text,
``quantity``/``stat``/``model`` labels) use the registered ``string`` data type with the
``vlen-utf8`` codec, which zarr-python, xarray and zarrita.js read and tensorstore and zarrs
(strict) do not. So each group holding text gets a child group ``text_utf8`` in which every
text array ``<name>`` has a twin ``<name>_utf8``: the UTF-8 bytes of each value as ``uint8``
along a last dimension ``utf8_byte``, padded with zero bytes to the group's longest value
(a value's bytes end at its first zero byte; text holding U+0000 itself is cut there in the
twin, the string array stays whole). Any reader of core Zarr decodes it as
``bytes(row).rstrip(b"\\0").decode("utf-8")``.

The twins are written when the group is sealed (``Store.seal``), from the stored text. An
analysis' label coordinates that copy ``/items`` text (``subject``, ``relation_id``,
``target_true`` on ``item`` and ``item_``, marked with the attribute ``kisstore_text_of_items``)
get no twin: a core-Zarr reader joins the integer ``item`` coordinate with ``/items/text_utf8``.

An analysis does not store the text of its top pairs and most exposed/disruptive facts either:
it stores their case ids (``top_item``, ``top_item_``, ``most_exposed``, …), and
:func:`join_item_text` joins the text back from ``/items`` on reading (``layout.joined_text``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr

from kisstore.store import layout

if TYPE_CHECKING:
    from kisstore.store.io import Store

GROUP = "text_utf8"
BYTE = "utf8_byte"
SUFFIX = "_utf8"


def is_text(var: xr.Variable) -> bool:
    return var.dtype.kind in ("O", "T", "U")


def encode(values: np.ndarray, width: int | None = None) -> np.ndarray:
    """Text values (any shape) → uint8 array of shape ``values.shape + (width,)``, each value's
    UTF-8 bytes padded with zeros (width: the longest value's byte count when not given)."""
    flat = [str(v).encode("utf-8") for v in np.asarray(values, dtype=object).ravel()]
    width = max((len(b) for b in flat), default=0) if width is None else width
    out = np.zeros((len(flat), width), np.uint8)
    for i, b in enumerate(flat):
        out[i, : len(b)] = np.frombuffer(b, np.uint8)
    return out.reshape(np.shape(values) + (width,))


def decode(codes: np.ndarray) -> np.ndarray:
    """The inverse of :func:`encode`: uint8 (…, width) → object array of str (…)."""
    codes = np.asarray(codes, np.uint8)
    flat = codes.reshape(-1, codes.shape[-1]) if codes.ndim else codes.reshape(1, 0)
    out = np.array([bytes(row).split(b"\0", 1)[0].decode("utf-8") for row in flat], dtype=object)
    return out.reshape(codes.shape[:-1])


def twins(ds: xr.Dataset) -> xr.Dataset | None:
    """The ``text_utf8`` dataset of ``ds`` (its text arrays encoded), None when it has no text."""
    text = {name: var for name, var in ds.variables.items()
            if is_text(var) and layout.FROM_ITEMS not in var.attrs}
    if not text:
        return None
    values = {name: np.asarray(var.values) for name, var in text.items()}
    width = max((len(str(v).encode("utf-8")) for a in values.values() for v in a.ravel()), default=0)
    out = xr.Dataset()
    for name, var in text.items():
        twin = xr.Variable((*var.dims, BYTE), encode(values[name], width), attrs={
            "long_name": f"UTF-8 bytes of {name} (zero-padded), for readers without Zarr's string type",
            "units": "byte", "kisstore_text_of": name})
        out[f"{name}{SUFFIX}"] = twin
    out.attrs["description"] = ("numeric copies of the parent group's text arrays: decode a row with "
                                "bytes(row).rstrip(b'\\0').decode('utf-8')")
    return out


def write_twins(store: Store, path: str) -> bool:
    """Write the ``text_utf8`` child of the stored group ``path`` from its stored text arrays
    (replacing any earlier one); returns whether the group has text."""
    import zarr

    group = zarr.open_group(store.zstore, path=path, mode="r", zarr_format=3, use_consolidated=False)
    if not any(np.dtype(a.dtype).kind in ("O", "T", "U") and layout.FROM_ITEMS not in a.attrs
               for _, a in group.arrays()):
        return False
    ds = xr.open_dataset(store.zstore, group=path, engine="zarr", zarr_format=3, consolidated=False,
                         chunks=None, decode_cf=False)
    encoded = twins(ds)
    if encoded is None:
        return False
    store.write_dataset(f"{path}/{GROUP}", encoded, seal_text=False)
    return True


def _take(case_ids: np.ndarray, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` (one per case id) at the case ids ``ids`` (any shape); −1 or unknown ids → ""."""
    pos = pd.Index(case_ids).get_indexer(np.asarray(ids).ravel())
    table = np.append(np.asarray(values, dtype=object).astype(str).astype(object), "")
    return table[pos].reshape(np.shape(ids))


def join_item_text(ds: xr.Dataset, items: xr.Dataset) -> xr.Dataset:
    """``ds`` (an analysis) with the text variables of ``layout.joined_text`` it lacks, joined
    from ``items`` (the store's /items) through the case ids stored beside them. Lazy where the
    ids or the items are (Dask): nothing is read until the text is."""
    if "item" not in items.indexes:
        return ds
    case_ids = np.asarray(items.indexes["item"])
    new = {}
    for name, (ids, field) in layout.joined_text().items():
        if name in ds.variables or ids not in ds.data_vars or field not in items.data_vars:
            continue
        values = xr.Variable(("_items",), items[field].variable.data)
        new[name] = xr.apply_ufunc(
            lambda i, v: _take(case_ids, i, v), ds[ids].variable, values,
            input_core_dims=[[], ["_items"]], dask="parallelized", output_dtypes=[object],
            dask_gufunc_kwargs={"allow_rechunk": True})
        side = "second (column)" if ids.endswith("_") else "first (row)"
        new[name].attrs["long_name"] = f"{field} of the {side} fact of {ids} (joined from /items)"
    return ds.assign(new) if new else ds


def join_tree_text(tree: xr.DataTree) -> xr.DataTree:
    """``tree`` with :func:`join_item_text` applied to every analysis node (lazily)."""
    if layout.ITEMS not in tree.children:
        return tree
    items = tree[layout.ITEMS].to_dataset()
    for node in list(tree.subtree):
        if any(ids in node.data_vars for ids, _ in layout.joined_text().values()):
            ds = node.to_dataset(inherit=False)
            joined = join_item_text(ds, items)
            for name in joined.data_vars:
                if name not in ds.variables:
                    node[name] = joined[name]
    return tree
