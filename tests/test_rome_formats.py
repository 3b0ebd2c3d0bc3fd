"""Every naming rule the editing tools look up, and AlphaEdit's projector, read back as the tools read them.

The readers below are written from the tools' own lookup code (``rome/layer_stats.py`` of
ROME, MEMIT and AlphaEdit, ``easyeditor/models/rome/layer_stats.py`` of EasyEdit,
``get_project`` / ``torch.load(hparams.P_loc)`` of AlphaEdit and EasyEdit), not from kisstore's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from kisstore.errors import InputError
from kisstore.interop import ExportOptions, run_export
from kisstore.interop.alphaedit import ProjectorOptions, run_projector_export
from kisstore_cli.main import cli
from tests.conftest import tree_digest

LLAMA_MODULE = "model.layers.{}.mlp.down_proj"


# -- the tools' lookups, written from their code ---------------------------------------
def layer_stats_path(stats_dir, name_or_path, layer_name, ds_name, precision, sample_size, *,
                     last_component: bool, batch_tokens=None, npos=256) -> Path:
    """The file ``layer_stats(..., to_collect=["mom2"])`` loads (ROME/MEMIT: ``_name_or_path``
    with "/" → "_"; AlphaEdit and EasyEdit since 2024-05: ``_name_or_path.rsplit("/")[-1]``)."""
    if batch_tokens is None:
        batch_tokens = npos * 3
    size_suffix = "" if sample_size is None else f"_{sample_size}"
    if batch_tokens < npos:
        size_suffix = "_t{batch_tokens}" + size_suffix  # a plain string there, never formatted
    model_name = name_or_path.rsplit("/")[-1] if last_component else name_or_path.replace("/", "_")
    return Path(stats_dir) / f"{model_name}/{ds_name}_stats/{layer_name}_{precision}_{'-'.join(sorted(['mom2']))}{size_suffix}.npz"


def tool_moment(path: Path, sample_size) -> np.ndarray:
    """``tally(cache=path)`` then ``stat.mom2.moment()``: the cache is used only when its
    ``sample_size`` equals the one asked for; the moment is ``mom2 / count``."""
    dat = dict(np.load(path))
    assert dat["sample_size"] == sample_size, "the tool would recompute"
    return dat["mom2.mom2"].astype(np.float64) / dat["mom2.count"]


def alphaedit_projector(cov: np.ndarray, threshold: float):
    """AlphaEdit's get_project: SVD of the float32 moment, singular values below the threshold."""
    import torch

    U, S, _ = torch.linalg.svd(torch.from_numpy(cov).float(), full_matrices=False)
    small = (S < threshold).nonzero(as_tuple=True)[0]
    return (U[:, small] @ U[:, small].T).numpy(), int(small.numel())


# -- fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tiny_store) -> Path:
    return tiny_store("llama")


@pytest.fixture(scope="module")
def model_ds(store) -> xr.Dataset:
    return xr.open_datatree(store, engine="zarr")["models/llama"].ds.load()


# -- covariance caches -------------------------------------------------------------------
@pytest.mark.parametrize("fmt,last,tokens", [("rome", False, None), ("memit", False, 64), ("easyedit", True, None)])
def test_each_format_is_found_and_loaded_by_its_tools_own_lookup(fmt, last, tokens, store, model_ds, tiny_models,
                                                                 tmp_path):
    name_or_path = str(tiny_models["llama"])  # what the tool's config._name_or_path is after from_pretrained
    assert model_ds.attrs["name_or_path"] == name_or_path
    r = run_export(ExportOptions(store=str(store), stats_dir=str(tmp_path), format=fmt, sample_size=100000,
                                 ds_name="wikipedia"))
    written = {p for lf in r.layouts for p in lf.files.values()}
    for layer in range(3):
        path = layer_stats_path(tmp_path, name_or_path, LLAMA_MODULE.format(layer), "wikipedia", "float32", 100000,
                                last_component=last, batch_tokens=tokens)
        assert path in written
        moment = tool_moment(path, 100000)
        want = model_ds["cov"].sel(layer=layer).values
        np.testing.assert_allclose(moment, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    assert len(written) == 3  # nothing else


def test_memit_names_carry_the_literal_batch_tokens_and_easyedit_the_last_component(store, tiny_models, tmp_path):
    r = run_export(ExportOptions(store=str(store), stats_dir=str(tmp_path), format="all", sample_size=500,
                                 ds_name="wikipedia", layers="1"))
    names = {lf.rule.name: lf.files[1] for lf in r.layouts}
    model_dir = Path(tiny_models["llama"])
    assert names["memit"].name == "model.layers.1.mlp.down_proj_float32_mom2_t{batch_tokens}_500.npz"
    assert names["rome"].name == "model.layers.1.mlp.down_proj_float32_mom2_500.npz"
    assert names["easyedit"].parent.parent.name == model_dir.name
    assert names["rome"].parent.parent.name == str(model_dir).replace("/", "_")
    assert names["easyedit-t"] == layer_stats_path(tmp_path, str(model_dir), "model.layers.1.mlp.down_proj",
                                                   "wikipedia", "float32", 500, last_component=True,
                                                   batch_tokens=128)
    for path in names.values():  # the same numbers under every name
        np.testing.assert_array_equal(tool_moment(path, 500), tool_moment(names["rome"], 500))
    with np.load(names["rome"]) as z:
        assert json.loads(str(z["kisstore.provenance"]))["naming_rules"] == ["rome", "memit", "easyedit", "easyedit-t"]


def test_all_refuses_before_writing_when_any_rule_finds_an_existing_file(store, tmp_path):
    run_export(ExportOptions(store=str(store), stats_dir=str(tmp_path), format="easyedit", sample_size=7,
                             ds_name="wikipedia"))
    before = tree_digest(tmp_path)
    with pytest.raises(InputError, match="already exists"):
        run_export(ExportOptions(store=str(store), stats_dir=str(tmp_path), format="all", sample_size=7,
                                 ds_name="wikipedia"))
    assert tree_digest(tmp_path) == before


def test_unknown_format_is_one_line_input_error(store, tmp_path):
    with pytest.raises(InputError, match="unknown --format 'easyedit2'"):
        run_export(ExportOptions(store=str(store), stats_dir=str(tmp_path), format="easyedit2"))


# -- AlphaEdit's projector ---------------------------------------------------------------
def _clear_threshold(covs: list[np.ndarray]) -> float:
    """A threshold that splits every C's spectrum (a null space neither empty nor everything)
    with no eigenvalue within 1e-3 · λ_max of it, so float32 SVD and float64 eigh must pick the
    same directions (their eigenvalue errors are ~1e-6 · λ_max)."""
    evals = [np.linalg.eigvalsh(c) for c in covs]
    candidates = np.sqrt(evals[0][:-1] * evals[0][1:])[evals[0][:-1] > 0]
    for t in sorted(candidates, key=lambda t: abs(np.log(t / np.median(evals[0])))):
        if all(np.min(np.abs(e - t)) > 1e-3 * e[-1] and 0 < np.sum(e < t) < e.size for e in evals):
            return float(t)
    raise AssertionError("no threshold splits every layer's spectrum cleanly")


def test_projector_loads_as_alphaedit_loads_it_and_equals_its_get_project(store, model_ds, tmp_path):
    import torch

    layers = [1, 2]
    covs = [model_ds["cov"].sel(layer=x).values for x in layers]
    threshold = _clear_threshold(covs)
    out = tmp_path / "null_space_project.pt"
    r = run_projector_export(ProjectorOptions(store=str(store), layers="1-2", out=str(out), threshold=threshold))
    P = torch.load(out)  # EasyEdit: P = torch.load(hparams.P_loc); P[i, :, :] for hparams.layers[i]
    assert isinstance(P, torch.Tensor) and P.dtype == torch.float32
    assert tuple(P.shape) == (2, covs[0].shape[0], covs[0].shape[0])
    record = json.loads((tmp_path / "null_space_project.json").read_text())
    for i, cov in enumerate(covs):
        want, dim = alphaedit_projector(cov, threshold)
        np.testing.assert_allclose(P[i].numpy(), want, atol=1e-5)
        assert r.null_dims[i] == dim == record["per_layer"][i]["null_dim"]
        # what P is for: edits projected by it leave the preserved keys' outputs almost unmoved
        p = P[i].numpy().astype(np.float64)
        assert np.linalg.norm(p @ cov @ p, 2) < threshold
    assert record["layers"] == layers == record["hparams"]["layers"]
    assert record["nullspace_threshold"] == threshold
    assert record["C"]["corpus"] == model_ds.attrs["corpus"]
    assert record["C"]["corpus_documents"] == model_ds.attrs["corpus_documents"]
    assert [x["n_tokens"] for x in record["per_layer"]] == [int(model_ds["n_tokens"].sel(layer=x)) for x in layers]
    import hashlib

    assert record["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_projector_default_threshold_is_alphaedits(store, model_ds, tmp_path):
    out = tmp_path / "p.pt"
    r = run_projector_export(ProjectorOptions(store=str(store), layers="0", out=str(out)))
    evals = np.linalg.eigvalsh(model_ds["cov"].sel(layer=0).values)
    assert r.threshold == 0.02 and r.null_dims == [int(np.sum(evals < 0.02))]


def _run(*args):
    return CliRunner().invoke(cli, ["export", *map(str, args)])


def test_export_alphaedit_command_writes_the_projector_and_says_the_hparams(store, tmp_path):
    out = tmp_path / "null_space_project.pt"
    res = _run(store, "--format", "alphaedit", "--layers", "0-2", "--out", out)
    assert res.exit_code == 0, res.output
    for text in ("P_loc", str(out), "nullspace_threshold 0.02", "layers              [0, 1, 2]"):
        assert text in res.output
    assert (tmp_path / "null_space_project.json").exists()
    before = tree_digest(tmp_path)
    res = _run(store, "--format", "alphaedit", "--layers", "0-2", "--out", out)
    assert res.exit_code == 2 and "already exists" in res.output
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("args,message", [
    (["--format", "alphaedit", "--out", "P.pt"], "needs --layers"),
    (["--format", "alphaedit", "--layers", "0", "--threshold", "-1", "--out", "P.pt"], "positive"),
    (["--format", "alphaedit", "--layers", "7", "--out", "P.pt"], "layer"),
    (["--format", "alphaedit", "--layers", "0", "--stats-dir", "S"], "--stats-dir names a covariance cache"),
    (["--format", "rome"], "needs --stats-dir"),
    (["--format", "easyedit", "--stats-dir", "S", "--threshold", "0.1"], "belong to --format alphaedit"),
])
def test_export_bad_input_is_one_line_and_exit_2(args, message, store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = _run(store, *args)
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and message in lines[0], res.output
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", ["easyedit", "memit"])
def test_import_rome_reads_back_each_format_from_the_stats_root(fmt, store, model_ds, tiny_models, tmp_path):
    from kisstore.interop import ImportOptions, run_import

    run_export(ExportOptions(store=str(store), stats_dir=str(tmp_path / "stats"), format=fmt, ds_name="wikipedia"))
    r = run_import(ImportOptions(source=str(tmp_path / "stats"), model=str(tiny_models["llama"]),
                                 store=str(tmp_path / "back.zarr")))
    back = xr.open_datatree(tmp_path / "back.zarr", engine="zarr")[f"models/{r.model_id}"].ds
    np.testing.assert_allclose(back["cov"].values, model_ds["cov"].values, rtol=1e-6,
                               atol=1e-6 * np.abs(model_ds["cov"].values).max())
    assert back.attrs["corpus"] == model_ds.attrs["corpus"]  # from the files' kisstore record
