"""Integrity, exclusive writers, full disks, hostile stores and inputs."""

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

import numpy as np
import pytest
import xarray as xr

from kisstore.errors import InputError
from kisstore.store.layout import sanitize_model_id
from tests.conftest import copy_store, run_cli, small_tmpfs, tree_digest


def _extract_args(model, store, items, corpus, *extra):
    return ["extract", "--model", str(model), "--store", str(store), "--items", str(items), "--corpus", str(corpus),
            "--quiet", *extra]


@pytest.fixture(scope="module")
def store_template(tiny_store):
    return tiny_store("llama")


@pytest.fixture
def store(store_template, tmp_path):
    return copy_store(store_template, tmp_path)


# -- integrity ---------------------------------------------------------------------------------
def _chunk(store: Path, array: str) -> Path:
    files = sorted((store / array / "c").rglob("*"))
    return next(f for f in files if f.is_file())


def test_verify_passes_on_an_intact_store(store):
    res = run_cli("info", "--verify", str(store))
    assert res.returncode == 0 and "valid checksum" in res.stdout


@pytest.mark.parametrize("array", ["models/llama/cov", "models/llama/key", "items/subject"])
def test_flipped_byte_is_detected_and_named(array, store):
    f = _chunk(store, array)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    res = run_cli("info", "--verify", str(store))
    assert res.returncode == 2
    assert f"CORRUPT /{array} chunk (" in res.stdout or f"CORRUPT /{array} shard (" in res.stdout  # sharded layers
    assert "corrupt chunk(s)" in res.stderr and "Traceback" not in res.stderr


def test_truncated_chunk_is_detected_and_named(store):
    f = _chunk(store, "models/llama/key")
    f.write_bytes(f.read_bytes()[:10])
    res = run_cli("info", "--verify", str(store))
    assert res.returncode == 2 and "CORRUPT /models/llama/key shard (0, 0, 0)" in res.stdout  # one shard of all layers


def test_analysis_of_a_corrupt_chunk_fails_with_a_pointer_to_verify(store):
    f = _chunk(store, "models/llama/cov")
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01
    f.write_bytes(bytes(data))
    res = run_cli("analyze", str(store))
    assert res.returncode != 0
    assert "kisstore info --verify" in res.stderr and "Traceback" not in res.stderr


# -- exclusive writers -------------------------------------------------------------------------
def _lease(store: Path, model: str, **fields):
    d = store / ".kisstore-locks"
    d.mkdir(parents=True, exist_ok=True)
    body = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "model": model,
            "expires": time.time() + 600, "since": time.time(), **fields}
    (d / f"{model}.json").write_text(json.dumps(body))


def test_live_writer_lock_refuses_a_second_writer(tiny_models, tiny_items, tiny_corpus, tmp_path):
    store = tmp_path / "s.zarr"
    _lease(store, "llama")  # held by this (living) test process
    before = tree_digest(store)
    res = run_cli(*_extract_args(tiny_models["llama"], store, tiny_items, tiny_corpus))
    assert res.returncode == 2 and "being written by another process" in res.stderr
    assert tree_digest(store) == before


def test_lock_of_a_dead_process_on_this_host_is_recovered(tiny_models, tiny_items, tiny_corpus, tmp_path):
    store = tmp_path / "s.zarr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lease(store, "llama", pid=dead.pid)
    run_cli(*_extract_args(tiny_models["llama"], store, tiny_items, tiny_corpus), check=True)
    assert not (store / ".kisstore-locks" / "llama.json").exists()


def test_lock_from_another_host_needs_expiry_or_break_lock(tiny_models, tiny_items, tiny_corpus, tmp_path):
    store = tmp_path / "s.zarr"
    _lease(store, "llama", host="gpu-box-17", pid=4242)
    args = _extract_args(tiny_models["llama"], store, tiny_items, tiny_corpus)
    assert run_cli(*args).returncode == 2
    run_cli(*args, "--break-lock", check=True)
    _lease(store, "gpt2", host="gpu-box-17", pid=4242, expires=time.time() - 1)  # expired: free
    run_cli(*_extract_args(tiny_models["gpt2"], store, tiny_items, tiny_corpus), check=True)


def test_two_simultaneous_writers_leave_one_correct_model(store_template, tiny_models, tiny_items, tiny_corpus,
                                                          tmp_path):
    store = tmp_path / "s.zarr"
    cmd = [sys.executable, "-m", "kisstore_cli.main",
           *_extract_args(tiny_models["llama"], store, tiny_items, tiny_corpus)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0 and codes[1] in (0, 2), outs
    ref = xr.open_datatree(store_template, engine="zarr")["models/llama"].ds
    got = xr.open_datatree(store, engine="zarr")["models/llama"].ds
    assert got.attrs["complete"] is True
    np.testing.assert_array_equal(got["cov"].values, ref["cov"].values)


# -- full disk ---------------------------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path):
    yield from small_tmpfs(tmp_path, "2m")


def test_full_disk_is_a_clear_error_and_the_rerun_completes(small_fs, store_template, tiny_models, tiny_items,
                                                            tiny_corpus):
    filler = small_fs / "filler"
    free = shutil.disk_usage(small_fs).free
    filler.write_bytes(b"\0" * (free - 48 * 1024))
    store = small_fs / "s.zarr"
    args = _extract_args(tiny_models["llama"], store, tiny_items, tiny_corpus)
    res = run_cli(*args)
    assert res.returncode == 2, res.stderr
    assert "No space left on device" in res.stderr and "Traceback" not in res.stderr
    filler.unlink()
    run_cli(*args, check=True)
    ref = xr.open_datatree(store_template, engine="zarr")["models/llama"].ds
    got = xr.open_datatree(store, engine="zarr")["models/llama"].ds
    np.testing.assert_array_equal(got["cov"].values, ref["cov"].values)
    np.testing.assert_array_equal(got["key"].values, ref["key"].values)


# -- hostile or foreign stores -----------------------------------------------------------------
def _newer_schema(store: Path):
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["kisstore_schema_version"] = 99
    (store / "zarr.json").write_text(json.dumps(meta))
    for p in [store / "zarr.json"]:
        meta = json.loads(p.read_text())
        meta.pop("consolidated_metadata", None)
        p.write_text(json.dumps(meta))


def _foreign(store: Path):
    shutil.rmtree(store)
    import zarr

    g = zarr.open_group(str(store), mode="w")
    g.create_array("data", shape=(3,), dtype="f4")


def _no_models(store: Path):
    shutil.rmtree(store / "models")
    import zarr

    zarr.consolidate_metadata(str(store))


def _int_keys(store: Path):
    ds = xr.open_datatree(store, engine="zarr")["models/llama"].to_dataset().load()
    ds["key"] = ds["key"].astype("int32")
    ds.to_zarr(str(store), group="models/llama", mode="w", consolidated=False, zarr_format=3)
    import zarr

    zarr.consolidate_metadata(str(store))


def _wrong_dims(store: Path):
    ds = xr.open_datatree(store, engine="zarr")["models/llama"].to_dataset().load()
    ds["key"] = ds["key"].transpose("item", "layer", "d_ff")
    ds.to_zarr(str(store), group="models/llama", mode="w", consolidated=False, zarr_format=3)
    import zarr

    zarr.consolidate_metadata(str(store))


STORE_CASES = {
    "not a zarr store": (lambda s: (shutil.rmtree(s), s.mkdir()), "not a kisstore store"),
    "a plain file": (lambda s: (shutil.rmtree(s), s.write_text("hello")), "not a kisstore store"),
    "newer schema version": (_newer_schema, "schema version 99"),
    "written by another tool": (_foreign, "not written by kisstore"),
    "no models group": (_no_models, "no complete model"),
    "integer keys": (_int_keys, "must be floating point"),
    "transposed keys": (_wrong_dims, "has dims"),
}


@pytest.mark.parametrize("case", STORE_CASES)
def test_foreign_or_damaged_store_is_refused_without_change(case, store):
    damage, needle = STORE_CASES[case]
    damage(store)
    before = tree_digest(store) if store.is_dir() else store.read_bytes()
    res = run_cli("analyze", str(store))
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0
    assert (tree_digest(store) if store.is_dir() else store.read_bytes()) == before


# -- security ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pickle_model(tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    from tests import tiny

    d = tmp_path_factory.mktemp("pickled")
    tiny.tokenizer_files(d)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny.config_for("gpt2"))
    model.config.save_pretrained(d)
    torch.save(model.state_dict(), d / "pytorch_model.bin")  # the legacy pickle checkpoint format
    assert list(d.glob("*.bin")) and not list(d.glob("*.safetensors"))
    return d


def test_pickle_weights_are_refused_unless_allowed(pickle_model, tiny_items, tiny_corpus, tmp_path):
    store = tmp_path / "s.zarr"
    res = run_cli(*_extract_args(pickle_model, store, tiny_items, tiny_corpus))
    assert res.returncode == 2 and "pickle" in res.stderr and "--allow-pickle" in res.stderr
    run_cli(*_extract_args(pickle_model, store, tiny_items, tiny_corpus, "--allow-pickle"), check=True)


def test_remote_code_is_not_trusted_by_default(tiny_models, tiny_items, tiny_corpus, tmp_path):
    d = tmp_path / "remote"
    shutil.copytree(tiny_models["gpt2"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "evil_custom"
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    marker = tmp_path / "pwned"
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    res = run_cli(*_extract_args(d, tmp_path / "s.zarr", tiny_items, tiny_corpus))
    assert res.returncode == 2 and "--trust-remote-code" in res.stderr
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../evil", "../../etc/passwd", "a/../../b", "s3://bucket/x", "x/y/z", "", "..",
                                  "name with space", "/", "~/../..", "a\\..\\b", "%2e%2e/x"])
def test_model_ids_cannot_escape_the_store(name):
    import re

    try:
        safe = sanitize_model_id(name)
    except InputError:
        return
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", safe) and ".." not in safe, safe


@pytest.mark.parametrize("name", ["a/../../b", "s3://bucket/x", "", "..", "name with space"])
def test_unsafe_model_ids_are_refused(name):
    with pytest.raises(InputError):
        sanitize_model_id(name)


@pytest.mark.parametrize("name,expected", [("meta-llama/Llama-2-7b-hf", "meta-llama--Llama-2-7b-hf"),
                                           ("/abs/path/to/gpt2/", "gpt2"), ("./x/model.gguf", "model"),
                                           ("gpt2-small", "gpt2-small")])
def test_model_ids_are_sanitised_into_one_safe_component(name, expected):
    assert sanitize_model_id(name) == expected


def test_store_attributes_are_data_never_evaluated(store, tmp_path):
    import zarr

    marker = tmp_path / "evaluated"
    payload = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')"
    g = zarr.open_group(str(store), mode="r+")
    g["models/llama"].attrs.update({"model_id": payload, "family": "{{" + payload + "}}"})
    zarr.consolidate_metadata(str(store))
    out = run_cli("info", str(store), check=True).stdout
    run_cli("analyze", str(store), check=True)
    assert payload in out and not marker.exists()
