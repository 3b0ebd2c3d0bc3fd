"""Sharded corpus pass on a Dask cluster: K shards balanced by tokens, merged exactly.

The single process's pass is a fixed sequence of batches (``WINDOW``-document windows, each
sorted by length and cut by ``covariance.window_batches``). A shard is a contiguous stretch of
that sequence, from one position to the next, where a position is a token of a batch:
``(window, part, offset)``. :func:`plan` puts the K − 1 bounds at the batch edge nearest to
``i·n/K`` tokens when that edge is within ``EDGE_SLACK`` of a shard's share, otherwise at
exactly ``i·n/K`` inside the batch. So every shard holds n/K tokens to within 10 %, every token
is in exactly one shard, and the plan is a function of the documents' token counts alone.

A shard forms the very batches a single process forms (it reads its windows whole) and runs
only those that hold its tokens; a batch cut by a bound is run by both neighbours, each
counting its own tokens of it such that the float32 products telescope (:func:`select`). Either
way the merge equals the single process's sums to float64 rounding: every float32 per-batch
product the single process adds is added once, by one shard. Each shard commits its partial
sums and token count into the store (``/_checkpoints/<model>/shards/<k>``) before reporting
done; the client records the plan in its checkpoint, and a rerun uses that plan and skips
committed shards.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kisstore import failpoints
from kisstore.errors import InputError, StoreError
from kisstore.store.packed import PackedMoment

BALANCE = 0.10  # every shard holds n/K tokens to within this fraction
EDGE_SLACK = BALANCE / 2  # a bound moves to a batch edge this close (a fraction of n/K): two bounds moved
                          # at most that far keep the shard between them within BALANCE


@dataclass(frozen=True)
class Span:
    """One shard's part of the pass: from ``start`` up to (not including) ``stop``, each a
    ``(window, part, offset)`` position (token ``offset`` of batch ``part`` of ``window``, in
    the single process's batch order); ``docs`` the documents it reads (whole windows but the
    corpus's end), ``tokens`` the tokens it counts."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    docs: tuple[int, int]
    tokens: int

    def as_dict(self) -> dict[str, Any]:
        return {"start": list(self.start), "stop": list(self.stop), "docs": list(self.docs), "tokens": self.tokens}

    @classmethod
    def of(cls, d: dict[str, Any]) -> Span:
        return cls(tuple(d["start"]), tuple(d["stop"]), tuple(d["docs"]), int(d["tokens"]))


def pass_batches(lengths: Sequence[int], batch_tokens: int, window: int) -> list[tuple[int, int, int]]:
    """``(window, part, tokens)`` of every batch a single process's pass forms over documents of
    these token counts (``covariance.window_batches`` on each window), in order."""
    from kisstore.extract.covariance import window_batches

    out = []
    for w in range(-(-len(lengths) // window)):
        part = lengths[w * window:(w + 1) * window]
        for p, group in enumerate(window_batches(part, batch_tokens)):
            out.append((w, p, sum(part[i] for i in group)))
    return out


def plan(lengths: Sequence[int], n_shards: int, *, batch_tokens: int, window: int,
         min_tokens: int | None = None) -> list[Span]:
    """Split a pass over documents of token counts ``lengths`` into at most ``n_shards`` spans
    of n/K tokens each, to within ``BALANCE`` (module docstring). A shard holds at least
    ``min_tokens`` (default ``batch_tokens``: one batch's worth; below that its model load costs more
    than its forwards), so K = min(``n_shards``, n // ``min_tokens``), at least 1."""
    if n_shards < 1:
        raise InputError(f"--shards must be at least 1, got {n_shards}")
    batches = pass_batches(lengths, batch_tokens, window)
    edges = [0]  # edges[j]: tokens before batch j
    for _, _, t in batches:
        edges.append(edges[-1] + t)
    n = edges[-1]
    k = max(1, min(n_shards, n // max(1, min_tokens if min_tokens is not None else batch_tokens)))
    share = n / k
    bounds = [(0, 0)]  # (batch index, token offset in it)
    for i in range(1, k):
        target = round(i * n / k)
        j = bisect.bisect_left(edges, target)
        near = min((c for c in (j - 1, j) if 0 <= c < len(edges)), key=lambda c: abs(edges[c] - target))
        if abs(edges[near] - target) <= EDGE_SLACK * share:
            bounds.append((near, 0))
        else:
            inside = bisect.bisect_right(edges, target) - 1  # the batch holding token ``target``
            bounds.append((inside, target - edges[inside]))
    bounds.append((len(batches), 0))

    def position(b: tuple[int, int]) -> tuple[int, int, int]:
        j, off = b
        if j == len(batches):
            return (-(-len(lengths) // window), 0, 0)  # the end of the pass
        w, p, _ = batches[j]
        return (w, p, off)

    spans = []
    for i in range(k):
        (j0, o0), (j1, o1) = bounds[i], bounds[i + 1]
        first = 0 if i == 0 else batches[j0][0]
        last = batches[j1 if o1 else j1 - 1][0] if batches else 0  # the last window it runs a batch of
        stop_doc = len(lengths) if i == k - 1 else min((last + 1) * window, len(lengths))
        spans.append(Span(position(bounds[i]), position(bounds[i + 1]), (first * window, stop_doc),
                          edges[j1] + o1 - edges[j0] - o0))
    # the windows between two shards' batches (documents without tokens) are read by the earlier
    # one, so the shards' documents cover the corpus without a gap
    for i in range(k - 1):
        a, b = spans[i], spans[i + 1]
        if a.docs[1] < b.docs[0]:
            spans[i] = Span(a.start, a.stop, (a.docs[0], b.docs[0]), a.tokens)
    return spans


def select(batches: Iterator[Any], span: Span) -> Iterator[Any]:
    """The batches of ``batches`` (a single process's, from the span's first window on) that hold
    the span's tokens. The forward runs on each whole batch, so its keys are the single
    process's. A batch cut by the span's bounds, whose tokens ``[lo, hi)`` (row by row) are the
    span's, adds the products of its tokens from ``lo`` on and takes out those from ``hi`` on
    (``Batch.minus``); the next shard adds those from ``hi`` on, the very same float32 product.
    Over all shards the cut batch's contributions telescope to the product of the whole batch,
    the single process's, to float64 rounding of the additions."""
    import torch

    first, last = tuple(span.start[:2]), tuple(span.stop[:2])
    for b in batches:
        at = (b.window, b.part)
        if at < first or at > last or (at == last and span.stop[2] == 0):
            continue
        lo = span.start[2] if at == first else 0
        hi = span.stop[2] if at == last else None
        if lo == 0 and hi is None:
            yield b
            continue
        m = b.attention_mask.reshape(-1)
        index = torch.cumsum(m, 0) - 1  # each real token's place in the batch, row by row
        shape, dtype = b.attention_mask.shape, b.attention_mask.dtype
        plus = (m > 0) & (index >= lo)
        b.attention_mask = plus.reshape(shape).to(dtype)
        b.tokens = int(plus.sum())
        if hi is not None:
            minus = (m > 0) & (index >= hi)
            b.minus = minus.reshape(shape).to(dtype)
            b.tokens -= int(minus.sum())
        yield b


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
    span: dict[str, Any]  # Span.as_dict()
    n_shards: int
    extra: dict[str, Any] = field(default_factory=dict)
    cpu_kernels: str = "auto"
    compile: bool = False
    windows: list[str] = field(default_factory=list)  # the client's window digests up to this shard's end

    @property
    def docs(self) -> tuple[int, int]:
        return tuple(self.span["docs"])


def shard_path(model_id: str, index: int) -> str:
    from kisstore.store.layout import checkpoint_path

    return f"{checkpoint_path(model_id)}/shards/{index}"


def committed(store, task: ShardTask) -> bool:
    path = shard_path(task.model_id, task.index)
    if not store.has(path):
        return False
    from kisstore.store.packed import LAYOUT

    a = store.group_attrs(path)
    # a shard of full d_ff × d_ff sums (an earlier kisstore's) is redone, never merged as packed ones
    # a shard of whole windows (an earlier kisstore's, no "span") is redone under today's plan
    return (a.get("done") is True and a.get("span") == task.span and a.get("n_shards") == task.n_shards
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

    from kisstore.data.corpus import resolve_corpus
    from kisstore.extract.accumulate import SecondMoment
    from kisstore.extract.covariance import CorpusChanged, WindowHasher, accumulate, corpus_batches
    from kisstore.extract.pipeline import layer_groups
    from kisstore.extract.prefetch import prefetch
    from kisstore.models.loading import load_model
    from kisstore.store.checkpoint import create_sums
    from kisstore.store.io import Store, storage_errors
    from kisstore.store.packed import LAYOUT

    task = ShardTask(**task_dict)
    span = Span.of(task.span)
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
        batches = prefetch(select(corpus_batches(lm.tokenizer, corpus, max_length=task.max_length,
                                                 batch_tokens=task.batch_tokens, token_cap=None, skip_docs=start,
                                                 max_docs=stop - start, hasher=hasher), span))
        accumulate(lm, group, batches, moments, cpu_kernels=task.cpu_kernels, compile=task.compile)
        windows = hasher.digests[start // hasher.window:]
        for layer in group:
            sums[layer] = moments[layer].packed()
        count = moments[group[0]].count
    if count != span.tokens:  # the documents hashed the same, so their tokenization did not
        raise CorpusChanged(f"shard {task.index} counted {count} tokens where its plan has {span.tokens}: the corpus "
                            "changed since the shards were planned; rerun with --overwrite to start over")
    del lm, moments
    if task.compile:
        from kisstore.extract.hooks import release_compiled

        release_compiled()  # a long-lived worker runs shard after shard
    release_memory()  # the weights go before the next shard's model loads
    path = shard_path(task.model_id, task.index)
    store.check_links(path)  # mode "w" deletes what is there first
    with storage_errors(store.url, store.storage_options):
        g = store.open_group(path, mode="w")
        arr = create_sums(g, "sum", len(task.layers), d)
        for r, layer in enumerate(task.layers):
            arr[r] = sums[layer]
        g.attrs.update({"sums_layout": LAYOUT, "done": True, "count": int(count), "docs": [start, stop], "span": task.span,
                        "n_shards": task.n_shards,
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


def merge(store, model_id: str, shards: list[tuple[int, int]], n_layers: int) -> list[PackedMoment]:
    """Exact merge: each layer's moment as the Σ over shards of their moments (float64 packed
    triangles, shard 0 first; the token counts add up)."""

    from kisstore.store.packed import LAYOUT

    groups = []
    counts = []
    for i in range(len(shards)):
        g = store.open_group(shard_path(model_id, i))
        if g.attrs.get("done") is not True:
            raise StoreError(f"shard {i} of {model_id} is not committed")
        if g.attrs.get("sums_layout") != LAYOUT:
            raise StoreError(f"shard {i} of {model_id} holds sums in another layout (an earlier kisstore's); "
                             "rerun with --overwrite to redo the corpus pass")
        if g["sum"].shape[0] != n_layers:
            raise StoreError(f"shard {i} of {model_id} holds {g['sum'].shape[0]} layers, not {n_layers}")
        groups.append(g["sum"])
        counts.append(int(g.attrs["count"]))
    totals = []
    for r in range(n_layers):
        total = PackedMoment(groups[0][r], counts[0])
        for arr, count in zip(groups[1:], counts[1:], strict=True):
            total += PackedMoment(arr[r], count)
        totals.append(total)
    return totals
