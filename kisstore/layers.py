"""Layer specifications: ``all``, ``5``, ``-1``, ``0-5``, ``0,3,7``, ``0-29:2``."""

from __future__ import annotations

import re

from kisstore.errors import InputError

_RANGE = re.compile(r"^(-?\d+)\s*-\s*(-?\d+)(?::(\d+))?$")


def parse_layers(spec: str | None, n_layers: int) -> list[int]:
    """Return the sorted, de-duplicated layer indices ``spec`` names in a model of ``n_layers``."""
    if spec is None or str(spec).strip().lower() in ("", "all"):
        return list(range(n_layers))
    out: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        m = _RANGE.match(part)
        try:
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                step = int(m.group(3) or 1)
                if step <= 0:
                    raise ValueError
                lo, hi = _resolve(lo, n_layers, spec), _resolve(hi, n_layers, spec)
                if hi < lo:
                    raise InputError(f"bad layer spec {spec!r}: range {part!r} runs backwards")
                out.update(range(lo, hi + 1, step))
            else:
                out.add(_resolve(int(part), n_layers, spec))
        except ValueError:
            raise InputError(
                f"bad layer spec {spec!r}: expected 'all', '5', '-1', '0-5', '0,3,7' or '0-29:2'"
            ) from None
    return sorted(out)


def _resolve(i: int, n_layers: int, spec: str) -> int:
    j = i + n_layers if i < 0 else i
    if not 0 <= j < n_layers:
        raise InputError(f"layer {i} out of range in {spec!r}: the model has layers 0-{n_layers - 1}")
    return j
