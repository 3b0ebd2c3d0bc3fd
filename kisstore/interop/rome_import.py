"""Import ROME-style ``layer_stats`` cache files into a store's covariance.

Every file is checked against the model (key module, layer count, d_ff) and for sanity
(count, finiteness, symmetry) before anything is written; the model group is then written
with ``cov_source = "imported"`` and ``complete = False``, so that ``kisstore extract`` adds
only the keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from kisstore._version import __version__
from kisstore.errors import InputError, StoreError
from kisstore.hashing import file_sha256
from kisstore.interop import rome_format as fmt
from kisstore.models.loading import ModelShape, inspect_model
from kisstore.models.registry import KeySite
from kisstore.store import commit, layout
from kisstore.store.io import Store
from kisstore.store.urls import public_options, redact


@dataclass
class ImportOptions:
    source: str  # stats_dir root, a model folder, or a {ds_name}_stats folder
    model: str
    store: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    ds_name: str | None = None  # None: the only {ds}_stats folder there
    model_name: str | None = None  # folder under a stats_dir root; None: try ROME's and EasyEdit's names
    precision: str | None = None  # only files of this precision
    sample_size: int | None = None  # only files with this sample size
    module: str | None = None  # hooked module template override, with {i}
    trust_remote_code: bool = False
    overwrite: bool = False


@dataclass
class ImportResult:
    model_id: str
    folder: Path
    layers: list[int]
    files: list[dict[str, Any]]
    ignored: list[str]


# -- finding the files -------------------------------------------------------------------
def _stats_files(folder: Path) -> list[fmt.StatsFileName]:
    out = []
    for p in sorted(folder.iterdir()):
        parsed = fmt.parse_file_name(p) if p.is_file() else None
        if parsed is not None and "mom2" in parsed.stats:
            out.append(parsed)
    return out


def _pick_ds_folder(model_folder: Path, ds_name: str | None) -> Path:
    if ds_name is not None:
        folder = model_folder / fmt.stats_folder_name(ds_name)
        if not folder.is_dir():
            found = sorted(p.name for p in model_folder.glob("*_stats") if p.is_dir())
            raise InputError(f"no {folder.name} folder in {model_folder} (found: {', '.join(found) or 'none'})")
        return folder
    found = sorted(p for p in model_folder.glob("*_stats") if p.is_dir())
    if not found:
        raise InputError(f"no {{ds_name}}_stats folder in {model_folder}")
    if len(found) != 1:
        names = ", ".join(p.name for p in found)
        raise InputError(f"{model_folder} holds {len(found)} *_stats folders ({names}); pass --ds-name")
    return found[0]


def find_stats_folder(source: Path, shape: ModelShape, ds_name: str | None = None,
                      model_name: str | None = None) -> Path:
    """The ``{ds_name}_stats`` folder meant by ``source``: that folder, a model folder or the stats_dir root."""
    if not source.is_dir():
        raise InputError(f"{source} is not a directory")
    if _stats_files(source):
        return source  # the {ds_name}_stats folder itself
    if any(p.is_dir() for p in source.glob("*_stats")):
        return _pick_ds_folder(source, ds_name)  # a {model_name} folder
    if model_name is not None:
        candidates = [model_name]
    else:
        candidates = list(dict.fromkeys([fmt.model_dir_name(shape.name_or_path),
                                         fmt.last_component_name(shape.name_or_path)]))
    for name in candidates:
        folder = source / name
        if folder.is_dir():
            return _pick_ds_folder(folder, ds_name)
    present = sorted(p.name for p in source.iterdir() if p.is_dir() and any(p.glob("*_stats")))
    raise InputError(
        f"no ROME stats for this model under {source}: looked for {' or '.join(candidates)} "
        f"(model folders there: {', '.join(present) or 'none'}); pass --model-name, or the "
        "{ds_name}_stats folder itself"
    )


def select_files(folder: Path, shape: ModelShape, precision: str | None = None,
                 sample_size: int | None = None) -> tuple[dict[int, fmt.StatsFileName], list[str]]:
    """Map layer index → file; refuse files for another module, out-of-range layers and duplicates."""
    site = KeySite(shape.hooked_module)
    chosen: dict[int, list[fmt.StatsFileName]] = {}
    ignored = []
    for f in _stats_files(folder):
        if (precision is not None and f.precision != precision) or (
                sample_size is not None and f.sample_size != sample_size):
            ignored.append(f.path.name)
            continue
        layer = site.layer_of(f.layer_name)
        if layer is None:
            raise InputError(f"{f.path}: module {f.layer_name!r} is not this model's key module "
                             f"({shape.hooked_module} for {shape.architecture}); wrong model's statistics?")
        if layer >= shape.n_layers:
            raise InputError(f"{f.path}: layer {layer} does not exist; the model has {shape.n_layers} layers "
                             f"(0-{shape.n_layers - 1})")
        if f.precision == "bfloat16":
            raise InputError(f"{f.path}: bfloat16 files cannot be read with numpy; re-save as float32")
        chosen.setdefault(layer, []).append(f)
    dupes = {layer: fs for layer, fs in chosen.items() if len(fs) > 1}
    if dupes:
        layer, fs = next(iter(sorted(dupes.items())))
        raise InputError(f"{folder}: {len(fs)} files for layer {layer} ({', '.join(f.path.name for f in fs)}); "
                         "choose one with --precision or --sample-size")
    if not chosen:
        extra = " matching --precision/--sample-size" if ignored else ""
        raise InputError(f"no ROME second-moment files (*_mom2*.npz){extra} in {folder}")
    return {layer: fs[0] for layer, fs in sorted(chosen.items())}, ignored



# -- the store side ----------------------------------------------------------------------
def _check_store(store: Store, model_id: str, overwrite: bool) -> list[str]:
    """Refuse to replace finished or in-progress work; return the groups to delete first."""
    if not store.exists():
        return []
    store.validate()
    path, ckpt = layout.model_path(model_id), layout.checkpoint_path(model_id)
    stale = [p for p in (path, ckpt, layout.analysis_path(model_id)) if store.has(p)]
    if overwrite or not stale:
        return stale
    if store.has(path):
        attrs = store.group_attrs(path)
        if attrs.get("complete") is True:
            raise StoreError(f"model {model_id} is complete in {redact(store.url)}; pass --overwrite to replace "
                             "its covariance (and keys) with the imported one")
        if attrs.get("cov_source") != "imported":
            raise StoreError(f"model {model_id} in {redact(store.url)} is an unfinished extraction; "
                             "pass --overwrite to replace it")
    if store.has(ckpt):
        raise StoreError(f"an extraction of {model_id} is in progress in {redact(store.url)} "
                         "(see `kisstore info`); pass --overwrite to discard it")
    return stale


def run_import(opts: ImportOptions, echo: Callable[[str], None] | None = None) -> ImportResult:
    """Validate every file, then write ``/models/<id>`` (cov, n_tokens, layer) with provenance."""
    import dask
    import dask.array as da

    say = echo or (lambda _m: None)
    model_id = layout.sanitize_model_id(opts.model)
    if opts.precision is not None and opts.precision not in fmt.PRECISIONS:
        raise InputError(f"unknown --precision {opts.precision!r}: use one of {', '.join(fmt.PRECISIONS)}")
    source = Path(opts.source).expanduser()
    if not source.exists():
        raise InputError(f"{source} does not exist")
    shape = inspect_model(opts.model, opts.module, opts.trust_remote_code)
    folder = find_stats_folder(source, shape, opts.ds_name, opts.model_name)
    files, ignored = select_files(folder, shape, opts.precision, opts.sample_size)
    say(f"[{model_id}] {shape.architecture}, {shape.n_layers} layers, d_ff {shape.d_ff}; "
        f"{len(files)} file(s) in {folder}")

    records = []
    origins = []  # kisstore's provenance of files it exported (None for the tools' own files)
    for layer, f in files.items():  # pass 1: check everything, hold nothing
        stats = fmt.read_stats_file(f.path, shape.d_ff)
        origins.append(stats.provenance)
        records.append({"layer": layer, "file": f.path.name, "count": stats.count, "precision": f.precision,
                        "dtype": stats.dtype, "sample_size": f.sample_size if f.sample_size is not None
                        else stats.sample_size, "sha256": file_sha256(f.path)})
        say(f"  layer {layer}: {f.path.name} (count {stats.count}, {stats.dtype})")
        del stats
    store = Store(opts.store, opts.storage_options)
    stale = _check_store(store, model_id, opts.overwrite)

    layers = list(files)
    counts = np.array([r["count"] for r in records], dtype=np.int64)
    d = shape.d_ff

    def load(path: Path, count: int) -> np.ndarray:
        stats = fmt.read_stats_file(path, d)  # read again: pass 1 kept no copy
        if stats.count != count:
            raise InputError(f"{path}: changed while importing")
        return (stats.total / count)[None]

    blocks = [da.from_delayed(dask.delayed(load)(files[layer].path, int(n)), shape=(1, d, d), dtype=np.float64)
              for layer, n in zip(layers, counts, strict=True)]
    ds = xr.Dataset({"cov": (("layer", "d_ff", "d_ff_"), da.concatenate(blocks, axis=0)),
                     "n_tokens": ("layer", counts)},
                    coords={"layer": np.asarray(layers, dtype=np.int64)})
    samples = {r["sample_size"] for r in records}
    corpus = folder.name.removesuffix("_stats")  # what the tools name the folder after
    documents = next(iter(samples)) if len(samples) == 1 else None
    corpus_tokens = max_length = None
    exported = {(o["corpus"], o.get("corpus_documents"), o.get("corpus_tokens"), o.get("max_length")) if o else None
                for o in origins}
    if len(exported) == 1 and None not in exported:
        # every file was exported by kisstore from one corpus: its name, not the folder's --ds-name
        corpus, documents, corpus_tokens, max_length = next(iter(exported))
    attrs = {
        **shape.provenance,
        "corpus": corpus,
        "corpus_documents": documents,
        "corpus_tokens": corpus_tokens,
        "max_length": max_length,
        "cov_source": "imported",
        "imported_from": str(folder.resolve()),
        "imported_files": records,
        "layers": layers,
        "storage_options": public_options(opts.storage_options),
        "versions": {"kisstore": __version__, "numpy": np.__version__, "xarray": xr.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": False,
    }
    store.init()
    commit.recover(store)
    path = layout.model_path(model_id)
    # staged in full, then committed with the removal of what it makes stale: a kill leaves
    # either the store as it was or the imported covariance in place
    with dask.config.set(scheduler="synchronous"):  # one layer in memory at a time
        store.write_dataset(commit.staged(path), ds)
    store.set_attrs(commit.staged(path), attrs)
    commit.commit(store, [*(commit.delete(p) for p in stale), commit.move(commit.staged(path), path)])
    return ImportResult(model_id, folder, layers, records, ignored)
