"""``kisstore copy``: exact, verified, resumable copies between local paths and S3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import xarray as xr
import zarr

import kisstore
from kisstore.extract import ExtractOptions, run_extract
from kisstore.store.copy import MARKER
from tests.conftest import run_cli, tree_digest
from tests.s3server import (  # noqa: F401
    ACCESS_KEY,
    SECRET_KEY,
    assert_one_line_error,
    closed_port,
    s3_server,
)

CLI_KEY = "AKIAKISSTORECOPYKEY7"
CLI_SECRET = "kisstore-copy-cli-secret-42"


@pytest.fixture(scope="module")
def source(tiny_models, tiny_items, tiny_corpus, tmp_path_factory) -> Path:
    """A complete local store with one tiny model."""
    store = tmp_path_factory.mktemp("copy-src") / "src.zarr"
    run_extract(ExtractOptions(models=[str(tiny_models["gpt2"])], store=str(store), items=str(tiny_items),
                               corpus=str(tiny_corpus), device="cpu", progress=False))
    return store


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _copy(src, dst, *extra, env=None):
    return run_cli("copy", str(src), str(dst), "--quiet", *extra, env=env)


def test_copy_local_to_s3_to_s3_to_local_round_trip_is_identical(source, s3_server, tmp_path):  # noqa: F811
    s3 = s3_server
    other = s3.create_bucket(s3.bucket + "-b")
    first, second, back = s3.url("shared/s.zarr"), f"s3://{other}/s.zarr", tmp_path / "back.zarr"
    outputs = [
        _copy(source, first, *s3.cli, "--dst-option", f"key={CLI_KEY}", "--dst-option", f"secret={CLI_SECRET}"),
        _copy(first, second, *s3.cli),
        _copy(second, back, *s3.cli),
    ]
    for out in outputs:
        assert out.returncode == 0, out.stderr
        assert "every chunk verified" in out.stdout
        for secret in (CLI_KEY, CLI_SECRET, SECRET_KEY, ACCESS_KEY):
            assert secret not in out.stdout + out.stderr
    assert _files(back) == _files(source)  # byte for byte, every key
    assert set(s3.objects("shared/s.zarr/")) == {f"shared/s.zarr/{k}" for k in _files(source)}  # no marker left
    verify = run_cli("info", first, "--verify", *s3.cli)
    assert verify.returncode == 0, verify.stderr
    a, b = kisstore.open_store(str(source)), kisstore.open_store(second, s3.options)
    for node in a.subtree:
        xr.testing.assert_identical(node.to_dataset().load(), b[node.path].to_dataset().load())


def test_copying_onto_an_identical_store_sends_nothing(source, s3_server):  # noqa: F811
    url = s3_server.url("again.zarr")
    assert _copy(source, url, *s3_server.cli).returncode == 0
    with s3_server.requests() as seen:
        again = _copy(source, url, *s3_server.cli)
    assert again.returncode == 0, again.stderr
    assert [p for m, p in seen if m in ("PUT", "POST", "DELETE")] == []
    assert "already holds an identical copy" in again.stdout


def test_an_interrupted_copy_to_s3_resumes_without_resending_copied_keys(source, s3_server):  # noqa: F811
    s3, url, prefix = s3_server, s3_server.url("resume.zarr"), "resume.zarr/"
    killed = _copy(source, url, *s3.cli, "--workers", "2", env={"KISSTORE_FAILPOINT": "copy_key:5"})
    assert killed.returncode == -9, killed.stderr  # SIGKILL, for real
    before = s3.objects(prefix)
    copied = {k for k in before if not k.endswith(MARKER)}
    assert len(copied) >= 5 and prefix + MARKER in before
    assert prefix + "zarr.json" not in before  # the root metadata goes last: no reader sees a store
    assert run_cli("info", url, *s3.cli).returncode == 2
    with pytest.raises(Exception):  # noqa: B017 -- plain xarray finds no store either
        xr.open_datatree(url, engine="zarr", storage_options=s3.options)

    with s3.requests() as seen:
        resumed = _copy(source, url, *s3.cli)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("resumed")
    put = {p.split("?")[0].removeprefix(f"/{s3.bucket}/") for m, p in seen if m == "PUT"}
    assert put and not (put & copied), sorted(put & copied)
    after = s3.objects(prefix)
    assert {k.removeprefix(prefix): v for k, v in after.items()} == _files(source)


def test_an_interrupted_local_copy_resumes_and_leaves_no_partial_files(source, tmp_path):
    dst = tmp_path / "dst.zarr"
    killed = _copy(source, dst, "--workers", "1", env={"KISSTORE_FAILPOINT": "copy_key:3"})
    assert killed.returncode == -9
    assert (dst / MARKER).exists() and not (dst / "zarr.json").exists()
    resumed = _copy(source, dst)
    assert resumed.returncode == 0, resumed.stderr
    assert _files(dst) == _files(source)


def test_copy_refuses_a_destination_holding_a_different_store_unless_overwrite(source, tmp_path):
    dst = tmp_path / "other.zarr"
    shutil.copytree(source, dst)
    zarr.open_group(str(dst), mode="r+").attrs["note"] = "someone else's store"
    (dst / "models" / "gpt2" / "key" / "c" / "9").mkdir(parents=True)
    (dst / "models" / "gpt2" / "key" / "c" / "9" / "0").write_bytes(b"stale chunk")
    digest = tree_digest(dst)

    refused = _copy(source, dst)
    assert_one_line_error(refused, "already holds a different store; pass --overwrite")
    assert tree_digest(dst) == digest  # untouched

    replaced = _copy(source, dst, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert _files(dst) == _files(source)  # the stale chunk is gone too


def test_copy_refuses_a_non_empty_destination_that_is_no_store(source, tmp_path):
    dst = tmp_path / "notes"
    dst.mkdir()
    (dst / "todo.txt").write_text("keep me")
    assert_one_line_error(_copy(source, dst), "is not empty and holds no store")
    assert (dst / "todo.txt").read_text() == "keep me"


def test_copy_refuses_to_propagate_a_corrupt_chunk(source, tmp_path):
    src = tmp_path / "corrupt.zarr"
    shutil.copytree(source, src)
    chunk = src / "models" / "gpt2" / "key" / "c" / "0" / "0" / "0"  # one shard of every layer's chunk
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside a chunk, not the shard's index (its last 52 bytes)
    chunk.write_bytes(bytes(raw))
    dst = tmp_path / "dst.zarr"
    out = _copy(src, dst)
    assert_one_line_error(out, "corrupt chunk in the source: array /models/gpt2/key shard c/0/0/0: the chunk at")
    assert not (dst / "zarr.json").exists()  # never a store a reader would trust


@pytest.mark.parametrize("kind", ["wrong credentials", "missing bucket", "unreachable endpoint"])
def test_copy_reports_storage_faults_in_one_line(kind, source, s3_server):  # noqa: F811
    s3, env = s3_server, {}
    dst, opts = s3.url("faults.zarr"), [*s3.cli, "--dst-option", f"key={CLI_KEY}", "--dst-option", f"secret={CLI_SECRET}"]
    if kind == "missing bucket":
        dst, expected = "s3://no-such-bucket-kis/faults.zarr", "bucket 'no-such-bucket-kis' does not exist"
    elif kind == "unreachable endpoint":
        port = closed_port()
        opts, env = ["--storage-option", f"endpoint_url=http://127.0.0.1:{port}"], {"AWS_MAX_ATTEMPTS": "1"}
        expected = f"cannot reach the storage endpoint http://127.0.0.1:{port}"
    else:
        expected = "access denied: check the credentials"
    if kind == "wrong credentials":
        with s3.authenticated():
            out = _copy(source, dst, *opts, env=env)
    else:
        out = _copy(source, dst, *opts, env=env)
    assert_one_line_error(out, expected, (CLI_KEY, CLI_SECRET))
    assert s3.objects("faults.zarr/") == {}


def test_copy_marker_records_no_secret(source, s3_server):  # noqa: F811
    s3 = s3_server
    url = s3.url("marker.zarr")
    killed = _copy(source, url, *s3.cli, "--storage-option", f"key={CLI_KEY}", "--storage-option", f"secret={CLI_SECRET}",
                   env={"KISSTORE_FAILPOINT": "copy_key:2"})
    assert killed.returncode == -9
    marker = json.loads(s3.objects(f"marker.zarr/{MARKER}")[f"marker.zarr/{MARKER}"])
    assert marker["source"] == str(source)
    for body in s3.objects("marker.zarr/").values():
        for secret in (CLI_KEY, CLI_SECRET, SECRET_KEY, ACCESS_KEY):
            assert secret.encode() not in body
