"""Every command and every option of the CLI explains itself (help text that says more than its name)."""

from __future__ import annotations

import pytest
import typer

from perceptalign.cli import app

ROOT = typer.main.get_command(app)


def _commands(group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    if not getattr(group, "commands", None):  # typer's groups need not be click.Group instances
        return [(prefix, group)]
    out = []
    for name, command in sorted(group.commands.items()):
        out += _commands(command, (*prefix, name))
    return out


COMMANDS = _commands(ROOT)


def test_the_cli_has_its_commands():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"ntps score", "ntps probe", "ntps peers", "ntps lora", "rtify fit", "rtify simulate-ww"} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_has_a_help_text(path, command):
    assert (command.help or "").strip(), f"{' '.join(path)} has no help text"
    for param in command.params:
        if getattr(param, "param_type_name", "") == "option" and not param.hidden and param.name != "help":
            text = (param.help or "").strip()
            flag = max(param.opts, key=len).lstrip("-").replace("-", " ")
            # A help text must say more than the flag's own words (typer would otherwise print just them).
            assert len(text) > len(flag) + 5, f"{' '.join(path)} {param.opts}: help {text!r} says nothing"
