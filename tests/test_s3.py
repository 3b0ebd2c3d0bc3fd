"""Stores on a real S3 protocol server (moto) behave exactly like local stores."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import xarray as xr

import kisstore
from tests.conftest import run_cli
from tests.s3server import (  # noqa: F401
    ACCESS_KEY,
    SECRET_KEY,
    assert_one_line_error,
    closed_port,
    s3_environment,
    s3_server,
)

CLI_KEY = "AKIAKISSTORECLIKEY99"
CLI_SECRET = "kisstore-cli-secret-never-written"
# provenance that legitimately differs between two runs / two places
VOLATILE_ATTRS = ("created", "storage_options")


def _extract_args(tiny_models, tiny_items, tiny_corpus) -> list[str]:
    return ["extract", "--model", str(tiny_models["gpt2"]), "--items", str(tiny_items), "--corpus",
            str(tiny_corpus), "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def stores(tiny_models, tiny_items, tiny_corpus, tmp_path_factory):
    """The same extraction written to a local path and to S3 (credentials given on the CLI)."""
    with pytest.MonkeyPatch.context() as mp:
        s3 = s3_environment(mp)
        local = tmp_path_factory.mktemp("local") / "s.zarr"
        url = s3.url("team/tiny.zarr")
        args = _extract_args(tiny_models, tiny_items, tiny_corpus)
        out_local = run_cli(*args, "--store", str(local), check=True)
        out_s3 = run_cli(*args, "--store", url, *s3.cli, "--storage-option", f"key={CLI_KEY}",
                         "--storage-option", f"secret={CLI_SECRET}", check=True)
        yield SimpleNamespace(s3=s3, local=local, url=url, outputs=[out_local, out_s3])


def _without_volatile(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.load()
    ds.attrs = {k: v for k, v in ds.attrs.items() if k not in VOLATILE_ATTRS}
    return ds


def assert_trees_identical(a: xr.DataTree, b: xr.DataTree) -> None:
    """Every node's dataset identical (values, dims, coords, attrs) but for volatile provenance."""
    paths_a = sorted(node.path for node in a.subtree)
    paths_b = sorted(node.path for node in b.subtree)
    assert paths_a == paths_b
    for path in paths_a:
        xr.testing.assert_identical(_without_volatile(a[path].to_dataset()), _without_volatile(b[path].to_dataset()))


def test_a_store_written_to_s3_opens_identical_to_the_same_store_written_locally(stores):
    local = kisstore.open_store(str(stores.local))
    remote = kisstore.open_store(stores.url, stores.s3.options)
    assert "/models/gpt2" in [n.path for n in remote.subtree]
    assert_trees_identical(local, remote)
    assert remote["models/gpt2"].attrs["complete"] is True


def test_info_reads_the_s3_store_and_verifies_every_chunk(stores):
    out = run_cli("info", stores.url, "--verify", *stores.s3.cli)
    assert out.returncode == 0, out.stderr
    assert "/models/gpt2  [complete]" in out.stdout
    assert "every chunk read back with a valid checksum" in out.stdout


def test_plain_xarray_opens_the_s3_store_without_importing_kisstore(stores, tmp_path):
    code = f"""
import json, sys
import xarray as xr
tree = xr.open_datatree({stores.url!r}, engine="zarr", storage_options={stores.s3.options!r})
keys = tree["models/gpt2"]["key"]
print(json.dumps({{"sum": float(keys.isel(layer=1).sum()), "shape": list(keys.shape),
                  "complete": tree["models/gpt2"].attrs["complete"],
                  "kisstore_imported": any(m.split(".")[0] in ("kisstore", "kisstore_cli") for m in sys.modules)}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    local = xr.open_datatree(stores.local, engine="zarr")["models/gpt2"]["key"]
    assert got["kisstore_imported"] is False
    assert got["complete"] is True
    assert got["shape"] == list(local.shape)
    assert got["sum"] == pytest.approx(float(local.isel(layer=1).sum()), rel=1e-6)


def test_reading_one_layers_keys_fetches_only_that_layers_chunk(stores):
    """keys is one shard of one-layer chunks (store.chunking): a layer is two ranged reads, the
    shard's index and that layer's chunk, never the whole shard."""
    tree = kisstore.open_store(stores.url, stores.s3.options)  # lazy: metadata only
    keys = tree["models/gpt2"]["key"]
    with stores.s3.requests() as seen:
        got = keys.isel(layer=1).values
    assert (got == xr.open_datatree(stores.local, engine="zarr")["models/gpt2"]["key"].values[1]).all()
    shard = f"/{stores.s3.bucket}/team/tiny.zarr/models/gpt2/key/c/0/0/0"
    assert [p for _, p in seen] == [shard, shard], seen
    assert all(r.range for r in seen), [r.range for r in seen]
    chunks = [r for r in seen if not r.range.startswith("bytes=-")]  # the index is read from the end
    first, last = (int(x) for x in chunks[0].range.removeprefix("bytes=").split("-"))
    size = (stores.local / "models/gpt2/key/c/0/0/0").stat().st_size
    assert last - first + 1 < size / 2  # one of the three layers' chunks


def test_a_model_appended_to_a_shared_s3_store_is_visible_to_plain_xarray(stores, tiny_models, tiny_items,
                                                                          tiny_corpus):
    s3, shared = stores.s3, stores.s3.url("team/appended.zarr")
    run_cli("copy", stores.url, shared, "--quiet", *s3.cli, check=True)
    args = _extract_args(tiny_models, tiny_items, tiny_corpus)
    args[args.index("--model") + 1] = str(tiny_models["llama"])
    run_cli(*args, "--store", shared, *s3.cli, check=True)
    tree = xr.open_datatree(shared, engine="zarr", storage_options=s3.options)  # consolidated metadata
    assert {"gpt2", "llama"} <= set(tree["models"].children)
    assert tree["models/llama"].attrs["complete"] is True
    xr.testing.assert_identical(tree["models/gpt2"].to_dataset().load(),
                                xr.open_datatree(stores.url, engine="zarr",
                                                 storage_options=s3.options)["models/gpt2"].to_dataset().load())


def test_no_secret_is_written_into_the_store_or_printed(stores):
    secrets = [CLI_KEY, CLI_SECRET, ACCESS_KEY, SECRET_KEY]
    objects = stores.s3.objects("team/tiny.zarr/")
    assert any(k.endswith("zarr.json") for k in objects)
    for key, body in objects.items():
        for secret in secrets:
            assert secret.encode() not in body, f"{secret} written into {key}"
    attrs = kisstore.open_store(stores.url, stores.s3.options)["models/gpt2"].attrs
    assert attrs["storage_options"] == {"endpoint_url": stores.s3.endpoint}
    info = run_cli("info", stores.url, "--json", *stores.s3.cli, "--storage-option", f"secret={CLI_SECRET}",
                   "--storage-option", f"key={CLI_KEY}")
    assert info.returncode == 0, info.stderr
    for proc in [*stores.outputs, info]:
        for secret in secrets:
            assert secret not in proc.stdout + proc.stderr


def _fault(kind: str, s3, url: str) -> tuple[list[str], dict[str, str], str]:
    """Options, environment and expected message of one storage fault."""
    if kind == "wrong credentials":
        wrong = ["--storage-option", f"key={CLI_KEY}", "--storage-option", f"secret={CLI_SECRET}"]
        return [*s3.cli, *wrong], {}, "access denied: check the credentials"
    if kind == "missing bucket":
        return s3.cli, {}, "bucket 'no-such-bucket-kis' does not exist"
    port = closed_port()
    return (["--storage-option", f"endpoint_url=http://127.0.0.1:{port}"], {"AWS_MAX_ATTEMPTS": "1"},
            f"cannot reach the storage endpoint http://127.0.0.1:{port}")


@pytest.mark.parametrize("kind", ["wrong credentials", "missing bucket", "unreachable endpoint"])
def test_info_and_extract_report_storage_faults_in_one_line(kind, s3_server, stores, tiny_models,  # noqa: F811
                                                            tiny_items, tiny_corpus):
    url = "s3://no-such-bucket-kis/s.zarr" if kind == "missing bucket" else stores.url
    opts, env, expected = _fault(kind, s3_server, url)
    with s3_server.authenticated() if kind == "wrong credentials" else contextlib.nullcontext():
        info = run_cli("info", url, *opts, env=env)
        assert_one_line_error(info, expected, (CLI_KEY, CLI_SECRET))
        target = url if kind == "missing bucket" else s3_server.url("new.zarr")
        extract = run_cli(*_extract_args(tiny_models, tiny_items, tiny_corpus), "--store", target, *opts, env=env)
        assert_one_line_error(extract, expected, (CLI_KEY, CLI_SECRET))
    assert not any(k.startswith("new.zarr") for k in s3_server.objects()), "nothing written"


def test_analyze_on_s3_replaces_a_previous_analysis_like_on_disk(stores, tmp_path):
    """`kisstore analyze` on an S3 store: staged, then moved into /analysis by copying keys (the
    S3 path of Store.replace_group); a second run replaces the first; nothing staged remains, and
    the result equals the same analysis of the local store."""
    import shutil

    s3, url = stores.s3, stores.s3.url("team/analysed.zarr")
    run_cli("copy", stores.url, url, "--quiet", *s3.cli, check=True)
    run_cli("analyze", url, "--n-items", "5", *s3.cli, check=True)
    run_cli("analyze", url, "--replace", *s3.cli, check=True)  # other settings: replaced only when asked
    local = tmp_path / "local.zarr"
    shutil.copytree(stores.local, local)
    run_cli("analyze", str(local), check=True)

    remote = xr.open_datatree(url, engine="zarr", storage_options=s3.options)
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="team/analysed.zarr/")["Contents"]]
    assert "_staging" not in remote.children and not [k for k in keys if "/_staging" in k]
    assert any(k.startswith("team/analysed.zarr/analysis/gpt2/p_matrix/c/") for k in keys)
    got = remote["analysis/gpt2"].to_dataset().load()
    want = xr.open_datatree(local, engine="zarr")["analysis/gpt2"].to_dataset().load()
    assert got.sizes == want.sizes
    for name in ("p_matrix", "gram", "stats", "cond"):
        xr.testing.assert_allclose(got[name], want[name], rtol=1e-12)
