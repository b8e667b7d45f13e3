"""Command-line interface: the only layer that prints. One sub-application per wing."""

from __future__ import annotations

import importlib

import typer

from perceptalign.cli.ntps import ntps_app
from perceptalign.cli.rtify import rtify_app

app = typer.Typer(
    name="perceptalign",
    help="Measure and train the alignment between deep networks and perception.",
    no_args_is_help=True,
    add_completion=False,
)
# Modules that add commands to the wing apps when imported (one module per group of commands).
COMMAND_MODULES = (
    "perceptalign.cli.ntps_probe",
    "perceptalign.cli.ntps_train",
    "perceptalign.cli.ntps_pretrain",
    "perceptalign.cli.ntps_study",
    "perceptalign.cli.ntps_task_study",
    "perceptalign.cli.rtify_fit",
    "perceptalign.cli.rtify_images",
    "perceptalign.cli.rtify_video",
    "perceptalign.cli.rtify_ww",
)
for _module in COMMAND_MODULES:
    importlib.import_module(_module)

app.add_typer(ntps_app, name="ntps")


@app.callback()
def _quiet_libraries() -> None:
    """Our own progress bars replace the per-file ones that transformers would print."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


app.add_typer(rtify_app, name="rtify")


@app.command("fetch")
def fetch() -> None:
    """Prepare everything the offline defaults need: convert the embedded model, fetch and verify datasets."""
    from perceptalign.cli.fetch import fetch_all

    fetch_all()


def main() -> None:
    app()
