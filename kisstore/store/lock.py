"""A writer's lease on one model of a store, as an object in the store itself.

It works wherever the store does (local disk, S3): ``/.kisstore-locks/<model>.json`` holds
the owner (host, pid, a random token) and an expiry that a background thread renews. A
second writer is refused while the lease is live; a lease whose owner died is recoverable:
on the same host a dead pid frees it at once, elsewhere it expires after ``ttl`` seconds
(or ``--break-lock`` takes it).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from kisstore.errors import StoreError
from kisstore.store import layout
from kisstore.store.io import Store, _sync, storage_errors

LOCK_DIR = layout.LOCKS
DEFAULT_TTL = 600.0


def _buffer(data: bytes):
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype().buffer.from_bytes(data)


class ModelLock:
    def __init__(self, store: Store, model_id: str, ttl: float = DEFAULT_TTL, break_lock: bool = False):
        self.store = store
        self.key = f"{LOCK_DIR}/{model_id}.json"
        self.model_id = model_id
        self.ttl = ttl
        self.break_lock = break_lock
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- raw I/O ----------------------------------------------------------------------------
    def _read(self) -> dict[str, Any] | None:
        from zarr.core.buffer import default_buffer_prototype

        with storage_errors(self.store.url, self.store.storage_options):
            buf = _sync(self.store.zstore.get(self.key, prototype=default_buffer_prototype()))
        if buf is None:
            return None
        try:
            return json.loads(buf.to_bytes())
        except (ValueError, UnicodeDecodeError):
            return {"corrupt": True, "expires": 0}

    def _write(self) -> None:
        body = {**self.owner, "model": self.model_id, "expires": time.time() + self.ttl,
                "since": getattr(self, "since", time.time())}
        with storage_errors(self.store.url, self.store.storage_options):
            _sync(self.store.zstore.set(self.key, _buffer(json.dumps(body).encode())))

    # -- protocol ---------------------------------------------------------------------------
    def _free(self, lease: dict[str, Any] | None) -> bool:
        if lease is None or lease.get("corrupt") or lease.get("expires", 0) < time.time():
            return True
        if lease.get("token") == self.owner["token"]:
            return True
        if lease.get("host") == self.owner["host"] and not _pid_alive(int(lease.get("pid", -1))):
            return True  # its process died on this machine
        return self.break_lock

    def acquire(self) -> None:
        lease = self._read()
        if not self._free(lease):
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.get("since", 0)))
            raise StoreError(
                f"model {self.model_id!r} in {self.store.url} is being written by another process "
                f"(host {lease.get('host')}, pid {lease.get('pid')}, since {since}); wait for it, or if it is "
                f"dead, rerun after its lease expires ({int(lease['expires'] - time.time())} s) or with --break-lock"
            )
        self.since = time.time()
        self._write()
        time.sleep(0.2)  # a rival that wrote at the same moment: the last writer wins, the other backs off
        if (self._read() or {}).get("token") != self.owner["token"]:
            raise StoreError(f"model {self.model_id!r} in {self.store.url}: another process took the write lock")
        self._thread = threading.Thread(target=self._renew, daemon=True, name="kisstore-lease")
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._write()
            except Exception:  # a storage hiccup: the next renewal tries again
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            lease = self._read()
            if lease is not None and lease.get("token") == self.owner["token"]:
                with storage_errors(self.store.url, self.store.storage_options):
                    _sync(self.store.zstore.delete(self.key))
                    if self.store.scheme == "file":
                        try:
                            os.rmdir(os.path.join(str(self.store.zstore.root), LOCK_DIR))
                        except OSError:
                            pass
        except Exception:
            pass

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
