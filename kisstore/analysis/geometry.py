"""Key geometry of one layer: pure numpy functions (arrays in, arrays out).

The closed-form edit ``W' = W + Λ (C⁻¹k)ᵀ`` moves every other key ``k_i`` by
``Λ (C⁻¹k)ᵀ k_i``: the coefficient is an inner product in the whitening space of
``C``. Everything here is computed from the Cholesky factor ``C = L Lᵀ`` in float64;
``C⁻¹`` is never formed.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from kisstore.errors import NumericalError

DEFAULT_MAX_COND = 1e12


def regularize(cov: np.ndarray, ridge: float = 0.0) -> np.ndarray:
    """Return ``C + λ·mean(diag C)·I`` (a copy in float64); ``ridge=0`` returns C itself."""
    c = np.array(cov, dtype=np.float64, copy=True)
    if ridge:
        c[np.diag_indices_from(c)] += ridge * float(np.mean(np.diag(c)))
    return c


def _condition_number(c: np.ndarray) -> tuple[float, float]:
    """Exact 2-norm condition number and smallest eigenvalue (NaN for a C with NaN or infinite
    entries, which ``whitening`` reports; LAPACK's eigensolver would fail on it first when the
    per-layer tasks run in another order)."""
    if not np.isfinite(c).all():
        return float("nan"), float("nan")
    w = np.linalg.eigvalsh(c)
    lo, hi = float(w[0]), float(w[-1])
    return (hi / lo if lo > 0 else float("inf")), lo


def condition_number_2norm(cov: np.ndarray, ridge: float = 0.0) -> float:
    """Exact 2-norm condition number ``λ_max / λ_min`` of ``C (+ ridge)`` from its eigenvalues
    (inf when C is not positive definite). ``whitening``'s κ is LAPACK's cheaper 1-norm estimate."""
    return _condition_number(regularize(cov, ridge))[0]


def whitening(
    cov: np.ndarray,
    ridge: float = 0.0,
    *,
    max_cond: float = DEFAULT_MAX_COND,
    layer: int | None = None,
    n_tokens: int | None = None,
) -> tuple[np.ndarray, float]:
    """``(L, κ)``: the lower Cholesky factor of ``C (+ ridge)`` and its 1-norm condition number.

    κ is estimated from the factor with LAPACK ``pocon`` (O(d²), a lower bound of the true
    ``‖C‖₁‖C⁻¹‖₁``, usually within a small factor of it); above ``max_cond`` the whitened
    geometry would be dominated by rounding, and NumericalError names a remedy.
    """
    c = regularize(cov, ridge)
    d = c.shape[0]
    where = f"layer {layer}" if layer is not None else "covariance"
    bad = int(np.count_nonzero(~np.isfinite(c)))
    if bad:
        raise NumericalError(f"{where}: covariance C ({d}×{d}) holds {bad} NaN or infinite entries: the stored C "
                             "is damaged or was accumulated from overflowing activations; extract it again")
    scale = float(np.abs(c).max())
    asym = float(np.abs(c - c.T).max())
    if asym > 1e-6 * scale:
        raise NumericalError(f"{where}: covariance C ({d}×{d}) is not symmetric (max |C − Cᵀ| = {asym:.3g}, "
                             f"{asym / scale:.2g} of max |C|); kisstore writes C symmetric: was it written by "
                             "another tool (e.g. only one triangle)?")
    try:
        lower = scipy.linalg.cholesky(c, lower=True, check_finite=True)
    except (np.linalg.LinAlgError, ValueError):
        cond, smallest = _condition_number(c)
        raise NumericalError(
            f"{where}: covariance C ({d}×{d}) is not positive definite (smallest eigenvalue "
            f"{smallest:.3g}, condition number {cond:.3g}); {_remedy(d, n_tokens, ridge)}"
        ) from None
    anorm = float(np.abs(c).sum(axis=0).max())
    rcond, info = scipy.linalg.lapack.dpocon(lower, anorm, uplo="L")
    cond = 1.0 / rcond if rcond > 0 else float("inf")
    if info != 0 or not cond <= max_cond:
        raise NumericalError(
            f"{where}: covariance C ({d}×{d}) is ill-conditioned (condition number ≈ {cond:.3g} "
            f"> {max_cond:.3g}); {_remedy(d, n_tokens, ridge)}"
        )
    return lower, cond


def _remedy(d: int, n_tokens: int | None, ridge: float) -> str:
    have = f" (it holds {int(n_tokens)} tokens for d_ff={d})" if n_tokens is not None else ""
    more = "a larger ridge, e.g. --ridge 1e-2" if ridge else "--ridge λ (e.g. --ridge 1e-3)"
    return (
        f"accumulate C over more corpus tokens{have}, or pass {more}, "
        "which adds λ·mean(diag C) to its diagonal"
    )


def gram(keys: np.ndarray, cov: np.ndarray, ridge: float = 0.0, **options) -> np.ndarray:
    """Gram matrix of the keys in whitening space: ``G_ij = k_iᵀ C⁻¹ k_j`` (N×N, float64).

    ``keys`` is (N, d), ``cov`` (d, d). With ``C = L Lᵀ`` and ``z_i = L⁻¹ k_i``, ``G = Zᵀ Z``.
    ``options``: :func:`whitening`'s (``max_cond``, ``layer``, ``n_tokens``).
    """
    return gram_and_cond(keys, cov, ridge, **options)[0]


def gram_and_cond(
    keys: np.ndarray,
    cov: np.ndarray,
    ridge: float = 0.0,
    *,
    max_cond: float = DEFAULT_MAX_COND,
    layer: int | None = None,
    n_tokens: int | None = None,
) -> tuple[np.ndarray, float]:
    """:func:`gram` and the condition number of the covariance it whitened with (one factorisation).

    Keys with NaN or infinite values, or all zeros (whose P row ``G_ij / G_ii`` is undefined),
    are refused with the positions of the first few among the analysed items."""
    k = np.asarray(keys, dtype=np.float64)
    where = f"layer {layer}" if layer is not None else "keys"
    for rows, what in ((np.flatnonzero(~np.isfinite(k).all(axis=-1)), "hold NaN or infinite values"),
                       (np.flatnonzero(~(k != 0).any(axis=-1)), "are all zeros (their P rows are undefined)")):
        if rows.size:
            shown = ", ".join(map(str, rows[:5])) + (", …" if rows.size > 5 else "")
            raise NumericalError(f"{where}: {rows.size} key(s) {what}: items at positions {shown} of the "
                                 f"{k.shape[0]} analysed; extract them again, or leave them out (--n-items)")
    lower, cond = whitening(cov, ridge, max_cond=max_cond, layer=layer, n_tokens=n_tokens)
    z = scipy.linalg.solve_triangular(lower, k.T, lower=True)
    g = z.T @ z
    return (g + g.T) / 2, cond  # exactly symmetric


def p_matrix(gram: np.ndarray) -> np.ndarray:
    """The paper's P matrix ``P_ij = G_ij / G_ii``: row-normalised, diagonal 1, not symmetric."""
    g = np.asarray(gram, dtype=np.float64)
    diag = np.diagonal(g, axis1=-2, axis2=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return g / diag[..., :, None]


def cosine(inner: np.ndarray) -> np.ndarray:
    """Cosine similarity from a matrix of inner products: ``M_ij / sqrt(M_ii M_jj)``, clipped to [-1, 1]."""
    m = np.asarray(inner, dtype=np.float64)
    norm = np.sqrt(np.diagonal(m, axis1=-2, axis2=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.clip(m / (norm[..., :, None] * norm[..., None, :]), -1.0, 1.0)
    i = np.arange(m.shape[-1])
    out[..., i, i] = np.where(norm > 0, 1.0, np.nan)  # exactly 1 (rounding would give 1 ± ε)
    return out


def whitened_cos(gram: np.ndarray) -> np.ndarray:
    """Cosine of two keys in whitening space, ``G_ij / sqrt(G_ii G_jj)``: symmetric, in [-1, 1]."""
    return cosine(gram)


def q_matrix(keys: np.ndarray) -> np.ndarray:
    """Plain inner products of the keys, ``Q_ij = k_iᵀ k_j`` (float64)."""
    k = np.asarray(keys, dtype=np.float64)
    return k @ np.swapaxes(k, -1, -2)


def activation_cos(keys: np.ndarray) -> np.ndarray:
    """Cosine of two keys in activation space, ``k_iᵀk_j / (|k_i| |k_j|)``."""
    return cosine(q_matrix(keys))


def angle_deg(cos: np.ndarray) -> np.ndarray:
    """Angle in degrees of a cosine (0° parallel, 90° orthogonal, 180° opposite)."""
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
