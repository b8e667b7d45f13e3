"""How every command ends on bad input: one red line (exit code 2), never a traceback.

Messages are printed literally: a user's value such as ``[nan]`` or a path with brackets must not be
read as rich markup (which would swallow it and print "got .").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from perceptalign.io import PerceptAlignError

#: Exit code of a command stopped by bad input or a bad environment (click uses 2 for usage errors too).
USER_ERROR_EXIT = 2

error_console = Console(stderr=True)


def fail(message: object, prefix: str = "") -> NoReturn:
    """End the command on bad user input: the message (escaped, never markup) and exit code 2."""
    error_console.print(f"[red]{escape(prefix)}error:[/red] {escape(str(message))}")
    raise typer.Exit(code=USER_ERROR_EXIT)


@contextlib.contextmanager
def exit_on_error(prefix: str = "") -> Iterator[None]:
    """A PerceptAlignError raised inside the block ends the command through :func:`fail`."""
    try:
        yield
    except PerceptAlignError as exc:
        fail(exc, prefix)
