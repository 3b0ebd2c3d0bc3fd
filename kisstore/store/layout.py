"""Names and paths of the store layout (schema version 2, see docs/store-layout.md)."""

from __future__ import annotations

import re

from kisstore.errors import InputError

SCHEMA_VERSION = 2  # 2: named analyses (/analyses/<name>), the model variable `key` (was `keys`)
CREATED_BY = "kisstore"
ITEMS = "items"
MODELS = "models"
ANALYSIS = "analysis"  # the default (unnamed) analysis: /analysis/<model>, /analysis/scaling
ANALYSES = "analyses"  # named analyses: /analyses/<name>/<model>, /analyses/<name>/scaling
KEY = "key"  # the keys (layer, item, d_ff) of a model; schema 1 (kisstore 0.1) called them `keys`
LEGACY_KEY = "keys"
CHECKPOINTS = "_checkpoints"
STAGING = "_staging"  # results written in full here first, then moved into place (never consolidated)
EDIT_CHECKPOINTS = f"{STAGING}/edit-checkpoints"  # an edit run's state every few steps (kisstore.edit.spread)
LOCKS = ".kisstore-locks"  # writer leases (kisstore.store.lock)
EVERY_CHUNK_WRITTEN = "kisstore_every_chunk_written"  # group attribute: a missing chunk file is damage
CHUNK_MANIFEST = "kisstore_chunk_manifest"  # array attribute: each chunk key's stored crc32c (store.integrity)
ITEM_FIELDS = ("subject", "prompt", "relation_id", "target_true", "target_new")
INDEX_VALUES = "kisstore_index_values"  # attribute of a dimension coordinate: its values (store.indexes)
INDEX_VALUES_MAX = 4096  # larger dimension coordinates are read from their chunk only
FROM_ITEMS = "kisstore_text_of_items"  # attribute of an analysis' label coordinate: the /items field it copies


def joined_text() -> dict[str, tuple[str, str]]:
    """The text variables of an analysis that are ``/items`` text addressed by an integer case-id
    variable beside them: name → (case-id variable, /items field). They are not stored (the ids
    are; a case id of −1, no such pair, reads as ""): ``kisstore.open_store`` and
    ``read_analysis`` join them back from ``/items`` lazily (``kisstore.store.text.join_item_text``).
    Analyses written before this layout hold them as stored arrays, which are read as they are."""
    out = {}
    for prefix in ("top", "top_wcos"):
        for end in ("", "_"):
            for field in ITEM_FIELDS:
                out[f"{prefix}_{field}{end}"] = (f"{prefix}_item{end}", field)
    for name in ("most_exposed", "most_disruptive"):
        out[f"{name}_subject"] = (name, "subject")
    return out

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def sanitize_model_id(name: str) -> str:
    """Turn a model name (alias, Hub id, path) into a group name that cannot escape the store.

    ``meta-llama/Llama-2-7b-hf`` → ``meta-llama--Llama-2-7b-hf``; a path keeps its last
    component (``/models/my-gpt2/`` → ``my-gpt2``, ``x/model.gguf`` → ``model``). The name is
    decided from the string alone, so it is the same from any working directory.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError("model id is empty")
    raw = name.strip()
    if "://" in raw:
        raise InputError(f"model id {name!r} must not be a URL")
    if raw.startswith(("/", ".", "~")) or raw.endswith((".gguf", "/")):
        raw = raw.rstrip("/").split("/")[-1]
        if raw.endswith(".gguf"):
            raw = raw[: -len(".gguf")]
    candidate = raw.replace("/", "--")
    if candidate in (".", "..") or ".." in candidate.split("--") or not _SAFE.match(candidate):
        raise InputError(
            f"model id {name!r} cannot be used as a group name "
            "(letters, digits, '.', '_', '-' and one '/' between owner and name)"
        )
    return candidate


def check_group_name(name: str) -> str:
    """Validate a model group name given directly (e.g. ``--model`` of analyze)."""
    if not isinstance(name, str) or not _SAFE.match(name) or ".." in name:
        raise InputError(f"invalid model group name {name!r}")
    return name


def model_path(model_id: str) -> str:
    return f"{MODELS}/{check_group_name(model_id)}"


DEFAULT_ANALYSIS = "default"  # the name of the unnamed analysis (/analysis) where a name is asked for


def check_analysis_name(name: str) -> str:
    """Validate an ``analyze --name`` (a group name below /analyses)."""
    if not isinstance(name, str) or not _SAFE.match(name) or ".." in name:
        raise InputError(f"invalid analysis name {name!r}: use letters, digits, '.', '_', '-' "
                         "(starting with a letter or digit)")
    return name


def analysis_root(name: str | None = None) -> str:
    """The group of an analysis: ``analysis`` (the default one, also ``name="default"``) or
    ``analyses/<name>``."""
    if name is None or name == DEFAULT_ANALYSIS:
        return ANALYSIS
    return f"{ANALYSES}/{check_analysis_name(name)}"


def analysis_path(model_id: str, name: str | None = None) -> str:
    return f"{analysis_root(name)}/{check_group_name(model_id)}"


def checkpoint_path(model_id: str) -> str:
    return f"{CHECKPOINTS}/{check_group_name(model_id)}"


def current_names(ds):
    """A /models/<id> ``xr.Dataset`` with today's variable names: schema 1 (kisstore 0.1) stored
    the keys as ``keys``, which shadows ``Dataset.keys()``; schema 2 calls them ``key``. Every
    reader of a model's keys goes through here (``analysis.subsets.model_dataset`` does)."""
    if LEGACY_KEY in ds.data_vars and KEY not in ds.variables:
        ds = ds.rename_vars({LEGACY_KEY: KEY})
    return ds
