"""Second-moment accumulators: Σ k kᵀ over token vectors, float32 per product, float64 in total.

The float64 sum holds only the lower triangle of S (the upper one of Sᵀ = S), exactly
d(d+1)/2 numbers: 4·d² + 4·d bytes per layer, half of a full d × d matrix. Each batch's
float32 products pass through one bounded staging buffer on their way into it (see
:class:`SecondMoment`).

Two layouts of that triangle:

- **blocked**, in memory: the columns are cut into b blocks; block i keeps its rows below the
  diagonal block as a dense (d − e_{i+1}, w_i) rectangle and its diagonal block's lower
  triangle packed row by row. A batch's products land on whole rectangle rows.
- **packed**, in checkpoints and shard files: the lower triangle row by row (numpy's
  ``tril_indices`` order: row j's entries S[j, 0..j] start at j(j+1)/2), the same for either
  kernel path and any block edges, so a checkpoint written by one resumes under the other.
"""

from __future__ import annotations

import functools

import numpy as np

from kisstore.store.packed import PackedMoment, packed_size, unpack_symmetric

BLOCK = 384  # target width of the torch path's column blocks
MAX_BLOCKS = 8
PANEL = 192  # target width of the oneDNN path's column blocks (d // PANEL of them, 1 to MAX_PANELS)
MAX_PANELS = 8
STAGE_BYTES = 16 * 2**20  # bound on one float32 product in flight (rows of a rectangle per GEMM call)


def block_edges(d: int, width: int = BLOCK, most: int = MAX_BLOCKS) -> list[int]:
    """Edges of ``b = clamp(d // width, 1, most)`` near-equal blocks of ``0…d``."""
    b = min(max(d // width, 1), most)
    return [round(i * d / b) for i in range(b + 1)]


def edges_for(d: int, kernels: str) -> list[int]:
    return block_edges(d, PANEL, MAX_PANELS) if kernels == "onednn" else block_edges(d)


def chunk_rows(width: int) -> int:
    """Rows of one rectangle product whose float32 result stays within ``STAGE_BYTES``."""
    return max(1, STAGE_BYTES // (4 * width))


def staging_bytes(d: int, kernels: str = "torch") -> int:
    """Largest float32 product one :meth:`SecondMoment.add` holds at a time (all layers share it:
    the layers are added one after the other): a diagonal block, or a rectangle's row chunk."""
    e = edges_for(d, kernels)
    return max(4 * (e[i + 1] - e[i]) * max(e[i + 1] - e[i], min(d - e[i + 1], chunk_rows(e[i + 1] - e[i])))
               for i in range(len(e) - 1))


def layer_bytes(d: int) -> int:
    """The float64 sum of one layer: its lower triangle, 8·d(d+1)/2 bytes."""
    return 8 * packed_size(d)


@functools.cache
def _tril_flat(w: int) -> np.ndarray:
    """Flat indices, into a row-major w × w block, of its lower triangle in row order."""
    r, c = np.tril_indices(w)
    return (r * w + c).astype(np.int64)


class SecondMoment:
    """Running uncentred sum S = Σ_t k_t k_tᵀ and count n for one layer.

    Only the lower triangle is computed and kept, in the blocked layout (module docstring).
    Every :meth:`add` computes, for each column block i of width w, the float32 products of the
    batch's keys: the diagonal block ``k_iᵀ k_i`` (w × w) and the rectangle below it
    ``k_{i+1:}ᵀ k_i`` in row chunks of at most ``STAGE_BYTES`` (16 MiB), and adds each into the
    float64 sum at once. So the float32 staging is one product at a time, at most
    :func:`staging_bytes` (max(4·w², 16 MiB)), and nothing float32 outlives a call: a run resumed
    from any checkpoint repeats the uninterrupted run's additions bit for bit, wherever it was cut.
    The products do 1/2 + 1/(2b) of a full GEMM's work. Two ways, chosen by ``kernels``:

    - ``"onednn"`` (CPU, where ``kisstore.extract.cpu_kernels`` finds the op): the keys
      transposed to a contiguous (d, tokens) matrix, whose row slices are the operands of
      oneDNN's GEMM (a strided view would go through a reference kernel ~100× slower); the
      block is the GEMM's small "weight" operand, which oneDNN repacks on every call (the other
      way round was ~7 % slower). Blocks of ~192 columns, at most 8.
    - ``"torch"`` (CPU fallback, and CUDA): torch matmuls on the model's device, the float64 sum
      on that device too. Blocks of ~384 columns, at most 8.

    The float32 products of one batch go into the float64 sum in one addition each, as the
    earlier full-matrix accumulator's flushes did every ~8192 tokens; adding every batch costs
    the same here (a contiguous add against the earlier transposed one).
    """

    def __init__(self, d: int, device: str = "cpu", kernels: str = "auto"):
        from kisstore.extract.cpu_kernels import resolve

        self.d = d
        self.device = device
        self.count = 0
        self._sign = 1  # of the add in progress
        self.kernels = resolve(kernels, device)
        self._edges = edges_for(d, self.kernels)
        e = self._edges
        shapes = [((d - e[i + 1], e[i + 1] - e[i]), packed_size(e[i + 1] - e[i])) for i in range(len(e) - 1)]
        if device == "cpu":
            # committed now (np.zeros maps pages lazily): the first batch would otherwise pay the
            # sum's page faults in the middle of the pass
            self._rect = [_committed_zeros(s) for s, _ in shapes]
            self._diag = [_committed_zeros((n,)) for _, n in shapes]
        else:
            import torch

            self._rect = [torch.zeros(s, dtype=torch.float64, device=device) for s, _ in shapes]
            self._diag = [torch.zeros(n, dtype=torch.float64, device=device) for _, n in shapes]
            self._index = {}

    def add(self, k, sign: int = 1) -> None:
        """Add a (tokens, d) block of keys (torch tensor or numpy array); ``sign=-1`` takes its
        products and tokens out again (a sharded pass's cut batch, ``kisstore.extract.shards``)."""
        import torch

        if k.shape[0] == 0:
            return
        self.count += sign * int(k.shape[0])
        self._sign = sign
        k = (k.detach() if hasattr(k, "detach") else torch.from_numpy(np.asarray(k))).float()
        e = self._edges
        if self.kernels == "onednn":
            kt = k.cpu().T.contiguous()
            op = torch.ops.mkldnn._linear_pointwise

            def product(rows, block):  # rows · blockᵀ: (len(rows), width)
                return op(rows, block, None, "none", [], "")
        else:
            if self.device == "cpu":
                k = k.cpu()
            kt = k.T  # a view: torch's matmul reads transposed operands as they are

            def product(rows, block):
                return rows @ block.T
        for i in range(len(e) - 1):
            a, b = e[i], e[i + 1]
            block = kt[a:b]
            self._add_diag(i, product(block, block))
            step = chunk_rows(b - a)
            for r in range(b, self.d, step):
                self._add_rect(i, r - b, product(kt[r : r + step], block))

    def _add_diag(self, i: int, square) -> None:
        w = square.shape[0]
        if self.device == "cpu":
            tri = square.numpy().reshape(-1)[_tril_flat(w)]
            if self._sign > 0:
                self._diag[i] += tri
            else:
                self._diag[i] -= tri
        else:
            import torch

            idx = self._index.get(w)
            if idx is None:
                idx = self._index[w] = torch.as_tensor(_tril_flat(w), device=square.device)
            self._diag[i].add_(square.reshape(-1).index_select(0, idx), alpha=self._sign)

    def _add_rect(self, i: int, start: int, part) -> None:
        if self.device == "cpu":
            if self._sign > 0:
                self._rect[i][start : start + part.shape[0]] += part.numpy()
            else:
                self._rect[i][start : start + part.shape[0]] -= part.numpy()
        else:
            self._rect[i][start : start + part.shape[0]].add_(part, alpha=self._sign)

    def flush(self) -> None:
        """Nothing to do: every product is in the float64 sum when :meth:`add` returns (kept for callers
        that mark resumable points)."""

    def packed(self) -> np.ndarray:
        """The float64 sum in the packed layout (lower triangle row by row), for checkpoints."""
        out = np.empty(packed_size(self.d), dtype=np.float64)
        rect, diag = self._host()
        e = self._edges
        for i in range(len(e) - 1):
            a, b = e[i], e[i + 1]
            for j in range(a, self.d):
                base = j * (j + 1) // 2
                if j < b:  # row j − a of the diagonal block's triangle
                    t = j - a
                    out[base + a : base + j + 1] = diag[i][t * (t + 1) // 2 : (t + 1) * (t + 2) // 2]
                else:
                    out[base + a : base + b] = rect[i][j - b]
        return out

    def moment(self) -> PackedMoment:
        """The sum so far as the reduction's intermediate (packed triangle and token count)."""
        return PackedMoment(self.packed(), int(self.count))

    def load(self, packed: np.ndarray, count: int) -> None:
        """Set the sum from its packed layout (as :meth:`packed` gives it) and the token count."""
        packed = np.asarray(packed, dtype=np.float64)
        if packed.shape != (packed_size(self.d),):
            raise ValueError(f"a packed sum of d_ff {self.d} has {packed_size(self.d)} numbers, not {packed.shape}")
        self.count = int(count)
        e = self._edges
        for i in range(len(e) - 1):
            a, b = e[i], e[i + 1]
            rect = np.empty((self.d - b, b - a), dtype=np.float64)
            for j in range(b, self.d):
                base = j * (j + 1) // 2
                rect[j - b] = packed[base + a : base + b]
            diag = np.concatenate([packed[j * (j + 1) // 2 + a : j * (j + 1) // 2 + j + 1] for j in range(a, b)])
            if self.device == "cpu":
                self._rect[i][...] = rect
                self._diag[i][...] = diag
            else:
                import torch

                self._rect[i].copy_(torch.as_tensor(rect))
                self._diag[i].copy_(torch.as_tensor(diag))

    def total(self) -> np.ndarray:
        """The full symmetric Σ k kᵀ in float64."""
        return unpack_symmetric(self.packed(), self.d)

    def _host(self):
        if self.device == "cpu":
            return self._rect, self._diag
        return [r.cpu().numpy() for r in self._rect], [t.cpu().numpy() for t in self._diag]


def _committed_zeros(shape) -> np.ndarray:
    a = np.empty(shape, dtype=np.float64)
    a.fill(0.0)
    return a
