"""How every command ends on bad input: one red line (exit code 2), never a traceback.

Messages are printed literally: a user's value such as ``[nan]`` or a path with brackets must not be
read as rich markup (which would swallow it and print "got .").
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
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


def ensure_output_dir(path: Path, option: str = "--out") -> Path:
    """Check, before any work, that ``path`` is (or can be made) a writable folder; return it.

    Creates the folder if missing and proves it writable by creating and removing a temporary file.
    Raises :class:`PerceptAlignError` naming the option (``--out``) when it is an existing file, lies
    under a file, or cannot be written to.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PerceptAlignError(f"{option} {path} is an existing file; choose a folder.")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise PerceptAlignError(f"{option} {path} lies under {parent}, which is a file; choose a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except PermissionError as exc:
        raise PerceptAlignError(
            f"cannot write to {path} (permission denied); choose another {option}."
        ) from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PerceptAlignError(f"cannot write to {path} ({reason}); choose another {option}.") from exc
    return path
