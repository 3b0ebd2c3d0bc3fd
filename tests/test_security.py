"""Hostile stores: keys that climb out of a copy's destination, links inside a store, and
``--break-lock`` against a writer that is alive on this host (issue #18)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from kisstore.errors import StoreError
from kisstore.store.io import Store
from kisstore.store.lock import LOCK_DIR, ModelLock
from tests.conftest import copy_store, run_cli, tree_digest
from tests.s3server import assert_one_line_error, s3_server  # noqa: F401


def _extract_args(model, store, items, corpus, *extra):
    return ["extract", "--model", str(model), "--store", str(store), "--items", str(items), "--corpus", str(corpus),
            "--quiet", *extra]


@pytest.fixture(scope="module")
def template(tiny_store) -> Path:
    """A complete local store with the tiny gpt2 (group models/gpt2)."""
    return tiny_store("gpt2")


@pytest.fixture
def store(template, tmp_path) -> Path:
    return copy_store(template, tmp_path / "store")


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _outside(tmp_path: Path) -> Path:
    """A folder outside every store, holding a file that must survive untouched."""
    out = tmp_path / "outside"
    (out / "gpt2").mkdir(parents=True)
    (out / "gpt2" / "precious.txt").write_text("not kisstore's")
    (out / "precious.txt").write_text("not kisstore's either")
    return out


def _chunk(store: Path, array: str) -> Path:
    return next(f for f in sorted((store / array / "c").rglob("*")) if f.is_file())


# -- 1. copy: keys that are not plain relative paths ---------------------------------------------
@pytest.mark.parametrize("bad", ["../../evil", "models/../../../evil", "models//evil", "models\\evil", "/evil",
                                 "models/./evil"])
def test_copy_from_s3_refuses_a_key_that_is_not_a_plain_relative_path(bad, store, s3_server, tmp_path):  # noqa: F811
    s3 = s3_server
    src = s3.url("src.zarr")
    assert run_cli("copy", str(store), src, "--quiet", *s3.cli).returncode == 0
    s3.client().put_object(Bucket=s3.bucket, Key=f"src.zarr/{bad}", Body=b"planted")
    assert f"src.zarr/{bad}" in s3.objects("src.zarr/")  # the server keeps the key as it was sent
    dst = tmp_path / "a" / "b" / "dst.zarr"
    before = tree_digest(tmp_path)
    res = run_cli("copy", src, str(dst), "--quiet", *s3.cli)
    assert_one_line_error(res, "not a plain relative path")
    assert tree_digest(tmp_path) == before  # nothing written anywhere: not outside, not in the destination
    assert not dst.exists()
    assert not any(p.name == "evil" for p in tmp_path.rglob("*"))


def test_copy_to_s3_refuses_a_destination_holding_a_climbing_key(store, s3_server):  # noqa: F811
    s3 = s3_server
    s3.client().put_object(Bucket=s3.bucket, Key="dst.zarr/../evil", Body=b"planted")
    before = s3.objects()
    res = run_cli("copy", str(store), s3.url("dst.zarr"), "--quiet", "--overwrite", *s3.cli)
    assert_one_line_error(res, "not a plain relative path")
    assert s3.objects() == before


# -- 2. analyze / extract --overwrite through a linked folder -------------------------------------
def test_analyze_refuses_a_linked_analysis_folder(store, tmp_path):
    outside = _outside(tmp_path)
    (store / "analysis").symlink_to(outside, target_is_directory=True)
    before, before_out = tree_digest(store), _files(outside)
    res = run_cli("analyze", str(store))
    assert_one_line_error(res, "analysis is a symbolic link")
    assert _files(outside) == before_out  # the outside file still there, nothing written into the target
    assert sorted(p.name for p in outside.rglob("*")) == ["gpt2", "precious.txt", "precious.txt"]
    assert tree_digest(store) == before


def test_analyze_refuses_a_link_anywhere_in_its_folders(store, tmp_path):
    """A link deeper down (a model's analysis group) is refused as well, before any work."""
    outside = _outside(tmp_path)
    (store / "analysis").mkdir()
    (store / "analysis" / "gpt2").symlink_to(outside / "gpt2", target_is_directory=True)
    before, before_out = tree_digest(store), _files(outside)
    res = run_cli("analyze", str(store))
    assert_one_line_error(res, "analysis/gpt2 is a symbolic link")
    assert _files(outside) == before_out
    assert tree_digest(store) == before


@pytest.mark.parametrize("folder", ["models", "_checkpoints"])
def test_extract_overwrite_refuses_a_linked_models_or_checkpoints_folder(folder, store, tiny_models, tiny_items,
                                                                        tiny_corpus, tmp_path):
    outside = tmp_path / "outside"
    if folder == "models":
        shutil.move(store / "models", outside)  # the real model group now lives outside, behind the link
    else:
        outside.mkdir()
        shutil.copytree(store / "models" / "gpt2", outside / "gpt2")  # a group the overwrite would delete
    (outside / "precious.txt").write_text("not kisstore's")
    (store / folder).symlink_to(outside, target_is_directory=True)
    before, before_out = tree_digest(store), _files(outside)
    res = run_cli(*_extract_args(tiny_models["gpt2"], store, tiny_items, tiny_corpus, "--overwrite"))
    assert_one_line_error(res, f"{folder} is a symbolic link")
    assert _files(outside) == before_out
    assert tree_digest(store) == before


def test_every_local_delete_move_and_write_refuses_a_link_in_the_store(store, tmp_path):
    outside = _outside(tmp_path)
    (store / "analysis").symlink_to(outside, target_is_directory=True)
    handle = Store(str(store))
    before = _files(outside)
    with pytest.raises(StoreError, match="analysis is a symbolic link"):
        handle.delete("analysis/gpt2")
    with pytest.raises(StoreError, match="analysis is a symbolic link"):
        handle.replace_group("models/gpt2", "analysis/gpt2")
    with pytest.raises(StoreError, match="analysis is a symbolic link"):
        handle.set_attrs("analysis/gpt2", {"x": 1})
    import xarray as xr

    with pytest.raises(StoreError, match="analysis is a symbolic link"):
        handle.write_dataset("analysis/new", xr.Dataset({"a": ("x", [1.0])}))
    assert _files(outside) == before
    assert (store / "models" / "gpt2" / "zarr.json").exists()


# -- 3. copy does not follow links inside a local store -------------------------------------------
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_copy_refuses_a_link_inside_the_local_source(kind, store, s3_server, tmp_path):  # noqa: F811
    s3 = s3_server
    outside = tmp_path / "outside"
    outside.mkdir()
    chunk = _chunk(store, "models/gpt2/key")
    if kind == "file":  # a valid chunk's bytes, so nothing but the link can stop it
        target = outside / "secret"
        shutil.copyfile(chunk, target)
        chunk.unlink()
        chunk.symlink_to(target)
        name = str(chunk.relative_to(store))
    else:
        folder = store / "models" / "gpt2" / "key"
        shutil.move(folder, outside / "key")
        folder.symlink_to(outside / "key", target_is_directory=True)
        name = "models/gpt2/key"
    before = tree_digest(store)
    res = run_cli("copy", str(store), s3.url("x"), "--quiet", *s3.cli)
    assert_one_line_error(res, f"{name} is a symbolic link")
    assert s3.objects() == {}  # nothing uploaded
    assert tree_digest(store) == before


def test_copy_refuses_a_link_inside_the_local_destination(store, s3_server, tmp_path):  # noqa: F811
    s3 = s3_server
    src = s3.url("src.zarr")
    assert run_cli("copy", str(store), src, "--quiet", *s3.cli).returncode == 0
    outside = _outside(tmp_path)
    dst = tmp_path / "dst.zarr"
    shutil.copytree(store, dst)
    shutil.rmtree(dst / "models")
    (dst / "models").symlink_to(outside, target_is_directory=True)
    before = _files(outside)
    res = run_cli("copy", src, str(dst), "--quiet", "--overwrite", *s3.cli)
    assert_one_line_error(res, "models is a symbolic link")
    assert _files(outside) == before


# -- 4. --break-lock is not for a writer alive on this host ---------------------------------------
@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def _write_lease(store: Path, model: str, **fields) -> bytes:
    d = store / LOCK_DIR
    d.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "model": model,
                       "expires": time.time() + 600, "since": time.time(), **fields}).encode()
    (d / f"{model}.json").write_bytes(body)
    return body


def test_break_lock_refuses_a_writer_alive_on_this_host(tmp_path, live_pid):
    store = tmp_path / "s.zarr"
    body = _write_lease(store, "m", pid=live_pid)
    with pytest.raises(StoreError, match=f"alive on this host .*pid {live_pid}"):
        ModelLock(Store(str(store)), "m", ttl=60, break_lock=True).acquire()
    assert (store / LOCK_DIR / "m.json").read_bytes() == body  # the live writer keeps its lease


def test_break_lock_still_takes_a_lease_from_another_host_or_a_dead_pid(tmp_path):
    store = tmp_path / "s.zarr"
    _write_lease(store, "m", host="gpu-box-17", pid=4242)
    with pytest.raises(StoreError, match="being written by another process"):
        ModelLock(Store(str(store)), "m", ttl=60).acquire()
    lk = ModelLock(Store(str(store)), "m", ttl=60, break_lock=True)
    lk.acquire()
    lk.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lease(store, "m", pid=dead.pid)
    lk = ModelLock(Store(str(store)), "m", ttl=60, break_lock=True)
    lk.acquire()
    lk.release()


def test_extract_break_lock_refuses_a_writer_alive_on_this_host(store, live_pid, tiny_models, tiny_items,
                                                               tiny_corpus):
    _write_lease(store, "llama", pid=live_pid)
    before = tree_digest(store)
    res = run_cli(*_extract_args(tiny_models["llama"], store, tiny_items, tiny_corpus, "--break-lock"))
    assert_one_line_error(res, f"alive on this host ({socket.gethostname()}, pid {live_pid})")
    assert tree_digest(store) == before
