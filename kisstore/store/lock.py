"""A writer's lease on one model of a store, as an object in the store itself.

It works wherever the store does (local disk, S3): ``/.kisstore-locks/<model>.json`` holds
the owner (host, pid, a random token) and an expiry that a background thread renews. A
second writer is refused while the lease is live; a lease whose owner died is recoverable:
on the same host a dead pid frees it at once, elsewhere it expires after ``ttl`` seconds
(or ``--break-lock`` takes it; never from a writer alive on this host).

Every change of the lease object is a compare-and-swap, so two writers never take it at the
same time: on S3 a conditional PUT (``If-None-Match: *`` to create it, ``If-Match: <ETag>`` to
replace the version that was read); on local disk the same two operations under an exclusive
``flock`` of the store's folder (both in kisstore.store.backend). Where neither is available (a botocore without conditional
writes, a file system without flock such as some NFS mounts, other fsspec filesystems) the
lease falls back to write, wait, read back. A writer checks its lease before each write
(:meth:`ModelLock.check`): it stops once the lease was taken from it (``--break-lock``
elsewhere) or vanished, both seen at its next renewal, and once it could not renew for so long
that the lease may have expired and been taken legitimately.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import socket
import threading
import time
import uuid
from typing import Any

from kisstore.errors import StoreError
from kisstore.store import layout
from kisstore.store.io import Store, storage_errors

LOCK_DIR = layout.LOCKS
DEFAULT_TTL = 600.0


_CORRUPT = {"corrupt": True, "expires": 0}


def _number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _decode(data: bytes | None) -> dict[str, Any] | None:
    """The lease as a dict; a lease that is not one kisstore could have written counts as corrupt (free)."""
    if data is None:
        return None
    try:
        lease = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return dict(_CORRUPT)
    if not (isinstance(lease, dict) and _number(lease.get("expires")) and _number(lease.get("since", 0))
            and isinstance(lease.get("pid", 0), int) and not isinstance(lease.get("pid", 0), bool)
            and isinstance(lease.get("host", ""), str) and isinstance(lease.get("token", ""), str)):
        return dict(_CORRUPT)
    return lease


class ModelLock:
    def __init__(self, store: Store, model_id: str, ttl: float = DEFAULT_TTL, break_lock: bool = False):
        self.store = store
        self.key = f"{LOCK_DIR}/{model_id}.json"
        self.model_id = model_id
        self.ttl = ttl
        self.break_lock = break_lock
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self.backend = store.backend.versioned(self.key)  # compare-and-swap where the storage has it
        self.lost_to: dict[str, Any] | None = None  # the lease that replaced ours ({}: none left), once seen
        self._version: Any = None  # what our last write left there (bytes or ETag)
        self._expires = 0.0  # the expiry our last successful write of the lease recorded
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self, expires: float) -> bytes:
        return json.dumps({**self.owner, "model": self.model_id, "expires": expires,
                           "since": getattr(self, "since", time.time())}).encode()

    def _io(self):
        return storage_errors(self.store.url, self.store.storage_options)

    # -- protocol ---------------------------------------------------------------------------
    def _free(self, lease: dict[str, Any] | None) -> bool:
        if lease is None or lease.get("corrupt") or lease.get("expires", 0) < time.time():
            return True
        if lease.get("token") == self.owner["token"]:
            return True
        pid = int(lease.get("pid", -1))
        if lease.get("host") == self.owner["host"]:
            if not _pid_alive(pid):
                return True  # its process died on this machine
            if self.break_lock and pid != self.owner["pid"]:
                # a writer that is running here: --break-lock is for writers elsewhere or dead ones.
                # (The lease's pid is this process's own only when this process holds the other
                # lease itself, or its writer died and this process got its pid: breakable.)
                raise StoreError(
                    f"model {self.model_id!r} in {self.store.url}: --break-lock refused: the writer holding "
                    f"the lease is alive on this host ({lease.get('host')}, pid {pid}); stop it or wait for it "
                    f"(were that pid no longer the writer, the lease expires in "
                    f"{max(0, int(lease['expires'] - time.time()))} s)")
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
        taken = StoreError(f"model {self.model_id!r} in {self.store.url}: another process took the write lock")
        with self._io():
            for _ in range(5):  # each retry follows another writer's change between our read and write
                data, version = self.backend.read()
                lease = _decode(data)
                if not self._free(lease):
                    raise self._busy(lease)
                expires = time.time() + self.ttl
                body = self._body(expires)
                self._version = self.backend.create(body) if data is None else self.backend.replace(body, version)
                if self._version is not None:
                    self._expires = expires
                    break
            else:
                raise taken
            if self.backend.read_back:
                time.sleep(0.2)  # a rival that wrote at the same moment: the last writer wins, the other backs off
                if (_decode(self.backend.read()[0]) or {}).get("token") != self.owner["token"]:
                    raise taken
        self._thread = threading.Thread(target=self._renew, daemon=True, name="kisstore-lease")
        self._thread.start()

    def renew(self) -> None:
        """Extend the lease, or note that another writer has taken it or it vanished (see :meth:`check`)."""
        with self._io():
            expires = time.time() + self.ttl
            body = self._body(expires)
            version = self.backend.replace(body, self._version)
            if version is None:
                data, current = self.backend.read()
                if data is not None and (_decode(data) or {}).get("token") == self.owner["token"]:
                    version = self.backend.replace(body, current)  # ours still: a conflicting request, retried once
            if version is not None:
                self._version = version
                self._expires = expires
                return
            # taken (--break-lock), or deleted: a writer that broke it may have released it since,
            # so a vanished lease is not re-taken
            self.lost_to = _decode(self.backend.read()[0]) or {}
        self._stop.set()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except Exception:  # a storage hiccup: the next renewal tries again
                pass

    def check(self) -> None:
        """Raise unless this lease is certainly still ours: write nothing more then."""
        where = f"model {self.model_id!r} in {self.store.url}"
        after = "stopped without writing more. What was checkpointed stays; rerun once that writer has finished"
        if self.lost_to:
            who = self.lost_to
            raise StoreError(f"{where}: another process took this run's write lease (host {who.get('host')}, "
                             f"pid {who.get('pid')}, e.g. with --break-lock); {after}")
        if self.lost_to is not None:
            raise StoreError(f"{where}: this run's write lease was deleted from the store by another process; {after}")
        if time.time() > self._expires - self.ttl / 6:
            raise StoreError(f"{where}: this run could not renew its write lease for "
                             f"{time.time() - (self._expires - self.ttl):.0f} s (storage unreachable?), so it may "
                             f"have expired and another writer may hold it; {after}")

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
