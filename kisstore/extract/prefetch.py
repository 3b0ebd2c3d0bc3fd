"""Produce the next corpus batches in a background thread while the model runs on this one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_END = object()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items`` in order while a daemon thread computes the next ones (``depth`` queued,
    one more in hand).

    For the corpus pass: reading documents, tokenizing a window and padding its batches (the
    tokenizer's Rust code releases the GIL) overlap the forward pass instead of stalling it
    between windows. An exception raised while producing is raised here, at the item where it
    happened. Closing the generator tells the thread to stop at its next item (items already
    made are dropped): a consumer that may stop early, by an error included, should hold it in
    ``contextlib.closing``, since a generator abandoned by an exception is only closed when
    the traceback that references it is gone.
    """
    if depth < 1:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            put((False, e))
            return
        put((True, _END))

    thread = threading.Thread(target=produce, name="kisstore-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _END:
                return
            yield item
    finally:
        stop.set()
