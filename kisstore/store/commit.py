"""Commit several group changes to a store so that a kill at any moment leaves it readable.

A writer first stages every new group in full under ``/_staging``; then :func:`commit`

1. takes the store's short commit lease (``.kisstore-locks/_root.json``), so two writers never
   interleave their changes or their consolidations;
2. writes a journal (``/.kisstore-locks/commit.json``) listing the changes: set attributes, move a
   staged group into place, delete a group;
3. removes the root's consolidated metadata, so that from here until step 5 readers (kisstore,
   plain xarray) list the groups themselves instead of trusting a stale copy;
4. applies the changes in order, each one idempotent;
5. consolidates, and deletes the journal.

Any writer that opens the store (``extract``, ``analyze``, ``edit``, ``import-rome``, ``copy``'s
source) first calls :func:`recover`: a journal left by a killed commit is applied again from
step 3, which completes it. A group appears or disappears as a whole for a listing reader:

- on local disk a move is two renames (the old group aside, the staged one in) and a delete is
  a rename aside, then the removal of the aside folder;
- elsewhere (S3) a group's own ``zarr.json`` is deleted first and written last: a reader that
  lists the store skips a folder without it. A move copies the staged keys (data first, then
  metadata, the deepest first), records in the journal that the copy is complete, then deletes
  the staged copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from typing import Any

from kisstore import failpoints
from kisstore.errors import StoreError
from kisstore.store import layout
from kisstore.store.io import Store, _sync, storage_errors

JOURNAL = f"{layout.LOCKS}/commit.json"  # beside the leases: not a Zarr node, never copied
ROOT_LEASE = "_root"  # never a model id: those start with a letter or digit
ITEMS_LEASE = "_items"
ANALYSIS_LEASE = "_analysis"
_ASIDE = ".kisstore-aside"

Op = dict[str, Any]


def staged(path: str) -> str:
    """Where a new group for ``path`` is written in full before it is committed."""
    return f"{layout.STAGING}/{path}"


def discard(store: Store, path: str) -> None:
    """Remove a staged group that will not be committed (and ``/_staging`` once it is empty)."""
    store.delete(path)
    parent = path.rsplit("/", 1)[0]
    while parent.startswith(f"{layout.STAGING}/"):  # a nested staging folder (/_staging/analyses/<name>)
        if not store.has(parent) or _children(store, parent):
            break
        store.delete(parent)
        parent = parent.rsplit("/", 1)[0]
    if store.has(layout.STAGING) and not _children(store, layout.STAGING):
        store.delete(layout.STAGING)


def set_attrs(path: str, attrs: dict[str, Any]) -> Op:
    return {"op": "attrs", "path": path, "attrs": json.loads(json.dumps(attrs))}


def move(src: str, dst: str) -> Op:
    return {"op": "move", "src": src, "dst": dst, "copied": False}


def delete(path: str) -> Op:
    return {"op": "delete", "path": path}


def delete_if_empty(path: str) -> Op:
    return {"op": "delete_if_empty", "path": path}


@contextlib.contextmanager
def lease(store: Store, name: str, wait_s: float = 120.0) -> Iterator[None]:
    """Hold the store-wide lease ``name`` (``_root``, ``_items``, ``_analysis``), waiting for
    another holder to finish (each holds it briefly, or for one command)."""
    from kisstore.store.lock import ModelLock

    lock = ModelLock(store, name, ttl=120.0)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            lock.acquire()
            break
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        yield
    finally:
        lock.release()


def commit(store: Store, ops: Sequence[Op]) -> None:
    """Apply ``ops`` as one change that a kill cannot leave half-visible (see the module doc)."""
    with lease(store, ROOT_LEASE):
        _write_journal(store, list(ops))
        _apply(store, list(ops))


def recover(store: Store) -> bool:
    """Finish a commit that a killed writer left; returns whether there was one."""
    if store.read_only or not _exists(store, JOURNAL):
        return False
    with lease(store, ROOT_LEASE):
        ops = _read_journal(store)
        if ops is None:  # finished by another process meanwhile
            return False
        _apply(store, ops)
    return True


# -- the steps ---------------------------------------------------------------------------------
def _apply(store: Store, ops: list[Op]) -> None:
    _drop_consolidated(store)
    for i, op in enumerate(ops):
        kind = op["op"]
        if kind == "attrs":
            if store.has(op["path"]):
                store.set_attrs(op["path"], op["attrs"])
        elif kind == "move":
            _move(store, ops, i)
        elif kind == "delete":
            _delete_group(store, op["path"])
        elif kind == "delete_if_empty":
            if store.has(op["path"]) and not _children(store, op["path"]):
                _delete_group(store, op["path"])
        else:
            raise StoreError(f"unknown step {kind!r} in {JOURNAL}: written by a newer kisstore?")
    if store.has(layout.STAGING) and not _children(store, layout.STAGING):
        _delete_group(store, layout.STAGING)  # nothing staged any more
    store.consolidate()
    with storage_errors(store.url, store.storage_options):
        _sync(store.zstore.delete(JOURNAL))


def _write_journal(store: Store, ops: list[Op]) -> None:
    from zarr.core.buffer import default_buffer_prototype

    body = json.dumps({"kisstore_commit": 1, "ops": ops}).encode()
    with storage_errors(store.url, store.storage_options):
        _sync(store.zstore.set(JOURNAL, default_buffer_prototype().buffer.from_bytes(body)))


def _read_journal(store: Store) -> list[Op] | None:
    from zarr.core.buffer import default_buffer_prototype

    with storage_errors(store.url, store.storage_options):
        buf = _sync(store.zstore.get(JOURNAL, prototype=default_buffer_prototype()))
    if buf is None:
        return None
    try:
        doc = json.loads(buf.to_bytes())
        ops = doc["ops"]
        assert isinstance(ops, list) and all(isinstance(o, dict) and "op" in o for o in ops)
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise StoreError(f"{store.url}: the journal of an interrupted write ({JOURNAL}) is damaged; "
                         "remove it and rerun the interrupted command") from e
    return ops


def _drop_consolidated(store: Store) -> None:
    """Rewrite the root's zarr.json without its consolidated metadata (readers then list)."""
    from zarr.core.buffer import default_buffer_prototype

    with storage_errors(store.url, store.storage_options):
        buf = _sync(store.zstore.get("zarr.json", prototype=default_buffer_prototype()))
        if buf is None:
            return
        doc = json.loads(buf.to_bytes())
        if doc.get("consolidated_metadata") is None:
            return
        doc.pop("consolidated_metadata", None)
        _sync(store.zstore.set("zarr.json", default_buffer_prototype().buffer.from_bytes(json.dumps(doc).encode())))


def _local_root(store: Store) -> str | None:
    return str(store.zstore.root) if store.scheme == "file" else None


def _move(store: Store, ops: list[Op], i: int) -> None:
    op = ops[i]
    src, dst = op["src"], op["dst"]
    root = _local_root(store)
    with storage_errors(store.url, store.storage_options):
        _parent_group(store, dst)
        if root is not None:
            store.check_links(src, dst, dst.rstrip("/") + _ASIDE)  # never through a link out of the store
            s, d = os.path.join(root, src), os.path.join(root, dst)
            aside = d.rstrip("/") + _ASIDE
            if os.path.lexists(os.path.join(s, "zarr.json")):
                _rmtree(aside)  # a leftover of an earlier interrupted step: garbage
                if os.path.lexists(d):
                    failpoints.hit(failpoints.WRITE)
                    os.replace(d, aside)
                failpoints.hit(failpoints.WRITE)
                os.replace(s, d)
            _rmtree(aside)
            return
        if not op.get("copied"):
            if not _exists(store, f"{src}/zarr.json"):
                raise StoreError(f"{store.url}: the staged group {src} of an interrupted write is gone; "
                                 f"rerun the interrupted command")
            _delete_group(store, dst)
            _sync(_copy_keys(store.zstore, src, dst))
            op["copied"] = True
            _write_journal(store, ops)  # the copy is complete: from here on only the staged copy goes
        _delete_group(store, src)


def _delete_group(store: Store, path: str) -> None:
    root = _local_root(store)
    with storage_errors(store.url, store.storage_options):
        if root is not None:
            store.check_links(path, path.rstrip("/") + _ASIDE)
            p = os.path.join(root, path)
            aside = p.rstrip("/") + _ASIDE
            if os.path.lexists(p):
                _rmtree(aside)
                failpoints.hit(failpoints.WRITE)
                os.replace(p, aside)  # gone for readers at once; the folder is removed next
            _rmtree(aside)
            return
        _sync(store.zstore.delete(f"{path}/zarr.json"))  # first: the group vanishes for readers at once
        _sync(store.zstore.delete_dir(path))


def _rmtree(path: str) -> None:
    if os.path.lexists(path):
        failpoints.hit(failpoints.WRITE)
        shutil.rmtree(path)


def _parent_group(store: Store, path: str) -> None:
    import zarr

    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent and not store.has(parent):
        zarr.open_group(store.zstore, path=parent, mode="a", zarr_format=3)


def _children(store: Store, path: str) -> list[str]:
    async def names() -> list[str]:
        return [k async for k in store.zstore.list_dir(path) if k != "zarr.json"]

    with storage_errors(store.url, store.storage_options):
        return _sync(names())


def _exists(store: Store, key: str) -> bool:
    with storage_errors(store.url, store.storage_options):
        return bool(_sync(store.zstore.exists(key)))


async def _copy_keys(zstore, src: str, dst: str, parallel: int = 32) -> None:
    """Copy every key below ``src`` to the same place below ``dst``: data first, then metadata,
    the deepest first, so the group's own zarr.json (the one that makes it visible) comes last."""
    import asyncio

    from zarr.core.buffer import default_buffer_prototype

    proto = default_buffer_prototype()
    prefix = src.rstrip("/") + "/"
    keys = [k async for k in zstore.list_prefix(prefix)]
    data = [k for k in keys if k.rsplit("/", 1)[-1] != "zarr.json"]
    meta = sorted((k for k in keys if k not in data), key=lambda k: -k.count("/"))

    async def one(key: str) -> None:
        buf = await zstore.get(key, prototype=proto)
        if buf is not None:
            await zstore.set(dst.rstrip("/") + "/" + key[len(prefix):], buf)

    for i in range(0, len(data), parallel):
        await asyncio.gather(*(one(k) for k in data[i : i + parallel]))
    for key in meta:
        await one(key)
