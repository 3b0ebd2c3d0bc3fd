"""How every array of a store is cut into chunks and objects: one rule, decided by dims and size.

A store is read over the network one object at a time, so the layout aims at few objects
and few requests without making a reader fetch more than it asks for:

- an array of at most ``SMALL_BYTES`` that is not a per-layer matrix is one chunk (index
  coordinates such as ``layer``, ``n_tokens``, statistics, scaling rows, text);
- a per-layer matrix (dims ``layer`` and one of ``item``/``d_ff``: ``keys``, ``cov``,
  ``p_matrix`` …) is chunked one layer at a time, so a reader fetches one layer's slice and
  nothing more; a layer larger than ``MAX_CHUNK_BYTES`` is tiled along its ``d_ff`` axes
  (edges halved to powers of two: 2048 for a float64 ``cov`` at any d_ff ≥ 2048);
- those chunks are packed into shards (Zarr v3's ``sharding_indexed`` codec: one object
  holding many chunks and an index of where each lies) of whole layers, up to
  ``SHARD_BYTES`` each; a reader still fetches a single chunk from a shard (two ranged
  requests: the shard's index, then the chunk). A shard that would hold one chunk is not
  made: the chunk is the object.

Readers never assume this layout: stores written by kisstore 0.1 (one chunk per layer
everywhere, 4096-edge ``cov`` tiles) open and analyse the same, since xarray and Zarr read
the chunking from each array's metadata.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import xarray as xr

SMALL_BYTES = 4 * 2**20  # an array this small (that is not a per-layer matrix) is one chunk
MAX_CHUNK_BYTES = 32 * 2**20  # the most one chunk (what a reader fetches at once) holds
SHARD_BYTES = 128 * 2**20  # the most one shard holds (Dask's default chunk size): a writer holds one in memory
LAYER = "layer"
MATRIX_DIMS = ("item", "item_", "d_ff", "d_ff_", "candidate")  # a per-layer array with one of these is a matrix
OBJECT_ITEMSIZE = 64  # the size assumed for one text value (its encoded size varies)


@dataclass(frozen=True)
class Chunking:
    """The chunk shape (what a reader fetches at once) and the shard shape (what one object
    holds; None when each chunk is its own object) of one array."""

    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None = None

    @property
    def write_chunks(self) -> tuple[int, ...]:
        """The blocks a writer must hand over whole (Dask chunks): shards, else chunks."""
        return self.shards or self.chunks

    def encoding(self) -> dict[str, tuple[int, ...]]:
        """The part of an xarray Zarr encoding that says this."""
        return {"chunks": self.chunks, **({"shards": self.shards} if self.shards else {})}


def itemsize(dtype: np.dtype) -> int:
    dtype = np.dtype(dtype)
    return OBJECT_ITEMSIZE if dtype.kind in ("O", "T", "U", "S") else max(dtype.itemsize, 1)


def is_layer_matrix(dims: tuple[str, ...]) -> bool:
    """Whether an array is read one layer at a time (a per-layer matrix or vector of items)."""
    return LAYER in dims and any(d in MATRIX_DIMS for d in dims)


def chunking(dims: tuple[str, ...], shape: tuple[int, ...], dtype: np.dtype) -> Chunking:
    """The chunking of an array with these dims, shape and data type (see the module's rule)."""
    dims, shape = tuple(dims), tuple(int(n) for n in shape)
    if not shape:
        return Chunking(())
    size = itemsize(dtype)
    whole = tuple(max(n, 1) for n in shape)
    if not is_layer_matrix(dims):
        if math.prod(whole) * size <= SMALL_BYTES:
            return Chunking(whole)
        return Chunking(_fit(dims, whole, size, split=[d != LAYER for d in dims]))
    chunk = _fit(dims, tuple(1 if d == LAYER else n for d, n in zip(dims, whole, strict=True)), size,
                 split=[d.startswith("d_ff") for d in dims])
    axis = dims.index(LAYER)
    n_layers = whole[axis]
    layer_bytes = math.prod(n for d, n in zip(dims, whole, strict=True) if d != LAYER) * size
    per_shard = max(1, min(n_layers, SHARD_BYTES // max(layer_bytes, 1)))
    per_shard = -(-n_layers // -(-n_layers // per_shard))  # balanced: shards of (nearly) equal size
    shard = tuple(per_shard if d == LAYER else -(-n // c) * c for d, n, c in zip(dims, whole, chunk, strict=True))
    if shard == chunk or all(s <= c for s, c in zip(shard, chunk, strict=True)):
        return Chunking(chunk)
    return Chunking(chunk, shard)


def _fit(dims: tuple[str, ...], chunk: tuple[int, ...], size: int, split: list[bool]) -> tuple[int, ...]:
    """``chunk`` with its splittable axes halved (to powers of two, largest first) until it
    holds at most MAX_CHUNK_BYTES; other axes are split only when those cannot be."""
    out = list(chunk)
    for allowed in (split, [d != LAYER for d in dims], [True] * len(dims)):
        while math.prod(out) * size > MAX_CHUNK_BYTES:
            axes = [i for i, ok in enumerate(allowed) if ok and out[i] > 1]
            if not axes:
                break
            i = max(axes, key=lambda j: out[j])
            out[i] = 1 << ((out[i] - 1).bit_length() - 1)  # the next power of two below
    return tuple(out)


def tile_edge(dtype: np.dtype = np.float64) -> int:
    """The edge of a square d_ff × d_ff tile (a ``cov`` chunk) at any d_ff: 2048 in float64."""
    return chunking(("layer", "d_ff", "d_ff_"), (1, 2**20, 2**20), dtype).chunks[1]


def of_variable(var: xr.Variable) -> Chunking:
    return chunking(var.dims, var.shape, var.dtype)


def for_store(ds: xr.Dataset, override: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, Chunking]:
    """The chunking of every array of ``ds`` (``override``: chunk shapes given by the caller, unsharded)."""
    return {name: (Chunking(tuple(override[name])) if override and name in override else of_variable(var))
            for name, var in ds.variables.items() if var.ndim}


def chunked_for_store(ds: xr.Dataset, override: Mapping[str, tuple[int, ...]] | None = None) -> xr.Dataset:
    """``ds`` with each Dask-backed variable in the blocks its store writer takes whole (its
    shards or chunks): what ``Store.write_dataset`` writes, and what a lazy result should use."""
    plan = for_store(ds, override)
    out = ds.copy()
    for name, var in ds.variables.items():
        if name in plan and var.chunks is not None:
            blocks = dict(zip(var.dims, plan[name].write_chunks, strict=True))
            out[name] = var.chunk({d: min(c, n) for (d, c), n in zip(blocks.items(), var.shape, strict=True)})
    return out
