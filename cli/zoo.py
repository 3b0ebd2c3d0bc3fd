"""``kisstore zoo``: a synthetic world of facts, and a controlled family of models trained on it."""

from __future__ import annotations

import click

from kisstore.zoo.train import DEFAULT_STEPS, LR_WIDTH, TrainConfig
from kisstore_cli.common import handle_errors


@click.group(name="zoo")
def zoo():
    """A controlled superposition zoo: a synthetic world of facts and a family of models trained on it (docs/zoo.md)."""


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


@zoo.command(name="train")
@click.argument("out", metavar="OUT")
@click.option("--widths", default="64,128,256,512", show_default=True, metavar="W,W,…",
              help="Hidden sizes of the family (d_ff is 4× each); one model per width.")
@click.option("--layers", type=int, default=TrainConfig.layers, show_default=True, metavar="L",
              help="Decoder layers (the same for every width).")
@click.option("--tokens", type=int, default=None, metavar="T",
              help="Training tokens per model, rounded up to whole steps [default: --steps].")
@click.option("--steps", type=int, default=None, metavar="N",
              help=f"Optimizer steps per model ({TrainConfig.batch} documents each) [default: {DEFAULT_STEPS}].")
@click.option("--lr", type=float, default=TrainConfig.lr, show_default=True, metavar="LR",
              help=f"Adam's peak learning rate up to width {LR_WIDTH}; a wider model gets LR·{LR_WIDTH}/width.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--seed", type=int, default=0, show_default=True, metavar="S",
              help="Seed of the initial weights and the data order (the same for every width).")
@click.option("--checkpoints", type=int, default=0, show_default=True, metavar="K",
              help="Keep K intermediate snapshots as OUT/w<width>/checkpoints/step-N/ model folders.")
@click.option("--untrained-twins", is_flag=True, help="Also save each width's random-init model as OUT/w<width>-untrained/.")
@click.option("--threads", type=int, default=None, metavar="N",
              help="CPU threads for torch [default: torch's]; 1 is fastest on a machine shared with other jobs.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@handle_errors
def train_cmd(out: str, widths: str, layers: int, tokens: int | None, steps: int | None, lr: float, device: str,
              seed: int,
              checkpoints: int, untrained_twins: bool, threads: int | None, quiet: bool):
    """Train one Llama model per width on the zoo world in OUT, into OUT/w<width>/.

    Every width gets the same tokenizer (OUT/tokenizer/, trained on OUT/train.jsonl), the same
    documents in the same order and the same schedule. A killed run resumes with the same command
    and ends bit-identical to an uninterrupted one; complete widths are skipped.

    \b
    Example:
      kisstore zoo world zoo1 --entities 150
      kisstore zoo train zoo1 --widths 64,128,256,512 --threads 2
      kisstore extract --model zoo1/w64 --model zoo1/w512 --items zoo1/facts.json \\
          --corpus zoo1/heldout.jsonl --store zoo1.zarr
    """
    from kisstore.zoo.train import parse_widths, train_family

    cfg = TrainConfig(layers=layers, steps=steps, tokens=tokens, seed=seed, checkpoints=checkpoints, lr=lr)
    for r in train_family(out, parse_widths(widths), cfg, device=device, threads=threads,
                          untrained_twins=untrained_twins, progress=not quiet):
        i = r.info
        what = "already trained" if r.skipped else ("random init" if i.get("untrained") else
                                                     f"{i['steps_done']} steps, final loss {i['losses'][-1]:.3f}")
        click.echo(f"{r.folder}: {i['n_params']:,} parameters, {what}, knows {i['n_known']}/{i['n_items']} "
                   f"facts ({r.known_fraction:.1%})")


COMMANDS = [zoo]
