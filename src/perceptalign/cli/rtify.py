"""`perceptalign rtify …` commands."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from perceptalign.cli.errors import exit_on_error, fail
from perceptalign.cli.progress import progress_bar
from perceptalign.io import atomic_path, ensure_output_dir, write_json_atomic

rtify_app = typer.Typer(
    help="RTify: differentiable decision times fitted to human reaction times.", no_args_is_help=True
)
console = Console()

_DEFAULT_COHERENCES = (0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2)


def _collect_coherences(flagged: list[float] | None, extra: list[str]) -> list[float]:
    """Values of ``--coherences``: the flag's own value(s) plus the bare numbers that follow it.

    Click options take one value per flag, so ``--coherences 0.8 1.6`` leaves ``1.6`` as an extra
    argument; this command accepts only numbers there, so anything else is an error, not a coherence.
    Every value must be a finite percentage in [0, 100] (the check every RTify command uses).
    """
    from perceptalign.rtify.trials import check_coherences

    values = list(flagged or [])
    for arg in extra:
        try:
            values.append(float(arg))
        except ValueError as exc:
            raise typer.BadParameter(
                f"unexpected argument {arg!r}: only coherence values (numbers, in %) may follow "
                "--coherences.",
                param_hint="--coherences",
            ) from exc
    if extra and not flagged:
        raise typer.BadParameter(
            f"unexpected arguments {extra}: put coherence values after --coherences.",
            param_hint="--coherences",
        )
    with exit_on_error():
        checked = check_coherences(values or _DEFAULT_COHERENCES, name="--coherences")
    repeated = sorted({c for c in checked if checked.count(c) > 1})
    if repeated:
        fail(f"--coherences lists {', '.join(f'{c:g}' for c in repeated)} more than once; give each once.")
    return checked


def check_step_ms(value: float, option: str, *, allow_zero: bool = False) -> None:
    """A step option in ms must be in (0, 50] (``allow_zero``: 0 means "skip")."""
    if allow_zero and value == 0:
        return
    if not (math.isfinite(value) and 0 < value <= 50):
        skip = " or 0 to skip" if allow_zero else ""
        fail(
            f"{option} must be in (0, 50] ms{skip}, got {value:g} (1 ms is accurate; 26.67 ms is the "
            "published step)."
        )


_SIMULATE_HELP = (
    "Simulate the two-population Wong–Wang model over coherences; write a JSON summary and a figure.\n\n"
    "simulation.json holds, per coherence, the accuracy (over decided trials), median and mean correct RT, "
    "mean error RT (RTs include the 0.1 s motor delay; null when there are no such trials) and the "
    "no-decision rate. simulation.png shows example S1(t), S2(t) with the threshold and signed RT "
    "histograms (errors on the left)."
)


@rtify_app.command(
    "simulate-ww",
    help=_SIMULATE_HELP,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": False},
)
def simulate_ww(
    ctx: typer.Context,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output directory: simulation.json and simulation.png are written here."
        ),
    ],
    coherences: Annotated[
        list[float] | None,
        typer.Option(
            "--coherences",
            "-c",
            help="Motion coherences in percent, several values after one flag: --coherences 0.8 1.6 3.2 "
            "(repeating the flag works too). Default: 0.8 1.6 3.2 6.4 12.8 25.6 51.2.",
            show_default=False,
        ),
    ] = None,
    trials: Annotated[
        int, typer.Option("--trials", "-n", help="Simulated trials per coherence.", min=1)
    ] = 1000,
    dt: Annotated[
        float,
        typer.Option(
            "--dt",
            help="Output step in ms (0 < dt <= 50); the model integrates in sub-steps of at most 1 ms, "
            "so every dt simulates the same model (only the RT grid of the trajectories changes).",
        ),
    ] = 1.0,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed; each coherence gets its own derived stream.")
    ] = 0,
    max_time: Annotated[
        float,
        typer.Option(
            "--max-time",
            help="Simulated time per trial in seconds (the stimulus stays on for 2 s); trials that have not "
            "decided by then are reported as undecided.",
        ),
    ] = 2.0,
    examples: Annotated[
        int, typer.Option("--examples", help="Example trajectories per coherence drawn in the figure.", min=0)
    ] = 3,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            "-y",
            help="Run even when the estimated run time is long (coherences × trials × steps above about "
            "30 min on 2 CPU cores); without it such runs are refused with the estimate.",
        ),
    ] = False,
) -> None:
    """Parse options, run :func:`simulate_coherences` with a progress bar, print a table, write files."""
    from perceptalign.rtify.simulate import plot_simulation, simulate_coherences, simulation_cost

    values = _collect_coherences(coherences, list(ctx.args))
    check_step_ms(dt, "--dt")
    if not (math.isfinite(max_time) and max_time > 0):
        fail(f"--max-time must be a positive number of seconds, got {max_time:g}.")
    with exit_on_error():
        cost = simulation_cost(len(values), trials, dt_ms=dt, max_time_s=max_time)
        if cost.too_large and not yes:
            fail(
                f"this run is large: {cost.describe()}. Lower --trials or --max-time, raise --dt, or pass "
                "--yes to run it anyway."
            )
        ensure_output_dir(out)
        if cost.seconds > 60:
            console.print(f"estimated size: {cost.describe()}; progress below (Ctrl-C stops).")
        progress = progress_bar(console, label="simulating", field="last", remaining=True)
        with progress:
            task = progress.add_task("simulate", total=cost.n_coherences * trials, last="")
            sweep = simulate_coherences(
                values,
                trials,
                dt_ms=dt,
                seed=seed,
                max_time_s=max_time,
                n_examples=examples,
                progress=lambda done, total, c: progress.update(task, completed=done, last=f"{c:g}%"),
            )
    write_json_atomic(out / "simulation.json", sweep.to_json())
    fig = plot_simulation(sweep)
    with atomic_path(out / "simulation.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    table = Table(title=f"Wong–Wang, dt = {dt:g} ms, {trials} trials per coherence")
    for name in (
        "coherence %",
        "accuracy",
        "median RT correct (s)",
        "mean RT correct (s)",
        "mean RT error (s)",
        "no decision",
    ):
        table.add_column(name, justify="right")

    def fmt(value: float | None) -> str:
        return "—" if value is None else f"{value:.3f}"

    for row in sweep.summary:
        table.add_row(
            f"{row['coherence_pct']:g}",
            fmt(row["accuracy"]),
            fmt(row["median_rt_correct_s"]),
            fmt(row["mean_rt_correct_s"]),
            fmt(row["mean_rt_error_s"]),
            fmt(row["no_decision_rate"]),
        )
    console.print(table)
    console.print(f"wrote {out / 'simulation.json'} and {out / 'simulation.png'}")
