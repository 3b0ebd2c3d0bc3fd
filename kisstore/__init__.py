"""kisstore: knowledge superposition measured into labeled, chunked Zarr stores.

The top-level import stays light (no torch, no transformers): a colleague who only
reads and analyses a shared store needs neither. Extraction lives in
``kisstore.extract`` and is imported on demand.
"""

from kisstore._version import __version__
from kisstore.errors import InputError, KisstoreError, StoreError

__all__ = ["__version__", "KisstoreError", "InputError", "StoreError", "open_store", "analyze"]


def __getattr__(name: str):
    # Lazy re-exports keep `import kisstore` cheap.
    if name == "open_store":
        from kisstore.store import open_store

        return open_store
    if name == "analyze":
        from kisstore.analysis import analyze

        return analyze
    raise AttributeError(name)
