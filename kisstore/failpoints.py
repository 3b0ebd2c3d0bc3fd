"""Named points where a test can make the process die for real (crash-safety tests).

``KISSTORE_FAILPOINT=name[:n]`` sends SIGKILL to this process the n-th time (default 1st)
execution reaches ``hit(name)``. Unset, ``hit`` costs one dictionary lookup.

The name ``write`` counts every write to a store: each ``set``/``delete``/``delete_dir`` of
zarr's local and fsspec stores (patched by :func:`watch_store_writes` when the variable asks
for it) and kisstore's own writes beside them (leases, copies, renames). So
``KISSTORE_FAILPOINT=write:n`` kills a command just before its n-th write, and a test can kill
it once at every write position in turn (``tests/test_kill_everywhere.py``).
"""

from __future__ import annotations

import os
import signal
import threading

_counts: dict[str, int] = {}
_lock = threading.Lock()
WRITE = "write"


def hit(name: str) -> None:
    spec = os.environ.get("KISSTORE_FAILPOINT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    with _lock:  # the writes of one command come from several threads (Dask, the copy's pool)
        _counts[name] = _counts.get(name, 0) + 1
        count = _counts[name]
    if count >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def pause(name: str) -> None:
    """``KISSTORE_PAUSE=name:seconds`` makes the process wait there (to line up two processes
    at one step in concurrency tests)."""
    spec = os.environ.get("KISSTORE_PAUSE")
    if spec and spec.partition(":")[0] == name:
        import time

        time.sleep(float(spec.partition(":")[2] or 1))


def watching_writes() -> bool:
    return os.environ.get("KISSTORE_FAILPOINT", "").partition(":")[0] == WRITE


_patched = False


def watch_store_writes() -> None:
    """Make every write of zarr's stores pass through ``hit("write")`` (only when asked for)."""
    global _patched
    if _patched or not watching_writes():
        return
    from zarr.storage import FsspecStore, LocalStore

    async def changes(self, name, key) -> bool:
        """Whether the call writes anything: creating a key that exists, or deleting one that
        does not, changes nothing (zarr makes many such calls), so it is no write position."""
        if name == "set_if_not_exists":
            return not await self.exists(key)
        if name == "delete":
            return await self.exists(key)
        if name == "delete_dir":
            async for _ in self.list_prefix(key.rstrip("/") + "/" if key else ""):
                return True
            return False
        return True

    def wrap(cls, name):
        original = getattr(cls, name)

        async def counted(self, key, *args, **kwargs):
            if await changes(self, name, key):
                hit(WRITE)
            return await original(self, key, *args, **kwargs)

        setattr(cls, name, counted)

    for cls in (LocalStore, FsspecStore):
        for name in ("set", "set_if_not_exists", "delete", "delete_dir"):
            if name in cls.__dict__:
                wrap(cls, name)
    _patched = True
