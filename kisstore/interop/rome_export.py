"""Export a store's covariances as ROME-style ``layer_stats`` cache files.

The file for layer ℓ holds ``mom2.mom2 = cov[ℓ] · n_tokens[ℓ]`` (the raw sum Σ k kᵀ the
tools divide by ``mom2.count``), so their next run loads it instead of recomputing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kisstore._version import __version__
from kisstore.errors import InputError, StoreError
from kisstore.interop import layouts
from kisstore.interop import rome_format as fmt
from kisstore.layers import parse_layers
from kisstore.models.registry import KeySite
from kisstore.store import integrity, layout
from kisstore.store.io import Store, storage_errors
from kisstore.store.urls import redact

READERS = ("ROME", "MEMIT", "EasyEdit", "AlphaEdit", "the knowledge-superposition paper's code")


@dataclass
class ExportOptions:
    store: str
    stats_dir: str
    model: str | None = None  # group under /models (or the model name it was sanitised from)
    storage_options: dict[str, Any] = field(default_factory=dict)
    ds_name: str | None = "wikipedia"  # None: named after the store's corpus (corpus_ds_name)
    sample_size: int | str | None = None  # None: the store's corpus_documents; "all": no size suffix
    precision: str = "float32"
    model_name: str | None = None  # None: from name_or_path, as the format's rule names the folder
    layers: str | None = None
    overwrite: bool = False
    format: str = "rome"  # a naming rule of kisstore.interop.layouts.FORMATS (all: every one)


@dataclass
class LayoutFiles:
    """The files written under one naming rule."""

    rule: layouts.NamingRule
    model_name: str
    folder: Path
    files: dict[int, Path]


@dataclass
class ExportResult:
    model_id: str
    model_name: str  # the first rule's (for --format rome: the only one)
    folder: Path
    files: dict[int, Path]
    sample_size: int | None
    precision: str
    ds_name: str
    hooked_module: str
    layouts: list[LayoutFiles] = field(default_factory=list)


def pick_model(store: Store, requested: str | None) -> str:
    """The model group to export: the one named (as group or model name), or the store's only one."""
    names = store.model_ids(complete_only=False)
    if requested is None:
        if len(names) != 1:
            raise InputError(f"the store holds {len(names)} models ({', '.join(names) or 'none'}); pass --model")
        return names[0]
    for candidate in (requested, _sanitized(requested)):
        if candidate in names:
            return candidate
    raise InputError(f"no model {requested!r} in {redact(store.url)} (models: {', '.join(names) or 'none'})")


def _sanitized(name: str) -> str | None:
    try:
        return layout.sanitize_model_id(name)
    except InputError:
        return None


def corpus_ds_name(corpus: Any) -> str:
    """The ``{ds_name}_stats`` name for a store's recorded corpus spec: ``wikipedia`` for Wikipedia
    (or an unrecorded corpus), else a folder-safe name of the real corpus (``python_docs``, ``wordnet``,
    the Hub dataset's or the file's name)."""
    import re

    if not isinstance(corpus, str) or not corpus.strip() or _is_wikipedia(corpus):
        return "wikipedia"
    spec = corpus.strip()
    if spec in ("embedded", "python-docs"):
        return "python_docs"
    if spec.startswith("hf:"):
        spec = spec[3:].rstrip("/").split(":", 1)[0] if not Path(spec[3:]).is_dir() else spec[3:].rstrip("/")
        spec = spec.rsplit("/", 1)[-1]
    else:
        spec = Path(spec).name
        for suffix in (".txt", ".jsonl", ".parquet"):
            spec = spec.removesuffix(suffix)
    name = re.sub(r"[^A-Za-z0-9.-]+", "_", spec).strip("._-")
    return name or "corpus"


def _is_wikipedia(corpus: str) -> bool:
    return corpus == "wikipedia" or corpus.startswith("hf:wikimedia/wikipedia") or corpus.startswith("hf:wikipedia")


def _sample_size(opts: ExportOptions, attrs: dict[str, Any]) -> int | None:
    s = opts.sample_size
    if isinstance(s, str):
        if s.strip().lower() == "all":
            return None
        if not s.strip().isdigit():
            raise InputError(f"--sample-size {s!r}: expected a positive whole number or 'all'")
        s = int(s)
    if s is None:
        s = attrs.get("corpus_documents")
        if not isinstance(s, int) or isinstance(s, bool) or s <= 0:
            raise InputError("the store does not record how many corpus documents went into the covariance; "
                             "pass --sample-size N (the number your tool's mom2_n_samples will name), or "
                             "--sample-size all for a file without a size suffix")
    if s <= 0:
        raise InputError(f"--sample-size must be positive, got {s}")
    return int(s)


def run_export(opts: ExportOptions, echo: Callable[[str], None] | None = None,
               warn: Callable[[str], None] | None = None) -> ExportResult:
    """Write one cache file per layer and naming rule; every check happens before the first file is written."""
    rules = layouts.rules_for(opts.format)
    if opts.precision not in fmt.PRECISIONS:
        raise InputError(f"unknown --precision {opts.precision!r}: use one of {', '.join(fmt.PRECISIONS)}")
    if opts.ds_name is not None and (not opts.ds_name or "/" in opts.ds_name):
        raise InputError(f"bad --ds-name {opts.ds_name!r}")
    store = Store(opts.store, opts.storage_options, read_only=True)
    store.validate()
    model_id = pick_model(store, opts.model)
    path = layout.model_path(model_id)
    integrity.check_for_reading(store, [path])  # metadata as consolidated, every chunk in its place
    attrs = store.group_attrs(path)
    corpus = attrs.get("corpus")
    ds_name = opts.ds_name or corpus_ds_name(corpus)
    if isinstance(corpus, str) and corpus.strip() and not _is_wikipedia(corpus.strip()) and warn:
        # the tools' mom2_dataset names a corpus: a cache from another one must not pass for Wikipedia
        warn(f"warning: {model_id}'s covariance was computed on corpus {corpus!r}, not Wikipedia; writing "
             f"{ds_name}_stats/" + (" as --ds-name asks" if opts.ds_name else
                                    " (pass --ds-name wikipedia if your tool must find it there anyway)"))
    if attrs.get("complete") is not True and attrs.get("cov_source") != "imported":
        raise StoreError(f"model {model_id} in {redact(store.url)} is not complete (extraction unfinished); "
                         "finish it with `kisstore extract` first")
    template = attrs.get("hooked_module")
    if not isinstance(template, str) or template.count("{i}") != 1:
        raise StoreError(f"model {model_id} records no hooked_module template; cannot name the files")
    site = KeySite(template)
    name_or_path = str(attrs.get("name_or_path") or attrs.get("model_id") or "")
    names = {rule.name: opts.model_name or rule.model_folder(name_or_path) for rule in rules}
    for model_name in names.values():
        if not model_name or model_name in (".", "..") or "/" in model_name:
            if opts.model_name:
                raise InputError(f"--model-name {model_name!r} is not a folder name (no '/', not '.' or '..')")
            raise InputError(f"cannot name the model folder ({model_name!r}); pass --model-name")
    sample_size = _sample_size(opts, attrs)

    with storage_errors(store.url, store.storage_options):
        ds = store.open_dataset(path)
        if "cov" not in ds or "n_tokens" not in ds:
            raise StoreError(f"model {model_id} has no cov/n_tokens arrays to export")
        stored_layers = [int(x) for x in ds["layer"].values]
        n_tokens = {int(layer): int(n) for layer, n in zip(ds["layer"].values, ds["n_tokens"].values, strict=True)}
    n_layers = int(attrs.get("n_layers") or (max(stored_layers) + 1))
    all_layers = opts.layers is None or opts.layers.strip().lower() in ("", "all")
    wanted = stored_layers if all_layers else parse_layers(opts.layers, n_layers)
    missing = [x for x in wanted if x not in n_tokens]
    if missing:
        raise InputError(f"layers {missing} are not in the store (it has {stored_layers})")
    written: list[LayoutFiles] = []
    for rule in rules:
        folder = Path(opts.stats_dir) / names[rule.name] / fmt.stats_folder_name(ds_name)
        written.append(LayoutFiles(rule, names[rule.name], folder, {
            layer: folder / rule.file_name(site.module(layer), opts.precision, sample_size) for layer in wanted}))
    targets: dict[Path, int] = {}  # rules that name the same file write it once
    for lf in written:
        for layer, p in lf.files.items():
            targets.setdefault(p, layer)
    existing = [p for p in targets if p.exists()]
    if existing and not opts.overwrite:
        raise InputError(f"{existing[0]} already exists ({len(existing)} of {len(targets)} files); "
                         "pass --overwrite to replace them")

    if opts.precision == "float16":  # the sums overflow easily: check every layer before writing any
        limit = float(np.finfo(np.float16).max)
        for layer in wanted:
            with storage_errors(store.url, store.storage_options):
                peak = float(np.abs(ds["cov"].sel(layer=layer)).max()) * n_tokens[layer]
            if not peak < limit:
                raise InputError(f"layer {layer}: the sum Σ k kᵀ reaches {peak:.3g}, beyond float16's "
                                 f"{limit:.0f}; export with --precision float32")
    provenance = {"written_by": f"kisstore {__version__}", "store": redact(opts.store), "model_group": model_id,
                  "corpus": attrs.get("corpus"), "corpus_documents": attrs.get("corpus_documents"),
                  "corpus_tokens": attrs.get("corpus_tokens"), "max_length": attrs.get("max_length"),
                  "cov_source": attrs.get("cov_source"),
                  "naming_rules": [rule.name for rule in rules], "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for layer in wanted:
        with storage_errors(store.url, store.storage_options):
            cov = np.asarray(ds["cov"].sel(layer=layer).values, dtype=np.float64)
        total = cov * n_tokens[layer]
        arrays = fmt.mom2_payload(total, n_tokens[layer], opts.precision, sample_size,
                                  {**provenance, "layer": layer})
        del cov, total
        for target in (p for p, at in targets.items() if at == layer):
            fmt.write_stats_file(target, arrays)
            if echo:
                echo(str(target))
    first = written[0]
    return ExportResult(model_id, first.model_name, first.folder, first.files, sample_size, opts.precision, ds_name,
                        template, written)
