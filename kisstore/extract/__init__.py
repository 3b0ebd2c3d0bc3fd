"""The extraction stage: the only part of kisstore that runs a model (needs the [extract] extra)."""

from kisstore.extract.pipeline import ExtractOptions, run_extract

__all__ = ["ExtractOptions", "run_extract"]
