"""Every command's --help teaches by example; --json exists wherever a command prints data."""

from __future__ import annotations

import click
import pytest

from provisioner.cli import cli, main


def all_commands():
    import provisioner.cli as c

    c.main(["--version"])  # imports every command module
    out = []

    def walk(group, path):
        for name, cmd in sorted(group.commands.items()):
            out.append((" ".join(path + [name]), cmd))
            if isinstance(cmd, click.Group):
                walk(cmd, path + [name])

    walk(cli, [])
    return out


COMMANDS = all_commands()


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_has_help_and_leaf_commands_that_print_data_take_json(path, cmd, capsys):
    assert cmd.help and len(cmd.help.strip()) > 20, f"{path} has no help text"
    if not isinstance(cmd, click.Group):
        code = main([*path.split(), "--help"])
        out = capsys.readouterr().out
        assert code == 0 and "Usage: provisioner" in out
        assert "--json" in out or getattr(cmd.callback, "prints_no_data", False) or getattr(cmd, "prints_no_data", False), f"{path} lacks --json"


def test_the_top_level_help_shows_examples(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples:" in out and "provisioner release build --json" in out
