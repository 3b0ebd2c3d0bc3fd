"""ROME-style covariance caches: export to the tools' layout, import back, refuse bad files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from kisstore.errors import InputError, StoreError
from kisstore.extract import ExtractOptions, run_extract
from kisstore.interop import ExportOptions, ImportOptions, run_export, run_import
from kisstore.interop import rome_format as fmt
from kisstore_cli.main import cli
from tests import tiny
from tests.conftest import tree_digest

# The tools' module names, written here independently of kisstore.models.registry.
KEY_MODULE = {
    "gpt2": "transformer.h.{}.mlp.c_proj",
    "gptj": "transformer.h.{}.mlp.fc_out",
    "gpt_neox": "gpt_neox.layers.{}.mlp.dense_4h_to_h",
    "llama": "model.layers.{}.mlp.down_proj",
}
LAYER5 = {
    "gpt2": "transformer.h.5.mlp.c_proj",
    "gptj": "transformer.h.5.mlp.fc_out",
    "gpt_neox": "gpt_neox.layers.5.mlp.dense_4h_to_h",
    "llama": "model.layers.5.mlp.down_proj",
}


@pytest.fixture(scope="module")
def store(tiny_models, tiny_items, tiny_corpus, tmp_path_factory) -> Path:
    """One real extraction of every tiny architecture (read-only for the tests)."""
    path = tmp_path_factory.mktemp("rome") / "s.zarr"
    run_extract(ExtractOptions(models=[str(tiny_models[a]) for a in tiny.ARCHS], store=str(path),
                               items=str(tiny_items), corpus=str(tiny_corpus), progress=False))
    return path


@pytest.fixture(scope="module")
def stats_dir(store, tmp_path_factory) -> Path:
    """Every model of ``store`` exported in float32 (read-only for the tests)."""
    out = tmp_path_factory.mktemp("stats")
    for arch in tiny.ARCHS:
        run_export(ExportOptions(store=str(store), stats_dir=str(out), model=arch))
    return out


def _model(store: Path, model_id: str) -> xr.Dataset:
    return xr.open_datatree(store, engine="zarr")[f"models/{model_id}"].ds


def _folder_name(model_dir: Path) -> str:
    return str(model_dir).replace("/", "_")  # ROME: config._name_or_path with "/" → "_"


def _stats_folder(stats_dir: Path, tiny_models, arch: str) -> Path:
    return stats_dir / _folder_name(tiny_models[arch]) / "wikipedia_stats"


def _import(source: Path, model: Path, target: Path, **kw) -> object:
    return run_import(ImportOptions(source=str(source), model=str(model), store=str(target), **kw))


# -- export ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_export_writes_each_layer_at_the_path_the_tools_look_up(arch, store, stats_dir, tiny_models):
    docs = _model(store, arch).attrs["corpus_documents"]
    folder = stats_dir / _folder_name(tiny_models[arch]) / "wikipedia_stats"
    expected = {f"{KEY_MODULE[arch].format(i)}_float32_mom2_{docs}.npz" for i in range(3)}
    assert {p.name for p in folder.iterdir()} == expected
    template = _model(store, arch).attrs["hooked_module"]
    five = fmt.stats_path("data/stats", "gpt2-xl", "wikipedia", template.format(i=5), "float32", 100000)
    assert five == Path(f"data/stats/gpt2-xl/wikipedia_stats/{LAYER5[arch]}_float32_mom2_100000.npz")


@pytest.mark.parametrize("precision,rtol", [("float32", 1e-6), ("float64", 1e-13)])
def test_exported_file_loads_with_plain_numpy_and_its_moment_is_the_store_cov(precision, rtol, store, tmp_path):
    run_export(ExportOptions(store=str(store), stats_dir=str(tmp_path), model="llama", precision=precision,
                             sample_size=1234, model_name="tiny-llama"))
    ds = _model(store, "llama")
    for layer in range(3):
        path = tmp_path / "tiny-llama" / "wikipedia_stats" / f"model.layers.{layer}.mlp.down_proj_{precision}_mom2_1234.npz"
        with np.load(path) as z:  # no allow_pickle: the tools load it like this
            assert z["mom2.mom2"].dtype == np.dtype(precision)
            assert int(z["mom2.count"]) == int(ds["n_tokens"].values[layer])
            assert z["sample_size"] == 1234  # the tools recompute unless this equals mom2_n_samples
            assert "SecondMoment" in str(z["mom2.constructor"])
            moment = z["mom2.mom2"].astype(np.float64) / z["mom2.count"]
        np.testing.assert_allclose(moment, ds["cov"].values[layer], rtol=rtol, atol=rtol * np.abs(moment).max())


def test_export_refuses_existing_files_unless_overwrite_and_handles_sample_size_all(store, tmp_path):
    opts = ExportOptions(store=str(store), stats_dir=str(tmp_path), model="gpt2", model_name="m", layers="1")
    (path,) = run_export(opts).files.values()
    with pytest.raises(InputError, match="already exists"):
        run_export(opts)
    opts.overwrite = True
    run_export(opts)
    opts.sample_size = "all"
    (path_all,) = run_export(opts).files.values()
    assert path_all.name == "transformer.h.1.mlp.c_proj_float32_mom2.npz"
    with np.load(path_all) as z:
        assert np.isnan(z["sample_size"])  # ROME's encoding of sample_size=None
    assert fmt.read_stats_file(path_all).sample_size is None


@pytest.mark.parametrize("name,layer,precision,sample", [
    ("transformer.h.17.mlp.c_proj_float32_mom2_100000.npz", "transformer.h.17.mlp.c_proj", "float32", 100000),
    ("model.layers.4.mlp.down_proj_float64_mom2.npz", "model.layers.4.mlp.down_proj", "float64", None),
    ("transformer.h.5.mlp.fc_out_float32_mom2_t{batch_tokens}_100000.npz", "transformer.h.5.mlp.fc_out",
     "float32", 100000),
    ("gpt_neox.layers.3.mlp.dense_4h_to_h_float16_mean-mom2_t1024_500.npz",
     "gpt_neox.layers.3.mlp.dense_4h_to_h", "float16", 500),
])
def test_cache_file_names_parse_with_token_infix_and_without_size(name, layer, precision, sample):
    parsed = fmt.parse_file_name(name)
    assert (parsed.layer_name, parsed.precision, parsed.sample_size) == (layer, precision, sample)
    assert "mom2" in parsed.stats
    assert fmt.parse_file_name("README.md") is None


def test_float16_that_cannot_hold_the_sum_is_refused():
    with pytest.raises(InputError, match="overflows float16"):
        fmt.mom2_payload(np.full((2, 2), 1e6), 10, "float16", 100)


def test_export_command_prints_paths_tools_and_hyperparameters(store, tmp_path):
    res = CliRunner().invoke(cli, ["export", str(store), "--model", "gpt_neox", "--stats-dir", str(tmp_path),
                                   "--sample-size", "100000", "--model-name", "EleutherAI_pythia-tiny",
                                   "--ds-name", "wikipedia"])  # the store's corpus is a file
    assert res.exit_code == 0, res.output
    for text in ("gpt_neox.layers.2.mlp.dense_4h_to_h_float32_mom2_100000.npz", "ROME", "MEMIT", "EasyEdit",
                 "AlphaEdit", "mom2_n_samples 100000", "mom2_dataset   wikipedia", "mom2_dtype     float32",
                 "EleutherAI_pythia-tiny"):
        assert text in res.output


# -- import ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_export_then_import_gives_back_the_store_cov(arch, store, stats_dir, tiny_models, tmp_path):
    target = tmp_path / "imported.zarr"
    r = _import(stats_dir, tiny_models[arch], target)
    got, want = _model(target, r.model_id), _model(store, arch)
    assert r.model_id == arch
    assert got["layer"].values.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(got["n_tokens"].values, want["n_tokens"].values)
    np.testing.assert_allclose(got["cov"].values, want["cov"].values, rtol=1e-6,
                               atol=1e-6 * np.abs(want["cov"].values).max())  # float32 files
    a = got.attrs
    assert a["cov_source"] == "imported" and a["complete"] is False
    assert a["imported_from"] == str(_stats_folder(stats_dir, tiny_models, arch).resolve())
    assert [f["file"] for f in a["imported_files"]] == [
        f"{KEY_MODULE[arch].format(i)}_float32_mom2_{want.attrs['corpus_documents']}.npz" for i in range(3)]
    assert {f["precision"] for f in a["imported_files"]} == {"float32"}
    assert [f["count"] for f in a["imported_files"]] == want["n_tokens"].values.tolist()
    for key in ("hooked_module", "n_layers", "d_ff", "architecture", "name_or_path", "corpus", "corpus_documents",
                "corpus_tokens", "max_length"):
        assert a[key] == want.attrs[key], key  # the corpus from the files' kisstore record, not the folder name


def test_files_of_the_tools_themselves_name_the_corpus_after_their_folder(stats_dir, tiny_models, tmp_path):
    src = tmp_path / "wikitext_stats"
    shutil.copytree(_stats_folder(stats_dir, tiny_models, "llama"), src)
    for p in src.iterdir():  # as ROME writes them: no kisstore record beside the arrays
        with np.load(p) as z:
            arrays = {k: z[k] for k in z.files if k != "kisstore.provenance"}
        np.savez(p, **arrays)
    r = _import(src, tiny_models["llama"], tmp_path / "s.zarr")
    assert _model(tmp_path / "s.zarr", r.model_id).attrs["corpus"] == "wikitext"


def _import_with_record(record: str, stats_dir, tiny_models, tmp_path) -> dict:
    """Import the llama files from a folder named wikitext_stats, each carrying ``record`` as its
    kisstore provenance; return the imported model's attributes."""
    src = tmp_path / "wikitext_stats"
    shutil.copytree(_stats_folder(stats_dir, tiny_models, "llama"), src)
    for p in src.iterdir():
        with np.load(p) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["kisstore.provenance"] = np.array(record)
        np.savez(p, **arrays)
    r = _import(src, tiny_models["llama"], tmp_path / "s.zarr")
    return _model(tmp_path / "s.zarr", r.model_id).attrs


@pytest.mark.parametrize("record", [
    "[" * 100000 + "]" * 100000,  # nested past the recursion limit
    "x" * 70000,  # over the size a provenance record can have
    '{"written_by": "kisstore 0.1.0", "corpus": {"evil": [1, 2]}, "corpus_documents": 3}',
    '{"written_by": "kisstore 0.1.0", "corpus": "c", "corpus_documents": "lots"}',
    '{"written_by": "kisstore 0.1.0", "corpus": "c", "corpus_documents": -3}',
    '{"written_by": "kisstore 0.1.0", "corpus": "c", "corpus_documents": true}',
    '{"written_by": "someone else", "corpus": "c", "corpus_documents": 3}',
])
def test_a_malformed_provenance_record_is_ignored(record, stats_dir, tiny_models, tmp_path):
    attrs = _import_with_record(record, stats_dir, tiny_models, tmp_path)
    assert attrs["corpus"] == "wikitext" and not isinstance(attrs["corpus_documents"], (str, bool))


def test_malformed_max_length_and_token_count_are_dropped_from_a_record(stats_dir, tiny_models, tmp_path):
    record = '{"written_by": "kisstore 0.1.0", "corpus": "c", "corpus_documents": 3, "max_length": "x", "corpus_tokens": -1}'
    attrs = _import_with_record(record, stats_dir, tiny_models, tmp_path)
    assert (attrs["corpus"], attrs["corpus_documents"], attrs["max_length"], attrs["corpus_tokens"]) == ("c", 3, None, None)


def test_an_imported_model_exports_to_the_same_files(stats_dir, tiny_models, tmp_path):
    src = _stats_folder(stats_dir, tiny_models, "gptj")
    _import(src, tiny_models["gptj"], tmp_path / "s.zarr")
    r = run_export(ExportOptions(store=str(tmp_path / "s.zarr"), stats_dir=str(tmp_path / "again")))
    assert r.folder.relative_to(tmp_path / "again") == src.relative_to(stats_dir)
    assert sorted(p.name for p in r.files.values()) == sorted(p.name for p in src.iterdir())
    for p in r.files.values():
        with np.load(p) as a, np.load(src / p.name) as b:
            np.testing.assert_array_equal(a["mom2.mom2"], b["mom2.mom2"])
            assert a["mom2.count"] == b["mom2.count"] and a["sample_size"] == b["sample_size"]


def test_import_accepts_the_stats_dir_root_a_model_folder_or_the_stats_folder(stats_dir, tiny_models, tmp_path):
    folder = _stats_folder(stats_dir, tiny_models, "gpt2")
    covs = []
    for i, source in enumerate((stats_dir, folder.parent, folder)):
        target = tmp_path / f"s{i}.zarr"
        _import(source, tiny_models["gpt2"], target)
        covs.append(_model(target, "gpt2")["cov"].values)
    np.testing.assert_array_equal(covs[0], covs[1])
    np.testing.assert_array_equal(covs[0], covs[2])


def test_import_takes_any_subset_of_layers(stats_dir, tiny_models, tmp_path):
    src = tmp_path / "sub"
    shutil.copytree(_stats_folder(stats_dir, tiny_models, "gpt_neox"), src)
    next(src.glob("gpt_neox.layers.1.*")).unlink()
    (src / "README.txt").write_text("not a stats file")
    _import(src, tiny_models["gpt_neox"], tmp_path / "s.zarr")
    ds = _model(tmp_path / "s.zarr", "gpt_neox")
    assert ds["layer"].values.tolist() == [0, 2] and ds["cov"].shape[0] == 2


def test_import_finds_the_easyedit_folder_name_and_needs_ds_name_when_ambiguous(stats_dir, tiny_models, tmp_path):
    root = tmp_path / "stats"
    model_folder = root / Path(tiny_models["llama"]).name  # EasyEdit: last component of _name_or_path
    shutil.copytree(_stats_folder(stats_dir, tiny_models, "llama"), model_folder / "wikipedia_stats")
    shutil.copytree(model_folder / "wikipedia_stats", model_folder / "wikitext_stats")
    with pytest.raises(InputError, match="pass --ds-name"):
        _import(root, tiny_models["llama"], tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()
    _import(root, tiny_models["llama"], tmp_path / "s.zarr", ds_name="wikitext")
    assert _model(tmp_path / "s.zarr", "llama").attrs["imported_from"].endswith("wikitext_stats")


def test_import_over_a_complete_model_needs_overwrite(store, stats_dir, tiny_models, tmp_path):
    target = tmp_path / "copy.zarr"
    shutil.copytree(store, target)
    before = tree_digest(target)
    with pytest.raises(StoreError, match="--overwrite"):
        _import(stats_dir, tiny_models["gpt2"], target)
    assert tree_digest(target) == before
    _import(stats_dir, tiny_models["gpt2"], target, overwrite=True)
    ds = _model(target, "gpt2")
    assert ds.attrs["cov_source"] == "imported" and "key" not in ds
    assert _model(target, "llama").attrs["complete"] is True  # other models untouched


def _save(path: Path, **arrays) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _good(folder: Path, layer: int = 1) -> dict[str, np.ndarray]:
    with np.load(next(folder.glob(f"transformer.h.{layer}.*"))) as z:
        return {k: z[k] for k in z.files}


def _layer1(folder: Path) -> Path:
    return next(folder.glob("transformer.h.1.*"))


def _case_layer_out_of_range(f: Path) -> Path:
    p = f / _layer1(f).name.replace(".h.1.", ".h.7.")
    shutil.copy(_layer1(f), p)
    return p


def _case_wrong_dimension(f: Path) -> Path:
    _save(_layer1(f), **{**_good(f), "mom2.mom2": np.eye(50, dtype=np.float32)})
    return _layer1(f)


def _case_zero_count(f: Path) -> Path:
    _save(_layer1(f), **{**_good(f), "mom2.count": np.array(0)})
    return _layer1(f)


def _case_non_finite(f: Path) -> Path:
    m = _good(f)["mom2.mom2"].copy()
    m[3, 3] = np.nan
    _save(_layer1(f), **{**_good(f), "mom2.mom2": m})
    return _layer1(f)


def _case_asymmetric(f: Path) -> Path:
    m = _good(f)["mom2.mom2"].copy()
    m[0, 1] += 0.5 * np.abs(np.diagonal(m)).max()
    _save(_layer1(f), **{**_good(f), "mom2.mom2": m})
    return _layer1(f)


def _case_negative_diagonal(f: Path) -> Path:
    m = _good(f)["mom2.mom2"].copy()
    m[2, 2] = -1.0
    _save(_layer1(f), **{**_good(f), "mom2.mom2": m})
    return _layer1(f)


def _case_missing_count(f: Path) -> Path:
    _save(_layer1(f), **{"mom2.mom2": _good(f)["mom2.mom2"]})
    return _layer1(f)


def _case_not_an_npz(f: Path) -> Path:
    _layer1(f).write_text("<html>404 Not Found</html>")
    return _layer1(f)


def _case_bare_npy(f: Path) -> Path:
    m = _good(f)["mom2.mom2"]
    with open(_layer1(f), "wb") as fh:
        np.save(fh, m)
    return _layer1(f)


def _case_pickled_object(f: Path) -> Path:
    _save(_layer1(f), **{**_good(f), "mom2.mom2": np.array([{"a": 1}], dtype=object)})
    return _layer1(f)


def _case_other_architecture(f: Path) -> Path:
    p = f / "model.layers.1.mlp.down_proj_float32_mom2_40.npz"
    shutil.copy(_layer1(f), p)
    return p


def _case_two_files_for_one_layer(f: Path) -> Path:
    p = f / _layer1(f).name.replace("float32", "float64")
    _save(p, **_good(f))
    return p


BAD = {
    "layer beyond the model": (_case_layer_out_of_range, "layer 7 does not exist"),
    "wrong dimension": (_case_wrong_dimension, "d_ff = 48"),
    "zero count": (_case_zero_count, "count is 0"),
    "non-finite sum": (_case_non_finite, "non-finite"),
    "asymmetric sum": (_case_asymmetric, "not symmetric"),
    "negative diagonal": (_case_negative_diagonal, "negative diagonal"),
    "missing mom2.count": (_case_missing_count, "missing key(s) mom2.count"),
    "not an npz": (_case_not_an_npz, "not a NumPy .npz"),
    "bare .npy": (_case_bare_npy, "not a NumPy .npz"),
    "pickled object": (_case_pickled_object, "pickled"),
    "another architecture's module": (_case_other_architecture, "not this model's key module"),
    "two files for one layer": (_case_two_files_for_one_layer, "2 files for layer 1"),
}


@pytest.fixture(scope="module")
def other_store(stats_dir, tiny_models, tmp_path_factory) -> Path:
    """A store that already holds one imported model, to prove a refused import leaves it alone."""
    path = tmp_path_factory.mktemp("other") / "s.zarr"
    _import(stats_dir, tiny_models["llama"], path)
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_mismatched_or_malformed_file_is_refused_naming_it(case, stats_dir, tiny_models, other_store, tmp_path):
    src = tmp_path / "wikipedia_stats"
    shutil.copytree(_stats_folder(stats_dir, tiny_models, "gpt2"), src)
    make, message = BAD[case]
    bad = make(src)
    before = tree_digest(other_store)
    for target in (other_store, tmp_path / "new.zarr"):
        with pytest.raises(InputError) as err:
            _import(src, tiny_models["gpt2"], target)
        text = str(err.value)
        assert bad.name in text and message in text and "\n" not in text
    assert tree_digest(other_store) == before
    assert not (tmp_path / "new.zarr").exists()


def test_refusal_on_the_command_line_is_one_line_naming_the_file(stats_dir, tiny_models, tmp_path):
    src = tmp_path / "wikipedia_stats"
    shutil.copytree(_stats_folder(stats_dir, tiny_models, "gpt2"), src)
    bad = _case_zero_count(src)
    res = CliRunner().invoke(cli, ["import-rome", str(src), "--model", str(tiny_models["gpt2"]),
                                   "--store", str(tmp_path / "s.zarr")])
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and bad.name in errors[0] and "count is 0" in errors[0]
    assert not (tmp_path / "s.zarr").exists()


# -- import, then extract the keys -------------------------------------------------------
def test_import_then_extract_adds_keys_and_keeps_the_imported_cov(stats_dir, tiny_models, tiny_items, tmp_path):
    src = tmp_path / "wikipedia_stats"
    shutil.copytree(_stats_folder(stats_dir, tiny_models, "gpt2"), src)
    next(src.glob("transformer.h.0.*")).unlink()
    target = tmp_path / "s.zarr"
    _import(src, tiny_models["gpt2"], target)
    imported = _model(target, "gpt2").load()
    other = tmp_path / "other.txt"  # a corpus pass over this would change cov and n_tokens
    other.write_text("Paris is a city.")
    run_extract(ExtractOptions(models=[str(tiny_models["gpt2"])], store=str(target), items=str(tiny_items),
                               corpus=str(other), progress=False))
    ds = _model(target, "gpt2")
    assert ds.attrs["complete"] is True and ds.attrs["cov_source"] == "imported"
    assert ds["key"].shape == (2, 12, 48) and ds["layer"].values.tolist() == [1, 2]
    np.testing.assert_array_equal(ds["cov"].values, imported["cov"].values)
    np.testing.assert_array_equal(ds["n_tokens"].values, imported["n_tokens"].values)
