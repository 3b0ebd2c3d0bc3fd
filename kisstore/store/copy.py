"""Copy a whole store between two URLs (local ↔ S3 ↔ S3), resumable and verified.

The copy works on the store's keys (files / objects), not on decoded arrays, so it is
exact: the destination holds the same bytes as the source. Order of events, chosen so
that a reader never sees an unfinished copy as a store:

1. a marker object ``.kisstore-copy-in-progress`` is written at the destination, and the
   destination's root ``zarr.json`` (if any) is removed;
2. destination keys the source does not have are deleted (a stale chunk would otherwise be
   read as data where the source has a fill-value chunk);
3. every data key is copied, unless the destination already holds identical bytes (same
   size and MD5: S3 ETags, or hashes of the local files), then every ``zarr.json``, the
   deepest first and the root's last;
4. the marker is deleted.

Each chunk is verified twice: its crc32c (Zarr's checksum codec, the last 4 bytes) is
checked on the bytes read from the source, so corruption is never propagated; and the
bytes stored at the destination are compared with the source's MD5 (the ETag S3 returns
for the upload, or the file read back). An interrupted copy resumes by running the same
command again: keys already present with identical bytes are not sent again.

Both listings are checked before anything is written: a key that is no plain relative path
(a ``..``, ``.`` or empty segment, a leading ``/``, a backslash) and a symbolic link inside a
local store are refused in one line, so nothing is ever read or written outside either store.

Writer leases (``.kisstore-locks/``) belong to one location and are neither copied nor
deleted. Copy a store while no extraction is writing to it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from kisstore import failpoints
from kisstore.errors import InputError, StoreError
from kisstore.store.backend import TMP_SUFFIX, Backend, Entry, backend_for
from kisstore.store.lock import LOCK_DIR
from kisstore.store.urls import redact

MARKER = ".kisstore-copy-in-progress"
METADATA_NAMES = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")
# writer leases belong to one location (and its writers), not to the data: never copied or deleted
_NOT_COPIED = (f"{LOCK_DIR}/",)


@dataclass
class CopyReport:
    """What a copy did: keys and bytes sent, skipped (already identical) and deleted."""

    keys: int = 0
    copied: int = 0
    skipped: int = 0
    deleted: int = 0
    bytes_total: int = 0
    bytes_copied: int = 0
    seconds: float = 0.0
    resumed: bool = False
    copied_keys: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.bytes_copied / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.keys} keys ({_human(self.bytes_total)}): {self.copied} copied ({_human(self.bytes_copied)}, "
                f"{_human(rate)}/s), {self.skipped} already identical, {self.deleted} stale deleted; "
                f"every chunk verified")


def copy_store(src: str, dst: str, *, src_options: Mapping[str, Any] | None = None,
               dst_options: Mapping[str, Any] | None = None, overwrite: bool = False, progress: bool = True,
               workers: int = 8) -> CopyReport:
    """Copy the store at ``src`` to ``dst`` key by key; see the module docstring for the guarantees."""
    from kisstore.store.io import Store

    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    t0 = time.perf_counter()
    s, d = backend_for(src, src_options), backend_for(dst, dst_options)
    if s.same_location(d):
        raise InputError("source and destination are the same store")
    if s.inside(d) or d.inside(s):
        raise InputError("source and destination must not be inside one another")
    s.check_bucket()
    d.check_bucket()
    source = Store(src, src_options)
    source.validate()  # a kisstore store, readable: one-line errors otherwise
    from kisstore.store.commit import recover

    recover(source)  # a write a kill interrupted is completed first, so the copy is of a whole store

    src_keys = s.list()
    _check_keys(src_keys, src)  # a key that is no plain relative path is refused before anything is written
    if MARKER in src_keys:
        raise StoreError(f"{redact(src)} is an unfinished copy; finish that copy before copying from it")
    src_keys = {k: e for k, e in src_keys.items() if TMP_SUFFIX not in k and not k.startswith(_NOT_COPIED)}
    src_root = s.read("zarr.json")
    src_id = hashlib.md5(src_root).hexdigest()
    dst_keys = d.list()
    _check_keys(dst_keys, dst)
    dst_keys = {k: e for k, e in dst_keys.items() if not k.startswith(_NOT_COPIED)}
    report = CopyReport(keys=len(src_keys), bytes_total=sum(e.size for e in src_keys.values()))
    report.resumed = _check_destination(d, dst_keys, src_id, overwrite)

    # metadata last, the deepest first; the root's zarr.json is the very last key
    meta = sorted((k for k in src_keys if _is_metadata(k)), key=lambda k: (k == "zarr.json", -k.count("/"), k))
    data = sorted(k for k in src_keys if not _is_metadata(k))
    stale = sorted(k for k in dst_keys if k not in src_keys and k != MARKER)
    checksummed = _checksummed_arrays(s, meta)

    # Nothing to do when the destination already holds every key, byte for byte.
    if not stale and MARKER not in dst_keys and _all_identical(s, d, src_keys, dst_keys, meta):
        report.skipped = report.keys
        report.seconds = time.perf_counter() - t0
        return report

    marker = {"kisstore_copy": 1, "source": redact(src), "source_root_md5": src_id,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    body = json.dumps(marker).encode()
    d.write(MARKER, body, hashlib.md5(body).hexdigest())
    if "zarr.json" in dst_keys:
        d.delete(["zarr.json"])  # from here on no reader takes the destination for a store
        dst_keys.pop("zarr.json")
    d.delete(stale)
    report.deleted = len(stale)
    for k in stale:
        dst_keys.pop(k, None)

    bar = _progress(report.bytes_total, progress)
    try:
        def one(key: str) -> tuple[str, bool]:
            return key, _copy_key(s, d, key, src_keys[key], dst_keys.get(key), checksummed)

        def done(key: str, copied: bool) -> None:
            size = src_keys[key].size
            if copied:
                report.copied += 1
                report.bytes_copied += size
                report.copied_keys.append(key)
                failpoints.hit("copy_key")
            else:
                report.skipped += 1
            if bar is not None:
                bar.update(size)
                bar.set_postfix(copied=report.copied, skipped=report.skipped, refresh=False)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: set[Future] = set()
            for key in data:
                pending.add(pool.submit(one, key))
                if len(pending) >= 4 * workers:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        done(*f.result())
            for f in pending:
                done(*f.result())
        for key in meta:  # sequential: deepest first, the root last
            done(*one(key))
        if bar is not None:
            # tqdm redraws at most every 0.1 s, so the last updates (the metadata keys) were counted
            # but never drawn; with leave=False the bar was then erased, leaving 0-99 % on screen or
            # in a log. Draw the finished state and keep it.
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()
    d.delete([MARKER])
    report.seconds = time.perf_counter() - t0
    return report


def _check_keys(keys: Mapping[str, Entry], url: str) -> None:
    """Refuse (one line) a key that is not a plain relative path: written to a local folder it
    could land outside it (``../``, a leading ``/``), or somewhere other than its name says."""
    for key in keys:
        parts = key.split("/")
        if (not key or key.startswith("/") or "\\" in key or "\x00" in key
                or any(p in ("", ".", "..") for p in parts)):
            raise StoreError(f"{redact(url)} holds a key that is not a plain relative path: {key!r} "
                             f"(a '..', '.' or empty segment, a leading '/' or a backslash); nothing was copied")


def _check_destination(d: Backend, dst_keys: dict[str, Entry], src_id: str, overwrite: bool) -> bool:
    """Refuse a destination that holds something else; return whether this resumes a copy."""
    if not dst_keys:
        return False
    where = redact(d.url)
    if MARKER in dst_keys:
        try:
            marker = json.loads(d.read(MARKER))
        except (ValueError, StoreError):
            marker = {}
        if marker.get("source_root_md5") == src_id:
            return True
        if overwrite:
            return False
        raise StoreError(f"{where} holds an unfinished copy of a different store; "
                         f"pass --overwrite to replace it")
    if "zarr.json" in dst_keys:
        if d.md5("zarr.json", dst_keys["zarr.json"]) == src_id or overwrite:
            return False
        raise StoreError(f"{where} already holds a different store; pass --overwrite to replace it")
    if overwrite:
        return False
    raise StoreError(f"{where} is not empty and holds no store ({len(dst_keys)} objects); "
                     f"choose an empty destination or pass --overwrite to replace its contents")


def _all_identical(s: Backend, d: Backend, src_keys: dict[str, Entry], dst_keys: dict[str, Entry],
                   meta: list[str]) -> bool:
    """Cheap check (sizes and known MD5s; metadata compared by bytes) that nothing needs copying."""
    for key, e in src_keys.items():
        de = dst_keys.get(key)
        if de is None or de.size != e.size:
            return False
        if e.md5 and de.md5 and e.md5 != de.md5:
            return False
    for key in meta:
        if s.md5(key, src_keys[key]) != d.md5(key, dst_keys[key]):
            return False
    data = [k for k in src_keys if k not in meta]
    return all(s.md5(k, src_keys[k]) == d.md5(k, dst_keys[k]) for k in data)


def _copy_key(s: Backend, d: Backend, key: str, entry: Entry, existing: Entry | None,
              checksummed: dict[str, dict | None]) -> bool:
    """Copy one key unless the destination holds identical bytes; returns whether it was sent."""
    data: bytes | None = None
    src_md5 = entry.md5
    if existing is not None and existing.size == entry.size:
        if src_md5 is None:
            data = s.read(key)
            src_md5 = hashlib.md5(data).hexdigest()
        if d.md5(key, existing) == src_md5:
            return False
    if data is None:
        data = s.read(key)
    if not _is_metadata(key):
        _check_crc32c(key, data, checksummed, s.url)
    md5 = hashlib.md5(data).hexdigest()
    if entry.md5 is not None and md5 != entry.md5:
        raise StoreError(f"{key} at {redact(s.url)} changed or was corrupted in transfer (MD5 mismatch); rerun the copy")
    d.write(key, data, md5)
    return True


def _checksummed_arrays(s: Backend, meta: list[str]) -> dict[str, dict | None]:
    """Array path → its metadata when its chunks (or shards) carry crc32c checksums, else None."""
    from kisstore.store import integrity

    out: dict[str, dict | None] = {}
    for key in meta:
        if not key.endswith("zarr.json"):
            continue
        try:
            doc = json.loads(s.read(key))
        except ValueError as e:
            raise StoreError(f"{key} at {redact(s.url)} is not valid JSON") from e
        if doc.get("node_type") != "array":
            continue
        path = key[: -len("zarr.json")].rstrip("/")
        out[path] = doc if integrity.has_crc32c(doc) else None
    return out


def _check_crc32c(key: str, data: bytes, checksummed: dict[str, dict | None], url: str) -> None:
    """Check a chunk's trailing crc32c against its bytes (a shard's: its index's and every chunk's
    in it); raise naming the chunk when they differ."""
    parent = key
    while "/" in parent:
        parent = parent.rsplit("/", 1)[0]
        if parent in checksummed:
            break
    else:
        return
    node = checksummed.get(parent)
    if not node:
        return
    import google_crc32c

    from kisstore.store import integrity

    if integrity.sharding(node) is not None:
        problem = integrity.shard_problem(data, node)
        if problem:
            raise StoreError(f"corrupt chunk in the source: array /{parent} shard {key[len(parent) + 1:]}: "
                             f"{problem} ({redact(url)}); nothing corrupt was copied")
        return
    if len(data) < 4 or google_crc32c.value(data[:-4]).to_bytes(4, "little") != data[-4:]:
        chunk = key[len(parent) + 1:]
        raise StoreError(f"corrupt chunk in the source: array /{parent} chunk {chunk} fails its crc32c check "
                         f"({redact(url)}); nothing corrupt was copied")


def _is_metadata(key: str) -> bool:
    return key.rsplit("/", 1)[-1] in METADATA_NAMES


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="copy", leave=True)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
