"""The packed layout of a symmetric matrix, and the second moment kept in it.

Checkpoints and shard files store each layer's Σ kkᵀ as its lower triangle row by row (numpy's
``tril_indices`` order: row j's entries S[j, 0..j] start at j(j+1)/2), d(d+1)/2 float64 numbers,
half a full matrix; the name they record for it is :data:`LAYOUT`. :class:`PackedMoment` is the
reduction's intermediate in that layout. The accumulators that produce it (``kisstore.extract.
accumulate``) keep a blocked layout in memory and convert on the way in and out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAYOUT = "packed-tril-v1"  # the name checkpoints and shard files record for the packed layout


def packed_size(d: int) -> int:
    """Numbers in the lower triangle of a d × d matrix, diagonal included."""
    return d * (d + 1) // 2


def unpack_symmetric(packed: np.ndarray, d: int, out: np.ndarray | None = None) -> np.ndarray:
    """The full symmetric d × d matrix of a packed lower triangle (into ``out`` if given)."""
    if packed.shape != (packed_size(d),):
        raise ValueError(f"a packed d_ff {d} triangle has {packed_size(d)} numbers, not {packed.shape}")
    m = np.empty((d, d), dtype=np.float64) if out is None else out
    for j in range(d):
        m[j, : j + 1] = packed[j * (j + 1) // 2 : (j + 1) * (j + 2) // 2]
    step = 256
    for a in range(0, d, step):  # mirror: the upper triangle from the lower, a row block at a time
        b = min(a + step, d)
        m[a:b, b:] = m[b:, a:b].T
        sq = m[a:b, a:b]
        iu = np.triu_indices(b - a, 1)
        sq[iu] = sq.T[iu]
    return m


@dataclass
class PackedMoment:
    """The intermediate of the second-moment reduction (as Dask names its reductions'
    intermediates): Σ kkᵀ over some tokens as a packed float64 lower triangle, and how many
    tokens. Moments of disjoint token sets combine by addition (corpus shards, in shard order, so
    the merge is deterministic); :meth:`finish` turns one into the covariance C = S / n.
    Checkpoints and shard files store exactly these two numbers per layer."""

    tril: np.ndarray  # (d(d+1)/2,) float64, numpy's tril_indices order
    count: int

    @property
    def d(self) -> int:
        return int((np.sqrt(8 * self.tril.size + 1) - 1) // 2)

    def __iadd__(self, other: PackedMoment) -> PackedMoment:
        self.tril += other.tril
        self.count += other.count
        return self

    def finish(self, out: np.ndarray | None = None) -> np.ndarray:
        """C = S / n as a full symmetric d × d float64 matrix (written into ``out`` if given)."""
        c = unpack_symmetric(self.tril, self.d, out=out)
        c /= self.count
        return c


def pack_lower(full: np.ndarray) -> np.ndarray:
    """The packed lower triangle of a square matrix (the inverse of :func:`unpack_symmetric`)."""
    d = full.shape[0]
    out = np.empty(packed_size(d), dtype=np.float64)
    for j in range(d):
        out[j * (j + 1) // 2 : (j + 1) * (j + 2) // 2] = full[j, : j + 1]
    return out
