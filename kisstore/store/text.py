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

The twins are written when the group is sealed (``Store.seal``), from the stored text, so
lazily computed text (an analysis's top pairs) is not computed twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

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
    text = {name: var for name, var in ds.variables.items() if is_text(var)}
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
    if not any(np.dtype(a.dtype).kind in ("O", "T", "U") for _, a in group.arrays()):
        return False
    ds = xr.open_dataset(store.zstore, group=path, engine="zarr", zarr_format=3, consolidated=False,
                         chunks=None, decode_cf=False)
    encoded = twins(ds)
    if encoded is None:
        return False
    store.write_dataset(f"{path}/{GROUP}", encoded, seal_text=False)
    return True
