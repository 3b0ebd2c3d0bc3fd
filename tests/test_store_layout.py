"""The store's chunking rule (store.chunking), stores of the 0.1 layout, and the numeric text twins."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from kisstore.store import chunking, open_store
from kisstore.store import layout as store_layout
from kisstore.store import text as text_twins
from tests.conftest import run_cli

MiB = 2**20


def _objects(c: chunking.Chunking, shape: tuple[int, ...]) -> int:
    return math.prod(-(-n // s) for n, s in zip(shape, c.write_chunks, strict=True))


# -- the rule -------------------------------------------------------------------------------------
def test_the_smollm2_demo_shape_is_few_objects_read_one_layer_at_a_time():
    """SmolLM2-135M: 30 layers, d_ff 1536, 128 items."""
    keys = chunking.chunking(("layer", "item", "d_ff"), (30, 128, 1536), np.float32)
    assert keys == chunking.Chunking((1, 128, 1536), (30, 128, 1536))  # 23.6 MB: one object
    cov = chunking.chunking(("layer", "d_ff", "d_ff_"), (30, 1536, 1536), np.float64)
    assert cov.chunks == (1, 1536, 1536)  # one layer, 18.9 MB
    assert cov.shards == (6, 1536, 1536) and _objects(cov, (30, 1536, 1536)) == 5  # 113 MB each
    p = chunking.chunking(("layer", "item", "item_"), (30, 128, 128), np.float64)
    assert p == chunking.Chunking((1, 128, 128), (30, 128, 128))
    for dims, shape, dtype in [(("layer",), (30,), np.int64), (("layer", "quantity", "stat"), (30, 3, 13), float),
                               (("layer", "rank"), (30, 20), object), (("item",), (128,), np.dtypes.StringDType()),
                               (("layer", "quantity", "grid"), (30, 3, 401), float),
                               (("model", "layer", "quantity", "stat"), (4, 48, 3, 13), float)]:
        assert chunking.chunking(dims, shape, dtype) == chunking.Chunking(shape), dims  # small: one chunk


@pytest.mark.parametrize("d_ff", [8, 1000, 1536, 2048, 3000, 4096, 8192, 11008, 28672])
def test_cov_chunks_stay_under_32_mib_at_any_d_ff(d_ff):
    shape = (32, d_ff, d_ff)
    c = chunking.chunking(("layer", "d_ff", "d_ff_"), shape, np.float64)
    assert c.chunks[0] == 1 and math.prod(c.chunks) * 8 <= 32 * MiB
    if d_ff >= 2048:
        assert c.chunks[1:] == (2048, 2048)
    else:
        assert c.chunks[1:] == (d_ff, d_ff)
    if c.shards is not None:
        assert all(s % k == 0 for s, k in zip(c.shards, c.chunks, strict=True))  # a shard holds whole chunks
        layer = d_ff * d_ff * 8
        padded = (-(-d_ff // c.chunks[1]) * c.chunks[1]) ** 2 * 8  # a layer's tiles, the last ones partly empty
        assert math.prod(c.shards) * 8 <= max(chunking.SHARD_BYTES, padded)  # a layer larger than that: alone
        assert c.shards[0] == 1 or c.shards[0] * layer <= chunking.SHARD_BYTES
    assert chunking.tile_edge() == 2048


def test_large_arrays_without_a_layer_are_split_into_chunks_under_32_mib():
    c = chunking.chunking(("item", "d_ff"), (100_000, 4096), np.float32)  # 1.6 GB
    assert c.shards is None and math.prod(c.chunks) * 4 <= 32 * MiB and c.chunks[1] == 4096


def test_dask_blocks_of_a_dataset_follow_the_rule():
    ds = xr.Dataset({"p_matrix": (("layer", "item", "item_"), np.zeros((4, 5, 5))),
                     "stats": (("layer", "stat"), np.zeros((4, 3)))}).chunk({"layer": 1})
    out = chunking.chunked_for_store(ds)
    assert out["p_matrix"].chunks == ((4,), (5,), (5,))  # one shard: the writer takes it whole
    assert out["stats"].chunks == ((4,), (3,))
    np.testing.assert_array_equal(out["p_matrix"].values, ds["p_matrix"].values)


# -- stores ---------------------------------------------------------------------------------------
def _old_layout(ds: xr.Dataset) -> dict[str, tuple[int, ...]]:
    """kisstore 0.1's chunks: one per layer on every array with a layer, d_ff tiles of 4096."""
    out = {}
    for name, var in ds.variables.items():
        if var.ndim:
            out[name] = tuple(1 if d == "layer" else (min(n, 4096) if d.startswith("d_ff") else max(n, 1))
                              for d, n in zip(var.dims, var.shape, strict=True))
    return out


@pytest.fixture(scope="module")
def two_layouts(tmp_path_factory):
    """The same synthetic model written in the new layout and in kisstore 0.1's, both analysed."""
    from kisstore.analysis import synthetic
    from kisstore.store import Store

    rng = np.random.default_rng(3)
    arrays = synthetic.synthetic_model(rng, n_items=20, d_ff=10, n_layers=4)
    ids = np.arange(500, 520)
    paths = {}
    for layout in ("new", "old"):
        path = tmp_path_factory.mktemp(layout) / "s.zarr"
        store = Store(str(path))
        store.init()
        items, model = synthetic.items_dataset(ids), synthetic.model_dataset(arrays, ids)
        old = layout == "old"
        store.write_dataset("items", items, chunks=_old_layout(items) if old else None)
        store.write_dataset("models/m", model, chunks=_old_layout(model) if old else None)
        store.set_attrs("models/m", {"model_id": "m", "n_layers": 4, "d_ff": 10, "complete": True})
        store.consolidate()
        run_cli("analyze", str(path), "--quiet", check=True)
        paths[layout] = path
    return paths


def test_a_store_in_the_01_layout_opens_and_analyses_to_the_same_numbers(two_layouts):
    new, old = (xr.open_datatree(two_layouts[k], engine="zarr") for k in ("new", "old"))
    old_meta = json.loads((two_layouts["old"] / "models/m/key/zarr.json").read_text())
    assert old_meta["chunk_grid"]["configuration"]["chunk_shape"] == [1, 20, 10]  # really the old layout
    assert old_meta["codecs"][0]["name"] != "sharding_indexed"
    new_meta = json.loads((two_layouts["new"] / "models/m/key/zarr.json").read_text())
    assert new_meta["codecs"][0]["name"] == "sharding_indexed"
    for name in ("p_matrix", "gram", "whitened_cos", "stats", "kde"):
        xr.testing.assert_allclose(new["analysis/m"][name], old["analysis/m"][name], rtol=1e-12)
    np.testing.assert_array_equal(new["models/m"]["cov"].values, old["models/m"]["cov"].values)
    assert run_cli("info", "--verify", str(two_layouts["old"])).returncode == 0


def test_every_layer_matrix_is_one_object_and_small_arrays_one_chunk(two_layouts):
    root = two_layouts["new"]
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != "zarr.json"}
    for array in ("models/m/key", "models/m/cov", "analysis/m/p_matrix", "models/m/layer", "models/m/n_tokens",
                  "analysis/m/stats", "analysis/m/pair_set", "items/subject"):
        assert [f for f in files if f.startswith(array + "/c/")] == [f"{array}/c/" + "/".join(
            ["0"] * len(json.loads((root / array / "zarr.json").read_text())["shape"]))], array


# -- text twins -----------------------------------------------------------------------------------
def test_text_twins_encode_utf8_exactly():
    values = np.array([["Danielle Darrieux", "Toko Yasuda"], ["", "Zürich — 東京"]], dtype=object)
    codes = text_twins.encode(values)
    assert codes.dtype == np.uint8 and codes.shape == (2, 2, len("Zürich — 東京".encode()))
    assert bytes(codes[1, 1]).decode("utf-8") == "Zürich — 東京"  # the longest: no padding
    assert bytes(codes[0, 1]).rstrip(b"\0") == b"Toko Yasuda"
    np.testing.assert_array_equal(text_twins.decode(codes), values)


def test_every_text_array_has_a_numeric_twin(two_layouts):
    """Every stored text array has a twin, except an analysis' label coordinates, which copy /items
    text: those hold exactly /items' text at their case ids (what a core-Zarr reader joins)."""
    tree = xr.open_datatree(two_layouts["new"], engine="zarr")
    items = tree["items"].to_dataset()
    text_arrays = copies = 0
    for node in list(tree.subtree):
        if node.name == text_twins.GROUP:
            continue
        ds = node.to_dataset(inherit=False)
        names = [n for n, v in ds.variables.items() if v.dtype.kind in ("O", "T", "U")]
        if not names:
            assert text_twins.GROUP not in node.children
            continue
        twins = node[text_twins.GROUP].to_dataset(inherit=False)
        for name in names:
            if store_layout.FROM_ITEMS in ds[name].attrs:
                copies += 1
                (dim,) = ds[name].dims
                field = ds[name].attrs[store_layout.FROM_ITEMS]
                assert f"{name}_utf8" not in twins
                want = items[field].sel(item=node[dim].values).values
                assert [str(v) for v in ds[name].values] == [str(v) for v in want], name
                continue
            text_arrays += 1
            codes = twins[f"{name}_utf8"]
            assert codes.dtype == np.uint8 and codes.dims == (*ds[name].dims, "utf8_byte")
            decoded = [bytes(r).rstrip(b"\0").decode("utf-8") for r in codes.values.reshape(-1, codes.shape[-1])]
            assert decoded == [str(v) for v in ds[name].values.ravel()], name
    # counted on this fixture: /items 5, /analysis/m 4 (quantity, stat, pair_set, bound), scaling 4
    # (model, family, quantity, stat); the 6 labels on item/item_ copy /items. The top pairs' text
    # (20 arrays) and the most exposed/disruptive subjects (2) are not stored: 41 text arrays before.
    assert (text_arrays, copies) == (13, 6)
    assert not [v for v in tree["analysis/m"].data_vars if v in store_layout.joined_text()]


def test_the_top_pairs_text_is_joined_from_items_on_opening(two_layouts):
    """kisstore.open_store joins the text of the top pairs and most exposed/disruptive facts from
    /items through the stored case ids: the same as numpy indexing /items by those ids."""
    tree = open_store(str(two_layouts["new"]))
    an, items = tree["analysis/m"].to_dataset(), tree["items"].to_dataset()
    ids = list(items["item"].values)
    for name, (id_var, field) in store_layout.joined_text().items():
        if field not in items:
            continue
        got = an[name].values
        case = an[id_var].values
        texts = np.asarray([str(v) for v in items[field].values], dtype=object)
        want = np.where(case >= 0, texts[[ids.index(c) if c >= 0 else 0 for c in case.ravel()]].reshape(case.shape), "")
        np.testing.assert_array_equal(got.astype(str), want.astype(str), err_msg=name)
    assert (an["top_item"].values >= 0).all() and an["top_subject_"].attrs["long_name"]


# -- indexes from the metadata ------------------------------------------------------------------
def _dimension_coordinates(tree: xr.DataTree):
    for node in tree.subtree:
        ds = node.to_dataset(inherit=False)
        for name in ds.dims:
            if name in ds.coords:
                yield node.path, name, ds[name].variable


def _without_index_values(var: xr.Variable) -> xr.Variable:
    var = var.copy()
    var.attrs = {k: v for k, v in var.attrs.items() if k != store_layout.INDEX_VALUES}
    return var


def test_each_small_index_carries_its_stored_values(two_layouts):
    """Every dimension coordinate of both layouts holds, in its zarr.json, exactly the values of
    its chunk (what open_store builds the index from)."""
    for layout in ("new", "old"):
        root = two_layouts[layout]
        plain = xr.open_datatree(root, engine="zarr")
        seen = 0
        for path, name, var in _dimension_coordinates(plain):
            meta = json.loads((root / path.strip("/") / name / "zarr.json").read_text())
            stored = meta["attributes"][store_layout.INDEX_VALUES]
            assert stored == var.values.tolist(), (layout, path, name)
            seen += 1
        assert seen >= 12, seen


def test_open_store_builds_the_same_indexes_as_xarray_with_or_without_stored_values(two_layouts, tmp_path):
    """open_store's indexes equal xarray's own (values, data type, attributes), from the stored
    values; and from the chunks for a store written before them (kisstore 0.2.0: the attribute
    removed here from every zarr.json, the consolidated metadata's included)."""
    import shutil

    old = tmp_path / "020.zarr"
    shutil.copytree(two_layouts["new"], old)
    for meta in old.rglob("zarr.json"):
        text = meta.read_text()
        doc = json.loads(text)

        def strip(node):
            if isinstance(node, dict):
                node.pop(store_layout.INDEX_VALUES, None)
                for v in node.values():
                    strip(v)

        strip(doc)
        meta.write_text(json.dumps(doc))
    assert store_layout.INDEX_VALUES not in (old / "zarr.json").read_text()
    for root in (two_layouts["new"], old):
        plain, mine = xr.open_datatree(root, engine="zarr"), open_store(str(root))
        for path, name, var in _dimension_coordinates(plain):
            got = mine[path].to_dataset(inherit=False)
            assert _without_index_values(var).identical(got[name].variable), (root, path, name)
            assert var.dtype == got[name].dtype and name in got.indexes, (root, path, name)
            assert store_layout.INDEX_VALUES not in got[name].attrs
        got = mine["analysis/m"].sel(layer=2, item=505)["p_matrix"].values
        np.testing.assert_array_equal(got, plain["analysis/m"].sel(layer=2, item=505)["p_matrix"].values)


def test_verify_reports_index_values_that_differ_from_the_data(two_layouts, tmp_path):
    """Index values edited in the metadata (the array's zarr.json and the consolidated copy alike,
    so nothing else differs) would relabel the arrays open_store opens: `info --verify` names them."""
    import shutil

    root = tmp_path / "s.zarr"
    shutil.copytree(two_layouts["new"], root)
    assert run_cli("info", "--verify", str(root)).returncode == 0
    array = root / "models/m/layer/zarr.json"
    doc = json.loads(array.read_text())
    doc["attributes"][store_layout.INDEX_VALUES] = [0, 1, 3, 2]
    array.write_text(json.dumps(doc))
    top = json.loads((root / "zarr.json").read_text())
    top["consolidated_metadata"]["metadata"]["models/m/layer"] = doc
    (root / "zarr.json").write_text(json.dumps(top))
    proc = run_cli("info", "--verify", str(root))
    assert proc.returncode != 0
    assert f"/models/m/layer: its {store_layout.INDEX_VALUES} attribute differs from its data" in proc.stdout + proc.stderr


def test_large_or_unrepresentable_indexes_are_read_from_their_chunk():
    from kisstore.store import indexes

    n = store_layout.INDEX_VALUES_MAX
    ds = xr.Dataset({"v": (("item", "x"), np.zeros((n + 1, 3)))},
                    coords={"item": np.arange(n + 1), "x": [0.5, np.nan, 2.0]})
    ds["item"].attrs[store_layout.INDEX_VALUES] = [1, 2]  # stale, read along with a dataset: dropped
    out = indexes.with_index_values(ds)
    assert store_layout.INDEX_VALUES not in out["item"].attrs  # over the limit
    assert store_layout.INDEX_VALUES not in out["x"].attrs  # NaN is no JSON number
    small = indexes.with_index_values(ds.isel(item=slice(0, 3)))
    assert small["item"].attrs[store_layout.INDEX_VALUES] == [0, 1, 2]
    assert store_layout.INDEX_VALUES not in ds.isel(item=slice(0, 3))["x"].attrs


def _tensorstore(path: Path):
    ts = pytest.importorskip("tensorstore")
    return ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}, read=True).result()


def test_tensorstore_reads_the_sharded_arrays_and_the_text_twins(two_layouts):
    root = two_layouts["new"]
    tree = xr.open_datatree(root, engine="zarr")
    for array, want in [("models/m/cov", tree["models/m"]["cov"].values),
                        ("analysis/m/p_matrix", tree["analysis/m"]["p_matrix"].values)]:
        got = _tensorstore(root / array)[...].read().result()
        np.testing.assert_array_equal(got, want)  # bit for bit
    one_layer = _tensorstore(root / "models/m/key")[2].read().result()
    np.testing.assert_array_equal(one_layer, tree["models/m"]["key"].values[2])
    codes = _tensorstore(root / "items/text_utf8/subject_utf8")[...].read().result()
    assert [bytes(r).rstrip(b"\0").decode() for r in codes] == list(tree["items"]["subject"].values)
    with pytest.raises(ValueError):  # the string array itself: a registered extension tensorstore lacks
        _tensorstore(root / "items/subject")


def test_zarrs_strict_reads_the_numeric_arrays_and_refuses_text(two_layouts):
    pytest.importorskip("zarrs")
    import zarr

    root = two_layouts["new"]
    want = xr.open_datatree(root, engine="zarr")
    with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline", "codec_pipeline.strict": True}):
        cov = zarr.open_array(root / "models/m/cov", mode="r")[...]
        codes = zarr.open_array(root / "analysis/m/text_utf8/pair_set_utf8", mode="r")[...]
        with pytest.raises(Exception) as refused:  # noqa: PT011 -- zarrs' own error type
            zarr.open_array(root / "items/subject", mode="r")[...]
    assert type(refused.value).__name__ == "UnsupportedDataTypeError"
    np.testing.assert_array_equal(cov, want["models/m"]["cov"].values)
    np.testing.assert_array_equal(text_twins.decode(codes), want["analysis/m"]["pair_set"].values.astype(object))


# -- checkpoints of another layout ----------------------------------------------------------------
def _rechunk_checkpoint(group_path: Path, edge: int) -> int:
    """Rewrite every packed-triangle sum array of an extraction checkpoint in ``edge``²-number
    chunks (as another kisstore version would have written it), keeping its values and attributes."""
    import zarr

    from kisstore.store.io import default_compressors

    group = zarr.open_group(str(group_path), mode="r+", zarr_format=3, use_consolidated=False)
    rewritten = 0
    for name, arr in list(group.arrays()):
        if arr.ndim != 2 or tuple(arr.metadata.dimension_names or ()) != ("layer_row", "packed_tril"):
            continue
        values, attrs, dims = arr[...], dict(arr.attrs), arr.metadata.dimension_names
        new = group.create_array(name, shape=arr.shape, chunks=(1, edge * edge), dtype=arr.dtype, fill_value=0.0,
                                 compressors=default_compressors(), dimension_names=dims, overwrite=True)
        new[...] = values
        new.attrs.update(attrs)
        assert new.chunks == (1, edge * edge) != arr.chunks
        rewritten += 1
    return rewritten


@pytest.mark.slow
def test_a_checkpoint_chunked_another_way_resumes_to_the_uninterrupted_result(tiny_models, tiny_items, tmp_path):
    from tests import tiny

    corpus = tiny.corpus_file(tmp_path / "corpus.txt", n_docs=400)
    args = ["extract", "--model", str(tiny_models["llama"]), "--items", str(tiny_items), "--corpus", str(corpus),
            "--checkpoint-every", "0", "--batch-tokens", "1024", "--quiet"]
    reference = tmp_path / "ref.zarr"
    run_cli(*args, "--store", str(reference), check=True)
    store = tmp_path / "s.zarr"
    killed = run_cli(*args, "--store", str(store), env={"KISSTORE_FAILPOINT": "corpus_batch:15"})
    assert killed.returncode == -9, killed.stderr
    assert _rechunk_checkpoint(store / "_checkpoints" / "llama", edge=16) == 3  # done, partial_0, partial_1
    resumed = run_cli(*args, "--store", str(store), check=True)
    assert "resuming corpus pass" in resumed.stdout
    got, want = (xr.open_datatree(p, engine="zarr")["models/llama"] for p in (store, reference))
    np.testing.assert_array_equal(got["cov"].values, want["cov"].values)
    np.testing.assert_array_equal(got["key"].values, want["key"].values)
