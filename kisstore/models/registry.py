"""Where each architecture keeps its MLP down-projection: the module whose input is the key.

Users name a model; they never write module paths. The table below is the one place that
knows them (``--module`` overrides it for architectures not listed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kisstore.errors import InputError

_LAYER = "{i}"


@dataclass(frozen=True)
class KeySite:
    """Where a model's keys are read: the input of each layer's MLP down-projection.

    Named, so that no other code formats module paths: ``site.module(3)`` is
    ``model.layers.3.mlp.down_proj``, ``site.block(3)`` the decoder layer that holds it
    (``model.layers.3``), and ``site.template`` (``model.layers.{i}.mlp.down_proj``) is what a
    store records as ``hooked_module``.
    """

    template: str

    def __post_init__(self):
        if self.template.count(_LAYER) != 1:
            raise InputError(f"module template {self.template!r} must contain '{{i}}' once, where the layer index goes")

    def module(self, layer: int) -> str:
        """The key module's name at LAYER."""
        return self.template.replace(_LAYER, str(int(layer)))

    def block(self, layer: int) -> str:
        """The name of the decoder layer that holds the key module at LAYER."""
        return self.template.partition(_LAYER)[0] + str(int(layer))

    def find(self, model: Any, layer: int, *, block: bool = False) -> Any:
        """The key module (or, with ``block``, its decoder layer) of MODEL at LAYER."""
        name = self.block(layer) if block else self.module(layer)
        found = dict(model.named_modules()).get(name)
        if found is None:
            raise InputError(f"module {name!r} not found in this model; pass --module with the MLP down-projection path")
        return found

    def layer_of(self, name: str) -> int | None:
        """The layer index in a module name of this site (``None`` for another module's name)."""
        before, after = self.template.split(_LAYER)
        m = re.fullmatch(f"{re.escape(before)}(\\d+){re.escape(after)}", name)
        return None if m is None else int(m.group(1))


@dataclass(frozen=True)
class Architecture:
    """How to find the key module (MLP down-projection input) of one model family."""

    name: str
    blocks: str  # path of the ModuleList of transformer blocks
    down_proj: str  # path inside a block of the MLP down-projection

    @property
    def key_site(self) -> KeySite:
        return KeySite(f"{self.blocks}.{_LAYER}.{self.down_proj}")


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("gpt2", "transformer.h", "mlp.c_proj"),
        Architecture("gptj", "transformer.h", "mlp.fc_out"),
        Architecture("gpt_neox", "gpt_neox.layers", "mlp.dense_4h_to_h"),
        Architecture("llama", "model.layers", "mlp.down_proj"),
        Architecture("mistral", "model.layers", "mlp.down_proj"),
        Architecture("qwen2", "model.layers", "mlp.down_proj"),
        Architecture("qwen3", "model.layers", "mlp.down_proj"),
        Architecture("gemma", "model.layers", "mlp.down_proj"),
        Architecture("gemma2", "model.layers", "mlp.down_proj"),
        Architecture("phi3", "model.layers", "mlp.down_proj"),
        Architecture("olmo", "model.layers", "mlp.down_proj"),
        Architecture("olmo2", "model.layers", "mlp.down_proj"),
    )
}


def key_site(model_type: str, override: str | None = None) -> KeySite:
    """The key site of an architecture, or the one ``--module`` names (a path with ``{i}`` for the layer)."""
    if override:
        if _LAYER not in override:
            raise InputError(f"--module {override!r} must contain '{{i}}' where the layer index goes")
        return KeySite(override)
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise InputError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}. "
            "Pass --module with the MLP down-projection path, e.g. --module 'model.layers.{i}.mlp.down_proj'"
        )
    return arch.key_site


def n_layers_of(config) -> int:
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        n = getattr(config, attr, None)
        if isinstance(n, int) and n > 0:
            return n
    raise InputError(f"cannot tell the number of layers of a {config.model_type!r} model from its config")
