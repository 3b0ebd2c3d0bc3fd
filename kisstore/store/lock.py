"""A writer's lease on one model of a store, as an object in the store itself.

It works wherever the store does (local disk, S3): ``/.kisstore-locks/<model>.json`` holds
the owner (host, pid, a random token) and an expiry that a background thread renews. A
second writer is refused while the lease is live; a lease whose owner died is recoverable:
on the same host a dead pid frees it at once, elsewhere it expires after ``ttl`` seconds
(or ``--break-lock`` takes it).

Every change of the lease object is a compare-and-swap, so two writers can never both hold
it: on S3 a conditional PUT (``If-None-Match: *`` to create it, ``If-Match: <ETag>`` to
replace the version that was read); on local disk the same two operations under an exclusive
``flock`` of the store's folder. Other fsspec filesystems fall back to write, wait, read back.
A writer whose lease was taken from it (``--break-lock`` elsewhere) finds out at its next
renewal and stops before writing anything more (:meth:`ModelLock.check`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from kisstore.errors import StoreError
from kisstore.store import layout
from kisstore.store.io import Store, _sync, storage_errors

LOCK_DIR = layout.LOCKS
DEFAULT_TTL = 600.0


def _buffer(data: bytes):
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype().buffer.from_bytes(data)


def _decode(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        lease = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        lease = None
    return lease if isinstance(lease, dict) else {"corrupt": True, "expires": 0}


class _ReadBack:
    """Any fsspec store: plain writes, made safe only by waiting and reading back (not atomic)."""

    read_back = True  # after taking the lease, wait and check that no rival's write replaced ours

    def __init__(self, store: Store, key: str):
        self.store, self.key = store, key

    def read(self) -> tuple[bytes | None, Any]:
        from zarr.core.buffer import default_buffer_prototype

        buf = _sync(self.store.zstore.get(self.key, prototype=default_buffer_prototype()))
        data = None if buf is None else buf.to_bytes()
        return data, data

    def create(self, data: bytes) -> Any:
        _sync(self.store.zstore.set(self.key, _buffer(data)))
        return data

    def replace(self, data: bytes, version: Any) -> Any:
        return self.create(data) if self.read()[0] == version else None  # checked, but not atomically

    def delete(self, version: Any) -> None:
        _sync(self.store.zstore.delete(self.key))


class _Local(_ReadBack):
    """Local disk: create and replace are checked and done under an exclusive ``flock`` of the
    store's folder (held for microseconds, never for the lease's lifetime); the file itself is
    written to a temporary name and renamed, so a reader never sees half of it."""

    read_back = False

    def __init__(self, store: Store, key: str):
        super().__init__(store, key)
        self.root = str(store.zstore.root)
        self.path = os.path.join(self.root, key)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
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
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path)
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
            with contextlib.suppress(OSError):  # other models' leases keep the folder
                os.rmdir(os.path.dirname(self.path))


class _S3(_ReadBack):
    """S3: conditional PUTs, the object's ETag as its version. The read-back stays, for
    S3-compatible servers that ignore the conditions."""
    _LOST = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404")

    def __init__(self, store: Store, key: str):
        super().__init__(store, key)
        fs = store.zstore.fs
        self.fs = fs
        self.bucket, self.object_key, _ = fs.split_path(f"{store.zstore.path}/{key}")

    def _call(self, method: str, **kw) -> dict | None:
        """The S3 call's response, or None when its condition failed (another writer won)."""
        try:
            return _sync(self.fs._call_s3(method, Bucket=self.bucket, Key=self.object_key, **kw))
        except (OSError, ValueError) as e:
            cause = e.__cause__ if e.__cause__ is not None else e
            code = str(getattr(cause, "response", {}).get("Error", {}).get("Code", ""))
            if code in self._LOST or isinstance(e, FileExistsError):
                return None
            raise

    def read(self) -> tuple[bytes | None, Any]:
        try:
            out = _sync(self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.object_key))
        except FileNotFoundError:
            return None, None

        async def body() -> bytes:
            async with out["Body"] as stream:
                return await stream.read()

        return _sync(body()), out["ETag"]

    def create(self, data: bytes) -> Any:
        out = self._call("put_object", Body=data, IfNoneMatch="*")
        return None if out is None else out["ETag"]

    def replace(self, data: bytes, version: Any) -> Any:
        out = self._call("put_object", Body=data, IfMatch=version)
        return None if out is None else out["ETag"]

    def delete(self, version: Any) -> None:
        self._call("delete_object", IfMatch=version)


def _backend(store: Store, key: str) -> _ReadBack:
    if store.scheme == "file" and os.name == "posix":
        return _Local(store, key)
    if store.scheme == "s3":
        return _S3(store, key)
    return _ReadBack(store, key)


class ModelLock:
    def __init__(self, store: Store, model_id: str, ttl: float = DEFAULT_TTL, break_lock: bool = False):
        self.store = store
        self.key = f"{LOCK_DIR}/{model_id}.json"
        self.model_id = model_id
        self.ttl = ttl
        self.break_lock = break_lock
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self.backend = _backend(store, self.key)
        self.lost_to: dict[str, Any] | None = None  # the lease that replaced ours, once seen
        self._version: Any = None  # what our last write left there (bytes or ETag)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({**self.owner, "model": self.model_id, "expires": time.time() + self.ttl,
                           "since": getattr(self, "since", time.time())}).encode()

    def _io(self):
        return storage_errors(self.store.url, self.store.storage_options)

    # -- protocol ---------------------------------------------------------------------------
    def _free(self, lease: dict[str, Any] | None) -> bool:
        if lease is None or lease.get("corrupt") or lease.get("expires", 0) < time.time():
            return True
        if lease.get("token") == self.owner["token"]:
            return True
        if lease.get("host") == self.owner["host"] and not _pid_alive(int(lease.get("pid", -1))):
            return True  # its process died on this machine
        return self.break_lock

    def _busy(self, lease: dict[str, Any]) -> StoreError:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.get("since", 0)))
        return StoreError(
            f"model {self.model_id!r} in {self.store.url} is being written by another process "
            f"(host {lease.get('host')}, pid {lease.get('pid')}, since {since}); wait for it, or if it is "
            f"dead, rerun after its lease expires ({int(lease['expires'] - time.time())} s) or with --break-lock"
        )

    def acquire(self) -> None:
        self.since = time.time()
        with self._io():
            for _ in range(5):  # each retry follows another writer's change between our read and write
                data, version = self.backend.read()
                lease = _decode(data)
                if not self._free(lease):
                    raise self._busy(lease)
                if data is None:
                    self._version = self.backend.create(self._body())
                else:
                    self._version = self.backend.replace(self._body(), version)
                if self._version is not None:
                    break
            else:
                raise StoreError(f"model {self.model_id!r} in {self.store.url}: another process took the write lock")
            if self.backend.read_back:
                time.sleep(0.2)  # a rival that wrote at the same moment: the last writer wins, the other backs off
                if (_decode(self.backend.read()[0]) or {}).get("token") != self.owner["token"]:
                    raise StoreError(f"model {self.model_id!r} in {self.store.url}: another process took the write lock")
        self._thread = threading.Thread(target=self._renew, daemon=True, name="kisstore-lease")
        self._thread.start()

    def renew(self) -> None:
        """Extend the lease, or note that another writer has taken it (see :meth:`check`)."""
        with self._io():
            version = self.backend.replace(self._body(), self._version)
            if version is None:
                data, current = self.backend.read()
                lease = _decode(data)
                if data is None:  # deleted under us (not taken): take it again, unless a rival just did
                    version = self.backend.create(self._body())
                elif lease.get("token") == self.owner["token"]:
                    version = current  # still ours (a conflicting request, not a takeover): renewed next time
            if version is not None:
                self._version = version
                return
            self.lost_to = _decode(self.backend.read()[0]) or {}
        self._stop.set()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except Exception:  # a storage hiccup: the next renewal tries again
                pass

    def check(self) -> None:
        """Raise if another writer took this lease (``--break-lock``): write nothing more."""
        if self.lost_to is not None:
            who = self.lost_to
            raise StoreError(
                f"model {self.model_id!r} in {self.store.url}: another process took this run's write lease "
                f"(host {who.get('host')}, pid {who.get('pid')}, e.g. with --break-lock); stopped without "
                "writing more. What was checkpointed stays; rerun once that writer has finished")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost_to is not None:
            return
        with contextlib.suppress(Exception), self._io():
            data, version = self.backend.read()
            if (_decode(data) or {}).get("token") == self.owner["token"]:
                self.backend.delete(version)

    def __enter__(self) -> ModelLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
