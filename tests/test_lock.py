"""The writer's lease: compare-and-swap on local disk (flock) and on S3 (conditional PUTs)."""

from __future__ import annotations

import json
import threading

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
    data, _ = lockmod._backend(store, f"{lockmod.LOCK_DIR}/{model}.json").read()
    return None if data is None else json.loads(data)


def test_backend_create_and_replace_are_compare_and_swap(store):
    b = lockmod._backend(store, f"{lockmod.LOCK_DIR}/m.json")
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


def test_a_lease_deleted_under_its_writer_is_taken_again_at_renewal(store):
    first = ModelLock(store, "m", ttl=60)
    first.acquire()
    data, version = first.backend.read()
    first.backend.delete(version)  # e.g. someone removed the lease folder by hand
    assert _lease_of(store) is None
    first.renew()
    first.check()
    assert _lease_of(store)["token"] == first.owner["token"]
    with pytest.raises(StoreError, match="being written by another process"):
        ModelLock(store, "m", ttl=60).acquire()
    first.release()
    assert _lease_of(store) is None


def test_an_extraction_that_loses_its_lease_stops_before_writing(tiny_models, tiny_items, tiny_corpus, tmp_path,
                                                                 monkeypatch):
    """Another writer breaks the lease right after this run took it: the run's first write is
    refused, nothing of the model is written, and the other writer's lease stays."""
    url = str(tmp_path / "s.zarr")
    real_acquire = ModelLock.acquire
    thieves = []

    def acquire_then_lose(self):
        real_acquire(self)
        thief = ModelLock(Store(url), self.model_id, break_lock=True)
        real_acquire(thief)
        thieves.append(thief)
        self.renew()  # the background renewal, run now instead of after ttl/3

    monkeypatch.setattr(ModelLock, "acquire", acquire_then_lose)
    opts = ExtractOptions(models=[str(tiny_models["llama"])], store=url, items=str(tiny_items),
                          corpus=str(tiny_corpus), progress=False)
    with pytest.raises(StoreError, match="took this run's write lease"):
        run_extract(opts)
    store = Store(url)
    assert not store.has(layout.MODELS)
    ckpt = layout.checkpoint_path(thieves[0].model_id)
    assert not store.group_attrs(ckpt).get("items_done")  # the item pass's keys were not written
    assert not store.has(f"{ckpt}/items_keys")
    assert _lease_of(store, thieves[0].model_id)["token"] == thieves[0].owner["token"]
    thieves[0].release()
