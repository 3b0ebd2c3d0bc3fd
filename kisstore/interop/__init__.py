"""Interoperability with other tools' files: ROME-style covariance caches (both directions) and
AlphaEdit's null-space projector (out).

``rome_format`` knows the file contents and ``layouts`` each tool's file names (numpy only);
``rome_export``, ``rome_import`` and ``alphaedit`` connect them to a kisstore store.
"""

from kisstore.interop.rome_export import ExportOptions, ExportResult, run_export
from kisstore.interop.rome_import import ImportOptions, ImportResult, run_import

__all__ = ["ExportOptions", "ExportResult", "run_export", "ImportOptions", "ImportResult", "run_import"]
