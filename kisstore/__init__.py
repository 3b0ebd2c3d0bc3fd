"""kisstore: knowledge superposition measured into labeled, chunked Zarr stores.

The top-level import stays light (no torch, no transformers): a colleague who only
reads and analyses a shared store needs neither. Extraction lives in
``kisstore.extract`` and is imported on demand.

For quick experiments (docs/python-api.md): ``kisstore.extract(model, store, ...)`` runs
``kisstore extract``; ``kisstore.keys(model, prompts, subjects)`` returns keys in memory;
``kisstore.forgetting_table(store)`` an edit run's table as a DataFrame.
"""

from kisstore._version import __version__
from kisstore.errors import InputError, KisstoreError, StoreError

__all__ = ["__version__", "KisstoreError", "InputError", "StoreError", "open_store", "analyze",
           "extract", "keys", "load_model", "forgetting_table"]

_API = ("keys", "load_model", "forgetting_table")


def __getattr__(name: str):
    # Lazy re-exports keep `import kisstore` cheap.
    if name == "open_store":
        from kisstore.store import open_store

        return open_store
    if name == "analyze":
        from kisstore.analysis import analyze

        return analyze
    if name == "extract":
        # the subpackage, which is callable: kisstore.extract(...) is kisstore.api.extract(...), and
        # kisstore.extract.ExtractOptions keeps working (importing the subpackage binds this name to it)
        import kisstore.extract as module

        return module
    if name in _API:
        from kisstore import api

        return getattr(api, name)
    raise AttributeError(name)
