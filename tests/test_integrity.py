"""Integrity blind spots (issue #18 item 9): node metadata against its consolidated copy, missing
chunks of non-float arrays, crafted fill values, swapped chunks (the chunk manifest), absurd
shapes that hung readers, and damaged metadata that crashed them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import copy_store, run_cli, tree_digest


def _extract_args(model, store, items, corpus):
    return ["extract", "--model", str(model), "--store", str(store), "--items", str(items), "--corpus", str(corpus),
            "--quiet"]


@pytest.fixture(scope="module")
def store_template(tiny_store):
    return tiny_store("llama")


@pytest.fixture
def store(store_template, tmp_path):
    return copy_store(store_template, tmp_path)


def _root(store: Path) -> dict:
    return json.loads((store / "zarr.json").read_text())


def _edit_node(store: Path, path: str, edit, *, own: bool = True, consolidated: bool = True) -> None:
    """Apply ``edit`` (dict → None) to the node's own zarr.json and/or its consolidated copy."""
    if own:
        meta = json.loads((store / path / "zarr.json").read_text())
        edit(meta)
        (store / path / "zarr.json").write_text(json.dumps(meta))
    if consolidated:
        root = _root(store)
        edit(root["consolidated_metadata"]["metadata"][path])
        (store / "zarr.json").write_text(json.dumps(root))


def _assert_refused(res, needle: str | None = None):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr
    if needle:
        assert needle in res.stderr + res.stdout, (res.stdout, res.stderr)


def _chunk(store: Path, array: str, n: int = 0) -> Path:
    return sorted(f for f in (store / array / "c").rglob("*") if f.is_file())[n]


# -- 1. a node's own zarr.json against the consolidated copy ---------------------------------------
OWN_DAMAGE = {
    "not JSON": lambda p: p.write_text(p.read_text()[:-7]),
    "edited shape": lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "shape": [2, 12, 36]})),
    "edited attribute": lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "attributes": {**json.loads(p.read_text())["attributes"], "x": 1}})),
    "missing": lambda p: p.unlink(),
}


@pytest.mark.parametrize("case", OWN_DAMAGE)
@pytest.mark.parametrize("node", ["models/llama/key", "models/llama"])
def test_verify_reads_each_nodes_own_metadata(case, node, store):
    OWN_DAMAGE[case](store / node / "zarr.json")
    before = tree_digest(store)
    res = run_cli("info", "--verify", str(store))
    _assert_refused(res, f"CORRUPT /{node} metadata: ")
    assert "damaged metadata" in res.stderr
    assert tree_digest(store) == before


def test_analyze_refuses_metadata_that_differs_from_its_consolidated_copy(store):
    _edit_node(store, "models/llama/key", lambda m: m.update(shape=[2, 12, 36]), consolidated=False)
    before = tree_digest(store)
    res = run_cli("analyze", str(store))
    _assert_refused(res, "/models/llama/key metadata: ")
    assert "kisstore info --verify" in res.stderr
    assert tree_digest(store) == before


# -- 2. a missing chunk of a non-float array -------------------------------------------------------
@pytest.mark.parametrize("array", ["items/subject", "models/llama/n_tokens", "models/llama/known"])
def test_missing_chunk_of_a_non_float_array_is_refused_by_analyze(array, store):
    _chunk(store, array).unlink()
    before = tree_digest(store)
    res = run_cli("analyze", str(store))
    _assert_refused(res, f"/{array} chunk (")
    assert "missing" in res.stderr and "kisstore info --verify" in res.stderr
    assert tree_digest(store) == before
    verify = run_cli("info", "--verify", str(store))
    _assert_refused(verify, f"CORRUPT /{array} chunk (")


def test_missing_chunk_is_refused_by_export(store, tmp_path):
    _chunk(store, "models/llama/n_tokens").unlink()  # a small array: its one chunk (store.chunking)
    res = run_cli("export", str(store), "--stats-dir", str(tmp_path / "stats"))
    _assert_refused(res, "/models/llama/n_tokens chunk (0,): missing")
    assert not (tmp_path / "stats").exists()


# -- 3. a crafted fill value -------------------------------------------------------------------------
def test_crafted_fill_value_in_the_consolidated_metadata_is_refused(store):
    _edit_node(store, "models/llama/n_tokens", lambda m: m.update(fill_value=7), own=False)
    _chunk(store, "models/llama/n_tokens").unlink()
    before = tree_digest(store)
    _assert_refused(run_cli("analyze", str(store)), "/models/llama/n_tokens metadata: ")
    _assert_refused(run_cli("info", "--verify", str(store)), "CORRUPT /models/llama/n_tokens metadata: ")
    assert tree_digest(store) == before


# -- 4. the chunk manifest: swapped and duplicated chunks -------------------------------------------
def _swap(a: Path, b: Path) -> None:
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)


def _synthetic(path: Path, monkeypatch, shard_bytes: int) -> Path:
    """A store of one 3-layer model ``llama`` (d_ff 12) written with shards of at most
    ``shard_bytes``: 2500 packs two layers of ``cov`` and ``keys`` in one shard (two shards
    each); 1 leaves one object per layer (the unsharded layout, as in kisstore 0.1)."""
    from kisstore.analysis.synthetic import write_synthetic_store
    from kisstore.store import chunking

    monkeypatch.setattr(chunking, "SHARD_BYTES", shard_bytes)
    write_synthetic_store(str(path), {"llama": {"n_layers": 3, "d_ff": 12}}, n_items=12)
    monkeypatch.undo()
    return path


@pytest.mark.parametrize("layout", ["sharded", "one object per layer"])
@pytest.mark.parametrize("how", ["swapped", "duplicated"])
def test_swapped_or_duplicated_chunks_are_detected(how, layout, tmp_path, monkeypatch):
    store = _synthetic(tmp_path / "s.zarr", monkeypatch, 2500 if layout == "sharded" else 1)
    what = "shard" if layout == "sharded" else "chunk"
    assert len(list((store / "models/llama/cov/c").rglob("*"))) == (2 if layout == "sharded" else 3) * 3
    a, b = _chunk(store, "models/llama/cov", 0), _chunk(store, "models/llama/cov", 1)
    if how == "swapped":
        _swap(a, b)
    else:
        b.write_bytes(a.read_bytes())
    before = tree_digest(store)
    res = run_cli("info", "--verify", str(store))
    _assert_refused(res, "does not match its manifest (swapped or replaced)")
    assert f"CORRUPT /models/llama/cov {what} (1, 0, 0): does not match its manifest" in res.stdout
    res = run_cli("analyze", str(store))
    _assert_refused(res, "/models/llama/cov chunk (")
    assert "kisstore info --verify" in res.stderr
    assert tree_digest(store) == before


def _swapped_inside(raw: bytes, meta: dict, i: int, j: int) -> bytes:
    """A shard's bytes with the index entries of chunks ``i`` and ``j`` exchanged (index at its
    end, its crc32c recomputed): a valid shard, every checksum intact, with two layers in each
    other's place."""
    import struct

    import google_crc32c

    conf = meta["codecs"][0]["configuration"]
    n = 1
    for shard, inner in zip(meta["chunk_grid"]["configuration"]["chunk_shape"], conf["chunk_shape"], strict=True):
        n *= shard // inner
    body, index = raw[: -(16 * n + 4)], raw[-(16 * n + 4) : -4]
    entries = [index[16 * k : 16 * k + 16] for k in range(n)]
    entries[i], entries[j] = entries[j], entries[i]
    index = b"".join(entries)
    return body + index + struct.pack("<I", google_crc32c.value(index))


def test_chunks_swapped_inside_a_shard_are_detected(store):
    keys = store / "models/llama/key"
    assert json.loads((keys / "zarr.json").read_text())["codecs"][0]["name"] == "sharding_indexed"
    shard = _chunk(store, "models/llama/key", 0)
    shard.write_bytes(_swapped_inside(shard.read_bytes(), json.loads((keys / "zarr.json").read_text()), 0, 2))
    res = run_cli("info", "--verify", str(store))
    _assert_refused(res, "CORRUPT /models/llama/key shard (0, 0, 0): does not match its manifest")


def test_a_flipped_byte_in_a_shard_is_caught(store):
    shard = _chunk(store, "models/llama/key", 0)
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0x01  # inside a chunk's compressed bytes
    shard.write_bytes(bytes(raw))
    res = run_cli("info", "--verify", str(store))
    _assert_refused(res, "1 corrupt chunk(s)")
    assert "CORRUPT /models/llama/key shard (0, 0, 0): " in res.stdout
    before = tree_digest(store)
    _assert_refused(run_cli("analyze", str(store), "--quiet"), "checksum do not match")
    assert tree_digest(store) == before


def test_every_written_array_carries_a_manifest(store):
    run_cli("analyze", str(store), check=True)
    for zj in store.rglob("zarr.json"):
        meta = json.loads(zj.read_text())
        if meta.get("node_type") == "array" and "_checkpoints" not in zj.parts:
            manifest = meta["attributes"].get("kisstore_chunk_manifest")
            assert manifest and manifest["hash"] == "crc32c", zj
            assert manifest["chunks"] and all((zj.parent / key).is_file() for key in manifest["chunks"]), zj
    assert run_cli("info", "--verify", str(store)).returncode == 0


def _strip_manifests(store: Path) -> None:
    """Turn a store into the 0.1 layout: no chunk manifests, in either copy of the metadata."""
    root = _root(store)
    for node in root["consolidated_metadata"]["metadata"].values():
        node.get("attributes", {}).pop("kisstore_chunk_manifest", None)
    (store / "zarr.json").write_text(json.dumps(root))
    for zj in store.rglob("zarr.json"):
        meta = json.loads(zj.read_text())
        if meta.get("attributes", {}).pop("kisstore_chunk_manifest", None) is not None:
            zj.write_text(json.dumps(meta))


def test_a_store_without_manifests_still_opens_verifies_and_analyses(store):
    _strip_manifests(store)
    assert "valid checksum" in run_cli("info", "--verify", str(store), check=True).stdout
    run_cli("analyze", str(store), check=True)
    assert run_cli("info", "--verify", str(store)).returncode == 0
    # without a manifest the position check is off, but presence and checksums still hold
    _chunk(store, "items/subject").unlink()
    _assert_refused(run_cli("analyze", str(store)), "/items/subject chunk (0,): missing")


# -- 5. absurd shapes must be refused quickly, not hang -----------------------------------------------
def _absurd_d_ff(store: Path) -> None:
    for name in ("key", "cov"):
        def edit(m, name=name):
            m["shape"] = [3, 12, 3 * 10**9] if name == "key" else [3, 3 * 10**9, 3 * 10**9]
            m["chunk_grid"]["configuration"]["chunk_shape"] = [1, 12, 4096] if name == "key" else [1, 4096, 4096]
        _edit_node(store, f"models/llama/{name}", edit)


def _many_chunks(store: Path) -> None:
    def edit(m):
        m["shape"] = [3, 12, 36 * 3_200_000]
        m["chunk_grid"]["configuration"]["chunk_shape"] = [1, 12, 36]
    _edit_node(store, "models/llama/key", edit)


def _inconsistent(store: Path) -> None:
    _edit_node(store, "models/llama/key", lambda m: m.update(shape=[3, 12, 40]))


ABSURD = {"d_ff 3e9": (_absurd_d_ff, "/models/llama/"), "9.6M chunks": (_many_chunks, "chunks"),
          "keys' d_ff != cov's": (_inconsistent, "disagree on d_ff")}


@pytest.mark.parametrize("command", ["verify", "analyze", "export"])
@pytest.mark.parametrize("case", ABSURD)
def test_absurd_shapes_are_refused_quickly(case, command, store, tmp_path):
    damage, needle = ABSURD[case]
    damage(store)
    before = tree_digest(store)
    args = {"verify": ["info", "--verify", str(store)], "analyze": ["analyze", str(store)],
            "export": ["export", str(store), "--format", "rome", "--stats-dir", str(tmp_path / "stats")]}[command]
    start = time.monotonic()
    import subprocess
    try:
        res = run_cli_timeout(args, 30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{command} hung on a store with {case}")
    assert time.monotonic() - start < 30
    _assert_refused(res, needle)
    assert tree_digest(store) == before


def run_cli_timeout(args, timeout):
    import os
    import subprocess
    import sys

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "kisstore_cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


# -- damaged metadata that crashed readers ----------------------------------------------------------
def _flip_root(store: Path) -> None:
    data = bytearray((store / "zarr.json").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (store / "zarr.json").write_bytes(bytes(data))


def _truncate_root(store: Path) -> None:
    (store / "zarr.json").write_bytes((store / "zarr.json").read_bytes()[:200])


def _complex(store: Path) -> None:
    _edit_node(store, "models/llama/cov", lambda m: m.update(data_type="complex128", fill_value=[0.0, 0.0]))


def _negative(store: Path) -> None:
    _edit_node(store, "models/llama/key", lambda m: m.update(shape=[3, -12, 36]))


def _separator(store: Path) -> None:
    _edit_node(store, "models/llama/key",
               lambda m: m.update(chunk_key_encoding={"name": "default", "configuration": {"separator": "/../../"}}))


def _deep(store: Path) -> None:
    nested: dict = {}
    for _ in range(500):
        nested = {"x": nested}
    _edit_node(store, "models/llama", lambda m: m["attributes"].update(deep=nested))


def _deep_root(store: Path) -> None:
    text = (store / "zarr.json").read_text()
    deep = "[" * 200_000 + "]" * 200_000
    (store / "zarr.json").write_text(text.replace('"attributes": {', f'"attributes": {{"deep": {deep}, ', 1))


BAD_METADATA = {
    "flipped root zarr.json": _flip_root,
    "truncated root zarr.json": _truncate_root,
    "complex dtype": _complex,
    "negative shape": _negative,
    "'/../../' chunk-key separator": _separator,
    "deeply nested attributes": _deep,
    "deeply nested root JSON": _deep_root,
}


@pytest.mark.parametrize("command", ["info", "verify", "analyze"])
@pytest.mark.parametrize("case", BAD_METADATA)
def test_damaged_metadata_is_one_line_exit_2(case, command, store):
    BAD_METADATA[case](store)
    before = tree_digest(store)
    args = {"info": ["info", str(store)], "verify": ["info", "--verify", str(store)],
            "analyze": ["analyze", str(store)]}[command]
    res = run_cli_timeout(args, 60)
    _assert_refused(res)
    assert tree_digest(store) == before


# -- the manifest on S3 (fsspec): sealed from ranged reads, checked the same way ----------------------
def test_manifest_on_s3_detects_chunks_swapped_inside_a_shard(store_template, monkeypatch):
    from tests.s3server import s3_environment

    s3 = s3_environment(monkeypatch)
    url = s3.url("team/s.zarr")
    client = s3.client()
    for f in store_template.rglob("*"):
        if f.is_file() and ".kisstore-locks" not in f.parts:
            client.put_object(Bucket=s3.bucket, Key=f"team/s.zarr/{f.relative_to(store_template)}", Body=f.read_bytes())
    run_cli("analyze", url, *s3.cli, check=True)  # seals /analysis/* on S3 (ranged reads of the stored chunks)
    assert "valid checksum" in run_cli("info", "--verify", url, *s3.cli, check=True).stdout
    key = "team/s.zarr/models/llama/key/c/0/0/0"
    meta = json.loads((store_template / "models/llama/key/zarr.json").read_text())
    raw = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    client.put_object(Bucket=s3.bucket, Key=key, Body=_swapped_inside(raw, meta, 0, 1))
    res = run_cli("info", "--verify", url, *s3.cli)
    _assert_refused(res, "CORRUPT /models/llama/key shard (0, 0, 0): does not match its manifest")
    _assert_refused(run_cli("analyze", url, *s3.cli), "does not match its manifest (swapped or replaced)")


def test_parametrised_data_types_xarray_writes_are_accepted(tmp_path):
    import numpy as np
    import xarray as xr

    from kisstore.store import integrity

    ds = xr.Dataset({"u": ("x", np.array(["ab", "c"])), "b": ("x", np.array([b"a", b"bc"])),
                     "f": ("x", np.array([1.0, 2.0], dtype="float32"))})
    ds.to_zarr(tmp_path / "x.zarr", mode="w", zarr_format=3, consolidated=True)
    nodes = integrity.consolidated(json.loads((tmp_path / "x.zarr" / "zarr.json").read_text()))
    assert nodes and all(integrity.node_problem(n) is None for n in nodes.values()), nodes
    bad = {**nodes["f"], "data_type": {"name": "complex128", "configuration": {}}}
    assert "data type" in integrity.node_problem(bad)
