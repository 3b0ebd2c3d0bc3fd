"""Forward hooks on the key modules (the MLP down-projections), and compiled decoder layers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from kisstore.models.registry import KeySite

BACKEND = "inductor"  # torch.compile's backend for compiled_layers (tests use "aot_eager": no code generation)


class StopForward(Exception):
    """Raised by the last hook: nothing after the last hooked layer needs computing."""


@contextlib.contextmanager
def key_hooks(
    model,
    site: KeySite,
    layers: Sequence[int],
    on_key: Callable[[int, object], None],
    *,
    stop_after_last: bool = False,
    via_layer: bool = False,
) -> Iterator[None]:
    """Call ``on_key(layer, keys)`` with the input (batch, seq, d_ff) of each layer's key module (SITE).

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
    slot: dict[str, object] = {}

    def hand_over(layer: int, keys) -> None:
        on_key(layer, keys)
        if stop_after_last and layer == last:
            raise StopForward

    def park(_module, args):  # traced by the compiler: a dict store it replays after the graph
        slot["keys"] = args[0]

    try:
        for layer in layers:
            key_module = modules[site.module(layer)]
            if via_layer:
                handles.append(key_module.register_forward_pre_hook(park))
                holder = modules[site.block(layer)]
                handles.append(holder.register_forward_hook(
                    lambda _m, _a, _o, _l=layer: hand_over(_l, slot.pop("keys"))))
            else:
                handles.append(key_module.register_forward_pre_hook(lambda _m, args, _l=layer: hand_over(_l, args[0])))
        yield
    finally:
        for h in handles:
            h.remove()
        slot.clear()


RECOMPILE_LIMIT = 64  # graphs per code object: every transformers decoder layer class shares one


@contextlib.contextmanager
def compiled_layers(model, site: KeySite, layers: Sequence[int], *, backend=None) -> Iterator[None]:
    """Run the forwards of the decoder layers ``0…max(layers)`` through ``torch.compile``.

    Only each layer's ``forward`` is compiled, not its ``__call__``: hooks registered on the
    layer itself stay outside the graph (see ``key_hooks(via_layer=True)``). The compiler keeps
    its graphs per code object and takes the weights as inputs, so the layers of a model share
    their graphs; shapes become dynamic at the first batch of another shape. A model needs a
    few graphs (first shape, dynamic shapes, layers with and without the key hook), and in
    transformers 5 every decoder layer class runs the same ``forward`` code (the
    gradient-checkpointing wrapper), so several models in one process add up: the limit is
    raised to ``RECOMPILE_LIMIT`` here (torch's default of 8 would silently run the rest
    uncompiled), and ``release_compiled()`` clears the graphs when a model is done. The first
    batches pay the compilation.
    """
    import torch

    from kisstore.extract.attention import install

    install()  # before anything is traced: see kisstore.extract.attention
    modules = dict(model.named_modules())
    holders = [modules[site.block(i)] for i in range(max(layers) + 1)]
    # a forward already set on the instance (accelerate's offloading hooks put one there) is
    # compiled with the rest and put back afterwards
    before = [m.__dict__.get("forward") for m in holders]
    cfg = torch._dynamo.config
    limit = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    # guard on the modules' hooks: by default the compiler assumes hooks never change after a
    # compile, and a graph traced without the key hook would then run for a hooked layer (another
    # layer group's pass, or a hook-free forward first in the same process)
    with cfg.patch(skip_nnmodule_hook_guards=False, **{limit: max(getattr(cfg, limit), RECOMPILE_LIMIT)}):
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


_COMPILED: dict = {}  # (a class's forward function, backend) → its compiled function; holds no module


def _compiled_forward(module, backend):
    """The module's forward, compiled: the class's function compiled once per backend and bound
    to the module, so passes after the first (a layer group each, or a benchmark entering
    :func:`compiled_layers` per batch) make no new wrappers (seen costing more than the forward
    itself on a GPU), and nothing keeps the module alive or ties a copy of it to the original.
    A forward set on the instance is compiled for this pass alone."""
    import types

    import torch

    own = module.__dict__.get("forward")
    if own is not None:
        return torch.compile(own, backend=backend, dynamic=None)
    fn = type(module).forward
    if (fn, backend) not in _COMPILED:
        _COMPILED[fn, backend] = torch.compile(fn, backend=backend, dynamic=None)
    return types.MethodType(_COMPILED[fn, backend], module)


def release_compiled() -> None:
    """Drop the compiler's graphs (all of this process's), as when a model is unloaded."""
    import torch

    torch.compiler.reset()
