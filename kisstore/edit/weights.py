"""Read and write the MLP down-projection weight as ``W`` (d_model × d_ff, "out × in").

transformers' GPT-2 ``Conv1D`` stores its weight transposed, (in, out); ``nn.Linear``
stores (out, in). The edit math always sees ``W`` with ``W k`` mapping a key (d_ff) to
the residual stream (d_model); these two functions hide the storage order.
"""

from __future__ import annotations

import numpy as np


def _transposed(module) -> bool:
    return type(module).__name__ == "Conv1D"


def down_proj_weight(module) -> np.ndarray:
    """The module's weight as a float64 ``W`` (d_model, d_ff) copy."""
    w = module.weight.detach().to("cpu").double().numpy()
    return np.array(w.T if _transposed(module) else w, dtype=np.float64, copy=True)


def set_down_proj_weight(module, weight: np.ndarray) -> None:
    """Write ``W`` (d_model, d_ff) into the module, cast to its dtype and device."""
    import torch

    w = np.asarray(weight, dtype=np.float64)
    if _transposed(module):
        w = w.T
    if tuple(w.shape) != tuple(module.weight.shape):
        raise ValueError(f"weight shape {w.shape} does not fit {type(module).__name__} {tuple(module.weight.shape)}")
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)).to(module.weight.dtype))
