"""`perceptalign rtify …` commands."""

from __future__ import annotations

import typer

rtify_app = typer.Typer(help="RTify: differentiable decision times fitted to human reaction times.", no_args_is_help=True)
