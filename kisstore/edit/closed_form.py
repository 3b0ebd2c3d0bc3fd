"""The closed-form rank-one edit and its predicted interference: pure numpy, float64.

ROME/MEMIT/AlphaEdit change an MLP down-projection ``W`` (d_model × d_ff, "out × in") so that
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

    lam: np.ndarray  # (d_model,) Λ
    direction: np.ndarray  # (d_ff,) C⁻¹k*, or P·C⁻¹k* under a null-space projection
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
