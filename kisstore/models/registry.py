"""Where each architecture keeps its MLP down-projection: the module whose input is the key.

Users name a model; they never write module paths. The table below is the one place that
knows them (``--module`` overrides it for architectures not listed).
"""

from __future__ import annotations

from dataclasses import dataclass

from kisstore.errors import InputError


@dataclass(frozen=True)
class Architecture:
    """How to find the key module (MLP down-projection input) of one model family."""

    name: str
    blocks: str  # path of the ModuleList of transformer blocks
    down_proj: str  # path inside a block of the MLP down-projection

    @property
    def module_template(self) -> str:
        return f"{self.blocks}.{{i}}.{self.down_proj}"


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


def module_template(model_type: str, override: str | None = None) -> str:
    """The hooked module path with ``{i}`` for the layer, e.g. ``transformer.h.{i}.mlp.c_proj``."""
    if override:
        if "{i}" not in override:
            raise InputError(f"--module {override!r} must contain '{{i}}' where the layer index goes")
        return override
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise InputError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}. "
            "Pass --module with the MLP down-projection path, e.g. --module 'model.layers.{i}.mlp.down_proj'"
        )
    return arch.module_template


def n_layers_of(config) -> int:
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        n = getattr(config, attr, None)
        if isinstance(n, int) and n > 0:
            return n
    raise InputError(f"cannot tell the number of layers of a {config.model_type!r} model from its config")
