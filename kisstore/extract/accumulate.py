"""Second-moment accumulators: Σ k kᵀ over token vectors, float32 per batch, float64 in total."""

from __future__ import annotations

import numpy as np


class SecondMoment:
    """Running uncentred sum S = Σ_t k_t k_tᵀ and count n for one layer.

    On CPU a float32 BLAS ``syrk`` per batch (half the work of a GEMM) is added into a
    float64 sum holding the upper triangle; on CUDA a float32 matmul is added into a
    float64 tensor on the device.
    """

    def __init__(self, d: int, device: str = "cpu"):
        self.d = d
        self.device = device
        self.count = 0
        if device == "cpu":
            self._sum = np.zeros((d, d), dtype=np.float64, order="F")
        else:
            import torch

            self._sum = torch.zeros((d, d), dtype=torch.float64, device=device)

    def add(self, k) -> None:
        """Add a (tokens, d) block of keys (torch tensor or numpy array)."""
        if k.shape[0] == 0:
            return
        self.count += int(k.shape[0])
        if self.device == "cpu":
            from scipy.linalg.blas import ssyrk

            a = k.detach().float().cpu().numpy() if hasattr(k, "detach") else np.asarray(k, np.float32)
            # a.T is Fortran-ordered, so syrk reads it without a copy: upper(aᵀa)
            self._sum += ssyrk(1.0, a.T, trans=0, lower=0)
        else:
            kf = k.float()
            self._sum += kf.T @ kf

    def sum_upper(self) -> np.ndarray:
        """The raw accumulator as numpy (upper triangle on CPU, full on CUDA), for checkpoints."""
        s = self._sum if self.device == "cpu" else self._sum.cpu().numpy()
        return np.triu(s)

    def load(self, upper: np.ndarray, count: int) -> None:
        self.count = int(count)
        if self.device == "cpu":
            self._sum[...] = upper
        else:
            import torch

            self._sum.copy_(torch.as_tensor(symmetric(upper)))

    def total(self) -> np.ndarray:
        """The full symmetric Σ k kᵀ in float64."""
        return symmetric(self.sum_upper())


def symmetric(upper: np.ndarray) -> np.ndarray:
    """Mirror an upper-triangular matrix into a full symmetric one."""
    u = np.triu(upper)
    return u + np.triu(u, 1).T
