"""``kisstore.analysis.analyze`` on synthetic stores: values, laziness, subsets, bad input."""

import numpy as np
import pytest
import scipy.stats
import xarray as xr
from dask.callbacks import Callback

from kisstore.analysis import analyze, geometry, scaling_table
from kisstore.analysis.synthetic import write_synthetic_store
from kisstore.errors import InputError, StoreError
from kisstore.store import Store, open_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("s") / "store.zarr")
    known_a = np.arange(40) % 3 != 0
    known_b = np.arange(40) % 2 == 0
    written = write_synthetic_store(path, {
        "a": {"n_layers": 4, "d_ff": 12, "known": known_a, "n_params": 1_000, "family": "fam1"},
        "b": {"n_layers": 3, "d_ff": 16, "known": known_b, "n_params": 50_000, "family": "fam2"},
        "partial": {"complete": False},
    }, n_items=40)
    return path, written, known_a, known_b


class TaskCounter(Callback):
    def __init__(self):
        super().__init__()
        self.count = 0
        self.keys = []

    def _pretask(self, key, dsk, state):
        self.count += 1
        self.keys.append(str(key))


def _off(m):
    return m[~np.eye(m.shape[0], dtype=bool)]


def test_every_derived_array_matches_numpy_on_the_stored_arrays(store):
    path, written, *_ = store
    res = analyze(open_store(path), models="b").compute()
    ds = res["analysis/b"].to_dataset()
    raw = written["b"]
    for layer in range(3):
        k = raw["keys"][layer].astype(np.float64)
        g = k @ np.linalg.inv(raw["cov"][layer]) @ k.T
        wc = g / np.sqrt(np.outer(np.diag(g), np.diag(g)))
        ac = k @ k.T / np.outer(np.linalg.norm(k, axis=1), np.linalg.norm(k, axis=1))
        sel = ds.sel(layer=layer)
        np.testing.assert_allclose(sel["gram"].values, g, rtol=1e-8)
        exact = np.linalg.cond(raw["cov"][layer], 1)  # pocon estimates this from below, within a small factor
        assert exact / 3 <= float(sel["cond"]) <= exact * (1 + 1e-8)
        np.testing.assert_allclose(sel["p_matrix"].values, g / np.diag(g)[:, None], rtol=1e-8)
        np.testing.assert_allclose(sel["whitened_cos"].values, wc, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(sel["whitened_angle"].values, np.degrees(np.arccos(np.clip(wc, -1, 1))), atol=1e-5)
        np.testing.assert_allclose(sel["q_matrix"].values, k @ k.T, rtol=1e-10)
        np.testing.assert_allclose(sel["activation_cos"].values, ac, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(sel["activation_angle"].values, np.degrees(np.arccos(np.clip(ac, -1, 1))), atol=1e-5)
        p_off = _off(g / np.diag(g)[:, None])
        st = sel["stats"].sel(quantity="p_matrix")
        assert float(st.sel(stat="excess_kurtosis")) == pytest.approx(scipy.stats.kurtosis(p_off), rel=1e-8)
        assert float(st.sel(stat="skewness")) == pytest.approx(scipy.stats.skew(p_off), rel=1e-8)
        assert float(st.sel(stat="mean")) == pytest.approx(p_off.mean(), rel=1e-8)
        assert float(sel["stats"].sel(quantity="whitened_cos", stat="excess_kurtosis")) == pytest.approx(
            scipy.stats.kurtosis(_off(wc)), rel=1e-8)
        assert float(sel["stats"].sel(quantity="activation_cos", stat="std")) == pytest.approx(
            _off(ac).std(), rel=1e-8)
        x = sel["kde_x"].sel(quantity="p_matrix").values
        kde = scipy.stats.gaussian_kde(p_off)(x)
        np.testing.assert_allclose(sel["kde"].sel(quantity="p_matrix").values, kde, atol=1e-10 * kde.max())
        assert x[0] < p_off.min() and x[-1] > p_off.max()  # no far outliers here: the grid covers all
        assert float(sel["kde_outside"].sel(quantity="p_matrix")) == 0.0
        w_ang = _off(np.degrees(np.arccos(np.clip(wc, -1, 1))))
        assert float(sel["stats"].sel(quantity="whitened_angle", stat="median")) == pytest.approx(
            np.median(w_ang), rel=1e-8)
        lam = np.linalg.eigvalsh(raw["cov"][layer].astype(np.float64))
        assert float(sel["cond_2norm"]) == pytest.approx(lam[-1] / lam[0], rel=1e-8)
    assert ds["item"].values.tolist() == written["b"]["case_ids"].tolist()
    assert ds["item_"].values.tolist() == written["b"]["case_ids"].tolist()


def test_p_diagonal_is_one_and_whitened_cos_symmetric_in_unit_interval(store):
    path, *_ = store
    ds = analyze(open_store(path), models="a")["analysis/a"].to_dataset().compute()
    diag = np.diagonal(ds["p_matrix"].values, axis1=1, axis2=2)
    np.testing.assert_allclose(diag, 1.0, rtol=1e-12)
    w = ds["whitened_cos"].values
    np.testing.assert_array_equal(w, np.swapaxes(w, 1, 2))
    assert w.min() >= -1 and w.max() <= 1


def test_convergence_row_for_all_items_equals_full_statistics(store):
    path, *_ = store
    ds = analyze(open_store(path), models="a")["analysis/a"].to_dataset().compute()
    assert ds["n_items"].values.tolist() == [16, 32, 40]
    np.testing.assert_array_equal(ds["convergence"].sel(n_items=40).values, ds["stats"].values)
    assert not np.allclose(ds["convergence"].sel(n_items=16).values, ds["stats"].values)


def test_top_pairs_carry_both_facts_text_and_are_the_largest_p_entries(store):
    path, *_ = store
    ds = analyze(open_store(path), models="a", top_k=5, rank_by="signed")["analysis/a"].to_dataset().compute()
    assert ds.attrs["rank_by"] == "signed"
    items = xr.open_datatree(path, engine="zarr")["items"].to_dataset()
    for layer in ds["layer"].values:
        t = ds.sel(layer=layer)
        p = t["p_matrix"]
        expected = np.sort(_off(p.values))[::-1][:5]
        np.testing.assert_allclose(t["top_p"].values, expected)
        for r in range(5):
            i, j = int(t["top_item"][r]), int(t["top_item_"][r])
            assert float(p.sel(item=i, item_=j)) == t["top_p"].values[r]
            assert str(t["top_subject"].values[r]) == str(items["subject"].sel(item=i).values)
            assert str(t["top_target_new_"].values[r]) == str(items["target_new"].sel(item=j).values)


def test_building_the_result_computes_nothing_and_one_layer_computes_only_that_layer(store, monkeypatch):
    path, *_ = store
    tree = open_store(path)
    with TaskCounter() as counter:
        res = analyze(tree, models="a")
    # nothing is computed: the only tasks read the facts' label text (subject, relation, target)
    # from /items, which become the item coordinates
    assert all("open_dataset" in k or k.startswith("('finalize") or k.startswith("finalize") for k in counter.keys), \
        counter.keys
    assert counter.count <= 2 * 3

    seen = []
    real = geometry.gram_and_cond
    monkeypatch.setattr(geometry, "gram_and_cond", lambda *a, **k: seen.append(k["layer"]) or real(*a, **k))
    with TaskCounter() as one:
        res["analysis/a"]["p_matrix"].sel(layer=2).compute()
    assert seen == [2]
    seen.clear()
    with TaskCounter() as full:
        res["analysis/a"]["p_matrix"].compute()
    assert sorted(seen) == [0, 1, 2, 3]
    assert 0 < one.count < full.count


def test_item_subsets_known_intersect_and_first_n(store):
    path, written, known_a, known_b = store
    tree = open_store(path)
    ids = written["a"]["case_ids"]
    known = analyze(tree, models="a", items="known")["analysis/a"]
    assert known["item"].values.tolist() == ids[known_a].tolist()
    inter = analyze(tree, models="a", items="intersect")["analysis/a"]
    assert inter["item"].values.tolist() == ids[known_a & known_b].tolist()
    first = analyze(tree, models="a", items="known", n_items=5)["analysis/a"]
    assert first["item"].values.tolist() == ids[known_a][:5].tolist()
    assert first.attrs["items"] == "known" and first.attrs["n_items"] == 5


def test_layer_spec_selects_layers_and_relative_depth(store):
    path, *_ = store
    ds = analyze(open_store(path), models="a", layers="0-3:2")["analysis/a"]
    assert ds["layer"].values.tolist() == [0, 2]
    np.testing.assert_allclose(ds["relative_depth"].values, [0.0, 2 / 3])
    assert analyze(open_store(path), models="a", layers="-1")["analysis/a"]["layer"].values.tolist() == [3]


def test_ridge_is_applied_and_recorded(store):
    path, written, *_ = store
    ds = analyze(open_store(path), models="a", layers="1", ridge=0.5)["analysis/a"].to_dataset()
    assert ds.attrs["ridge"] == 0.5
    k = written["a"]["keys"][1].astype(np.float64)
    c = written["a"]["cov"][1]
    c = c + 0.5 * np.mean(np.diag(c)) * np.eye(c.shape[0])
    np.testing.assert_allclose(ds["gram"].sel(layer=1).values, k @ np.linalg.inv(c) @ k.T, rtol=1e-8)


def test_incomplete_models_are_ignored_and_scaling_table_spans_models(store):
    path, *_ = store
    res = analyze(open_store(path))
    assert sorted(res["analysis"].children) == ["a", "b", "scaling"]
    table = scaling_table(res)
    assert len(table) == 4 + 3
    a = table[table["model"] == "a"]
    assert a["relative_depth"].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert set(table["family"]) == {"fam1", "fam2"} and set(table["n_params"]) == {1000, 50_000}
    stats_a = res["analysis/a"]["stats"].sel(quantity="p_matrix", stat="excess_kurtosis").values
    np.testing.assert_allclose(a["p_matrix_excess_kurtosis"].values, stats_a)


@pytest.mark.parametrize("kwargs,error,text", [
    ({"models": "nope"}, InputError, "unknown model 'nope'"),
    ({"models": "partial"}, InputError, "not complete"),
    ({"models": "a", "n_items": 41}, InputError, "only 40"),
    ({"models": "a", "n_items": 1}, InputError, "at least 2"),
    ({"models": "a", "items": "some"}, InputError, "bad item subset"),
    ({"models": "a", "layers": "7"}, InputError, "out of range"),
    ({"models": "a", "ridge": -1.0}, InputError, "ridge"),
])
def test_bad_input_raises_clear_errors(store, kwargs, error, text):
    path, *_ = store
    with pytest.raises(error, match=text):
        analyze(open_store(path), **kwargs)


def test_empty_item_subset_is_an_input_error(tmp_path):
    path = str(tmp_path / "s.zarr")
    write_synthetic_store(path, {"m": {"known": np.zeros(20, bool)}}, n_items=20)
    with pytest.raises(InputError, match="empty"):
        analyze(open_store(path), items="known")


def test_store_without_covariances_is_a_store_error(tmp_path):
    path = str(tmp_path / "s.zarr")
    write_synthetic_store(path, {"m": {}}, n_items=20)
    s = Store(path)
    ds = xr.open_dataset(path, group="models/m", engine="zarr").drop_vars("cov").load()
    s.write_dataset("models/m", ds)
    s.set_attrs("models/m", {"complete": True, "n_layers": 3})
    s.consolidate()
    with pytest.raises(StoreError, match="no covariances"):
        analyze(open_store(path))
