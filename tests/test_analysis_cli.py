"""``kisstore analyze`` end to end: results written into the store, tables, errors, Dask cluster."""

import os
import re

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner

from kisstore.analysis.synthetic import write_synthetic_store
from kisstore_cli.main import cli


@pytest.fixture()
def store(tmp_path):
    path = str(tmp_path / "store.zarr")
    written = write_synthetic_store(path, {"a": {"n_layers": 3, "d_ff": 10}, "b": {"n_layers": 2, "d_ff": 14}},
                                    n_items=24)
    return path, written


def test_analyze_writes_p_matrix_into_the_store_matching_numpy(store, tmp_path):
    path, written = store
    r = CliRunner().invoke(cli, ["analyze", path, "--table-out", str(tmp_path / "tab")])
    assert r.exit_code == 0, r.output
    assert "a: 3 layers × 24 items" in r.output
    assert "warning" not in r.output  # C from plenty of tokens
    tree = xr.open_datatree(path, engine="zarr")  # plain xarray, no kisstore
    for model in ("a", "b"):
        ds = tree[f"analysis/{model}"].to_dataset()
        for layer in ds["layer"].values:
            k = written[model]["keys"][layer].astype(np.float64)
            g = k @ np.linalg.inv(written[model]["cov"][layer]) @ k.T
            np.testing.assert_allclose(ds["p_matrix"].sel(layer=layer).values, g / np.diag(g)[:, None],
                                       rtol=1e-6, atol=1e-9)
    scaling = tree["analysis/scaling"].to_dataset()
    assert sorted(str(m) for m in scaling["model"].values) == ["a", "b"]
    csv = pd.read_csv(tmp_path / "tab.csv")
    parquet = pd.read_parquet(tmp_path / "tab.parquet")
    assert len(csv) == len(parquet) == 5
    assert {"model", "family", "n_params", "layer", "relative_depth", "p_matrix_excess_kurtosis"} <= set(csv.columns)


def test_analyze_options_select_model_layers_items_and_ridge(store):
    path, _ = store
    r = CliRunner().invoke(cli, ["analyze", path, "--model", "a", "--layers", "1-2", "--n-items", "20",
                                 "--ridge", "0.01", "--top-k", "3"])
    assert r.exit_code == 0, r.output
    ds = xr.open_datatree(path, engine="zarr")["analysis/a"].to_dataset()
    assert ds["layer"].values.tolist() == [1, 2] and ds.sizes["item"] == 20 and ds.sizes["rank"] == 3
    assert ds.attrs["ridge"] == 0.01


@pytest.mark.parametrize("args,text", [
    (["--model", "zzz"], "unknown model 'zzz'"),
    (["--n-items", "500"], "only 24"),
    (["--layers", "9"], "out of range"),
])
def test_analyze_bad_input_gives_one_line_error_and_exit_code_2(store, args, text):
    path, _ = store
    r = CliRunner().invoke(cli, ["analyze", path, *args])
    assert r.exit_code == 2
    assert text in r.output and "Traceback" not in r.output


def test_analyze_on_a_non_store_is_a_store_error(tmp_path):
    r = CliRunner().invoke(cli, ["analyze", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "Error:" in r.output


def test_analyze_runs_on_a_local_dask_cluster_with_worker_processes(store, monkeypatch):
    from distributed import LocalCluster

    path, written = store
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
        r = CliRunner().invoke(cli, ["analyze", path, "--model", "b"])
        assert r.exit_code == 0, r.output
        assert "using Dask scheduler" in r.output and "2 worker(s)" in r.output
        # the per-layer gram tasks went through the cluster's scheduler
        from distributed import Client
        with Client(cluster.scheduler_address) as client:
            prefixes = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
        assert "gram_block" in prefixes
    ds = xr.open_datatree(path, engine="zarr")["analysis/b"].to_dataset()
    k = written["b"]["keys"][1].astype(np.float64)
    g = k @ np.linalg.inv(written["b"]["cov"][1]) @ k.T
    np.testing.assert_allclose(ds["gram"].sel(layer=1).values, g, rtol=1e-8)


def test_unreachable_scheduler_is_a_clear_error(store):
    path, _ = store
    r = CliRunner().invoke(cli, ["analyze", path, "--scheduler", "tcp://127.0.0.1:1"], env={**os.environ})
    assert r.exit_code == 2 and "Dask scheduler" in r.output


def test_singular_covariance_exits_3_with_remedy_and_ridge_recovers(tmp_path):
    from kisstore.analysis.synthetic import items_dataset, model_dataset, synthetic_model
    from kisstore.store import Store

    path = str(tmp_path / "s.zarr")
    s = Store(path)
    s.init()
    ids = np.arange(20)
    s.write_dataset("items", items_dataset(ids))
    arrays = synthetic_model(np.random.default_rng(0), 20, 12, 2, n_samples=6)  # 6 tokens < d_ff 12
    s.write_dataset("models/m", model_dataset(arrays, ids))
    s.set_attrs("models/m", {"complete": True, "n_layers": 2})
    s.consolidate()
    r = CliRunner().invoke(cli, ["analyze", path])
    assert r.exit_code == 3
    # whichever layer's task fails first is named (both are singular)
    assert re.search(r"layer [01]:", r.output) and "--ridge" in r.output
    assert "condition number" in r.output or "not positive definite" in r.output
    r = CliRunner().invoke(cli, ["analyze", path, "--ridge", "0.1"])
    assert r.exit_code == 0, r.output
    assert "warning: m: C rests on 6 tokens, 0.5 per key dimension (d_ff 12)" in r.output
    assert xr.open_datatree(path, engine="zarr")["analysis/m"].attrs["ridge"] == 0.1


def store_with_a_singular_layer(path) -> str:
    """A store of one synthetic model "m" (3 layers, 20 items, d_ff 12) whose layer 2's C has
    rank 5, so that layer cannot be whitened and any analysis including it fails."""
    from kisstore.analysis.synthetic import items_dataset, model_dataset, synthetic_model
    from kisstore.store import Store

    path = str(path)
    s = Store(path)
    s.init()
    ids = np.arange(20)
    s.write_dataset("items", items_dataset(ids))
    arrays = synthetic_model(np.random.default_rng(0), 20, 12, 3, n_samples=200)
    basis = np.random.default_rng(1).standard_normal((12, 5))
    arrays["cov"][2] = basis @ basis.T / 5  # rank 5 < d_ff 12: layer 2 cannot be whitened
    s.write_dataset("models/m", model_dataset(arrays, ids))
    s.set_attrs("models/m", {"complete": True, "n_layers": 3})
    s.consolidate()
    return path


def test_a_failing_rerun_leaves_the_previous_analysis_and_a_readable_store(tmp_path):
    """The review's case: a first analysis of layers 0–1 on 5 items, then a rerun over every layer
    that fails at layer 2 (singular C). The rerun is staged outside /analysis, so the store is
    byte for byte what the first run left, and opens with plain xarray."""
    from tests.conftest import tree_digest

    path = store_with_a_singular_layer(tmp_path / "s.zarr")
    assert CliRunner().invoke(cli, ["analyze", path, "--layers", "0,1", "--n-items", "5"]).exit_code == 0
    first = xr.open_datatree(path, engine="zarr")["analysis/m"].to_dataset().load()
    before = tree_digest(path)

    r = CliRunner().invoke(cli, ["analyze", path])  # other settings (every item): refused before any work
    assert r.exit_code == 2 and "n_items 5 stored, default now" in r.output and "--name" in r.output, r.output
    assert tree_digest(path) == before
    r = CliRunner().invoke(cli, ["analyze", path, "--replace"])
    assert r.exit_code == 3 and "layer 2:" in r.output, r.output
    assert tree_digest(path) == before and not os.path.exists(os.path.join(path, "_staging"))
    again = xr.open_datatree(path, engine="zarr")["analysis/m"].to_dataset().load()
    xr.testing.assert_identical(again, first)
    assert dict(again.sizes)["item"] == 5 and np.isfinite(again["stats"].values).all()

    # and a successful rerun replaces it, leaving no staging behind
    r = CliRunner().invoke(cli, ["analyze", path, "--layers", "0,1", "--replace"])
    assert r.exit_code == 0, r.output
    tree = xr.open_datatree(path, engine="zarr")
    assert dict(tree["analysis/m"].sizes)["item"] == 20 and "_staging" not in tree.children
    assert not os.path.exists(os.path.join(path, "_staging"))


def _damaged_store(path: str, damage: str) -> None:
    from kisstore.analysis.synthetic import items_dataset, model_dataset, synthetic_model
    from kisstore.store import Store

    s = Store(path)
    s.init()
    ids = np.arange(1000, 1020)
    arrays = synthetic_model(np.random.default_rng(0), 20, 12, 3, n_samples=200)
    if damage == "nan key":
        arrays["keys"][1, 3, 5] = np.nan
    elif damage == "inf key":
        arrays["keys"][1, 7, 0] = np.inf
    elif damage == "zero key":
        arrays["keys"][2, 4] = 0.0
    elif damage == "nan cov":
        arrays["cov"][0, 2, 3] = arrays["cov"][0, 3, 2] = np.nan
    elif damage == "one triangle":
        arrays["cov"][0] = np.triu(arrays["cov"][0])
    elif damage == "duplicate case ids":
        ids[5] = ids[4]
    s.write_dataset("items", items_dataset(ids))
    s.write_dataset("models/m", model_dataset(arrays, ids))
    s.set_attrs("models/m", {"complete": True, "n_layers": 3})
    s.consolidate()


DAMAGE = {
    "nan key": (3, "layer 1: 1 key(s) hold NaN or infinite values: items at positions 3 of the 20"),
    "inf key": (3, "layer 1: 1 key(s) hold NaN or infinite values: items at positions 7 of the 20"),
    "zero key": (3, "layer 2: 1 key(s) are all zeros (their P rows are undefined): items at positions 4"),
    "nan cov": (3, "layer 0: covariance C (12×12) holds 2 NaN or infinite entries"),
    "one triangle": (3, "layer 0: covariance C (12×12) is not symmetric"),
    "duplicate case ids": (2, "/items lists case ids more than once (1004)"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_keys_or_covariances_are_one_line_errors_naming_the_layer(damage, tmp_path):
    """Found by review: NaN keys crashed with scipy's bare 'array must not contain infs or NaNs'
    (exit 1), NaN in C was reported as positive definite, one stored triangle gave silently
    wrong numbers, an all-zero key NaN statistics, duplicate case ids a pandas error."""
    from tests.conftest import tree_digest

    path = str(tmp_path / "s.zarr")
    _damaged_store(path, damage)
    before = tree_digest(path)
    code, needle = DAMAGE[damage]
    r = CliRunner().invoke(cli, ["analyze", path])
    assert r.exit_code == code and needle in r.output, r.output
    lines = r.output.splitlines()  # progress lines, then one line of error, no traceback
    assert lines[-1].startswith("Error:") and needle in lines[-1] and "Traceback" not in r.output, r.output
    assert tree_digest(path) == before
