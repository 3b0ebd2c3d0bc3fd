"""ROME's ``layer_stats`` cache: file names and the contents of one ``.npz`` per layer.

The editing tools built on ROME's statistics code (ROME, MEMIT, EasyEdit, AlphaEdit and
their descendants) look for the uncentered second moment of a layer's MLP keys at

    {stats_dir}/{model_name}/{ds_name}_stats/{layer_name}_{precision}_mom2_{sample_size}.npz

and read the keys ``mom2.mom2`` (the raw sum Σ k kᵀ), ``mom2.count`` (how many key vectors
went in) and ``sample_size`` (must equal the sample size they ask for, or they recompute).
Their covariance is ``mom2.mom2 / mom2.count``. This module is pure: paths and numpy arrays
in and out, no store and no torch.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kisstore.errors import InputError

PRECISIONS = ("float16", "float32", "float64")
CONSTRUCTOR = "util.runningstats.SecondMoment()"
SUM_KEY, COUNT_KEY, CONSTRUCTOR_KEY, SAMPLE_KEY = "mom2.mom2", "mom2.count", "mom2.constructor", "sample_size"
PROVENANCE_KEY = "kisstore.provenance"

# How ROME's cache stores ``sample_size=None`` ("all documents"): a NaN with this exact bit pattern.
_NULL_BITS = 0xFFF8000000000002

# Relative asymmetry |S - Sᵀ| / max diag(S) tolerated per precision (GEMM order differs per entry).
_SYMMETRY_RTOL = {"float16": 1e-2, "float32": 1e-4, "float64": 1e-9}

_STAT = r"(?:mom2|mean|norm_mean)"
_NAME_RE = re.compile(
    rf"^(?P<layer>.+)_(?P<precision>float16|float32|float64|bfloat16)"
    rf"_(?P<stats>{_STAT}(?:-{_STAT})*)"
    r"(?P<tokens>_t(?:\{batch_tokens\}|\d+))?"
    r"(?:_(?P<sample>\d+))?\.npz$"
)


@dataclass(frozen=True)
class StatsFileName:
    """What a cache file's name says: module, precision, statistics and sample size."""

    path: Path
    layer_name: str
    precision: str
    stats: tuple[str, ...]
    sample_size: int | None  # None: the file has no size suffix (ROME's "all documents")
    tokens_infix: str | None  # the ``_t{batch_tokens}`` part some runs add, as written


@dataclass
class LayerStats:
    """One validated cache file: the float64 sum (symmetrised), its count and what it declared."""

    total: np.ndarray
    count: int
    dtype: str
    sample_size: int | None
    provenance: dict[str, Any] | None = None  # what kisstore's export wrote beside the arrays


def model_dir_name(name_or_path: str) -> str:
    """The folder ROME, MEMIT and AlphaEdit use for a model: ``_name_or_path`` with ``/`` → ``_``."""
    return name_or_path.replace("/", "_")


def last_component_name(name_or_path: str) -> str:
    """The folder some EasyEdit versions use instead: the last component of ``_name_or_path``."""
    return name_or_path.rstrip("/").rsplit("/", 1)[-1]


def stats_folder_name(ds_name: str) -> str:
    return f"{ds_name}_stats"


def file_name(layer_name: str, precision: str, sample_size: int | None) -> str:
    """``{layer_name}_{precision}_mom2_{sample_size}.npz`` (no size suffix for ``None``)."""
    suffix = "" if sample_size is None else f"_{sample_size}"
    return f"{layer_name}_{precision}_mom2{suffix}.npz"


def stats_path(stats_dir: str | Path, model_name: str, ds_name: str, layer_name: str, precision: str,
               sample_size: int | None) -> Path:
    """Where the tools look for one layer's second moment."""
    return (Path(stats_dir) / model_name / stats_folder_name(ds_name)
            / file_name(layer_name, precision, sample_size))


def parse_file_name(path: str | Path) -> StatsFileName | None:
    """Split a cache file name into its parts; ``None`` if it is not one."""
    p = Path(path)
    m = _NAME_RE.match(p.name)
    if m is None:
        return None
    sample = m.group("sample")
    return StatsFileName(p, m.group("layer"), m.group("precision"), tuple(m.group("stats").split("-")),
                         None if sample is None else int(sample), m.group("tokens"))


def null_sample_size() -> np.ndarray:
    """ROME's encoding of ``sample_size=None``: a float64 NaN with a fixed payload."""
    return np.array(struct.unpack(">d", struct.pack(">Q", _NULL_BITS))[0], dtype=np.float64)


def _is_null(value: np.ndarray) -> bool:
    return (value.ndim == 0 and value.dtype == np.float64 and bool(np.isnan(value))
            and struct.unpack(">Q", struct.pack(">d", float(value)))[0] == _NULL_BITS)


def mom2_payload(total: np.ndarray, count: int, precision: str, sample_size: int | None,
                 provenance: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The arrays of one cache file; refuses a precision that cannot hold the sum."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if count <= 0:
        raise InputError(f"cannot write a second moment over {count} tokens")
    with np.errstate(over="ignore"):
        cast = np.asarray(total).astype(precision)
    if not np.isfinite(cast).all():
        raise InputError(
            f"the sum Σ k kᵀ overflows {precision} (largest entry {float(np.abs(total).max()):.3g}); "
            "export with --precision float32 or float64"
        )
    out = {
        SUM_KEY: cast,
        COUNT_KEY: np.array(int(count), dtype=np.int64),
        CONSTRUCTOR_KEY: np.array(CONSTRUCTOR),
        SAMPLE_KEY: null_sample_size() if sample_size is None else np.array(int(sample_size), dtype=np.int64),
    }
    if provenance:
        out[PROVENANCE_KEY] = np.array(json.dumps(dict(provenance), default=str, sort_keys=True))
    return out


def write_stats_file(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an uncompressed ``.npz`` atomically (a killed export leaves no half file there)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_stats_file(path: Path, d_ff: int | None = None) -> LayerStats:
    """Load and check one cache file; every problem is an InputError naming the file."""
    name = str(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{name}: not a NumPy .npz archive ({_first_line(e)})") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise InputError(f"{name}: not a NumPy .npz archive (a single .npy array)")
    with npz:
        _check_sizes(path, name)
        missing = [k for k in (SUM_KEY, COUNT_KEY) if k not in npz.files]
        if missing:
            raise InputError(f"{name}: missing key(s) {', '.join(missing)} (not a ROME SecondMoment cache; "
                             f"keys found: {', '.join(npz.files) or 'none'})")
        try:
            raw = npz[SUM_KEY]
            count_arr = npz[COUNT_KEY]
            sample_arr = npz[SAMPLE_KEY] if SAMPLE_KEY in npz.files else None
            prov_arr = npz[PROVENANCE_KEY] if PROVENANCE_KEY in npz.files else None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise InputError(f"{name}: unreadable array ({_first_line(e)}); pickled objects are refused") from e
    if raw.ndim != 2 or raw.shape[0] != raw.shape[1]:
        raise InputError(f"{name}: {SUM_KEY} has shape {raw.shape}, expected a square matrix")
    if d_ff is not None and raw.shape[0] != d_ff:
        raise InputError(f"{name}: {SUM_KEY} is {raw.shape[0]}×{raw.shape[1]}, but this model's keys have "
                         f"d_ff = {d_ff}")
    if raw.dtype.kind not in "fiu":
        raise InputError(f"{name}: {SUM_KEY} has dtype {raw.dtype}, expected floating point")
    count = _count(name, count_arr)
    total = raw.astype(np.float64)
    bad = int(np.size(total) - np.count_nonzero(np.isfinite(total)))
    if bad:
        raise InputError(f"{name}: {SUM_KEY} has {bad} non-finite entries (NaN or inf)")
    diag = np.diagonal(total)
    if (diag < 0).any():
        raise InputError(f"{name}: {SUM_KEY} has negative diagonal entries; it is not a sum of k kᵀ")
    rtol = _SYMMETRY_RTOL.get(str(raw.dtype), _SYMMETRY_RTOL["float32"])
    scale = float(diag.max()) if diag.size else 0.0
    asym = _max_asymmetry(total)
    if asym > rtol * max(scale, np.finfo(np.float64).tiny):
        raise InputError(f"{name}: {SUM_KEY} is not symmetric (max |S − Sᵀ| = {asym:.3g}, "
                         f"{asym / max(scale, 1e-300):.2g} of the largest diagonal entry)")
    total += total.T
    total *= 0.5
    return LayerStats(total, count, str(raw.dtype), _sample_size(sample_arr), _provenance(prov_arr))


def _check_sizes(path: Path, name: str) -> None:
    """Refuse a member whose .npy header claims more bytes than the member holds, before
    NumPy allocates them (a header saying 10⁷×10⁷ float64 is a MemoryError, not a message)."""
    from numpy.lib import format as npy

    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as fh:
                    version = npy.read_magic(fh)
                    if version not in readers:
                        continue  # NumPy's own reader judges other versions
                    shape, _, dtype = readers[version](fh)
                    header = fh.tell()
                member = info.filename[:-4]
                if dtype.hasobject:
                    continue  # refused below: pickled objects
                need = int(dtype.itemsize)
                for n in shape:
                    need *= int(n)
                held = info.file_size - header
                if need > held:
                    raise InputError(f"{name}: {member} claims shape {_shape(shape)} ({need} bytes) but holds "
                                     f"{held} bytes: a damaged or forged file")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{name}: unreadable array header ({_first_line(e)})") from e


def _shape(shape: tuple) -> str:
    text = "×".join(str(n) for n in shape) or "()"
    return text if len(text) <= 60 else text[:60] + "…"


def _provenance(arr: np.ndarray | None) -> dict[str, Any] | None:
    """kisstore's provenance record of an exported file: None when absent, not ours, or not well
    formed (a string corpus, a positive integer or null document count)."""
    if arr is None or arr.ndim != 0 or arr.dtype.kind != "U" or arr.size * arr.itemsize > 65536:
        return None
    try:
        prov = json.loads(str(arr))
    except (ValueError, RecursionError):
        return None
    if not isinstance(prov, dict) or not str(prov.get("written_by", "")).startswith("kisstore"):
        return None
    if not isinstance(prov.get("corpus"), str) or not _count_or_none(prov.get("corpus_documents")):
        return None
    for key in ("corpus_tokens", "max_length"):  # written since 0.1; a malformed one is dropped
        if not _count_or_none(prov.get(key)):
            prov[key] = None
    return prov


def _count_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)


def _count(name: str, arr: np.ndarray) -> int:
    if arr.size != 1 or arr.dtype.kind not in "fiu":
        raise InputError(f"{name}: {COUNT_KEY} is not a single number (shape {arr.shape}, dtype {arr.dtype})")
    value = float(arr.reshape(()))
    if not np.isfinite(value) or value != int(value):
        raise InputError(f"{name}: {COUNT_KEY} = {value} is not a whole number")
    if value <= 0:
        raise InputError(f"{name}: {COUNT_KEY} is {int(value)}; a second moment needs at least one token")
    return int(value)


def _sample_size(arr: np.ndarray | None) -> int | None:
    if arr is None or arr.size != 1 or arr.dtype.kind not in "fiu":
        return None
    value = arr.reshape(())
    if _is_null(value) or not np.isfinite(float(value)):
        return None
    return int(value)


def _max_asymmetry(a: np.ndarray, block: int = 2048) -> float:
    """max |A − Aᵀ| without a second full-size temporary."""
    worst = 0.0
    for i in range(0, a.shape[0], block):
        diff = np.abs(a[i : i + block, :] - a[:, i : i + block].T)
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
    return worst


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
