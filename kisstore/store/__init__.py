"""The store: Zarr v3 groups laid out as in docs/store-layout.md."""

from kisstore.store.io import Store, open_store
from kisstore.store.layout import sanitize_model_id
from kisstore.store.urls import parse_storage_options, redact

__all__ = ["Store", "open_store", "sanitize_model_id", "parse_storage_options", "redact"]
