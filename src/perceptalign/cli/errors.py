"""How every command ends on bad input: one red line (exit code 2), never a traceback.

Messages are printed literally: a user's value such as ``[nan]`` or a path with brackets must not be
read as rich markup (which would swallow it and print "got ."). Library messages name parameters the
Python way, in backticks (`` `max_length` ``); here they become the command's flags (``--max-length``),
so neither a library caller nor a CLI user reads the other's spelling.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from perceptalign.io import PerceptAlignError

#: Exit code of a command stopped by bad input or a bad environment (click uses 2 for usage errors too).
USER_ERROR_EXIT = 2

error_console = Console(stderr=True)


_PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)`")


@functools.cache
def _option_flags() -> dict[str, str]:
    """Parameter name → its long flag, over every command of the CLI (one name means one flag)."""
    from perceptalign.cli import app

    flags: dict[str, str] = {}
    stack = [typer.main.get_command(app)]
    while stack:
        command = stack.pop()
        stack.extend(getattr(command, "commands", {}).values())
        for param in getattr(command, "params", []):
            longs = [opt for opt in getattr(param, "opts", []) if opt.startswith("--")]
            if getattr(param, "param_type_name", "") == "option" and longs and param.name:
                flags.setdefault(param.name, max(longs, key=len))
    return flags


def cli_wording(message: str) -> str:
    """A library message with its backticked parameter names as CLI flags (`max_length` → --max-length;
    a name that only ends a parameter, such as `dropout` of --lora-dropout, maps when that is unique)."""
    flags = _option_flags()

    def flag(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in flags:
            return flags[name]
        endings = {f for n, f in flags.items() if n.endswith("_" + name)}
        return endings.pop() if len(endings) == 1 else match.group(0)

    return _PARAMETER.sub(flag, message)


def fail(message: object, prefix: str = "") -> NoReturn:
    """End the command on bad user input: the message in CLI wording (escaped, never markup), exit 2."""
    error_console.print(f"[red]{escape(prefix)}error:[/red] {escape(cli_wording(str(message)))}")
    raise typer.Exit(code=USER_ERROR_EXIT)


@contextlib.contextmanager
def exit_on_error(prefix: str = "") -> Iterator[None]:
    """A PerceptAlignError raised inside the block ends the command through :func:`fail`."""
    try:
        yield
    except PerceptAlignError as exc:
        fail(exc, prefix)
