"""`perceptalign fetch`: prepare the offline defaults once (model conversion, dataset archives)."""

from __future__ import annotations

import typer
from rich.console import Console

from perceptalign.io import PerceptAlignError

console = Console()


def fetch_all() -> None:
    from perceptalign.ntps.datasets import fetch_offline_datasets
    from perceptalign.ntps.models import EMBEDDED_MODELS, prepare_embedded_model

    def say(message: str) -> None:
        console.print(f"[dim]{message}[/dim]")

    try:
        for alias in EMBEDDED_MODELS:
            path = prepare_embedded_model(alias, say)
            console.print(f"model {alias}: {path}")
        for path in fetch_offline_datasets(progress=say):
            console.print(f"dataset ready: {path}")
    except PerceptAlignError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
