"""`perceptalign ntps …` commands."""

from __future__ import annotations

import typer

ntps_app = typer.Typer(help="NTPS: how much of the perception subspace lies in the next-token subspace.", no_args_is_help=True)
