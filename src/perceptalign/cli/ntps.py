"""`perceptalign ntps …` commands."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from perceptalign.cli.errors import exit_on_error
from perceptalign.cli.options import (
    DatasetOption,
    DeviceMapOption,
    DeviceOption,
    DtypeOption,
    FractionsOption,
    LabelColumnOption,
    LayersOption,
    MaxLengthOption,
    ModelOption,
    OverwriteOption,
    RevisionOption,
    StatsMemoryOption,
    SubsetSeedOption,
    TextColumnOption,
    TokenBudgetOption,
    TokenizerOption,
    TrustRemoteCodeOption,
)
from perceptalign.cli.progress import RateProgress

ntps_app = typer.Typer(
    help="NTPS: how much of the perception subspace lies in the next-token subspace.", no_args_is_help=True
)
console = Console()
T = TypeVar("T")


def print_status(message: str) -> None:
    """A job's status line, dimmed so that the results stand out."""
    console.print(f"[dim]{message}[/dim]")


def print_recipe_note(recipe: str) -> None:
    """Once per command: what a recipe still leaves different from the published code (``paper`` only).

    An unknown name prints nothing here; the job config refuses it with the list of recipes."""
    from perceptalign.ntps.recipes import RECIPES

    note = RECIPES[recipe].note if recipe in RECIPES else None
    if note:
        console.print(note, style="yellow", markup=False, highlight=False)


def run_with_progress(
    job: Callable[..., T], description: str, *, show: bool = True, error_prefix: str = ""
) -> T:
    """Run ``job(on_status=, on_start=, on_batch=)`` under a rate bar, with :func:`exit_on_error`.

    The callbacks are those of the streaming jobs (score, probe, peers, prescreen): ``on_start(texts, _)``
    sizes the bar once the work is known, ``on_batch(texts, tokens)`` advances it. ``show=False`` runs
    without a bar (other ranks of a distributed run); the bar is closed before an error is printed.
    """
    progress = RateProgress(console, description) if show else None
    with exit_on_error(error_prefix), progress or contextlib.nullcontext():
        return job(
            on_status=print_status,
            on_start=(lambda n_texts, _n: progress.start(n_texts)) if progress else None,
            on_batch=progress.advance if progress else None,
        )


def parse_int_list(value: str | None, what: str, *, positive: bool = False) -> list[int] | None:
    if value is None or value.strip().lower() in {"", "all"}:
        return None
    try:
        values = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError as exc:
        example = "8,32,128" if positive else "0,6,12,-1"
        raise typer.BadParameter(
            f"{what} must be comma-separated integers, e.g. {example} (got {value!r})"
        ) from exc
    if positive and any(v < 1 for v in values):
        raise typer.BadParameter(f"{what} must be positive integers (got {value!r})")
    return values


def parse_float_list(value: str | None, what: str) -> list[float] | None:
    if value is None:
        return None
    try:
        values = [float(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError as exc:
        raise typer.BadParameter(f"{what} must be comma-separated numbers (got {value!r})") from exc
    if not values or any(not 0 < v <= 1 for v in values):
        raise typer.BadParameter(f"{what} must lie in (0, 1] (got {value!r})")
    return values


@ntps_app.command("score")
def score(
    dataset: DatasetOption,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output directory (ntps.json, statistics cache, heat map).")
    ],
    model: ModelOption = "smollm2-135m",
    split: Annotated[
        str, typer.Option(help="Dataset split. A local file is used whole unless it has a `split` column.")
    ] = "train",
    layers: LayersOption = None,
    max_samples: Annotated[
        int | None, typer.Option(help="Use at most this many texts (seeded subset).", min=1)
    ] = None,
    max_length: MaxLengthOption = 512,
    token_budget: TokenBudgetOption = 2048,
    dtype: DtypeOption = "auto",
    device: DeviceOption = "auto",
    device_map: DeviceMapOption = None,
    stats_memory: StatsMemoryOption = None,
    fractions: FractionsOption = None,
    k: Annotated[
        str | None,
        typer.Option("--k", help="Absolute numbers of V directions instead of fractions, e.g. 8,32,128."),
    ] = None,
    text_column: TextColumnOption = None,
    label_column: LabelColumnOption = None,
    revision: RevisionOption = None,
    trust_remote_code: TrustRemoteCodeOption = False,
    tokenizer: TokenizerOption = None,
    ridge: Annotated[
        float, typer.Option(help="Relative ridge added to M_xx and C0 before whitening.", min=0.0)
    ] = 0.0,
    seed: SubsetSeedOption = 0,
    overwrite: OverwriteOption = False,
) -> None:
    """Compute NTPS for every layer and k from one pass of the data through the model.

    Writes OUT/ntps.json (ntps, ntps_orthonormal and ntps_reference as layer × fraction tables),
    OUT/statistics.safetensors + .json (reused when rerun on the same model, data and tokenisation;
    statistics of other inputs are refused, naming what differs, unless --overwrite recomputes them)
    and OUT/ntps_heatmap.png. An interrupted run resumes
    from its checkpoint. The `ntps_reference` variant is the published estimator reproduced exactly
    (float32, absolute 1e-8 eigenvalue cut-off, k = int(f·kept rank), bottom of both spectra): it is
    ill-posed and not scale invariant, and only meant for comparison with published numbers.

    Runs on --device (auto: a GPU when there is one, in bfloat16 with --dtype auto); the statistics are
    summed on that device, in as many passes over the data as their memory needs (the plan is printed).
    """
    from perceptalign.ntps.distributed import launch_rank
    from perceptalign.ntps.jobs.score import ScoreConfig, run_score
    from perceptalign.ntps.subspace import DEFAULT_FRACTIONS

    ks = parse_int_list(k, "--k", positive=True)
    with exit_on_error():
        config = ScoreConfig(
            model=model,
            dataset=dataset,
            out=out,
            split=split,
            layers=parse_int_list(layers, "--layers"),
            max_samples=max_samples,
            max_length=max_length,
            token_budget=token_budget,
            dtype=dtype or "auto",
            device=device,
            device_map=device_map,
            stats_memory=stats_memory,
            fractions=None if ks else (parse_float_list(fractions, "--fractions") or list(DEFAULT_FRACTIONS)),
            ks=ks,
            text_column=text_column,
            label_column=label_column,
            revision=revision,
            trust_remote_code=trust_remote_code,
            tokenizer=tokenizer,
            ridge=ridge,
            seed=seed,
            overwrite=overwrite,
        )
    started = time.perf_counter()
    # Under torchrun only rank 0 shows progress and the summary; the others stay silent unless they fail.
    rank = launch_rank()
    where = f"[rank {rank}] " if "WORLD_SIZE" in os.environ else ""  # printed literally by fail()
    result = run_with_progress(
        lambda **callbacks: run_score(config, **callbacks), "statistics", show=rank == 0, error_prefix=where
    )
    if not result.written:
        return
    results = result.results
    print_summary(results)
    console.print(
        f"wrote {out / 'ntps.json'}, {out / 'statistics.safetensors'}, {out / 'ntps_heatmap.png'} "
        f"in {time.perf_counter() - started:.1f} s"
    )


def print_summary(results: dict) -> None:
    """Per-layer NTPS at a few k (NTPS grows with k, so "best over k" would always be the largest k)."""
    columns = results.get("fractions") or results["ks"]
    shown = summary_columns(columns, bool(results.get("fractions")))
    mid = shown[len(shown) // 2]
    unit = "f" if results.get("fractions") else "k"
    table = Table(
        title=f"NTPS — {results['model']} on {results['dataset']} ({results['n_texts']} texts, "
        f"{results['n_tokens']} tokens, {results['n_classes']} classes)"
    )
    table.add_column("layer", justify="right")
    for j in shown:
        table.add_column(f"ntps {unit}={columns[j]:g}", justify="right")
    table.add_column(f"orthonormal {unit}={columns[mid]:g}", justify="right")
    table.add_column(f"reference {unit}={columns[mid]:g}", justify="right")
    for i, layer in enumerate(results["layers"]):
        cells = [f"{results['ntps'][i][j]:.4f}" for j in shown]
        cells.append(f"{results['ntps_orthonormal'][i][mid]:.4f}")
        reference = results.get("ntps_reference")
        cells.append("—" if not reference or reference[i][mid] is None else f"{reference[i][mid]:.4f}")
        table.add_row(str(layer), *cells)
    console.print(table)
    best = max(range(len(results["layers"])), key=lambda i: results["ntps"][i][mid])
    console.print(
        f"best layer at {unit} = {columns[mid]:g}: {results['layers'][best]} "
        f"(NTPS {results['ntps'][best][mid]:.4f})"
    )


def summary_columns(columns: list, are_fractions: bool) -> list[int]:
    """Indices of the columns nearest f = 0.1, 0.5, 0.9 (or first, middle, last k)."""
    if not are_fractions:
        return sorted({0, len(columns) // 2, len(columns) - 1})
    return sorted({min(range(len(columns)), key=lambda j: abs(columns[j] - f)) for f in (0.1, 0.5, 0.9)})


@ntps_app.command("datasets")
def datasets(
    tasks: Annotated[
        bool,
        typer.Option(
            "--tasks",
            help="List the tasks carved from the offline corpora (use one as --dataset task:<name>); "
            "the first call builds the corpora from the offline archives.",
        ),
    ] = False,
) -> None:
    """List the registered datasets (offline package datasets and hub datasets), or the carved tasks."""
    if tasks:
        with exit_on_error():
            from perceptalign.ntps.datasets import list_tasks

            frame = list_tasks()
        table = Table(title=f"{len(frame)} tasks carved from the offline corpora (N_train = 240 each)")
        for column in ("name", "parent", "classes", "n_test"):
            table.add_column(column, no_wrap=True)
        table.add_column("description")
        for row in frame.itertuples():
            table.add_row(row.name, row.parent, str(row.classes), str(row.n_test), row.description)
        console.print(table)
        return
    from perceptalign.ntps.datasets import list_datasets

    table = Table(title="perceptalign text datasets")
    for column in ("name", "kind", "classes", "description"):
        table.add_column(column)
    infos = list_datasets()
    for info in infos:
        table.add_row(info.name, info.kind, str(info.n_classes or "?"), info.description)
    console.print(table)
    for info in infos:
        if info.note:
            console.print(f"{info.name}: {info.note}", markup=False, highlight=False)
