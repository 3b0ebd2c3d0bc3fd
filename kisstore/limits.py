"""Bounds on options whose absurd values would exhaust memory or crash a library (issue #18)."""

from __future__ import annotations

import math
import os

from kisstore.errors import InputError


def max_threads() -> int:
    """The most torch threads a run may ask for: 4 per CPU, at least 1024 is never needed."""
    return min(1024, max(1, 4 * (os.cpu_count() or 1)))


def check_threads(threads: int | None) -> None:
    """``--threads`` must be 1..:func:`max_threads` (100000 threads: a MemoryError, once a segfault)."""
    if threads is None:
        return
    if threads < 1:
        raise InputError(f"--threads must be positive, got {threads}")
    if threads > max_threads():
        raise InputError(f"--threads {threads} is too many: at most {max_threads()} "
                         f"(4 per CPU; this machine has {os.cpu_count()})")


def check_ridge(ridge: float) -> None:
    """``--ridge`` must be a finite number ≥ 0 (inf made every C look damaged)."""
    if not (math.isfinite(ridge) and ridge >= 0):
        raise InputError(f"--ridge must be a finite number ≥ 0, got {ridge}")
