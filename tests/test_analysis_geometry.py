"""Pure numeric functions of one layer against independent numpy/scipy computations."""

import numpy as np
import pytest
import scipy.stats

from kisstore.analysis import geometry, pairs, stats
from kisstore.errors import NumericalError


def _case(seed=0, n=10, d=8, samples=400):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / np.sqrt(d) + np.eye(d)
    x = rng.standard_normal((samples, d)) @ mix
    cov = x.T @ x / samples
    keys = rng.standard_normal((n, d)) + rng.standard_normal((1, d))
    return keys, cov


def test_gram_equals_explicit_inverse_on_well_conditioned_cov():
    keys, cov = _case()
    expected = keys @ np.linalg.inv(cov) @ keys.T
    np.testing.assert_allclose(geometry.gram(keys, cov), expected, rtol=1e-10)


def test_p_matrix_is_row_normalised_gram_with_unit_diagonal_and_not_symmetric():
    keys, cov = _case(1)
    g = keys @ np.linalg.inv(cov) @ keys.T
    p = geometry.p_matrix(geometry.gram(keys, cov))
    np.testing.assert_allclose(p, g / np.diag(g)[:, None], rtol=1e-10)
    np.testing.assert_allclose(np.diag(p), 1.0, rtol=1e-12)
    assert not np.allclose(p, p.T)


def test_whitened_cos_is_symmetric_bounded_and_matches_definition():
    keys, cov = _case(2)
    g = keys @ np.linalg.inv(cov) @ keys.T
    w = geometry.whitened_cos(geometry.gram(keys, cov))
    np.testing.assert_allclose(w, g / np.sqrt(np.outer(np.diag(g), np.diag(g))), rtol=1e-10)
    np.testing.assert_allclose(w, w.T, atol=0)
    assert np.all(w <= 1) and np.all(w >= -1)


def test_activation_cos_q_matrix_and_angles_match_numpy():
    keys, _ = _case(3)
    norms = np.linalg.norm(keys, axis=1)
    np.testing.assert_allclose(geometry.q_matrix(keys), keys @ keys.T, rtol=1e-12)
    cos = geometry.activation_cos(keys)
    np.testing.assert_allclose(cos, keys @ keys.T / np.outer(norms, norms), rtol=1e-12)
    np.testing.assert_allclose(geometry.angle_deg(cos), np.degrees(np.arccos(np.clip(cos, -1, 1))))
    assert geometry.angle_deg(np.array([1.0, 0.0, -1.0])).tolist() == [0.0, 90.0, 180.0]


def test_orthonormal_keys_with_identity_cov_give_identity_p():
    q, _ = np.linalg.qr(np.random.default_rng(4).standard_normal((12, 12)))
    keys = q[:7]  # 7 orthonormal rows
    np.testing.assert_allclose(geometry.p_matrix(geometry.gram(keys, np.eye(12))), np.eye(7), atol=1e-12)


def test_scaling_cov_leaves_p_unchanged():
    keys, cov = _case(5)
    p = geometry.p_matrix(geometry.gram(keys, cov))
    np.testing.assert_allclose(geometry.p_matrix(geometry.gram(keys, 37.5 * cov)), p, rtol=1e-10)


def test_invertible_linear_map_of_keys_and_cov_leaves_whitened_cos_unchanged():
    keys, cov = _case(6)
    a = np.random.default_rng(7).standard_normal((8, 8)) + 3 * np.eye(8)
    before = geometry.whitened_cos(geometry.gram(keys, cov))
    after = geometry.whitened_cos(geometry.gram(keys @ a.T, a @ cov @ a.T))
    np.testing.assert_allclose(after, before, atol=1e-9)
    assert not np.allclose(geometry.activation_cos(keys @ a.T), geometry.activation_cos(keys))


def test_singular_cov_raises_numerical_error_naming_layer_condition_and_remedy():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 8))  # 5 tokens for d = 8: rank 5
    with pytest.raises(NumericalError) as err:
        geometry.gram(rng.standard_normal((4, 8)), x.T @ x / 5, layer=7, n_tokens=5)
    msg = str(err.value)
    assert "layer 7" in msg and "condition number" in msg and "--ridge" in msg and "corpus tokens" in msg


@pytest.mark.parametrize("seed", range(4))
def test_condition_number_estimate_is_a_close_lower_bound_of_numpys(seed):
    _, cov = _case(seed, d=40, samples=60)
    keys = np.random.default_rng(seed).standard_normal((5, 40))
    g, cond = geometry.gram_and_cond(keys, cov)
    exact = np.linalg.cond(cov, 1)
    assert exact / 3 <= cond <= exact * (1 + 1e-8)
    np.testing.assert_allclose(g, geometry.gram(keys, cov), rtol=0, atol=0)
    reg = cov + 0.1 * np.mean(np.diag(cov)) * np.eye(40)  # the ridge is in the number too
    ridged, exact_ridged = geometry.gram_and_cond(keys, cov, 0.1)[1], np.linalg.cond(reg, 1)
    assert exact_ridged / 3 <= ridged <= exact_ridged * (1 + 1e-8) and ridged < cond


def test_ill_conditioned_cov_raises_and_ridge_fixes_it():
    keys, _ = _case(9)
    cov = np.diag(np.logspace(0, -14, 8))
    with pytest.raises(NumericalError, match="ill-conditioned|not positive definite"):
        geometry.gram(keys, cov, layer=0)
    g = geometry.gram(keys, cov, ridge=1e-3)
    reg = cov + 1e-3 * np.mean(np.diag(cov)) * np.eye(8)
    np.testing.assert_allclose(g, keys @ np.linalg.inv(reg) @ keys.T, rtol=1e-8)


def test_describe_equals_scipy_and_numpy_on_off_diagonal_entries():
    m = np.random.default_rng(10).standard_t(4, (30, 30))
    v = m[~np.eye(30, dtype=bool)]
    assert v.size == 30 * 29
    got = dict(zip(stats.STAT_NAMES, stats.describe_matrix(m), strict=True))
    assert got["mean"] == pytest.approx(v.mean(), rel=1e-12)
    assert got["std"] == pytest.approx(v.std(), rel=1e-12)
    assert got["excess_kurtosis"] == pytest.approx(scipy.stats.kurtosis(v), rel=1e-12)
    assert got["skewness"] == pytest.approx(scipy.stats.skew(v), rel=1e-12)
    for name, q in stats.QUANTILES.items():
        assert got[name] == pytest.approx(np.quantile(v, q), rel=1e-12)


@pytest.mark.parametrize("scale,shape", [(0.02, "t"), (0.3, "normal"), (5.0, "normal"), (1e-4, "outlier")])
def test_kde_equals_scipy_gaussian_kde_scott(scale, shape):
    rng = np.random.default_rng(11)
    v = rng.standard_t(3, 5000) * scale if shape == "t" else rng.standard_normal(5000) * scale
    if shape == "outlier":
        v = np.r_[v, 0.8]
    grid = stats.DEFAULT_KDE_GRID
    expected = scipy.stats.gaussian_kde(v)(grid)
    np.testing.assert_allclose(stats.kde(v, grid), expected, atol=1e-12 * expected.max())


def test_convergence_last_row_equals_full_statistics_and_blocks_are_leading():
    m = np.random.default_rng(12).standard_normal((40, 40))
    sizes = stats.convergence_sizes(40)
    assert sizes == [16, 32, 40]
    conv = stats.convergence(m, sizes)
    np.testing.assert_array_equal(conv[-1], stats.describe_matrix(m))
    np.testing.assert_array_equal(conv[0], stats.describe_matrix(m[:16, :16]))


def test_top_pairs_are_the_largest_off_diagonal_entries_in_order():
    m = np.random.default_rng(13).standard_normal((9, 9))
    np.fill_diagonal(m, 100.0)  # the diagonal must never be picked
    values, rows, cols = pairs.rank_pairs(m, 5, by="signed")
    off = np.sort(m[~np.eye(9, dtype=bool)])[::-1][:5]
    np.testing.assert_array_equal(values, off)
    np.testing.assert_array_equal(m[rows, cols], values)
    assert np.all(rows != cols)


def test_the_2norm_condition_number_of_a_damaged_c_is_nan_and_whitening_names_the_damage():
    """analyze computes cond_2norm and the whitening of a layer in separate Dask tasks: on a C
    with NaN entries LAPACK's eigensolver raised 'Eigenvalues did not converge' (exit 1) whenever
    the cond_2norm task ran first, instead of whitening's one-line error."""
    c = np.eye(4)
    c[1, 2] = c[2, 1] = np.nan
    assert np.isnan(geometry.condition_number_2norm(c))
    with pytest.raises(NumericalError, match="holds 2 NaN or infinite entries"):
        geometry.whitening(c, layer=0)
