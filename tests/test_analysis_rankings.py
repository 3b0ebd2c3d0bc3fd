"""Rankings, pair sets, per-fact summaries, bootstrap intervals and KDE grids, each against an
independent numpy/scipy computation written from the definitions on the same arrays."""

import numpy as np
import pytest
import scipy.stats
import xarray as xr
from click.testing import CliRunner

from kisstore.analysis import analyze, bootstrap, pairs, scaling_table, stats
from kisstore.analysis.persist import canonical
from kisstore.analysis.scaling import scaling_dataset
from kisstore.analysis.synthetic import write_synthetic_store
from kisstore.errors import InputError
from kisstore.store import open_store
from kisstore_cli.main import cli

N = 24
SUBJECTS = [f"S{i % 9}" for i in range(N)]  # repeats: same-subject pairs exist
TOKENS = np.arange(N) % 5  # repeats: same-token pairs exist


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("rank") / "s.zarr")
    written = write_synthetic_store(path, {"m": {"n_layers": 2, "d_ff": 10, "key_token_id": TOKENS},
                                           "old": {"n_layers": 2, "d_ff": 10}}, n_items=N, subjects=SUBJECTS)
    return path, written


@pytest.fixture(scope="module")
def result(store):
    path, _ = store
    return analyze(open_store(path), models="m", top_k=15, n_boot=40, seed=3)["analysis/m"].to_dataset().compute()


def _pairs_sorted(m, key, keep):
    """Every (value, i, j) with keep[i, j], strongest first by ``key``, ties by position (brute force)."""
    n = m.shape[0]
    cand = [(m[i, j], i, j) for i in range(n) for j in range(n) if keep[i, j]]
    return sorted(cand, key=lambda t: (-key(t[0]), t[1] * n + t[2]))


def _labels(store):
    path, _ = store
    items = xr.open_datatree(path, engine="zarr")["items"].to_dataset()
    subj = np.array([str(x) for x in items["subject"].values])
    rel = np.array([str(x) for x in items["relation_id"].values])
    return subj, rel


def test_top_pairs_by_abs_keep_the_sign_and_carry_token_subject_relation_flags(store, result):
    subj, rel = _labels(store)
    for layer in result["layer"].values:
        t = result.sel(layer=layer)
        p = t["p_matrix"].values
        off = ~np.eye(N, dtype=bool)
        want = _pairs_sorted(p, abs, off)[:15]
        np.testing.assert_array_equal(t["top_p"].values, [w[0] for w in want])
        pos = {c: i for i, c in enumerate(t["item"].values)}
        rows = [pos[int(c)] for c in t["top_item"].values]
        cols = [pos[int(c)] for c in t["top_item_"].values]
        assert rows == [w[1] for w in want] and cols == [w[2] for w in want]
        np.testing.assert_array_equal(t["top_same_token"].values, TOKENS[rows] == TOKENS[cols])
        np.testing.assert_array_equal(t["top_same_subject"].values, subj[rows] == subj[cols])
        np.testing.assert_array_equal(t["top_same_relation"].values, rel[rows] == rel[cols])
        assert [str(s) for s in t["top_subject_"].values] == list(subj[cols])
    assert result.attrs["rank_by"] == "abs" and result.attrs["rank_excludes"] == []
    assert (result["top_p"] < 0).any()  # |P| ranking lets strong negative entries in


def test_whitened_cosine_ranking_counts_each_unordered_pair_once(store, result):
    for layer in result["layer"].values:
        t = result.sel(layer=layer)
        w = t["whitened_cos"].values
        want = _pairs_sorted(w, abs, np.triu(np.ones((N, N), bool), 1))[:15]
        np.testing.assert_allclose(t["top_wcos"].values, [x[0] for x in want], rtol=0, atol=0)
        pos = {c: i for i, c in enumerate(t["item"].values)}
        assert all(pos[int(a)] < pos[int(b)] for a, b in zip(t["top_wcos_item"].values, t["top_wcos_item_"].values, strict=True))
        assert "top_wcos_same_token" in t and "top_wcos_subject" in t


def test_exclusions_leave_same_subject_and_same_token_pairs_out_of_the_rankings(store):
    path, _ = store
    subj, _ = _labels(store)
    ds = analyze(open_store(path), models="m", top_k=30, rank_by="signed", exclude_same_subject=True,
                 exclude_same_token=True, n_boot=0)["analysis/m"].to_dataset().compute()
    keep = (~np.eye(N, dtype=bool)) & (subj[:, None] != subj[None, :]) & (TOKENS[:, None] != TOKENS[None, :])
    for layer in ds["layer"].values:
        t = ds.sel(layer=layer)
        want = _pairs_sorted(t["p_matrix"].values, lambda v: v, keep)[:30]
        np.testing.assert_array_equal(t["top_p"].values, [w[0] for w in want])
        assert not t["top_same_subject"].any() and not t["top_same_token"].any()
    assert ds.attrs["rank_excludes"] == ["same_subject", "same_token"]
    assert "stats_ci" not in ds and ds.attrs["bootstrap_method"].startswith("off")


def test_pair_stats_per_set_equal_scipy_on_the_selected_entries_and_all_equals_stats(store, result):
    subj, rel = _labels(store)
    same = {"token": TOKENS[:, None] == TOKENS[None, :], "subject": subj[:, None] == subj[None, :],
            "relation": rel[:, None] == rel[None, :]}
    off = ~np.eye(N, dtype=bool)
    sets = {"all": off}
    for k, v in same.items():
        sets[f"same_{k}"], sets[f"different_{k}"] = off & v, off & ~v
    for name, mask in sets.items():
        assert int(result["pair_count"].sel(pair_set=name)) == mask.sum()
    for layer in result["layer"].values:
        for q in ("p_matrix", "activation_angle"):
            m = result[q].sel(layer=layer).values
            for name, mask in sets.items():
                got = result["pair_stats"].sel(layer=layer, quantity=q, pair_set=name)
                v = m[mask]
                assert float(got.sel(stat="excess_kurtosis")) == pytest.approx(scipy.stats.kurtosis(v), rel=1e-9)
                assert float(got.sel(stat="mean")) == pytest.approx(v.mean(), rel=1e-9, abs=1e-12)
                assert float(got.sel(stat="q95")) == pytest.approx(np.quantile(v, 0.95), rel=1e-12)
    np.testing.assert_array_equal(result["stats"].values, result["pair_stats"].sel(pair_set="all").values)


def _independent_bootstrap(m, masks, n_boot, seed, confidence):
    """Explicit replicates: resample items, build M[b][:, b], keep pairs of distinct items."""
    n = m.shape[0]
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    reps = np.full((len(masks), n_boot, len(stats.STAT_NAMES)), np.nan)
    for b in range(n_boot):
        ib = idx[b]
        sub = m[np.ix_(ib, ib)]
        distinct = ib[:, None] != ib[None, :]
        for s, mask in enumerate(masks):
            v = sub[distinct & mask[np.ix_(ib, ib)]]
            if v.size:
                q = np.quantile(v, list(stats.QUANTILES.values()))
                reps[s, b] = [v.mean(), v.std(), scipy.stats.kurtosis(v), scipy.stats.skew(v), *q]
    a = (1 - confidence) / 2
    return np.stack([np.nanquantile(reps, a, axis=1), np.nanquantile(reps, 1 - a, axis=1)], axis=-1)


def test_bootstrap_intervals_equal_an_explicit_numpy_bootstrap_with_the_same_seed():
    rng = np.random.default_rng(5)
    n = 17
    m = rng.standard_t(3, (n, n))
    subj, rel, tok = rng.integers(0, 6, n), rng.integers(0, 3, n), rng.integers(0, 4, n)
    masks = pairs.masks_from_labels(subj, rel, tok)
    got = bootstrap.matrix_intervals(m, bootstrap.draw_counts(n, 60, 11), masks, 0.9)
    want = _independent_bootstrap(m, masks, 60, 11, 0.9)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_convergence_intervals_are_an_explicit_bootstrap_of_each_first_n_block(store, result):
    """convergence_ci at n: the first n items' block, those n items resampled (seeded draws of n)."""
    ci = result["convergence_ci"]
    sizes = result["n_items"].values.tolist()
    assert ci.attrs["quantity"] == "p_matrix" and ci.attrs["n_boot"] == 40 and len(sizes) >= 2
    everyone = np.ones((1, result.sizes["item"], result.sizes["item"]), dtype=bool)
    for layer in result["layer"].values:
        m = result["p_matrix"].sel(layer=layer).values
        for n in sizes:
            want = _independent_bootstrap(m[:n, :n], everyone[:, :n, :n], 40, 3, 0.95)[0]
            np.testing.assert_allclose(ci.sel(layer=layer, n_items=n).values, want, rtol=1e-9, atol=1e-12)
    point = result["convergence"].sel(quantity="p_matrix", stat="median")
    band = ci.sel(stat="median")
    assert (band.sel(bound="low") <= point).all() and (point <= band.sel(bound="high")).all()


def test_stored_intervals_match_the_explicit_bootstrap_are_deterministic_and_bracket_the_value(store, result):
    subj, rel = _labels(store)
    masks = pairs.masks_from_labels(subj, rel, TOKENS)
    ci = result["pair_stats_ci"]
    assert ci.attrs["n_boot"] == 40 and ci.attrs["seed"] == 3 and ci.attrs["confidence"] == 0.95
    assert "percentile bootstrap" in ci.attrs["method"] and result["stats_ci"].attrs["n_boot"] == 40
    assert ci.attrs["quantity"] == "p_matrix"
    for layer in result["layer"].values:
        m = result["p_matrix"].sel(layer=layer).values
        want = _independent_bootstrap(m, masks, 40, 3, 0.95)
        np.testing.assert_allclose(ci.sel(layer=layer).values, want, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(result["stats_ci"].sel(layer=layer, quantity="p_matrix").values, want[0],
                                   rtol=1e-9, atol=1e-12)
        a = result["activation_angle"].sel(layer=layer).values
        want_a = _independent_bootstrap(a, masks[:1], 40, 3, 0.95)[0]
        np.testing.assert_allclose(result["stats_ci"].sel(layer=layer, quantity="activation_angle").values, want_a,
                                   rtol=1e-9, atol=1e-9)
    mean = result["stats"].sel(quantity="p_matrix", stat="mean")
    band = result["stats_ci"].sel(quantity="p_matrix", stat="mean")
    assert (band.sel(bound="low") <= mean).all() and (mean <= band.sel(bound="high")).all()
    path, _ = store
    again = analyze(open_store(path), models="m", layers="0", top_k=15, n_boot=40, seed=3)["analysis/m"]
    np.testing.assert_array_equal(again["stats_ci"].values, result["stats_ci"].sel(layer=[0]).values)
    other = analyze(open_store(path), models="m", layers="0", n_boot=40, seed=4)["analysis/m"]
    assert not np.array_equal(other["stats_ci"].values, result["stats_ci"].sel(layer=[0]).values)


def test_per_fact_summaries_equal_explicit_row_and_column_scans(result):
    for layer in result["layer"].values:
        t = result.sel(layer=layer)
        p = t["p_matrix"].values
        ids = t["item"].values
        for i in range(N):
            others = [j for j in range(N) if j != i]
            row, col = p[i, others], p[others, i]
            assert float(t["fact_caused_max_p"][i]) == row[np.argmax(np.abs(row))]
            assert int(t["fact_caused_max_item"][i]) == ids[others[int(np.argmax(np.abs(row)))]]
            assert float(t["fact_suffered_max_p"][i]) == col[np.argmax(np.abs(col))]
            assert int(t["fact_suffered_max_item"][i]) == ids[others[int(np.argmax(np.abs(col)))]]
            assert float(t["fact_caused_sumsq"][i]) == pytest.approx(np.sum(row ** 2), rel=1e-12)
            assert float(t["fact_suffered_sumsq"][i]) == pytest.approx(np.sum(col ** 2), rel=1e-12)
        col_ss = np.array([np.sum(np.delete(p[:, j], j) ** 2) for j in range(N)])
        order = np.argsort(-col_ss, kind="stable")[:15]
        assert t["most_exposed"].values.tolist() == ids[order].tolist()
        np.testing.assert_allclose(t["most_exposed_sumsq"].values, col_ss[order], rtol=1e-12)
        assert [str(s) for s in t["most_exposed_subject"].values] == [SUBJECTS[j] for j in order]


def test_kde_grid_covers_the_tails_and_records_the_share_outside():
    rng = np.random.default_rng(2)
    m = rng.standard_normal((60, 60)) * 0.05
    m[3, 7] = -12.5  # one far outlier (the demo's France → Liverpool)
    flat = stats.kde_adaptive(m)
    g = stats.KDE_POINTS
    dens, x, outside = flat[:g], flat[g:2 * g], flat[-1]
    v = m[~np.eye(60, dtype=bool)]
    assert x[0] > -12.5 and outside == pytest.approx(1 / v.size)  # the outlier alone is outside
    assert x[0] < np.quantile(v, 0.001) and x[-1] > v.max()  # everything else is covered
    np.testing.assert_allclose(dens, scipy.stats.gaussian_kde(v)(x), atol=1e-10 * dens.max())
    m[3, 7] = 0.0
    v = m[~np.eye(60, dtype=bool)]
    flat = stats.kde_adaptive(m)
    assert flat[-1] == 0.0 and flat[g] < v.min() and flat[2 * g - 1] > v.max()


def test_angle_quantities_get_statistics_kde_and_convergence(result):
    for q in ("whitened_angle", "activation_angle"):
        assert q in result["quantity"].values
        x = result["kde_x"].sel(quantity=q).values
        assert np.all(x[:, 0] < 90) and np.all(x[:, -1] > 90)  # degrees, around orthogonal
        assert result["convergence"].sel(quantity=q).notnull().all()
    assert result["kde"].attrs["long_name"] and result["kde_outside"].attrs["units"] == "1"


def test_store_without_key_tokens_has_nan_token_sets_no_token_flag_and_refuses_the_token_exclusion(store):
    path, _ = store
    ds = analyze(open_store(path), models="old", n_boot=10)["analysis/old"].to_dataset().compute()
    assert "top_same_token" not in ds and "top_same_subject" in ds
    assert int(ds["pair_count"].sel(pair_set="same_token")) == -1
    assert ds["pair_stats"].sel(pair_set=["same_token", "different_token"]).isnull().all()
    assert ds["pair_stats"].sel(pair_set="different_subject").notnull().all()
    assert "unavailable" in ds.attrs["key_tokens"]
    with pytest.raises(InputError, match="key tokens"):
        analyze(open_store(path), models="old", exclude_same_token=True)


def test_legacy_kurtosis_label_reads_as_excess_kurtosis_in_scaling_tables(result):
    old = result[["stats", "relative_depth"]].assign_coords(
        stat=["kurtosis" if s == "excess_kurtosis" else s for s in result["stat"].values])
    old.attrs = dict(result.attrs)
    table = scaling_table(scaling_dataset({"m": canonical(old)}))
    np.testing.assert_allclose(table["p_matrix_excess_kurtosis"].values,
                               result["stats"].sel(quantity="p_matrix", stat="excess_kurtosis").values)


def test_cli_rank_bootstrap_and_exclusion_flags_are_stored(store, tmp_path):
    import shutil

    path = str(tmp_path / "s.zarr")
    shutil.copytree(store[0], path)
    r = CliRunner().invoke(cli, ["analyze", path, "--model", "m", "--rank", "signed", "--exclude-same-token",
                                 "--bootstrap", "25", "--seed", "7", "--quiet"])
    assert r.exit_code == 0, r.output
    ds = xr.open_datatree(path, engine="zarr")["analysis/m"].to_dataset()
    assert ds.attrs["rank_by"] == "signed" and ds.attrs["rank_excludes"] == ["same_token"]
    assert ds["stats_ci"].attrs["n_boot"] == 25 and ds["stats_ci"].attrs["seed"] == 7
    assert not ds["top_same_token"].values.any()
    assert ds["stats_ci"].sizes == {"layer": 2, "quantity": 5, "stat": len(stats.STAT_NAMES), "bound": 2}
    assert "excess_kurtosis" in ds["stat"].values


@pytest.mark.parametrize("args,text", [
    (["--rank", "foo"], "--rank must be one of abs, signed"),
    (["--bootstrap", "-1"], "--bootstrap must be ≥ 0"),
    (["--seed", "-2"], "--seed must be"),
])
def test_cli_bad_rank_or_bootstrap_is_a_one_line_error_exit_2(store, args, text):
    r = CliRunner().invoke(cli, ["analyze", store[0], "--model", "m", *args])
    assert r.exit_code == 2, r.output
    assert text in r.output and r.output.strip().count("\n") == 0, r.output


def test_extract_stores_the_key_token_and_analyze_flags_pairs_that_share_it(tiny_store, tiny_models, tmp_path):
    from transformers import AutoTokenizer

    from tests.conftest import copy_store

    path = copy_store(tiny_store("gpt2"), tmp_path)
    tree = xr.open_datatree(path, engine="zarr")
    m = tree["models"][next(iter(tree["models"].children))].to_dataset()
    items = tree["items"].to_dataset()
    tok = AutoTokenizer.from_pretrained(tiny_models["gpt2"])
    assert m["key_token_id"].dtype == np.int64 and m["key_token_id"].attrs["long_name"]
    for cid in m["item"].values:
        prompt, subject = str(items["prompt"].sel(item=cid).values), str(items["subject"].sel(item=cid).values)
        text = prompt.replace("{}", subject)
        s0 = prompt.index("{}")
        enc = tok(f"{text} {items['target_true'].sel(item=cid).values}", return_offsets_mapping=True)
        last = max(j for j, (a, b) in enumerate(enc["offset_mapping"]) if a < b and a < s0 + len(subject) and b > s0)
        assert int(m["key_token_id"].sel(item=cid)) == enc["input_ids"][last]  # the subject's last token
        assert str(m["key_token"].sel(item=cid).values) == tok.decode([enc["input_ids"][last]])
    r = CliRunner().invoke(cli, ["analyze", str(path), "--bootstrap", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    an = xr.open_datatree(path, engine="zarr")[f"analysis/{next(iter(tree['models'].children))}"].to_dataset()
    ids = m["key_token_id"].sel(item=an["item"].values).values
    pos = {c: i for i, c in enumerate(an["item"].values)}
    for layer in an["layer"].values:
        t = an.sel(layer=layer)
        same = [ids[pos[int(a)]] == ids[pos[int(b)]] for a, b in zip(t["top_item"].values, t["top_item_"].values,
                                                                      strict=True)]
        np.testing.assert_array_equal(t["top_same_token"].values, same)
    off = ~np.eye(ids.size, dtype=bool)
    assert int(an["pair_count"].sel(pair_set="same_token")) == int((off & (ids[:, None] == ids[None, :])).sum())
