"""docs/cli.md shows every command's real ``--help``: the blocks must match the command line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from kisstore_cli.main import cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
BLOCKS = dict(re.findall(r"## kisstore([ \w-]*)\n```\n(.*?)\n```", DOC.read_text(), flags=re.S))


def test_every_command_is_documented():
    assert {name.strip() for name in BLOCKS} == {"", *cli.commands}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_documented_help_is_the_real_help(name):
    args = [name.strip()] if name.strip() else []
    res = CliRunner().invoke(cli, [*args, "--help"], terminal_width=80, prog_name="kisstore")
    assert res.exit_code == 0
    assert res.output.rstrip("\n") == BLOCKS[name], (
        f"docs/cli.md's block for 'kisstore{name}' is out of date; paste the output of "
        f"`COLUMNS=82 kisstore{name} --help` (80 columns) into it")
