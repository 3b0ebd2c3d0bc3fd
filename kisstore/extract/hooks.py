"""Forward pre-hooks on the key modules (the MLP down-projections)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence


class StopForward(Exception):
    """Raised by the last hook: nothing after the last hooked layer needs computing."""


@contextlib.contextmanager
def key_hooks(
    model,
    template: str,
    layers: Sequence[int],
    on_key: Callable[[int, object], None],
    *,
    stop_after_last: bool = False,
) -> Iterator[None]:
    """Call ``on_key(layer, keys)`` with each hooked module's input (batch, seq, d_ff).

    With ``stop_after_last`` the hook of the deepest layer raises StopForward once it has
    handed over its keys, so the rest of the network and the LM head never run.
    """
    modules = dict(model.named_modules())
    last = max(layers)
    handles = []

    def make(layer: int):
        def hook(_module, args):
            on_key(layer, args[0])
            if stop_after_last and layer == last:
                raise StopForward

        return hook

    try:
        for layer in layers:
            handles.append(modules[template.format(i=layer)].register_forward_pre_hook(make(layer)))
        yield
    finally:
        for h in handles:
            h.remove()
