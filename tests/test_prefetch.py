"""The corpus pass's background producer: order, errors, early stop, and that it runs ahead."""

from __future__ import annotations

import threading

import pytest

from kisstore.extract.prefetch import prefetch


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_items_come_out_in_order_and_complete(depth):
    assert list(prefetch(iter(range(50)), depth)) == list(range(50))
    assert list(prefetch(iter([]), depth)) == []


def test_an_error_while_producing_is_raised_at_its_place():
    def gen():
        yield 1
        yield 2
        raise ValueError("bad document 3")

    out = []
    with pytest.raises(ValueError, match="bad document 3"):
        for x in prefetch(gen()):
            out.append(x)
    assert out == [1, 2]


def test_the_producer_runs_ahead_of_the_consumer():
    made = []
    second_made = threading.Event()

    def gen():
        for i in range(4):
            made.append(i)
            if i == 1:
                second_made.set()
            yield i

    it = prefetch(gen(), depth=2)
    assert next(it) == 0
    # while the consumer still holds item 0, item 1 gets produced in the background
    assert second_made.wait(timeout=30)
    assert list(it) == [1, 2, 3] and made == [0, 1, 2, 3]


def test_closing_early_stops_the_producer():
    produced = []
    done = threading.Event()

    def gen():
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            done.set()

    it = prefetch(gen(), depth=2)
    assert next(it) == 0
    it.close()
    assert done.wait(timeout=30)  # the thread left the source generator (its finally ran)
    assert len(produced) < 10  # it stopped at once, it did not drain the source


def test_a_consumer_error_under_closing_stops_the_producer():
    """The corpus pass holds the stream in contextlib.closing: an error while consuming (a
    failed forward, a kill) stops the reader thread even while the traceback is still kept."""
    import contextlib

    done = threading.Event()

    def gen():
        try:
            yield from range(10_000)
        finally:
            done.set()

    kept = None
    try:
        with contextlib.closing(prefetch(gen(), depth=2)) as it:
            for x in it:
                if x == 3:
                    raise RuntimeError("forward failed")
    except RuntimeError as e:
        kept = e  # the traceback (and the generator's frame) stay referenced
    assert kept is not None and done.wait(timeout=30)
