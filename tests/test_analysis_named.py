"""Issue #17 items 2–3: analyses side by side (--name, merging layers, refusing other settings),
labels on the item dimensions, and stores written by kisstore 0.1 (schema 1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from kisstore.analysis.synthetic import (
    items_dataset,
    model_dataset,
    synthetic_model,
    write_synthetic_store,
)
from kisstore.store import Store, layout
from kisstore_cli.main import cli
from tests.conftest import tree_digest


def _cli(*args: str, code: int = 0):
    r = CliRunner().invoke(cli, [*args, "--quiet"] if args[0] == "analyze" else list(args))
    assert r.exit_code == code, r.output
    return r


def _p_numpy(keys: np.ndarray, cov: np.ndarray, ridge: float = 0.0) -> np.ndarray:
    """P from the paper's formula, independently of kisstore: G = K (C + λ·mean(diag C) I)⁻¹ Kᵀ, P = G / diag."""
    k = keys.astype(np.float64)
    c = cov + ridge * np.mean(np.diag(cov)) * np.eye(len(cov))
    g = k @ np.linalg.solve(c, k.T)
    return g / np.diag(g)[:, None]


@pytest.fixture()
def store(tmp_path):
    path = str(tmp_path / "store.zarr")
    written = write_synthetic_store(path, {"a": {"n_layers": 3, "d_ff": 10}, "b": {"n_layers": 2, "d_ff": 14}},
                                    n_items=20)
    return path, written


def _open(path: str) -> xr.DataTree:
    return xr.open_datatree(path, engine="zarr")  # plain xarray, no kisstore


# -- 2. a layer-subset run merges; other settings are refused; --name keeps both ----------------------
def test_a_layer_subset_run_merges_into_the_analysis_and_keeps_every_other_layer(store):
    path, written = store
    _cli("analyze", path)
    before = _open(path)["analysis/a"].to_dataset().load()
    r = _cli("analyze", path, "--model", "a", "--layers", "1")
    assert "keeping stored layer(s) 0,2" in r.output
    tree = _open(path)
    after = tree["analysis/a"].to_dataset().load()
    assert after["layer"].values.tolist() == [0, 1, 2]
    for layer in (0, 1, 2):
        np.testing.assert_allclose(after["p_matrix"].sel(layer=layer).values,
                                   _p_numpy(written["a"]["keys"][layer], written["a"]["cov"][layer]),
                                   rtol=1e-6, atol=1e-9)
    # the layers not recomputed are the stored bytes, text and labels included
    xr.testing.assert_identical(after.sel(layer=[0, 2]).drop_attrs(), before.sel(layer=[0, 2]).drop_attrs())
    # the scaling table keeps every layer of a and the model b this run did not analyse
    sc = tree["analysis/scaling"].to_dataset()
    assert sorted(str(m) for m in sc["model"].values) == ["a", "b"]
    depth = sc["relative_depth"].to_pandas()
    assert depth.notna().sum(axis=1).to_dict() == {"a": 3, "b": 2}
    np.testing.assert_allclose(sc["stats"].sel(model="a").values, after["stats"].values, rtol=1e-12)


def test_other_settings_are_refused_in_one_line_naming_the_difference_and_change_nothing(store):
    path, _ = store
    _cli("analyze", path, "--layers", "0-1")
    digest = tree_digest(path)
    for args, text in [(["--ridge", "0.01"], "ridge 0.0 stored, 0.01 now"),
                       (["--n-items", "10"], "n_items default stored, 10 now"),
                       (["--top-k", "5"], "top_k 20 stored, 5 now"),
                       (["--items", "known", "--model", "b"], "items all stored, known now")]:
        r = _cli("analyze", path, "--layers", "1", *args, code=2)
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert len(lines) == 1 and text in lines[0] and "--name" in lines[0] and "--replace" in lines[0], r.output
        assert tree_digest(path) == digest


def test_named_analyses_coexist_with_their_settings_and_info_lists_them(store):
    path, written = store
    _cli("analyze", path)
    _cli("analyze", path, "--name", "ridge01", "--ridge", "0.01", "--layers", "1-2", "--model", "a")
    _cli("analyze", path, "--name", "first10", "--n-items", "10")
    tree = _open(path)
    assert sorted(tree["analyses"].children) == ["first10", "ridge01"]
    assert not os.path.exists(os.path.join(path, "_staging"))  # nested staging folders go too
    assert tree["analysis/a"]["layer"].values.tolist() == [0, 1, 2]  # the default one is untouched
    r01 = tree["analyses/ridge01/a"].to_dataset()
    assert r01["layer"].values.tolist() == [1, 2] and r01.attrs["analysis_name"] == "ridge01"
    assert r01.attrs["settings"] == {"items": "all", "n_items": None, "ridge": 0.01, "top_k": 20,
                                     "max_cond": r01.attrs["max_cond"], "convergence_sizes": None,
                                     "kde_grid": None, "rank_by": "abs", "exclude_same_subject": False,
                                     "exclude_same_token": False, "bootstrap": 200, "bootstrap_seed": 0}
    np.testing.assert_allclose(r01["p_matrix"].sel(layer=2).values,
                               _p_numpy(written["a"]["keys"][2], written["a"]["cov"][2], ridge=0.01),
                               rtol=1e-6, atol=1e-9)
    assert tree["analyses/first10/b"].sizes["item"] == 10
    assert [str(m) for m in tree["analyses/ridge01/scaling"]["model"].values] == ["a"]

    summary = json.loads(_cli("info", path, "--json").output)
    an = summary["analyses"]
    assert sorted(an) == ["default", "first10", "ridge01"]
    assert an["ridge01"]["path"] == "/analyses/ridge01" and an["ridge01"]["settings"]["ridge"] == 0.01
    assert an["ridge01"]["models"]["a"]["layers"] == [1, 2] and list(an["ridge01"]["models"]) == ["a"]
    assert an["first10"]["settings"]["n_items"] == 10 and an["first10"]["models"]["b"]["n_items"] == 10
    assert an["default"]["path"] == "/analysis" and an["default"]["scaling_rows"] == 2
    text = _cli("info", path).output
    assert "/analyses/ridge01  analysis 'ridge01': items all, n_items default, ridge 0.01, top_k 20" in text
    assert "/analyses/ridge01/a  layers 1,2, 20 items (all), ridge 0.01" in text, text
    assert "/analyses/first10/b  layers 0,1, 10 items (all), ridge 0.0" in text, text

    from kisstore.analysis.persist import list_analyses, read_analysis, read_scaling

    s = Store(path)
    assert read_analysis(s, "a", "ridge01")["layer"].values.tolist() == [1, 2]
    assert read_analysis(s, "a")["layer"].values.tolist() == [0, 1, 2]
    assert read_scaling(s, "first10").sizes["model"] == 2
    assert sorted(list_analyses(s)) == ["default", "first10", "ridge01"]

    # the attributes match the published JSON Schema (schemas/store.schema.json)
    import jsonschema

    schema = json.loads((Path(__file__).resolve().parents[1] / "schemas" / "store.schema.json").read_text())
    doc = {"root": dict(tree.attrs), "analyses": [dict(tree[p].attrs) for p in
                                                  ("analysis/a", "analyses/ridge01/a", "analyses/first10/b")]}
    jsonschema.validate(doc, schema)
    assert doc["root"]["kisstore_schema_version"] == layout.SCHEMA_VERSION == 2
    doc["analyses"][0]["settings"]["ridge"] = -1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_replace_replaces_the_whole_analysis_and_bad_names_are_refused(store):
    path, _ = store
    _cli("analyze", path, "--name", "x")
    _cli("analyze", path, "--name", "x", "--model", "a", "--layers", "2", "--ridge", "0.1", "--replace")
    tree = _open(path)
    assert list(tree["analyses/x"].children) == ["a", "scaling"]  # b had the old settings: gone with them
    assert tree["analyses/x/a"]["layer"].values.tolist() == [2] and tree["analyses/x/a"].attrs["ridge"] == 0.1
    for bad in ("../x", "a/b", "", ".hidden"):
        r = _cli("analyze", path, "--name", bad, code=2)
        assert "invalid analysis name" in r.output
    r = _cli("analyze", path, "--report", os.path.join(os.path.dirname(path), "r"), "--compare", "nope", code=2)
    assert "no such analysis" in r.output
    assert "--report DIR" in _cli("analyze", path, "--compare", "x", code=2).output


def test_a_failed_named_run_leaves_every_earlier_analysis_intact(tmp_path):
    from tests.test_analysis_cli import store_with_a_singular_layer

    path = store_with_a_singular_layer(tmp_path / "s.zarr")
    _cli("analyze", path, "--layers", "0")
    _cli("analyze", path, "--name", "n", "--layers", "0,1")
    digest = tree_digest(path)
    for args in (["--name", "n"], ["--name", "n", "--replace"], ["--name", "new"], ["--layers", "2"]):
        r = _cli("analyze", path, *args, code=3)
        assert "layer 2:" in r.output, r.output
        assert tree_digest(path) == digest and not os.path.exists(os.path.join(path, "_staging"))
    tree = _open(path)
    assert tree["analyses/n/m"]["layer"].values.tolist() == [0, 1] and "new" not in tree["analyses"].children


def test_compare_passes_the_second_analysis_datasets_to_the_report(store, tmp_path, monkeypatch):
    import kisstore.analysis.report as report

    path, _ = store
    _cli("analyze", path, "--model", "a")
    seen = {}

    def fake_build_report(stored, table, folder, progress=None, compare=None, compare_name=None, **kw):
        seen.update(stored=stored, table=table, compare=compare, compare_name=compare_name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.html").write_text("<html></html>")
        return [folder / "index.html"]

    monkeypatch.setattr(report, "build_report", fake_build_report)
    _cli("analyze", path, "--name", "r", "--ridge", "0.05", "--report", str(tmp_path / "rep"), "--compare", "default")
    assert sorted(seen["stored"]) == ["a", "b"] and sorted(seen["compare"]) == ["a"]  # b is not in the default one
    assert seen["compare_name"] == "default"
    assert seen["compare"]["a"].attrs["ridge"] == 0.0 and seen["stored"]["a"].attrs["ridge"] == 0.05
    np.testing.assert_array_equal(seen["compare"]["a"]["p_matrix"].values,
                                  _open(path)["analysis/a"]["p_matrix"].values)


# -- 4. labels on the item dimensions ------------------------------------------------------------------
def test_item_dimensions_carry_subject_relation_target_and_position(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    path = str(tmp_path / "s.zarr")
    s = Store(path)
    s.init()
    ids = np.array([734, 12, 5021, 88, 301, 9, 4410, 77, 1500, 260])  # CounterFact-like: not sorted
    items = items_dataset(ids)
    s.write_dataset("items", items)
    s.write_dataset("models/m", model_dataset(synthetic_model(np.random.default_rng(3), 10, 8, 2), ids))
    s.set_attrs("models/m", {"complete": True, "n_layers": 2})
    s.consolidate()
    _cli("analyze", path)
    an = _open(path)["analysis/m"].to_dataset()
    for field in ("subject", "relation_id", "target_true"):
        assert an[field].dims == ("item",) and an[f"{field}_"].dims == ("item_",)
        assert an[field].values.tolist() == items[field].values.tolist()
        assert an[f"{field}_"].values.tolist() == items[field].values.tolist()
        assert an[field].attrs["long_name"] and an[f"{field}_"].attrs["long_name"]
    assert an["position"].values.tolist() == list(range(10)) and an["position_"].attrs["long_name"]
    p = an["p_matrix"].sel(layer=0)
    with pytest.raises(ValueError, match="not sorted"):
        p.plot()  # what the issue saw: case ids are not sorted
    mesh = p.plot(x="position_", y="position")  # the documented idiom
    assert mesh.get_array().shape == (10, 10)
    # a fact's row by subject, no join with /items
    row = an["p_matrix"].sel(layer=1).swap_dims(item="subject").sel(subject=items["subject"].values[3])
    np.testing.assert_array_equal(row.values, an["p_matrix"].sel(layer=1, item=88).values)


# -- 3. stores written by kisstore 0.1 (schema 1) -----------------------------------------------------------
def _schema_1_store(path: str) -> dict[str, np.ndarray]:
    """A store as kisstore 0.1 wrote it: root schema version 1, the keys as `keys`, no chunk
    manifests, and an analysis with neither settings nor item labels."""
    from kisstore.analysis import analyze
    from kisstore.store import open_store

    ids = np.array([40, 3, 17, 8, 25, 11, 30, 1, 22, 14, 6, 35])
    arrays = synthetic_model(np.random.default_rng(7), ids.size, 10, 3)
    s = Store(path)
    s.init()
    s.write_dataset("items", items_dataset(ids))
    s.write_dataset("models/m", model_dataset(arrays, ids).rename_vars({layout.KEY: layout.LEGACY_KEY}))
    s.set_attrs("models/m", {"complete": True, "n_layers": 3, "model_id": "m", "d_ff": 10})
    s.consolidate()
    an = analyze(open_store(path), layers="0-1").compute()
    old = an["analysis/m"].to_dataset()
    old = old.drop_vars(["subject", "subject_", "relation_id", "relation_id_", "target_true", "target_true_",
                         "position", "position_"])
    old.attrs.pop("settings")
    s.write_dataset("analysis/m", old)
    s.write_dataset("analysis/scaling", an["analysis/scaling"].to_dataset())
    for root, _, files in os.walk(path):  # 0.1 wrote no manifests and no schema 2
        if "zarr.json" in files:
            f = os.path.join(root, "zarr.json")
            doc = json.loads(open(f).read())
            attrs = doc.get("attributes", {})
            attrs.pop(layout.CHUNK_MANIFEST, None)
            if root == path:
                attrs["kisstore_schema_version"] = 1
            open(f, "w").write(json.dumps(doc))
    s.consolidate()
    return arrays


def test_a_schema_1_store_opens_analyses_and_merges(tmp_path):
    path = str(tmp_path / "old.zarr")
    arrays = _schema_1_store(path)
    tree = _open(path)
    assert tree.attrs["kisstore_schema_version"] == 1 and "keys" in tree["models/m"].data_vars
    assert "settings" not in tree["analysis/m"].attrs
    text = _cli("info", path).output
    assert "kisstore schema 1" in text and "written_by kisstore 0.1" in text, text

    # a layer-subset run with the 0.1 analysis' settings merges into it
    r = _cli("analyze", path, "--layers", "2")
    assert "keeping stored layer(s) 0,1" in r.output
    an = _open(path)["analysis/m"].to_dataset()
    assert an["layer"].values.tolist() == [0, 1, 2] and an["subject"].sizes["item"] == 12
    for layer in (0, 1, 2):
        np.testing.assert_allclose(an["p_matrix"].sel(layer=layer).values,
                                   _p_numpy(arrays["keys"][layer], arrays["cov"][layer]), rtol=1e-6, atol=1e-9)
    # other settings: refused as for any analysis; a named one beside it
    assert "ridge 0.0 stored" in _cli("analyze", path, "--ridge", "0.1", code=2).output
    _cli("analyze", path, "--name", "r", "--ridge", "0.1", "--layers", "0")
    tree = _open(path)
    assert tree["analyses/r/m"].attrs["ridge"] == 0.1
    assert tree.attrs["kisstore_schema_version"] == 1  # the root is not rewritten
    assert "keys" in tree["models/m"].data_vars and "key" not in tree["models/m"].data_vars


@pytest.mark.slow  # the report (hvplot, PNGs) takes ~20 s here
def test_a_schema_1_store_reports(tmp_path):
    path = str(tmp_path / "old.zarr")
    _schema_1_store(path)
    r = _cli("analyze", path, "--layers", "0-1", "--report", str(tmp_path / "rep"))
    assert "keeping stored layer" not in r.output  # the same layers: recomputed, not merged
    assert (tmp_path / "rep" / "index.html").stat().st_size > 1000
    assert list((tmp_path / "rep").glob("*.png"))


def test_model_datasets_read_the_keys_as_key_in_either_schema(tmp_path):
    from kisstore.analysis.subsets import model_dataset as read_model
    from kisstore.store import open_store

    old, new = str(tmp_path / "old.zarr"), str(tmp_path / "new.zarr")
    arrays = _schema_1_store(old)
    write_synthetic_store(new, {"m": {}}, n_items=12)
    assert "key" in _open(new)["models/m"].data_vars and "keys" not in _open(new)["models/m"].data_vars
    for path in (old, new):
        ds = read_model(open_store(path), "m")
        assert "key" in ds and "keys" not in ds.data_vars
        assert callable(ds.keys)  # Dataset.keys() is the method again
    np.testing.assert_array_equal(read_model(open_store(old), "m")["key"].values, arrays["keys"])


@pytest.mark.slow  # two tiny extractions (~80 s on this loaded machine)
def test_extract_overwrite_drops_the_models_named_analyses_too(tiny_store, tiny_models, tiny_items, tiny_corpus,
                                                                tmp_path):
    from tests.conftest import copy_store, run_cli

    store = copy_store(tiny_store("gpt2"), tmp_path)
    run_cli("analyze", str(store), "--quiet", check=True)
    run_cli("analyze", str(store), "--name", "r", "--ridge", "0.1", "--quiet", check=True)
    assert "gpt2" in _open(str(store))["analyses/r"].children
    run_cli("extract", "--model", str(tiny_models["gpt2"]), "--store", str(store), "--items", str(tiny_items),
            "--corpus", str(tiny_corpus), "--overwrite", "--max-length", "17", "--quiet", check=True)
    tree = _open(str(store))
    assert tree["models/gpt2"].attrs["max_length"] == 17
    # they described the replaced model: the default analysis and the named one are gone, and with
    # them the then empty groups, the staging folders and every scaling row of the model
    assert "analysis" not in tree.children or "gpt2" not in tree["analysis"].children
    assert "analyses" not in tree.children and "_staging" not in tree.children
    assert not (store / "analyses").exists()


def test_compare_draws_both_analyses_in_the_real_report(store, tmp_path):
    """`analyze --name r --report DIR --compare default`, end to end: the page holds both
    analyses' kurtosis curves and top-pairs tables, and each table's P values are numpy's P under
    that analysis' own ridge."""
    import html
    import re

    path, written = store
    _cli("analyze", path, "--model", "a")
    out = tmp_path / "rep"
    _cli("analyze", path, "--model", "a", "--name", "r", "--ridge", "0.05", "--report", str(out), "--compare", "default",
         "--report-layers", "1", "--dpi", "40")
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "a [r]" in text and "a [default]" in text
    tree = _open(path)
    for name, ridge, ds in (("r", 0.05, tree["analyses/r/a"].ds), ("default", 0.0, tree["analysis/a"].ds)):
        block = re.search(rf'<div data-group="g0" data-layer="1" class="pairs-{name}">(.*?)</table>', text, re.S)
        assert block, name
        values = [float(v) for v in re.findall(r'data-tip="P = (-?[\d.]+) \(layer 1', html.unescape(block.group(1)))]
        assert len(values) == ds.sizes["rank"]
        p = _p_numpy(written["a"]["keys"][1], written["a"]["cov"][1], ridge)
        top = np.sort(np.abs(p[~np.eye(len(p), dtype=bool)]))[::-1][:len(values)]
        np.testing.assert_allclose(np.abs(values), top, atol=6e-5)
