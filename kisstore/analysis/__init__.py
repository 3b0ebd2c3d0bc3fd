"""Analysis of a store's keys and covariances: whitened gram, P matrices, statistics.

Pure numeric functions live in ``geometry`` and ``stats``; ``lift`` maps them over layers
with xarray + Dask; ``core.analyze`` assembles the lazy result; ``scaling`` builds the
cross-model table; ``report`` draws it (imported on demand: it pulls in hvplot).
Nothing here imports torch or transformers.
"""

from kisstore.analysis.core import QUANTITIES, analyze
from kisstore.analysis.scaling import export_table, scaling_table

__all__ = ["analyze", "scaling_table", "export_table", "QUANTITIES"]
