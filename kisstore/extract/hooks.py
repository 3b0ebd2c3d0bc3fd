"""Forward hooks on the key modules (the MLP down-projections), and compiled decoder layers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

BACKEND = "inductor"  # torch.compile's backend for compiled_layers (tests use "aot_eager": no code generation)


class StopForward(Exception):
    """Raised by the last hook: nothing after the last hooked layer needs computing."""


def layer_template(template: str) -> str:
    """The decoder layer that holds a key module: ``model.layers.{i}.mlp.down_proj`` → ``model.layers.{i}``."""
    head, sep, _ = template.partition("{i}")
    if not sep:
        raise ValueError(f"module template {template!r} has no {{i}}")
    return head + "{i}"


@contextlib.contextmanager
def key_hooks(
    model,
    template: str,
    layers: Sequence[int],
    on_key: Callable[[int, object], None],
    *,
    stop_after_last: bool = False,
    via_layer: bool = False,
) -> Iterator[None]:
    """Call ``on_key(layer, keys)`` with each hooked module's input (batch, seq, d_ff).

    With ``stop_after_last`` the deepest layer's hook raises StopForward once it has handed over
    its keys, so the rest of the network and the LM head never run.

    ``via_layer`` is for compiled decoder layers (:func:`compiled_layers`): the key module's
    pre-hook only parks its input in a slot (one function shared by every layer, so that the
    layers share one compiled graph and the hook traces into it without a graph break), and
    ``on_key`` runs, uncompiled, in a hook after the decoder layer that holds the module. The
    deepest layer then runs to its end before the forward stops.
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

    slot: dict[str, object] = {}

    def park(_module, args):  # traced by the compiler: a dict store it replays after the graph
        slot["keys"] = args[0]

    def make_after(layer: int):
        def hook(_module, _args, _output):
            on_key(layer, slot.pop("keys"))
            if stop_after_last and layer == last:
                raise StopForward

        return hook

    try:
        for layer in layers:
            key_module = modules[template.format(i=layer)]
            if via_layer:
                handles.append(key_module.register_forward_pre_hook(park))
                holder = modules[layer_template(template).format(i=layer)]
                handles.append(holder.register_forward_hook(make_after(layer)))
            else:
                handles.append(key_module.register_forward_pre_hook(make(layer)))
        yield
    finally:
        for h in handles:
            h.remove()
        slot.clear()


@contextlib.contextmanager
def compiled_layers(model, template: str, layers: Sequence[int], *, backend: str | None = None) -> Iterator[None]:
    """Run the forwards of the decoder layers ``0…max(layers)`` through ``torch.compile``.

    Only each layer's ``forward`` is compiled, not its ``__call__``: hooks registered on the
    layer itself stay outside the graph (see ``key_hooks(via_layer=True)``). Layers of one
    class share their compiled code (the compiler caches per code object and takes the weights
    as inputs), and shapes become dynamic at the first batch of another shape, so a corpus pass
    compiles a few graphs, not one per layer and batch. The first batches pay the compilation.
    """
    import torch

    modules = dict(model.named_modules())
    holders = [modules[layer_template(template).format(i=i)] for i in range(max(layers) + 1)]
    # a forward already set on the instance (accelerate's offloading hooks put one there) is
    # compiled with the rest and put back afterwards
    before = [m.__dict__.get("forward") for m in holders]
    # guard on the modules' hooks: by default the compiler assumes hooks never change after a
    # compile, and a graph traced without the key hook would then run for a hooked layer (another
    # layer group's pass, or a hook-free forward first in the same process)
    with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
        try:
            for m in holders:
                m.forward = _compiled_forward(m, backend or BACKEND)
            yield
        finally:
            for m, fwd in zip(holders, before, strict=True):
                if fwd is None:
                    m.__dict__.pop("forward", None)
                else:
                    m.forward = fwd


def _compiled_forward(module, backend: str):
    """The module's compiled forward, made once per module, backend and underlying forward, and
    reused: a corpus pass per layer group, or a benchmark that enters :func:`compiled_layers` per
    batch, then does not pay for new wrappers (seen costing more than the forward itself on a
    GPU). Kept on the module itself, so it goes when the model goes."""
    import torch

    cache = module.__dict__.setdefault("_kisstore_compiled", {})
    key = (backend, module.__dict__.get("forward"))  # the instance's own forward, if something set one
    if key not in cache:
        cache[key] = torch.compile(module.forward, backend=backend, dynamic=None)
    return cache[key]
