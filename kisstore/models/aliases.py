"""Short names for the paper's eleven models and the embedded SmolLM2."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Alias:
    name: str
    hub_id: str | None  # None: packaged locally (see kisstore.models.embedded)
    family: str
    params: str  # nominal size, for tables


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in (
        Alias("gpt2-small", "openai-community/gpt2", "gpt2", "124M"),
        Alias("gpt2-medium", "openai-community/gpt2-medium", "gpt2", "355M"),
        Alias("gpt2-large", "openai-community/gpt2-large", "gpt2", "774M"),
        Alias("gpt-j-6b", "EleutherAI/gpt-j-6b", "gpt-j", "6B"),
        Alias("pythia-1b", "EleutherAI/pythia-1b", "pythia", "1B"),
        Alias("pythia-2.8b", "EleutherAI/pythia-2.8b", "pythia", "2.8B"),
        Alias("pythia-6.9b", "EleutherAI/pythia-6.9b", "pythia", "6.9B"),
        Alias("llama2-7b", "meta-llama/Llama-2-7b-hf", "llama2", "7B"),
        Alias("llama2-13b", "meta-llama/Llama-2-13b-hf", "llama2", "13B"),
        Alias("llama3-8b", "meta-llama/Meta-Llama-3-8B", "llama3", "8B"),
        Alias("llama3.1-8b", "meta-llama/Llama-3.1-8B", "llama3.1", "8B"),
        Alias("smollm2-135m", None, "smollm2", "135M"),
    )
}

_FAMILY_HINTS = (
    ("gpt-j", "gpt-j"), ("gptj", "gpt-j"), ("pythia", "pythia"), ("gpt-neox", "gpt-neox"),
    ("llama-2", "llama2"), ("llama-3.1", "llama3.1"), ("llama-3", "llama3"), ("smollm2", "smollm2"),
    ("gpt2", "gpt2"), ("qwen", "qwen"), ("mistral", "mistral"),
)


def family_of(name: str, model_type: str) -> str:
    """A family label for scaling tables, from the alias table or the name."""
    if name in ALIASES:
        return ALIASES[name].family
    low = name.lower()
    for hint, family in _FAMILY_HINTS:
        if hint in low:
            return family
    return model_type
