"""Sharded corpus pass on a Dask cluster: K shards of whole document windows, merged exactly.

Shards are contiguous ranges of whole ``WINDOW``-document windows, so every batch a shard
forms is the batch a single process forms; only the float64 summation order of the final
merge differs. Each shard commits its partial sums and token count into the store
(``/_checkpoints/<model>/shards/<k>``) before reporting done; a rerun skips committed shards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kisstore import failpoints
from kisstore.errors import InputError, StoreError


@dataclass
class ShardTask:
    model: str
    model_id: str
    load: dict[str, Any]
    store: str
    storage_options: dict[str, Any]
    layers: list[int]
    corpus: str
    max_length: int
    batch_tokens: int
    budget: int | None
    index: int
    docs: tuple[int, int]
    n_shards: int
    extra: dict[str, Any] = field(default_factory=dict)
    cpu_kernels: str = "auto"
    compile: bool = False
    windows: list[str] = field(default_factory=list)  # the client's window digests up to this shard's end


def plan(n_docs: int, n_shards: int, window: int) -> list[tuple[int, int]]:
    """Split ``n_docs`` documents into at most ``n_shards`` ranges of whole windows."""
    if n_shards < 1:
        raise InputError(f"--shards must be at least 1, got {n_shards}")
    n_windows = -(-n_docs // window)
    k = max(1, min(n_shards, n_windows))
    bounds = [round(i * n_windows / k) * window for i in range(k + 1)]
    bounds[-1] = n_docs
    return [(bounds[i], min(bounds[i + 1], n_docs)) for i in range(k) if bounds[i] < n_docs]


def shard_path(model_id: str, index: int) -> str:
    from kisstore.store.layout import checkpoint_path

    return f"{checkpoint_path(model_id)}/shards/{index}"


def committed(store, task: ShardTask) -> bool:
    path = shard_path(task.model_id, task.index)
    if not store.has(path):
        return False
    from kisstore.extract.accumulate import LAYOUT

    a = store.group_attrs(path)
    # a shard of full d_ff × d_ff sums (an earlier kisstore's) is redone, never merged as packed ones
    return (a.get("done") is True and a.get("docs") == list(task.docs) and a.get("n_shards") == task.n_shards
            and a.get("sums_layout") == LAYOUT)


def changed_shards(store, tasks: list[ShardTask], window: int) -> None:
    """Refuse a rerun whose committed shards were read from other documents than today's corpus
    (their window digests differ from those the client just read); nothing is written before."""
    from kisstore.extract.covariance import WindowHasher

    now = tasks[0].windows if tasks else []
    for t in tasks:
        if len(t.windows) > len(now):
            now = t.windows
    stored = list(now)
    checked = 0
    for t in tasks:
        if not committed(store, t):
            continue
        have = store.group_attrs(shard_path(t.model_id, t.index)).get("windows")
        if have is None:
            continue  # committed by a kisstore that did not fingerprint the corpus
        first = t.docs[0] // window
        stored[first:first + len(have)] = have
        checked = max(checked, first + len(have))
    if stored != list(now):
        h = WindowHasher(stored, window=window)
        h.digests = list(now)
        raise h.changed(max(checked, len(stored)), "in the shards already committed")


def run_shard(task_dict: dict[str, Any]) -> dict[str, Any]:
    """Worker side: accumulate Σ k kᵀ over one shard's documents and commit it to the store."""
    import zarr

    from kisstore.data.corpus import resolve_corpus
    from kisstore.extract.accumulate import LAYOUT, SecondMoment
    from kisstore.extract.checkpoint import create_sums
    from kisstore.extract.covariance import WindowHasher, accumulate, corpus_batches
    from kisstore.extract.pipeline import layer_groups
    from kisstore.extract.prefetch import prefetch
    from kisstore.models.loading import load_model
    from kisstore.store.io import Store, storage_errors

    task = ShardTask(**{**task_dict, "docs": tuple(task_dict["docs"])})
    store = Store(task.store, task.storage_options)
    if committed(store, task):
        return {"index": task.index, "count": store.group_attrs(shard_path(task.model_id, task.index))["count"],
                "skipped": True}
    lm = load_model(task.model, **task.load)
    d = lm.d_ff
    corpus = resolve_corpus(task.corpus)
    start, stop = task.docs
    sums: dict[int, np.ndarray] = {}  # packed lower triangles (kisstore.extract.accumulate)
    count = 0
    from kisstore.extract.pipeline import default_budget, release_memory

    budget = task.budget if task.budget is not None else default_budget(lm, task.cpu_kernels, task.compile)
    windows: list[str] = []
    for group in layer_groups(task.layers, d, budget):
        moments = {layer: SecondMoment(d, lm.device, task.cpu_kernels) for layer in group}
        # every window read is checked against the client's digests: a corpus changed since it counted
        # the documents fails the shard (CorpusChanged) rather than adding other documents' keys
        hasher = WindowHasher(task.windows)
        batches = prefetch(corpus_batches(lm.tokenizer, corpus, max_length=task.max_length,
                                          batch_tokens=task.batch_tokens, token_cap=None, skip_docs=start,
                                          max_docs=stop - start, hasher=hasher))
        accumulate(lm, group, batches, moments, cpu_kernels=task.cpu_kernels, compile=task.compile)
        windows = hasher.digests[start // hasher.window:]
        for layer in group:
            sums[layer] = moments[layer].packed()
        count = moments[group[0]].count
    del lm, moments
    if task.compile:
        from kisstore.extract.hooks import release_compiled

        release_compiled()  # a long-lived worker runs shard after shard
    release_memory()  # the weights go before the next shard's model loads
    path = shard_path(task.model_id, task.index)
    store.check_links(path)  # mode "w" deletes what is there first
    with storage_errors(store.url, store.storage_options):
        g = zarr.open_group(store.zstore, path=path, mode="w")
        arr = create_sums(g, "sum", len(task.layers), d)
        for r, layer in enumerate(task.layers):
            arr[r] = sums[layer]
        g.attrs.update({"sums_layout": LAYOUT, "done": True, "count": int(count), "docs": [start, stop], "n_shards": task.n_shards,
                        "windows": windows})
    return {"index": task.index, "count": int(count), "skipped": False}


def connect(address: str | None):
    """A distributed Client for ``address`` (or $DASK_SCHEDULER_ADDRESS); clear error if unreachable."""
    import os

    from distributed import Client

    address = address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if not address:
        raise InputError("--shards needs a Dask cluster: pass --scheduler ADDR or set DASK_SCHEDULER_ADDRESS")
    try:
        # not the process's default: the shards go to it explicitly, and everything else (the
        # client's own store writes, a later analysis in the same process) stays local
        return Client(address, timeout="15s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise InputError(f"cannot reach the Dask scheduler at {address!r} ({type(e).__name__})") from None


def run_sharded(tasks: list[ShardTask], client, progress: bool = True) -> list[dict[str, Any]]:
    """Submit every uncommitted shard (GPU workers get one shard each via resources), wait, report."""
    from distributed import as_completed

    info = client.scheduler_info()
    has_gpu = any("GPU" in (w.get("resources") or {}) for w in info.get("workers", {}).values())
    futures = [
        client.submit(run_shard, asdict(t), key=f"kisstore-shard-{t.model_id}-{t.index}-of-{t.n_shards}",
                      retries=2, pure=False, resources={"GPU": 1} if has_gpu else None)
        for t in tasks
    ]
    results = []
    with client.as_current():  # as_completed asks for the current client; it is not the global default
        for fut in as_completed(futures):
            try:
                r = fut.result()
            except InputError:
                raise  # a shard that found the corpus changed under it (CorpusChanged): said as is
            except Exception as e:
                raise StoreError(f"a corpus shard failed after retries: {type(e).__name__}: {e}; rerun the "
                                 "same command to redo only the unfinished shards") from e
            if progress or r["skipped"]:
                print(f"  shard {r['index'] + 1}/{len(tasks)}: {r['count']} tokens"
                      + (" (already committed)" if r["skipped"] else ""), flush=True)
            results.append(r)
            failpoints.hit("shard_done")
    return sorted(results, key=lambda r: r["index"])


def merge(store, model_id: str, shards: list[tuple[int, int]], n_layers: int) -> tuple[list[np.ndarray], int]:
    """Exact merge: Σ over shards of the float64 partial sums (packed lower triangles, shard 0 first),
    one layer at a time, and the total token count."""
    import zarr

    from kisstore.extract.accumulate import LAYOUT

    groups = []
    count = 0
    for i in range(len(shards)):
        g = zarr.open_group(store.zstore, path=shard_path(model_id, i), mode="r")
        if g.attrs.get("done") is not True:
            raise StoreError(f"shard {i} of {model_id} is not committed")
        if g.attrs.get("sums_layout") != LAYOUT:
            raise StoreError(f"shard {i} of {model_id} holds sums in another layout (an earlier kisstore's); "
                             "rerun with --overwrite to redo the corpus pass")
        if g["sum"].shape[0] != n_layers:
            raise StoreError(f"shard {i} of {model_id} holds {g['sum'].shape[0]} layers, not {n_layers}")
        groups.append(g["sum"])
        count += int(g.attrs["count"])
    totals = []
    for r in range(n_layers):
        total = groups[0][r]
        for arr in groups[1:]:
            total += arr[r]
        totals.append(total)
    return totals, count
