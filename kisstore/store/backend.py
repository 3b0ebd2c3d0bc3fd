"""Where a store's bytes live (a local folder, S3, any other fsspec filesystem) and what each
can guarantee: the one seam that tells them apart, as zarr-python 3's ``abc/store.py`` does for
zarr's stores. Code above it asks a :class:`Backend`; it never checks a URL's scheme itself.

A backend offers two kinds of access:

- **key I/O of a whole store**: :meth:`Backend.list` (every key with its size, and its MD5 where
  the listing gives it), :meth:`~Backend.read`, :meth:`~Backend.write` (atomic where the storage
  allows, and checked against an MD5), :meth:`~Backend.delete`, :meth:`~Backend.modified`.
  ``kisstore copy`` and ``info`` use these;
- **compare-and-swap on one small object**, :meth:`Backend.versioned`: create it only if absent,
  replace or delete it only if it still holds the version that was read. The writer's lease
  (:mod:`kisstore.store.lock`) is built on it. S3 does it with conditional PUTs, a local folder
  under an exclusive ``flock``; elsewhere it is only checked, not atomic, and the object says so
  (``read_back``), so the lease waits and reads its write back.

Local folders refuse symbolic links inside a store: nothing is read or written outside it.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kisstore import failpoints
from kisstore.errors import StoreError
from kisstore.store.errors import missing_bucket_error, storage_errors
from kisstore.store.urls import normalize_s3_options, redact, split_url

TMP_SUFFIX = ".kisstore-tmp-"
_S3_SINGLE_PUT_LIMIT = 2 * 50 * 2**20  # s3fs pipe_file switches to multipart upload at 2 × its 50 MiB chunksize


@dataclass
class Entry:
    """One key of a listing."""

    size: int
    md5: str | None  # known without reading the bytes (a plain S3 ETag), else None


def backend_for(url: str, storage_options: Mapping[str, Any] | None = None) -> Backend:
    """The backend of the store at URL (a local path, file://, s3:// or another fsspec URL)."""
    import fsspec

    options = dict(storage_options or {})
    scheme, rest = split_url(url)
    with storage_errors(url, options):
        if scheme == "file":
            return LocalBackend(url, options, fsspec.filesystem("file"),
                                os.path.abspath(rest if url.startswith("file://") else url))
        opts = normalize_s3_options(options) if scheme == "s3" else options
        fs, path = fsspec.core.url_to_fs(url, **opts)
        return (S3Backend if scheme == "s3" else Backend)(url, options, fs, path.rstrip("/"))


class Backend:
    """Any fsspec filesystem: plain reads and writes, each write read back to check it."""

    def __init__(self, url: str, storage_options: Mapping[str, Any], fs: Any, root: str):
        self.url = url
        self.options = dict(storage_options)
        self.scheme = split_url(url)[0]
        self.fs = fs
        self.root = root

    def errors(self):
        """A context that turns this storage's exceptions into one-line StoreErrors."""
        return storage_errors(self.url, self.options)

    def check_bucket(self) -> None:
        """Fail early, with one line, when the storage behind the URL is missing (S3's bucket)."""

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def same_location(self, other: Backend) -> bool:
        return self.scheme == other.scheme and self.root.rstrip("/") == other.root.rstrip("/")

    def inside(self, other: Backend) -> bool:
        """Whether this store lies inside the other one's root."""
        return self.scheme == other.scheme and self.root.startswith(other.root.rstrip("/") + "/")

    # -- key I/O --------------------------------------------------------------------------
    def list(self) -> dict[str, Entry]:
        """Every key under the root with its size (and MD5 where the listing gives it)."""
        with self.errors():
            self.fs.invalidate_cache()
            try:
                found = self.fs.find(self.root, detail=True)
            except FileNotFoundError as e:
                if "bucket" in str(e).lower():
                    raise
                return {}
            prefix = self.root + "/"
            return {name[len(prefix):]: Entry(int(info.get("size") or 0), plain_md5(info.get("ETag")))
                    for name, info in found.items() if name.startswith(prefix) and info.get("type") != "directory"}

    def read(self, key: str) -> bytes:
        with self.errors():
            return self.fs.cat_file(self.path(key))

    def md5(self, key: str, entry: Entry) -> str:
        return entry.md5 or hashlib.md5(self.read(key)).hexdigest()

    def write(self, key: str, data: bytes, md5: str) -> None:
        """Write ``data`` (atomically where the storage can) and check that the stored bytes have the given MD5."""
        failpoints.hit(failpoints.WRITE)
        with self.errors():
            stored = self._put(key, data, md5)
        if stored != md5:
            raise StoreError(f"verification failed: {key} at {redact(self.url)} does not hold the bytes sent; "
                             f"rerun the copy")

    def _put(self, key: str, data: bytes, md5: str) -> str:
        """Store the bytes; return the MD5 of what the storage now holds."""
        self.fs.pipe_file(self.path(key), data)
        return hashlib.md5(self.read(key)).hexdigest()

    def delete(self, keys: list[str]) -> None:
        """Remove the keys (a no-op for none)."""
        if not keys:
            return
        failpoints.hit(failpoints.WRITE)
        with self.errors():
            self._remove(keys)

    def _remove(self, keys: list[str]) -> None:
        self.fs.rm([self.path(k) for k in keys])

    def modified(self, key: str) -> float | None:
        """When KEY was last written (seconds since the epoch), or None where it cannot be told."""
        try:
            info = self.fs.info(self.path(key))
        except Exception:
            return None
        mtime = info.get("LastModified") or info.get("mtime")
        if mtime is None:
            return None
        return mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime)

    # -- compare-and-swap -----------------------------------------------------------------
    def versioned(self, key: str) -> VersionedObject:
        """Compare-and-swap access to the small object at KEY."""
        return VersionedObject(self, key)


class LocalBackend(Backend):
    """A folder on local disk: writes go to a temporary name and are renamed into place (with
    fsync); a symbolic link inside the store is refused, never followed."""

    def list(self) -> dict[str, Entry]:
        with self.errors():
            out: dict[str, Entry] = {}
            if not os.path.isdir(self.root):
                if os.path.exists(self.root):
                    raise StoreError(f"{self.url} is a file, not a store directory")
                return out
            for dirpath, dirs, files in os.walk(self.root):  # never descends into a linked folder
                for name in sorted(dirs + files):
                    full = os.path.join(dirpath, name)
                    if os.path.islink(full):  # its target may be outside the store: never followed
                        raise StoreError(self._link_error(full))
                for name in files:
                    full = os.path.join(dirpath, name)
                    key = os.path.relpath(full, self.root).replace(os.sep, "/")
                    out[key] = Entry(os.path.getsize(full), None)
            return out

    def _link_error(self, path: str) -> str:
        rel = os.path.relpath(path, self.root).replace(os.sep, "/")
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return (f"{redact(self.url)}: {rel} is a symbolic link (to {target}); kisstore copy does not follow "
                f"links inside a store: replace it with the file or folder itself")

    def _local_path(self, key: str) -> str:
        """``root/key``, refused where a folder on the way is a link (the key itself is checked by the caller)."""
        path = self.path(key)
        current = self.root
        for part in key.split("/")[:-1]:
            current = os.path.join(current, part)
            if os.path.islink(current):
                raise StoreError(self._link_error(current))
        real_root = os.path.realpath(self.root)
        if os.path.commonpath([real_root, os.path.realpath(os.path.dirname(path))]) != real_root:
            raise StoreError(f"{redact(self.url)}: key {key!r} leads outside the store; nothing written there")
        return path

    def read(self, key: str) -> bytes:
        with self.errors():
            try:  # O_NOFOLLOW: a file replaced by a link since the listing is not followed either
                fd = os.open(self._local_path(key), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            except OSError as e:
                if os.path.islink(self.path(key)):
                    raise StoreError(self._link_error(self.path(key))) from e
                raise
            with os.fdopen(fd, "rb") as f:
                return f.read()

    def _put(self, key: str, data: bytes, md5: str) -> str:
        path = self.path(key)
        os.makedirs(os.path.dirname(self._local_path(key)), exist_ok=True)
        self._local_path(key)  # again, now that the folders exist
        tmp = f"{path}{TMP_SUFFIX}{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return hashlib.md5(self.read(key)).hexdigest()

    def _remove(self, keys: list[str]) -> None:
        for key in keys:
            try:
                os.remove(self._local_path(key))
            except FileNotFoundError:
                pass
        _remove_empty_dirs(self.root)

    def modified(self, key: str) -> float | None:
        try:
            return os.path.getmtime(self.path(key))
        except OSError:
            return None

    def versioned(self, key: str) -> VersionedObject:
        return FlockedObject(self, key) if os.name == "posix" else VersionedObject(self, key)


class S3Backend(Backend):
    """S3 and S3-compatible servers: uploads checked by the server (Content-MD5, the ETag back),
    conditional PUTs for compare-and-swap."""

    def check_bucket(self) -> None:
        bucket = self.root.split("/", 1)[0]
        with self.errors():
            try:
                self.fs.call_s3("head_bucket", Bucket=bucket)
            except FileNotFoundError as e:
                raise missing_bucket_error(self.url) from e

    def _put(self, key: str, data: bytes, md5: str) -> str:
        # one PUT below s3fs's multipart threshold: the server checks Content-MD5 and returns the
        # MD5 as ETag; a multipart upload's ETag is not an MD5: read it back
        single = len(data) < _S3_SINGLE_PUT_LIMIT
        kw = {"ContentMD5": base64.b64encode(bytes.fromhex(md5)).decode()} if single else {}
        out = self.fs.pipe_file(self.path(key), data, **kw)
        return plain_md5((out or {}).get("ETag")) or hashlib.md5(self.read(key)).hexdigest()

    def versioned(self, key: str) -> VersionedObject:
        return ConditionalObject(self, key)


def plain_md5(etag: Any) -> str | None:
    """An ETag that is a plain MD5 (a single-part upload's), else None."""
    if not isinstance(etag, str):
        return None
    etag = etag.strip('"').lower()
    return etag if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag) else None


def _remove_empty_dirs(root: str) -> None:
    for dirpath, _, _ in sorted(os.walk(root), key=lambda t: -t[0].count(os.sep)):
        if dirpath != root:
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


# -- compare-and-swap on one object -------------------------------------------------------
class VersionedObject:
    """Any fsspec filesystem: plain writes, checked but not atomic. ``read_back``: a writer must
    wait and read its write back to know that no rival's write replaced it."""

    read_back = True

    def __init__(self, backend: Backend, key: str):
        self.backend, self.key = backend, key

    def read(self) -> tuple[bytes | None, Any]:
        """The object's bytes and their version (None, None when absent)."""
        try:
            data = self.backend.fs.cat_file(self.backend.path(self.key))
        except FileNotFoundError:
            data = None
        return data, data

    def create(self, data: bytes) -> Any:
        """Write the object if absent; return its new version, or None if it existed."""
        failpoints.hit(failpoints.WRITE)
        self.backend.fs.pipe_file(self.backend.path(self.key), data)
        return data

    def replace(self, data: bytes, version: Any) -> Any:
        """Write the object if it still holds VERSION; return the new version, or None."""
        return self.create(data) if self.read()[0] == version else None  # checked, but not atomically

    def delete(self, version: Any) -> None:
        """Remove the object if it still holds VERSION."""
        failpoints.hit(failpoints.WRITE)
        with contextlib.suppress(FileNotFoundError):
            self.backend.fs.rm_file(self.backend.path(self.key))


# what flock raises where the file system cannot lock (NFS emulating it with byte-range locks on a
# descriptor not open for writing, Lustre without -o flock, …): the object then falls back to read-back
_NO_FLOCK = {errno.EBADF, errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


class FlockedObject(VersionedObject):
    """Local disk: create and replace are checked and done under an exclusive ``flock`` of the
    store's folder (held for microseconds); the file itself is written to a temporary name and
    renamed, so a reader never sees half of it. Its folder is created and removed only under the flock."""

    read_back = False  # becomes True where the file system cannot flock

    def __init__(self, backend: Backend, key: str):
        super().__init__(backend, key)
        self.root = backend.root
        self.path = os.path.join(self.root, key)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        import fcntl

        os.makedirs(self.root, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:
                if e.errno not in _NO_FLOCK:
                    raise
                self.read_back = True  # no mutual exclusion here: the writer reads its write back
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def read(self) -> tuple[bytes | None, Any]:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = None
        return data, data

    def _put(self, data: bytes) -> bytes:
        failpoints.hit(failpoints.WRITE)
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # only left when the write failed (a full disk)
        return data

    def create(self, data: bytes) -> Any:
        with self._exclusive():
            return None if os.path.exists(self.path) else self._put(data)

    def replace(self, data: bytes, version: Any) -> Any:
        with self._exclusive():
            return self._put(data) if self.read()[0] == version else None

    def delete(self, version: Any) -> None:
        with self._exclusive():
            if self.read()[0] == version:
                os.unlink(self.path)
            with contextlib.suppress(OSError):  # other objects in the folder keep it
                os.rmdir(os.path.dirname(self.path))


class ConditionalObject(VersionedObject):
    """S3: conditional PUTs, the object's ETag as its version. The read-back stays, for
    S3-compatible servers that ignore the conditions."""

    _LOST = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404")

    def __init__(self, backend: Backend, key: str):
        super().__init__(backend, key)
        self.fs = backend.fs
        self.bucket, self.object_key, _ = self.fs.split_path(backend.path(key))
        # s3fs drops the parameters its botocore does not know: without these the PUTs would be
        # unconditional, silently; then only the read-back guards the object
        self.conditional = _botocore_knows("PutObject", ("IfNoneMatch", "IfMatch"))

    def _call(self, method: str, **kw) -> dict | None:
        """The S3 call's response, or None when its condition failed (another writer won)."""
        if method not in ("get_object", "head_object"):
            failpoints.hit(failpoints.WRITE)
        try:
            return self._run(self.fs._call_s3, method, Bucket=self.bucket, Key=self.object_key, **kw)
        except (OSError, ValueError) as e:
            cause = e.__cause__ if e.__cause__ is not None else e
            code = str(getattr(cause, "response", {}).get("Error", {}).get("Code", ""))
            if code in self._LOST or isinstance(e, FileExistsError):
                return None
            raise

    def read(self) -> tuple[bytes | None, Any]:
        async def get() -> tuple[bytes, Any]:
            out = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.object_key)
            async with out["Body"] as stream:
                return await stream.read(), out["ETag"]

        try:
            return self._run(get)
        except FileNotFoundError:
            return None, None

    def _run(self, coroutine_function, *args, **kw):
        """Run one of s3fs's coroutines on the filesystem's own event loop."""
        from fsspec.asyn import sync

        return sync(self.fs.loop, coroutine_function, *args, **kw)

    def create(self, data: bytes) -> Any:
        if not self.conditional:
            return None if self.read()[0] is not None else self._call("put_object", Body=data)["ETag"]
        out = self._call("put_object", Body=data, IfNoneMatch="*")
        return None if out is None else out["ETag"]

    def replace(self, data: bytes, version: Any) -> Any:
        if not self.conditional:
            return None if self.read()[1] != version else self._call("put_object", Body=data)["ETag"]
        out = self._call("put_object", Body=data, IfMatch=version)
        return None if out is None else out["ETag"]

    def delete(self, version: Any) -> None:
        if self.read()[1] == version:  # servers without conditional DELETE: checked first
            self._call("delete_object", IfMatch=version)


def _botocore_knows(operation: str, params: tuple[str, ...]) -> bool:
    try:
        import botocore.session

        members = botocore.session.get_session().get_service_model("s3").operation_model(operation).input_shape.members
    except Exception:  # no botocore model to ask: assume the worst
        return False
    return all(p in members for p in params)
