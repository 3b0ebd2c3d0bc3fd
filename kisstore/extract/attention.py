"""Grouped-query attention without ``enable_gqa`` in the corpus pass, so float32 gets a fused kernel.

The corpus pass runs without an attention mask (its batches are right-padded and attention is
causal; see ``covariance.accumulate``). For a model with grouped-query attention (Llama-3,
SmolLM2, ...) transformers' SDPA path then asks torch for ``enable_gqa=True``, which torch's
fused kernels on CUDA take only in half precision (flash attention); in float32, the dtype
kisstore uses below 3 B parameters, torch falls back to its unfused "math" attention: the full
S×S scores (twice a causal kernel's work), a softmax and masking, each a pass over memory. A
profile on an H200 put 27 % of the corpus pass's GPU time there. Repeating the key/value heads
instead (transformers' own path when a mask is given) lets torch pick its memory-efficient
fused kernel, causal, for the same result.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_passes = 0  # corpus passes inside dense_kv_attention(), across threads
_on = False  # _passes > 0; a bool the compiler guards on, the same for one pass or two
_installed = False


def install() -> bool:
    """Wrap transformers' ``use_gqa_in_sdpa`` (once; False where this transformers has none).

    Called before any layer is compiled as well (``hooks.compiled_layers``): a graph traced
    against the unwrapped function would fail its guard once the wrapper is in, and recompile.
    """
    global _installed
    with _lock:
        if _installed:
            return True
        try:
            from transformers.integrations import sdpa_attention as sdpa
        except ImportError:
            return False
        original = getattr(sdpa, "use_gqa_in_sdpa", None)
        if original is None:
            return False

        def use_gqa_in_sdpa(attention_mask, key, *args, **kwargs):
            import torch

            if _on and key.dtype == torch.float32:
                return False
            return original(attention_mask, key, *args, **kwargs)

        sdpa.use_gqa_in_sdpa = use_gqa_in_sdpa
        _installed = True
        return True


@contextlib.contextmanager
def dense_kv_attention(enabled: bool = True) -> Iterator[None]:
    """While active, float32 grouped-query attention repeats its key/value heads rather than
    asking torch's SDPA for ``enable_gqa`` (a no-op for other dtypes and for models without
    grouped-query attention). Process-wide while any pass is inside: the two paths compute the
    same attention, so another thread's model only changes kernels."""
    global _passes, _on
    if not enabled or not install():
        yield
        return
    with _lock:
        _passes += 1
        _on = True
    try:
        yield
    finally:
        with _lock:
            _passes -= 1
            _on = _passes > 0
