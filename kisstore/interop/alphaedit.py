"""Export AlphaEdit's null-space projector P, computed from a store's C, in the file AlphaEdit loads.

AlphaEdit (``experiments/evaluate.py``) and EasyEdit (``models/alphaedit/AlphaEdit_main.py``)
build, for the edited layers ``hparams.layers`` in that order, one projector per layer from
the layer's second moment C = ``mom2 / count``: the singular vectors U₀ of C whose singular
value is below ``nullspace_threshold`` (2e-2 in every shipped hparams file), ``P = U₀ U₀ᵀ``.
They stack them into one float32 tensor of shape ``(len(layers), d_ff, d_ff)`` and
``torch.save`` it to ``null_space_project.pt``; EasyEdit loads ``torch.load(hparams.P_loc)``
(default ``./null_space_project.pt``) instead of recomputing when that file exists. C is
symmetric positive semi-definite, so its singular values are its eigenvalues and
``kisstore.edit.closed_form.nullspace_projector`` (eigh, float64) gives the same P.

Beside the tensor, ``<name>.json`` records the threshold, each layer's null-space dimension
and eigenvalues near the cut, and where C came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kisstore._version import __version__
from kisstore.errors import InputError, StoreError
from kisstore.interop.rome_export import pick_model
from kisstore.layers import parse_layers
from kisstore.store import integrity, layout
from kisstore.store.io import Store, storage_errors
from kisstore.store.urls import redact

DEFAULT_FILE = "null_space_project.pt"
DEFAULT_THRESHOLD = 2e-2  # AlphaEdit's nullspace_threshold (hparams/AlphaEdit/*.json, EasyEdit's YAML)


@dataclass
class ProjectorOptions:
    store: str
    layers: str  # the hparams' layers, e.g. "4-8"; P[i] belongs to the i-th of them (ascending)
    out: str = DEFAULT_FILE
    model: str | None = None
    threshold: float = DEFAULT_THRESHOLD
    storage_options: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False


@dataclass
class ProjectorResult:
    model_id: str
    path: Path
    sidecar: Path
    layers: list[int]
    null_dims: list[int]
    d_ff: int
    threshold: float


def sidecar_path(out: Path) -> Path:
    """``null_space_project.pt`` → ``null_space_project.json``."""
    return out.with_suffix(".json")


def run_projector_export(opts: ProjectorOptions, echo: Callable[[str], None] | None = None) -> ProjectorResult:
    """Compute P for each chosen layer from the store's C and write the tensor and its record.

    Every check happens before anything is written; the tensor is written atomically."""
    from kisstore.edit.closed_form import nullspace_projector

    say = echo or (lambda _m: None)
    threshold = _threshold(opts.threshold)
    if opts.layers is None or not str(opts.layers).strip():
        raise InputError("--format alphaedit needs --layers (the edited layers of your AlphaEdit hparams, e.g. 4-8)")
    out = Path(opts.out).expanduser()
    if out.suffix == ".json" or out.name in ("", ".", ".."):
        raise InputError(f"--out {opts.out!r}: give the projector's file name (e.g. {DEFAULT_FILE})")
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file name (e.g. {out / DEFAULT_FILE})")
    side = sidecar_path(out)
    existing = [p for p in (out, side) if p.exists()]
    if existing and not opts.overwrite:
        raise InputError(f"{existing[0]} already exists; pass --overwrite to replace it")

    store = Store(opts.store, opts.storage_options, read_only=True)
    store.validate()
    model_id = pick_model(store, opts.model)
    path = layout.model_path(model_id)
    integrity.check_for_reading(store, [path])
    attrs = store.group_attrs(path)
    if attrs.get("complete") is not True and attrs.get("cov_source") != "imported":
        raise StoreError(f"model {model_id} in {redact(store.url)} is not complete (extraction unfinished); "
                         "finish it with `kisstore extract` first")

    with storage_errors(store.url, store.storage_options):
        ds = store.open_dataset(path)
        if "cov" not in ds:
            raise StoreError(f"model {model_id} has no cov array to build the projector from")
        stored = [int(x) for x in ds["layer"].values]
        n_tokens = ({int(a): int(n) for a, n in zip(ds["layer"].values, ds["n_tokens"].values, strict=True)}
                    if "n_tokens" in ds else {})
    n_layers = int(attrs.get("n_layers") or (max(stored) + 1))
    layers = parse_layers(opts.layers, n_layers)
    missing = [x for x in layers if x not in stored]
    if missing:
        raise InputError(f"layers {missing} are not in the store (it has {stored})")

    blocks, per_layer = [], []
    for layer in layers:
        with storage_errors(store.url, store.storage_options):
            cov = np.asarray(ds["cov"].sel(layer=layer).values, dtype=np.float64)
        if not np.isfinite(cov).all():
            raise StoreError(f"layer {layer}: the stored C has NaN/inf entries")
        proj, dim = nullspace_projector(cov, threshold)
        evals = np.linalg.eigvalsh(cov)
        near = int(np.sum(np.abs(evals - threshold) <= 0.01 * threshold))
        per_layer.append({"layer": layer, "null_dim": dim, "d_ff": int(cov.shape[0]),
                          "eigenvalue_min": float(evals[0]), "eigenvalue_max": float(evals[-1]),
                          "eigenvalues_within_1pct_of_threshold": near,
                          "n_tokens": n_tokens.get(layer)})
        blocks.append(proj.astype(np.float32))
        say(f"  layer {layer}: null space of dimension {dim} of {cov.shape[0]} "
            f"(eigenvalues {evals[0]:.3g} … {evals[-1]:.3g})")
        del cov, proj
    d_ff = blocks[0].shape[0]
    template = str(attrs.get("hooked_module") or "")
    record = {
        "written_by": f"kisstore {__version__}",
        "file": out.name,
        "content": "torch.save of a float32 tensor P of shape (len(layers), d_ff, d_ff); P[i] projects onto the "
                   "null space of C at layers[i]",
        "layers": layers,
        "nullspace_threshold": threshold,
        "threshold_rule": "absolute: eigenvectors of C whose eigenvalue (= singular value, C is PSD) is below "
                          "nullspace_threshold, P = U0 U0^T, as AlphaEdit's get_project",
        "computed_with": "numpy.linalg.eigh in float64 on the store's C, then cast to float32",
        "per_layer": per_layer,
        "hparams": {"layers": layers, "nullspace_threshold": threshold, "P_loc": str(out.resolve()),
                    "rewrite_module_tmp": template.replace("{i}", "{}")},
        "C": {"store": redact(opts.store), "model_group": model_id, "name_or_path": attrs.get("name_or_path"),
              "definition": "E[k k^T] over the corpus's non-padding tokens (uncentered), k the input of the "
                            "hooked module", "hooked_module": template, "corpus": attrs.get("corpus"),
              "corpus_documents": attrs.get("corpus_documents"), "corpus_tokens": attrs.get("corpus_tokens"),
              "max_length": attrs.get("max_length"), "cov_source": attrs.get("cov_source")},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tensor = np.stack(blocks)
    del blocks
    digest = _save_tensor(out, tensor)
    record["sha256"] = digest
    _write_text(side, json.dumps(record, indent=2) + "\n")
    return ProjectorResult(model_id, out, side, layers, [r["null_dim"] for r in per_layer], d_ff, threshold)


def _threshold(value: Any) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise InputError(f"--threshold {value!r}: expected a positive number (AlphaEdit's 0.02)") from None
    if not np.isfinite(t) or t <= 0:
        raise InputError(f"--threshold must be a positive number, got {value!r}")
    return t


def _save_tensor(out: Path, array: np.ndarray) -> str:
    """``torch.save`` the array as a tensor, atomically; return the file's sha256."""
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=out.parent)
    os.close(fd)
    try:
        torch.save(torch.from_numpy(array), tmp)
        h = hashlib.sha256()
        with open(tmp, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return h.hexdigest()


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
