"""Second-moment accumulators: Σ k kᵀ over token vectors, float32 per batch, float64 in total."""

from __future__ import annotations

import numpy as np

BLOCK = 384  # width of the column blocks of the upper-triangle products (at most MAX_BLOCKS of them)
MAX_BLOCKS = 8


def block_edges(d: int) -> list[int]:
    """Edges of the column blocks: ``b = clamp(d // BLOCK, 1, MAX_BLOCKS)`` near-equal blocks."""
    b = min(max(d // BLOCK, 1), MAX_BLOCKS)
    return [round(i * d / b) for i in range(b + 1)]


class SecondMoment:
    """Running uncentred sum S = Σ_t k_t k_tᵀ and count n for one layer.

    Each batch's product is computed in float32 and added into a float64 sum, block by block:
    the keys' columns are cut into b blocks and only the b(b+1)/2 blocks on or above the
    diagonal are multiplied (torch matmuls, 1/2 + 1/(2b) of a full GEMM's work, ``syrk``'s
    saving without leaving torch). On CPU this matters twice: a BLAS outside torch (scipy's
    ``ssyrk``) called from inside the forward competes with torch's spinning OpenMP threads
    for the same cores, which made the corpus pass 3.1× slower than the bare forward on 2
    cores; the blocked torch products keep it near 1.3–1.4× (docs/benchmarks.md). The sum lives on
    the model's device (numpy float64 on CPU, a float64 tensor on CUDA); entries below the
    diagonal blocks are never written and only the upper triangle is meaningful.
    """

    def __init__(self, d: int, device: str = "cpu"):
        self.d = d
        self.device = device
        self.count = 0
        self._edges = block_edges(d)
        if device == "cpu":
            self._sum = np.zeros((d, d), dtype=np.float64, order="F")
        else:
            import torch

            self._sum = torch.zeros((d, d), dtype=torch.float64, device=device)

    def add(self, k) -> None:
        """Add a (tokens, d) block of keys (torch tensor or numpy array)."""
        import torch

        if k.shape[0] == 0:
            return
        self.count += int(k.shape[0])
        k = (k.detach() if hasattr(k, "detach") else torch.from_numpy(np.asarray(k))).float()
        if self.device == "cpu":
            k = k.cpu()
            total = torch.from_numpy(self._sum)  # a view: adds land in the numpy array
        else:
            total = self._sum
        e = self._edges
        for i in range(len(e) - 1):
            rows = k[:, e[i] : e[i + 1]]
            for j in range(i, len(e) - 1):
                total[e[i] : e[i + 1], e[j] : e[j + 1]] += rows.T @ k[:, e[j] : e[j + 1]]

    def sum_upper(self) -> np.ndarray:
        """The raw accumulator's upper triangle as numpy float64, for checkpoints."""
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
