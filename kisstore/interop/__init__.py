"""Interoperability with other tools' files: ROME-style covariance caches (both directions).

``rome_format`` knows the file names and contents (numpy only); ``rome_export`` and
``rome_import`` connect them to a kisstore store.
"""

from kisstore.interop.rome_export import ExportOptions, ExportResult, run_export
from kisstore.interop.rome_import import ImportOptions, ImportResult, run_import

__all__ = ["ExportOptions", "ExportResult", "run_export", "ImportOptions", "ImportResult", "run_import"]
