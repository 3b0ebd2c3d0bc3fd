"""The writer's lease: compare-and-swap on local disk (flock) and on S3 (conditional PUTs)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from kisstore.errors import StoreError
from kisstore.extract import ExtractOptions, run_extract
from kisstore.store import layout
from kisstore.store import lock as lockmod
from kisstore.store.io import Store
from kisstore.store.lock import ModelLock
from tests.s3server import s3_server  # noqa: F401


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return Store(str(tmp_path / "s.zarr"))
    server = request.getfixturevalue("s3_server")
    return Store(server.url("s.zarr"), server.options)


def _lease_of(store: Store, model: str = "m") -> dict | None:
    data, _ = store.backend.versioned(f"{lockmod.LOCK_DIR}/{model}.json").read()
    return None if data is None else json.loads(data)


def test_backend_create_and_replace_are_compare_and_swap(store):
    b = store.backend.versioned(f"{lockmod.LOCK_DIR}/m.json")
    assert b.read() == (None, None)
    v1 = b.create(b"first")
    assert v1 is not None and b.read() == (b"first", v1)
    assert b.create(b"second") is None  # exists: not overwritten
    assert b.read()[0] == b"first"
    v2 = b.replace(b"third", v1)
    assert v2 is not None and b.read() == (b"third", v2)
    assert b.replace(b"fourth", v1) is None  # v1 is no longer what is stored
    assert b.read()[0] == b"third"
    b.delete(v1)  # stale version: not deleted
    assert b.read()[0] == b"third"
    b.delete(v2)
    assert b.read() == (None, None)


def test_of_many_simultaneous_writers_exactly_one_gets_the_lease(store):
    n = 6
    start = threading.Barrier(n)
    won, refused = [], []

    def writer(i):
        lk = ModelLock(store, "m", ttl=60)
        start.wait()
        try:
            lk.acquire()
            won.append(lk)
        except StoreError as e:
            refused.append(str(e))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == n - 1, refused
    assert all("another process" in msg for msg in refused)
    assert _lease_of(store)["token"] == won[0].owner["token"]
    won[0].release()
    assert _lease_of(store) is None


def test_a_writer_whose_lease_was_broken_notices_and_leaves_the_new_lease(store):
    first = ModelLock(store, "m", ttl=60)
    first.acquire()
    with pytest.raises(StoreError, match="being written by another process"):
        ModelLock(store, "m", ttl=60).acquire()  # live: refused
    thief = ModelLock(store, "m", ttl=60, break_lock=True)
    thief.acquire()
    first.check()  # not noticed before the next renewal
    first.renew()
    with pytest.raises(StoreError, match="took this run's write lease") as e:
        first.check()
    assert str(thief.owner["pid"]) in str(e.value)
    first.release()
    assert _lease_of(store)["token"] == thief.owner["token"]  # the thief's lease survives
    thief.renew()
    thief.check()
    thief.release()
    assert _lease_of(store) is None


def test_a_lease_deleted_under_its_writer_counts_as_lost(store):
    """A writer that broke the lease may have released it since: a vanished lease is not re-taken."""
    first = ModelLock(store, "m", ttl=60)
    first.acquire()
    thief = ModelLock(store, "m", ttl=60, break_lock=True)
    thief.acquire()
    thief.release()  # broke it, wrote, and left
    assert _lease_of(store) is None
    first.renew()
    with pytest.raises(StoreError, match="deleted from the store by another process"):
        first.check()
    assert _lease_of(store) is None  # not re-created
    first.release()


def test_a_writer_that_cannot_renew_stops_before_its_lease_may_have_expired(store):
    lk = ModelLock(store, "m", ttl=1.2)
    lk.acquire()
    lk.check()
    lk._stop.set()  # renewals stop, as when the storage is unreachable
    lk._thread.join()
    time.sleep(1.1)  # past expiry − ttl/6
    with pytest.raises(StoreError, match="could not renew its write lease"):
        lk.check()
    lk.release()


@pytest.mark.parametrize("body", [
    {"expires": None}, {"expires": "soon"}, {"expires": True}, {"pid": "x"}, {"since": "yesterday"},
    {"host": 7}, {"token": ["t"]},
])
def test_a_lease_kisstore_could_not_have_written_counts_as_corrupt_and_free(store, body):
    b = store.backend.versioned(f"{lockmod.LOCK_DIR}/m.json")
    lease = {"host": "elsewhere", "pid": 1, "token": "t", "expires": time.time() + 600, "since": 0, **body}
    b.create(json.dumps(lease).encode())
    lk = ModelLock(store, "m", ttl=60)
    lk.acquire()
    assert _lease_of(store)["token"] == lk.owner["token"]
    lk.release()


def test_s3_without_conditional_writes_keeps_the_compare_and_swap_semantics_sequentially(s3_server):  # noqa: F811
    """A botocore too old for If-None-Match/If-Match: s3fs would drop them silently, so kisstore
    checks first and relies on the read-back for simultaneous writers."""
    store = Store(s3_server.url("s.zarr"), s3_server.options)
    b = store.backend.versioned(f"{lockmod.LOCK_DIR}/m.json")
    assert b.conditional  # this environment's botocore knows them
    b.conditional = False
    v1 = b.create(b"first")
    assert v1 is not None and b.create(b"second") is None and b.read()[0] == b"first"
    v2 = b.replace(b"third", v1)
    assert v2 is not None and b.replace(b"fourth", v1) is None and b.read()[0] == b"third"
    b.delete(v1)
    assert b.read()[0] == b"third"
    b.delete(v2)
    assert b.read() == (None, None)


_RACER = """
import sys, time
from kisstore.errors import StoreError
from kisstore.store.io import Store
from kisstore.store.lock import ModelLock
lk = ModelLock(Store(sys.argv[1]), "m", ttl=60)
while time.time() < float(sys.argv[2]):
    pass
try:
    lk.acquire()
except StoreError:
    print("refused")
else:
    print("won")
    time.sleep(2)  # hold it while the others try
    lk.release()
"""


def test_of_many_processes_starting_together_exactly_one_gets_the_lease(tmp_path):
    url = str(tmp_path / "s.zarr")
    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, url, str(start)], stdout=subprocess.PIPE, text=True)
             for _ in range(5)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(outs) == ["refused"] * 4 + ["won"], outs
    assert _lease_of(Store(url)) is None


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_extraction_that_loses_its_lease_stops_before_writing(overwrite, tiny_models, tiny_items, tiny_corpus,
                                                                 tmp_path, monkeypatch):
    """Another writer breaks the lease right after this run took it: the run writes nothing (no
    checkpoint; with --overwrite, the complete model is not removed), and the other's lease stays."""
    url = str(tmp_path / "s.zarr")
    opts = ExtractOptions(models=[str(tiny_models["llama"])], store=url, items=str(tiny_items),
                          corpus=str(tiny_corpus), progress=False, overwrite=overwrite)
    if overwrite:
        run_extract(opts)  # a complete model that the losing run must not remove
    real_acquire = ModelLock.acquire
    thieves = []

    def acquire_then_lose(self):
        real_acquire(self)
        thief = ModelLock(Store(url), self.model_id, break_lock=True)
        real_acquire(thief)
        thieves.append(thief)
        self.renew()  # the background renewal, run now instead of after ttl/3

    monkeypatch.setattr(ModelLock, "acquire", acquire_then_lose)
    store = Store(url)
    before = store.has(layout.model_path("llama"))
    with pytest.raises(StoreError, match="took this run's write lease"):
        run_extract(opts)
    assert store.has(layout.model_path("llama")) == before == overwrite
    assert not store.has(layout.checkpoint_path("llama"))
    assert _lease_of(store, "llama")["token"] == thieves[0].owner["token"]
    thieves[0].release()
