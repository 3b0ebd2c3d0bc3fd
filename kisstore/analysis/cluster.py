"""Connect to a Dask cluster when asked (``--scheduler`` or ``DASK_SCHEDULER_ADDRESS``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from kisstore.errors import InputError


@contextlib.contextmanager
def dask_client(address: str | None, echo: Callable[[str], None] | None = None) -> Iterator[object | None]:
    """A ``dask.distributed.Client`` on ``address`` (the default scheduler inside the block),
    or nothing when ``address`` is empty: then Dask's local threads do the work."""
    if not address:
        yield None
        return
    from distributed import Client

    try:
        client = Client(address, timeout="15s", set_as_default=True)
    except (OSError, TimeoutError, ValueError) as e:
        raise InputError(f"cannot connect to the Dask scheduler at {address!r}: {e}") from None
    try:
        if echo:
            n = len(client.scheduler_info().get("workers", {}))
            echo(f"using Dask scheduler {address} ({n} worker(s))")
        yield client
    finally:
        client.close()
