"""``kisstore zoo``: a synthetic world of facts for a controlled family of models."""

from __future__ import annotations

import click

from kisstore_cli.common import handle_errors


@click.group(name="zoo")
def zoo():
    """A controlled superposition zoo: a synthetic world of facts (see docs/zoo.md)."""


@zoo.command(name="world")
@click.argument("out", metavar="OUT")
@click.option("--entities", type=int, default=150, show_default=True, metavar="N", help="Entities in the world.")
@click.option("--seed", type=int, default=0, show_default=True, metavar="S", help="Seed of the generator.")
@handle_errors
def world_cmd(out: str, entities: int, seed: int):
    """Write OUT/facts.json, OUT/train.jsonl, OUT/heldout.jsonl and OUT/world.json.

    \b
    Example:
      kisstore zoo world zoo1 --entities 150 --seed 0
    """
    from kisstore.zoo.world import write_world

    w = write_world(out, entities, seed)
    click.echo(f"world of {len(w.entities)} entities, {len(w.facts)} facts, {len(w.train)} training and "
               f"{len(w.heldout)} held-out documents in {out}")


COMMANDS = [zoo]
