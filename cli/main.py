"""Entry point: ``kisstore <command>``."""

from __future__ import annotations

import click

from kisstore._version import __version__


class _Group(click.Group):
    """``--debug`` anywhere on the line (``kisstore analyze STORE --debug``) means ``kisstore --debug``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[:end]:
            args = ["--debug", *(a for i, a in enumerate(args) if not (i < end and a == "--debug"))]
        return super().parse_args(ctx, args)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kisstore")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors (accepted anywhere on the line).")
def cli(debug: bool) -> None:
    """Measure knowledge superposition in language models into labeled Zarr stores."""


def _register() -> None:
    import importlib

    for name in ("extract", "info", "models", "analyze", "export", "copy", "edit", "zoo"):
        try:
            mod = importlib.import_module(f"kisstore_cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"kisstore_cli.{name}":
                continue  # command not built yet
            raise
        for cmd in getattr(mod, "COMMANDS", []):
            cli.add_command(cmd)


_register()


def main() -> None:
    cli(prog_name="kisstore")


if __name__ == "__main__":
    main()
