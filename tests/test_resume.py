"""Crash safety: SIGKILL at each named point, rerun, same arrays as an uninterrupted run."""

from __future__ import annotations

import signal

import numpy as np
import pytest
import xarray as xr

from tests import tiny
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    return tiny.corpus_file(tmp_path_factory.mktemp("long") / "corpus.txt", n_docs=400)


def _args(model, store, items, corpus):
    return ["extract", "--model", str(model), "--store", str(store), "--items", str(items), "--corpus", str(corpus),
            "--checkpoint-every", "0", "--batch-tokens", "1024", "--quiet"]


@pytest.fixture(scope="module")
def reference(tiny_models, tiny_items, long_corpus, tmp_path_factory):
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    run_cli(*_args(tiny_models["llama"], store, tiny_items, long_corpus), check=True)
    return xr.open_datatree(store, engine="zarr")["models/llama"].ds.load()


@pytest.mark.parametrize("point", ["load", "item_batch", "corpus_batch:15", "checkpoint_write:5", "final_write"])
def test_killed_extract_resumes_to_the_uninterrupted_result(point, reference, tiny_models, tiny_items, long_corpus,
                                                            tmp_path):
    store = tmp_path / "s.zarr"
    args = _args(tiny_models["llama"], store, tiny_items, long_corpus)
    killed = run_cli(*args, env={"KISSTORE_FAILPOINT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if store.exists():
        info = run_cli("info", "--json", str(store))
        assert '"status": "complete"' not in info.stdout  # a killed run is never shown as complete
    resumed = run_cli(*args, check=True)
    if point.startswith(("corpus_batch", "checkpoint_write")):
        assert "resuming corpus pass" in resumed.stdout
    ds = xr.open_datatree(store, engine="zarr")["models/llama"].ds
    assert ds.attrs["complete"] is True
    np.testing.assert_array_equal(ds["cov"].values, reference["cov"].values)
    np.testing.assert_array_equal(ds["key"].values, reference["key"].values)
    np.testing.assert_array_equal(ds["n_tokens"].values, reference["n_tokens"].values)
    assert "_checkpoints" not in xr.open_datatree(store, engine="zarr").children or not \
        xr.open_datatree(store, engine="zarr")["_checkpoints"].children


def test_info_reports_an_unfinished_extraction_as_in_progress(tiny_models, tiny_items, long_corpus, tmp_path):
    store = tmp_path / "s.zarr"
    run_cli(*_args(tiny_models["llama"], store, tiny_items, long_corpus), env={"KISSTORE_FAILPOINT": "corpus_batch:15"})
    out = run_cli("info", str(store), check=True).stdout
    assert "[in progress]" in out and "[complete]" not in out


def test_resume_with_other_settings_is_refused(tiny_models, tiny_items, long_corpus, tmp_path):
    store = tmp_path / "s.zarr"
    args = _args(tiny_models["llama"], store, tiny_items, long_corpus)
    run_cli(*args, env={"KISSTORE_FAILPOINT": "corpus_batch:15"})
    other = run_cli(*args, "--max-length", "17")
    assert other.returncode == 2
    assert "unfinished extraction" in other.stderr and "max_length" in other.stderr
    assert "Traceback" not in other.stderr


def test_resume_with_another_batch_size_is_said_and_recorded(reference, tiny_models, tiny_items, long_corpus, tmp_path):
    """Batch size only changes float32 rounding, so a resume may change it; it is said, and the
    provenance lists the settings of both runs."""
    store = tmp_path / "s.zarr"
    args = _args(tiny_models["llama"], store, tiny_items, long_corpus)
    killed = run_cli(*args, env={"KISSTORE_FAILPOINT": "corpus_batch:15"})
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli(*args[:-3], "--batch-tokens", "512", "--quiet", check=True)
    assert "resuming corpus pass" in resumed.stdout
    assert "other corpus-pass settings (batch_tokens 1024 → 512)" in resumed.stdout
    ds = xr.open_datatree(store, engine="zarr")["models/llama"].ds
    assert [s["batch_tokens"] for s in ds.attrs["corpus_pass_settings"]] == [1024, 512]
    assert ds.attrs["batch_tokens"] == 512
    assert reference.attrs["corpus_pass_settings"] == [{"batch_tokens": 1024, "cpu_kernels": ds.attrs["cpu_kernels"],
                                                         "compiled": False}]
    np.testing.assert_array_equal(ds["n_tokens"].values, reference["n_tokens"].values)
    np.testing.assert_allclose(ds["cov"].values, reference["cov"].values, rtol=1e-5, atol=1e-9)


def _as_full_matrix_checkpoint(group_path) -> int:
    """Rewrite a checkpoint as kisstore wrote it before packed accumulators: each sum a full
    (layers, d_ff, d_ff) array holding the upper triangle, and no ``sums_layout`` attribute."""
    import zarr

    from kisstore.store.io import default_compressors
    from kisstore.store.packed import unpack_symmetric

    g = zarr.open_group(str(group_path), mode="r+", zarr_format=3, use_consolidated=False)
    rewritten = 0
    for name in ("done", "partial_0", "partial_1"):
        packed = g[name][...]
        n, size = packed.shape
        d = int((np.sqrt(8 * size + 1) - 1) / 2)
        full = np.stack([np.triu(unpack_symmetric(p, d)) for p in packed])
        g.create_array(name, shape=full.shape, chunks=(1, d, d), dtype="float64", fill_value=0.0, overwrite=True,
                       compressors=default_compressors(), dimension_names=("layer_row", "d_ff", "d_ff_"))[...] = full
        rewritten += 1
    del g.attrs["sums_layout"]
    return rewritten


def test_a_checkpoint_of_full_matrix_sums_starts_over_and_is_never_read_as_packed(
        reference, tiny_models, tiny_items, long_corpus, tmp_path):
    store = tmp_path / "s.zarr"
    args = _args(tiny_models["llama"], store, tiny_items, long_corpus)
    killed = run_cli(*args, env={"KISSTORE_FAILPOINT": "corpus_batch:15"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _as_full_matrix_checkpoint(store / "_checkpoints" / "llama") == 3
    rerun = run_cli(*args, check=True)
    assert "checkpointed by an earlier kisstore" in rerun.stdout and "starts over" in rerun.stdout
    assert "resuming corpus pass" not in rerun.stdout
    ds = xr.open_datatree(store, engine="zarr")["models/llama"].ds
    np.testing.assert_array_equal(ds["cov"].values, reference["cov"].values)
    np.testing.assert_array_equal(ds["key"].values, reference["key"].values)
