"""Sharded corpus pass on a real LocalCluster with worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from distributed import LocalCluster

from kisstore.extract import ExtractOptions, run_extract
from kisstore.extract.shards import plan
from tests import tiny


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny.corpus_file(tmp_path_factory.mktemp("c") / "corpus.txt", n_docs=300)


def _opts(model, store, items, corpus, **kw):
    return ExtractOptions(models=[str(model)], store=str(store), items=str(items), corpus=str(corpus),
                          progress=False, corpus_tokens=20000, batch_tokens=1024, **kw)


def test_plan_covers_every_document_once_in_whole_windows():
    ranges = plan(300, 4, 64)
    assert ranges[0][0] == 0 and ranges[-1][1] == 300
    assert all(a % 64 == 0 for a, _ in ranges)
    assert all(ranges[i][1] == ranges[i + 1][0] for i in range(len(ranges) - 1))
    assert len(plan(10, 8, 64)) == 1


def test_sharded_covariance_equals_single_process(cluster, tiny_models, tiny_items, corpus, tmp_path):
    import torch
    from threadpoolctl import threadpool_limits

    single, sharded = tmp_path / "single.zarr", tmp_path / "sharded.zarr"
    # Dask workers run BLAS and torch single-threaded; float32 products depend on the thread
    # count's blocking, so the reference runs single-threaded too: then only the float64
    # merge order differs.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            run_extract(_opts(tiny_models["gpt_neox"], single, tiny_items, corpus))
    finally:
        torch.set_num_threads(before)
    run_extract(_opts(tiny_models["gpt_neox"], sharded, tiny_items, corpus, scheduler=cluster.scheduler_address,
                      shards=3))
    a = xr.open_datatree(single, engine="zarr")["models/gpt_neox"].ds
    b = xr.open_datatree(sharded, engine="zarr")["models/gpt_neox"].ds
    np.testing.assert_array_equal(a["n_tokens"].values, b["n_tokens"].values)
    np.testing.assert_allclose(b["cov"].values, a["cov"].values, rtol=1e-10, atol=0)
    assert b.attrs["shards"] == 3 and b.attrs["shards_requested"] == 3
    from distributed import default_client

    with pytest.raises(ValueError):  # the run's client is closed, not left as the process's default
        default_client()


def test_provenance_records_the_shards_that_ran_not_the_upper_bound(cluster, tiny_models, tiny_items, corpus,
                                                                    tmp_path):
    store = tmp_path / "many.zarr"
    run_extract(_opts(tiny_models["gpt_neox"], store, tiny_items, corpus, scheduler=cluster.scheduler_address,
                      shards=50))
    attrs = xr.open_datatree(store, engine="zarr")["models/gpt_neox"].ds.attrs
    ran = len(plan(attrs["corpus_documents"], 50, 64))
    assert 1 <= ran < 50
    assert attrs["shards"] == ran and attrs["shards_requested"] == 50


def test_killed_sharded_run_redoes_only_unfinished_shards(cluster, tiny_models, tiny_items, corpus, tmp_path):
    import signal

    from tests.conftest import run_cli

    store = tmp_path / "s.zarr"
    args = ["extract", "--model", str(tiny_models["llama"]), "--store", str(store), "--items", str(tiny_items),
            "--corpus", str(corpus), "--corpus-tokens", "20000", "--batch-tokens", "1024", "--quiet",
            "--scheduler", cluster.scheduler_address, "--shards", "3"]
    killed = run_cli(*args, env={"KISSTORE_FAILPOINT": "shard_done:1"})
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli(*args, check=True)
    assert resumed.stdout.count("(already committed)") >= 1
    reference = tmp_path / "ref.zarr"
    run_extract(_opts(tiny_models["llama"], reference, tiny_items, corpus, scheduler=cluster.scheduler_address,
                      shards=3))
    a = xr.open_datatree(store, engine="zarr")["models/llama"]["cov"].values
    b = xr.open_datatree(reference, engine="zarr")["models/llama"]["cov"].values
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=0)


def test_unknown_scheduler_address_is_a_clear_error(tiny_models, tiny_items, corpus, tmp_path):
    from kisstore.errors import InputError

    with pytest.raises(InputError, match="cannot reach the Dask scheduler"):
        run_extract(_opts(tiny_models["llama"], tmp_path / "s.zarr", tiny_items, corpus,
                          scheduler="tcp://127.0.0.1:9", shards=2))
    assert not (tmp_path / "s.zarr").exists()


def test_sharded_compiled_pass_equals_the_uncompiled_one(cluster, tiny_models, tiny_items, corpus, tmp_path):
    """--compile --shards: each worker compiles its layers (inductor, C++ on a CPU) and frees its graphs."""
    plain, compiled = tmp_path / "plain.zarr", tmp_path / "compiled.zarr"
    run_extract(_opts(tiny_models["llama"], plain, tiny_items, corpus))
    run_extract(_opts(tiny_models["llama"], compiled, tiny_items, corpus, scheduler=cluster.scheduler_address,
                      shards=2, compile=True))
    a = xr.open_datatree(plain, engine="zarr")["models/llama"].ds
    b = xr.open_datatree(compiled, engine="zarr")["models/llama"].ds
    np.testing.assert_array_equal(a["n_tokens"].values, b["n_tokens"].values)
    np.testing.assert_allclose(b["cov"].values, a["cov"].values, rtol=1e-5, atol=1e-8)
    assert b.attrs["compiled"] is True and a.attrs["compiled"] is False and b.attrs["shards"] == 2
