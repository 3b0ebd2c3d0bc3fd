"""Second-moment accumulators: Σ k kᵀ over token vectors, float32 per product, float64 in total."""

from __future__ import annotations

import numpy as np

BLOCK = 384  # width of the blocks whose row panels make the torch path's upper triangle
MAX_BLOCKS = 8
PANEL = 192  # target width of the oneDNN path's column blocks (d // PANEL of them, 1 to MAX_PANELS)
MAX_PANELS = 8
FLUSH_TOKENS = 8192  # the oneDNN path's float32 panels go into the float64 sum at least this often


def block_edges(d: int, width: int = BLOCK, most: int = MAX_BLOCKS) -> list[int]:
    """Edges of ``b = clamp(d // width, 1, most)`` near-equal blocks of ``0…d``."""
    b = min(max(d // width, 1), most)
    return [round(i * d / b) for i in range(b + 1)]


class SecondMoment:
    """Running uncentred sum S = Σ_t k_t k_tᵀ and count n for one layer.

    Only the upper triangle is computed (``syrk``'s saving without leaving torch's thread pool:
    a BLAS with its own threads, called from inside the forward, fights torch's OpenMP threads
    for the cores and made the corpus pass 3× slower on 2 cores). Two ways, chosen by
    ``kernels``:

    - ``"onednn"`` (CPU, where ``kisstore.extract.cpu_kernels`` finds the op): the keys' columns
      are cut into b blocks; panel i of S (columns of block i, rows from block i on) gets
      ``k_{i:}ᵀ k_i`` added *inside* oneDNN's GEMM into a float32 panel (1/2 + 1/(2b) of a full
      GEMM's work). Block i is the GEMM's small "weight" operand, which oneDNN repacks on every
      call; the other way round (row panels, the long block repacked) was ~7% slower. The
      float32 panels, transposed, are added into the float64 sum's upper triangle at least every
      ``FLUSH_TOKENS`` tokens and at every :meth:`flush` (the corpus pass flushes at each
      resumable point, so a resumed run repeats the same additions bit for bit).
    - ``"torch"`` (CPU fallback, and CUDA): b row panels, panel i = ``k_iᵀ k_{i:}`` (block i's
      rows, columns from block i on), one float32 torch matmul each, added straight into the
      float64 sum, which lives on the model's device (a float64 tensor on CUDA). One wide GEMM
      per panel instead of b − i square block products: fewer launches, better GEMM shapes
      (4 % faster on CPU here), the same FLOPs.

    Entries below the diagonal blocks are never written; only the upper triangle is meaningful.
    """

    def __init__(self, d: int, device: str = "cpu", kernels: str = "auto"):
        from kisstore.extract.cpu_kernels import resolve

        self.d = d
        self.device = device
        self.count = 0
        self.kernels = resolve(kernels, device)
        self._pending = 0  # tokens in the float32 panels, not yet in the float64 sum
        if self.kernels == "onednn":
            self._edges = block_edges(d, PANEL, MAX_PANELS)
            # float32 panels; None: empty since the last flush (the next product overwrites, no zeroing)
            self._panels: list = [None] * (len(self._edges) - 1)
        else:
            self._edges = block_edges(d)
        if device == "cpu":
            # column-major: a transposed (rows, width) panel lands on whole columns, and the torch
            # path's column blocks too. Committed now (np.zeros maps pages lazily): the first
            # flush would otherwise pay d²·8 bytes of page faults in the middle of the pass
            self._sum = np.empty((d, d), dtype=np.float64, order="F")
            self._sum.fill(0.0)
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
        e = self._edges
        if self.kernels == "onednn":
            # kᵀ as a contiguous (d, tokens) matrix: its row slices are the panels' operands
            # (oneDNN takes a strided view through a reference kernel ~100× slower)
            kt = k.cpu().T.contiguous()
            op = torch.ops.mkldnn._linear_pointwise
            for i, panel in enumerate(self._panels):
                tail, block = kt[e[i] :], kt[e[i] : e[i + 1]]  # panel i = tail · blockᵀ: (d − e_i, width)
                self._panels[i] = (op(tail, block, None, "none", [], "") if panel is None
                                   else op.binary(tail, panel, block, None, "add"))
            self._pending += int(k.shape[0])
            if self._pending >= FLUSH_TOKENS:
                self.flush()
            return
        if self.device == "cpu":
            k = k.cpu()
            total = torch.from_numpy(self._sum)  # a view: adds land in the numpy array
        else:
            total = self._sum
        for i in range(len(e) - 1):
            total[e[i] : e[i + 1], e[i] :] += k[:, e[i] : e[i + 1]].T @ k[:, e[i] :]

    def flush(self) -> None:
        """Move the float32 panels into the float64 sum (a no-op for the torch path)."""
        if not self._pending:
            return
        e = self._edges
        for i, panel in enumerate(self._panels):
            self._sum[e[i] : e[i + 1], e[i] :] += panel.numpy().T  # column-major sum: whole columns
            self._panels[i] = None
        self._pending = 0

    def sum_upper(self) -> np.ndarray:
        """The raw accumulator's upper triangle as numpy float64, for checkpoints."""
        self.flush()
        s = self._sum if self.device == "cpu" else self._sum.cpu().numpy()
        return np.triu(s)

    def load(self, upper: np.ndarray, count: int) -> None:
        self.count = int(count)
        if self.kernels == "onednn":
            self._panels = [None] * len(self._panels)
            self._pending = 0
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
