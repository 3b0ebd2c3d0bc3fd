"""The closed-form rank-one edit and its predicted interference: pure numpy, float64.

ROME/MEMIT change an MLP down-projection ``W`` (d_model × d_ff, "out × in") so that
the edited fact's key ``k*`` maps to a new value ``v*``:

    Λ = (v* − W k*) / (k*ᵀ C⁻¹ k*),        W' = W + Λ (C⁻¹ k*)ᵀ.

Every other key ``k`` then moves by ``Λ (C⁻¹k*)ᵀ k = r · G(k*, k) / G(k*, k*)`` with
``r = v* − W k*`` the intended change and ``G`` the whitening-space inner product: the
coefficient is the paper's P value. ``C⁻¹`` is never formed; every solve goes through the
Cholesky factor ``C = L Lᵀ`` (see :mod:`kisstore.analysis.geometry`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg


@dataclass(frozen=True)
class RankOneEdit:
    """One closed-form edit: ``W' = W + lam ⊗ direction`` (``direction = C⁻¹k*`` or its projection)."""

    lam: np.ndarray  # (d_model,) Λ (AlphaEdit: r itself)
    direction: np.ndarray  # (d_ff,) C⁻¹k*, P·C⁻¹k* under a null-space projection, or AlphaEdit's u
    residual: np.ndarray  # (d_model,) r = v* − W k*, the change intended for k*

    def apply(self, weight: np.ndarray) -> np.ndarray:
        """Return ``W + Λ directionᵀ`` (a new float64 array)."""
        return weight + np.outer(self.lam, self.direction)

    def change(self, keys: np.ndarray) -> np.ndarray:
        """How this edit moves the values of ``keys`` (N, d_ff): rows ``Λ (directionᵀ k_i)``."""
        return np.outer(np.asarray(keys, dtype=np.float64) @ self.direction, self.lam)


def cov_solve(lower: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``C⁻¹ k`` from the lower Cholesky factor of C (k may be (d,) or (d, N))."""
    return scipy.linalg.cho_solve((lower, True), np.asarray(k, dtype=np.float64), check_finite=False)


def rank_one_edit(
    weight: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    lower: np.ndarray,
    projector: np.ndarray | None = None,
) -> RankOneEdit:
    """The closed-form edit that makes ``W' k* = v*`` exactly.

    With a ``projector`` P (AlphaEdit's null-space projection, symmetric d_ff × d_ff) the
    update direction is ``P C⁻¹ k*`` and Λ is re-solved for it, ``Λ = r / (k*ᵀ P C⁻¹ k*)``:
    the edit still hits v*, but moves only directions outside C's dominant subspace.
    """
    w = np.asarray(weight, dtype=np.float64)
    k = np.asarray(key, dtype=np.float64)
    residual = np.asarray(value, dtype=np.float64) - w @ k
    direction = cov_solve(lower, k)
    if projector is not None:
        direction = projector @ direction
    denom = float(direction @ k)
    lam = residual / denom if denom != 0.0 else np.full_like(residual, np.nan)
    return RankOneEdit(lam, direction, residual)


class AlphaEditSequence:
    """AlphaEdit's update (Fang et al., ICLR 2025) for a sequence of single edits at one layer.

    AlphaEdit solves a regularised least-squares problem in the null space ``P`` of
    ``C = E[kkᵀ]``'s dominant directions: for an edit with key k*, intended change
    ``r = v* − W k*`` and the keys ``K_p`` edited before (its cache),

        ΔW = r k*ᵀ P (A P + l2·I)⁻¹,    A = K_p K_pᵀ + k* k*ᵀ,

    a rank-one ``ΔW = r uᵀ`` with ``u = (P A + l2·I)⁻¹ P k*``. ``u`` is computed in the span of
    the edited keys (Woodbury: ``u = (P k* − P K (l2·I + Kᵀ P K)⁻¹ Kᵀ P k*) / l2`` with
    ``K = [K_p, k*]``), never as a d × d system. Unlike ROME's update it does not land
    exactly: ``ΔW k* = (uᵀk*) r`` with ``uᵀk* < 1`` (the l2 term). AlphaEdit's code spreads an
    edit over several layers (MEMIT's residual split) and averages keys over prefixed prompts;
    here it acts on one layer with the stored keys, like the rest of ``kisstore edit``.
    """

    def __init__(self, projector: np.ndarray, l2: float = 10.0):
        if not l2 > 0:
            raise ValueError(f"l2 must be positive, got {l2}")
        self.projector = np.asarray(projector, dtype=np.float64)
        self.l2 = float(l2)
        self._keys: list[np.ndarray] = []
        self._projected: list[np.ndarray] = []  # P k for every key edited so far

    def edit(self, weight: np.ndarray, key: np.ndarray, value: np.ndarray) -> RankOneEdit:
        """The update for the next edit; the key joins the cache (AlphaEdit adds K₁K₁ᵀ after each edit)."""
        w = np.asarray(weight, dtype=np.float64)
        k = np.asarray(key, dtype=np.float64)
        residual = np.asarray(value, dtype=np.float64) - w @ k
        pk = self.projector @ k
        keys = np.stack([*self._keys, k], axis=1)  # (d, m)
        projected = np.stack([*self._projected, pk], axis=1)
        gram = keys.T @ projected  # Kᵀ P K (m, m); its last column is Kᵀ P k*
        gram = (gram + gram.T) / 2
        coef = np.linalg.solve(gram + self.l2 * np.eye(gram.shape[0]), gram[:, -1])
        u = (pk - projected @ coef) / self.l2
        self._keys.append(k)
        self._projected.append(pk)
        return RankOneEdit(residual.copy(), u, residual)

    def state(self) -> dict[str, np.ndarray]:
        """The cache (edited keys and their projections, (m, d) each) for a run's checkpoint."""
        d = self.projector.shape[0]
        return {name: np.stack(rows) if rows else np.zeros((0, d))
                for name, rows in (("keys", self._keys), ("projected", self._projected))}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Continue from :meth:`state` (a resumed run)."""
        self._keys = [np.array(r, dtype=np.float64) for r in state["keys"]]
        self._projected = [np.array(r, dtype=np.float64) for r in state["projected"]]


def whitened_keys(keys: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """``Z = L⁻¹ Kᵀ`` (d_ff, N): keys in whitening space, where ``G = ZᵀZ``."""
    return scipy.linalg.solve_triangular(lower, np.asarray(keys, dtype=np.float64).T, lower=True,
                                         check_finite=False)


def coefficients(edited_keys: np.ndarray, keys: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """P values ``G(k*_j, k_i) / G(k*_j, k*_j)`` (edits × N) from whitened keys.

    Computed independently of any weight: the prediction side of the identity.
    """
    ze = whitened_keys(edited_keys, lower)
    zk = whitened_keys(keys, lower)
    g = ze.T @ zk
    return g / np.einsum("ij,ij->j", ze, ze)[:, None]


def predicted_changes(residuals: np.ndarray, coeff: np.ndarray) -> np.ndarray:
    """Cumulative predicted value changes after each edit: (steps, N, d_model).

    ``out[n, i] = Σ_{j ≤ n} coeff[j, i] · r_j`` — the paper's eqs. 10–15: every key moves by
    its P value times each edit's intended change.
    """
    r = np.asarray(residuals, dtype=np.float64)  # (steps, d_model)
    per_step = np.asarray(coeff, dtype=np.float64)[:, :, None] * r[:, None, :]
    return np.cumsum(per_step, axis=0)


def nullspace_projector(cov: np.ndarray, threshold: float = 2e-2, *, relative: bool = False) -> tuple[np.ndarray, int]:
    """AlphaEdit's projector onto the null space of C's dominant directions.

    AlphaEdit keeps the eigenvectors U₀ of the second moment C = E[kkᵀ] whose eigenvalue is
    below ``threshold`` (an absolute value; AlphaEdit's default 2e-2) and projects with
    ``P = U₀ U₀ᵀ``. With ``relative`` the cut is ``threshold · λ_max`` instead, which reads
    the same at every layer (C's scale grows with depth). Returns (P, rank of P).
    """
    evals, evecs = np.linalg.eigh(np.asarray(cov, dtype=np.float64))
    cut = threshold * evals[-1] if relative else threshold
    null = evecs[:, evals < cut]
    return null @ null.T, int(null.shape[1])


def relative_error(predicted: np.ndarray, measured: np.ndarray, axis=None) -> np.ndarray:
    """``|predicted − measured| / |measured|`` (Frobenius over ``axis``); 0/0 counts as 0."""
    num = np.sqrt(np.sum((np.asarray(predicted) - np.asarray(measured)) ** 2, axis=axis))
    den = np.sqrt(np.sum(np.asarray(measured) ** 2, axis=axis))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num > 0, np.inf, 0.0))
    return np.where(np.isnan(num) | np.isnan(den), np.nan, out)  # NaN stays NaN, never "agrees"


# -- batched, multi-layer updates (MEMIT, AlphaEdit applied) -------------------------------------
# Keys and residuals are rows here, as the run holds them: K (B, d_ff), R (B, d_model). Each
# update is returned as ``adj`` (d_ff, B) with ``ΔW = Rᵀ adjᵀ``, so that any key k moves by
# ``Rᵀ (adjᵀ k)``: ``adjᵀ k`` (B,) are the coefficients the theory side predicts with.

def memit_adjoint(keys: np.ndarray, cov: np.ndarray, mom2_weight: float) -> np.ndarray:
    """MEMIT's ``(λC + KᵀK)⁻¹ Kᵀ`` (d_ff, B) for one layer (Meng et al. 2023, eq. 14).

    ``ΔW = R Kᵀ (λC + K Kᵀ)⁻¹`` in the paper's column notation (keys as columns) is
    ``Rᵀ adjᵀ`` here. ``C`` is the store's E[kkᵀ] (MEMIT's mom2 is the same uncentered second
    moment), so ``λ`` is MEMIT's ``mom2_update_weight``: ``λC`` stands for the Σ kkᵀ of about
    λ preserved keys. One Cholesky solve of a d_ff × d_ff SPD system.
    """
    k = np.asarray(keys, dtype=np.float64)
    lhs = float(mom2_weight) * np.asarray(cov, dtype=np.float64) + k.T @ k
    factor = scipy.linalg.cho_factor(lhs, lower=True, check_finite=False)
    return scipy.linalg.cho_solve(factor, k.T, check_finite=False)


def alphaedit_adjoint(keys: np.ndarray, cache: np.ndarray, projector: np.ndarray, l2: float) -> np.ndarray:
    """AlphaEdit's update (Fang et al., ICLR 2025, eq. 17 with its code's L2) as ``adj`` (d_ff, B).

    ``ΔW = R K₁ᵀ P (K_p K_pᵀ P + K₁ K₁ᵀ P + L2·I)⁻¹`` (columns) with ``cache = K_p K_pᵀ``, the keys
    edited in earlier steps. Transposed (P and the caches are symmetric), ``ΔWᵀ = (P A + L2·I)⁻¹
    P K₁ Rᵀ`` with ``A = K_pK_pᵀ + K₁K₁ᵀ``: one d_ff × d_ff LU solve, as AlphaEdit's code does.
    """
    k = np.asarray(keys, dtype=np.float64)
    p = np.asarray(projector, dtype=np.float64)
    a = np.asarray(cache, dtype=np.float64) + k.T @ k
    lhs = p @ a + float(l2) * np.eye(a.shape[0])
    return scipy.linalg.solve(lhs, p @ k.T, check_finite=False)
