"""`perceptalign rtify fit` and `perceptalign rtify compare`: the RTify experiment on human RDM RTs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from perceptalign.cli.errors import exit_on_error
from perceptalign.cli.progress import phase_progress
from perceptalign.cli.rtify import console, rtify_app
from perceptalign.io import PerceptAlignError, ensure_output_dir, write_text_atomic

if TYPE_CHECKING:
    from perceptalign.rtify.experiments.rdm import FitConfig

_MODELS = ("gru",)


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


RTUnitOption = Annotated[
    str,
    typer.Option(
        "--rt-unit",
        help="Unit of the reaction times in a --data file: s (seconds) or ms (milliseconds, converted).",
    ),
]

ThreadsOption = Annotated[
    int,
    typer.Option(
        "--threads",
        help="torch CPU threads (default 1). A fit's optimisation path depends on the rounding of parallel "
        "sums, so the same seed gives the same numbers only at the same thread count: 1 makes results "
        "reproducible across machines, and on a busy 2-core machine it was 4x faster than 2.",
        min=1,
    ),
]


def use_threads(threads: int) -> None:
    """Set torch's CPU thread count for this command (the CLI's choice; library code never changes it)."""
    import torch

    torch.set_num_threads(threads)


def load_splits(
    data: str,
    data_path: Path | None,
    rt_unit: str = "s",
    windows: Sequence[FitConfig] = (),
    *,
    unseen_test_conditions: bool = False,
):  # -> tuple[DataFrame, DataFrame]
    """The train and test splits of ``--data``, checked before any progress bar or work.

    Every row must be labelled train or test. The splits are checked against each other: numeric
    coherences in range, each training coherence tested, and each test coherence trained unless
    ``unseen_test_conditions`` (what `rtify fit` allows, see ``fit_conditions``). RTs are refused beyond
    the window of each fit setting in ``windows`` (commands that cannot count them yet)."""
    from perceptalign.rtify.experiments.rdm import check_human_window, check_split_tables
    from perceptalign.rtify.experiments.rdm.fit_experiment import fit_conditions
    from perceptalign.rtify.trials import (
        RT_DATASETS,
        RT_UNITS,
        check_split_column,
        load_rt_dataset,
        split_trials,
    )

    if rt_unit not in RT_UNITS:
        raise PerceptAlignError(f"--rt-unit must be s or ms, got {rt_unit!r}.")
    if data not in RT_DATASETS and not Path(data).exists():
        raise PerceptAlignError(
            f"unknown data {data!r}: use a registered dataset ({', '.join(sorted(RT_DATASETS))}) or the path "
            "of a CSV file (columns split, coherence_pct, signed_rt_s; or split, condition, rt_s, correct)."
        )
    if data_path is not None and data not in RT_DATASETS:
        raise PerceptAlignError(
            "--data-path locates a registered dataset; with a CSV path in --data, drop it."
        )
    if data in RT_DATASETS and rt_unit != "s":
        raise PerceptAlignError(f"{data} is a registered dataset in seconds; drop --rt-unit {rt_unit}.")
    table = load_rt_dataset(data, path=data_path, rt_unit=rt_unit)  # type: ignore[arg-type]
    if "split" not in table.columns:
        raise PerceptAlignError(
            f"{data}: the table has no 'split' column; RTify fits on 'train' and evaluates on 'test' trials, "
            "so add a split column with those values."
        )
    source = Path(data).name if data not in RT_DATASETS else data
    check_split_column(table, name=source)
    train, test = split_trials(table, "train"), split_trials(table, "test")
    if unseen_test_conditions:
        fit_conditions(train, test, source=source)
    else:
        check_split_tables(train, test, source=source)
    for config in windows:
        check_human_window(train, config, name=f"{source}: human training trials")
        check_human_window(test, config, name=f"{source}: human test trials")
    return train, test


@rtify_app.command("fit")
def fit(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (fit.json and figures).")],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Registered dataset name (rdm-human) or a CSV path with a split column (train/test). A "
            "test coherence without training trials is predicted by every method from the coherence "
            "(labelled, non-numeric conditions are refused: no method can take them). RTs beyond the "
            "2.5 s window are kept and counted (per condition in fit.json), not dropped.",
        ),
    ] = "rdm-human",
    model: Annotated[
        str, typer.Option("--model", help="Backbone: gru (abstract RDM evidence task).")
    ] = "gru",
    objective: Annotated[
        str,
        typer.Option("--objective", help="human: fit the head to human RTs; self-penalty: no human data."),
    ] = "human",
    loss: Annotated[
        str,
        typer.Option(
            "--loss", help="Human-fit distance: wasserstein (default), mse (published) or quantile."
        ),
    ] = "wasserstein",
    penalty: Annotated[
        str, typer.Option("--penalty", help="Self-penalty: margin (published), tau or p_correct.")
    ] = "margin",
    lam: Annotated[float, typer.Option("--lam", help="Self-penalty weight λ (τ in steps).")] = 0.0035,
    steps: Annotated[int, typer.Option("--steps", help="Optimisation steps of the RTify head.", min=1)] = 200,
    gru_steps: Annotated[int, typer.Option("--gru-steps", help="GRU training steps (cached).", min=1)] = 600,
    hidden_size: Annotated[
        int,
        typer.Option(
            "--hidden-size", help="Units of the GRU integrating the motion-energy channels (cached).", min=1
        ),
    ] = 32,
    trials: Annotated[
        int, typer.Option("--trials", help="Simulated training trials per coherence for the fits.", min=2)
    ] = 250,
    eval_trials: Annotated[
        int, typer.Option("--eval-trials", help="Simulated evaluation trials per coherence.", min=2)
    ] = 2000,
    evidence: Annotated[
        str, typer.Option("--evidence", help="Evidence function: linear (published) or increment.")
    ] = "linear",
    urgency: Annotated[
        bool,
        typer.Option(
            "--urgency/--no-urgency",
            help="Give the head a learnable urgency gain Φ·exp(r·t), i.e. a bound θ·exp(−r·t) that collapses "
            "at a fitted rate r (one more parameter).",
        ),
    ] = False,
    lr_schedule: Annotated[
        str,
        typer.Option(
            "--lr-schedule",
            help="Head learning rate over the fit: constant (default) or cosine (annealed to 0 by the "
            "last step).",
        ),
    ] = "constant",
    fit_gain: Annotated[
        bool,
        typer.Option(
            "--fit-gain/--no-fit-gain",
            help="Fit the stimulus gain with the head (the GRU re-run on the same noise with its signal "
            "scaled by a fitted factor): the counterpart of the DDM's fitted drift per coherence (one "
            "parameter).",
        ),
    ] = False,
    drift_variability: Annotated[
        bool,
        typer.Option(
            "--drift-variability/--no-drift-variability",
            help="Give the head a fitted across-trial drift sd s_v (the DDM's drift variability: each "
            "trial's evidence gets a constant offset s_v·dt·z, z ~ N(0, 1); one more parameter).",
        ),
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (GRU, trials, fits).")] = 0,
    seeds: Annotated[
        int,
        typer.Option(
            "--seeds",
            help="Repeat the experiment for seeds --seed … --seed + N − 1 (GRU, head, simulations; the DDMs "
            "are fitted once); summary.md: mean ± sd over seeds, bootstrap intervals, the noise floor.",
            min=1,
        ),
    ] = 1,
    baselines: Annotated[
        bool,
        typer.Option("--baselines/--no-baselines", help="Also fit entropy, evidential and DDM baselines."),
    ] = True,
    data_path: Annotated[
        Path | None, typer.Option("--data-path", help="Where the registered dataset's CSV lies.")
    ] = None,
    cache: Annotated[
        Path | None, typer.Option("--cache", help="Folder for trained GRU weights (default: toolkit cache).")
    ] = None,
    rt_unit: RTUnitOption = "s",
    threads: ThreadsOption = 1,
) -> None:
    """Fit RTify on the abstract RDM task to human RTs (or self-penalised) and compare with baselines."""
    from perceptalign.rtify.experiments.rdm import FitConfig
    from perceptalign.rtify.experiments.rdm.replicates import run_fit_seeds, write_seeds_outputs
    from perceptalign.rtify.experiments.rdm.task import GRUTrainConfig

    use_threads(threads)
    with exit_on_error():
        if model not in _MODELS:
            raise PerceptAlignError(f"unknown model {model!r}: choose one of {list(_MODELS)}.")
        config = FitConfig(
            objective=objective,
            loss=loss,
            penalty=penalty,
            lam=lam,
            evidence=evidence,  # type: ignore[arg-type]
            urgency=urgency,
            drift_variability=drift_variability,
            fit_gain=fit_gain,
            lr_schedule=lr_schedule,  # type: ignore[arg-type]
            head_steps=steps,
            n_train=trials,
            n_eval=eval_trials,
            seed=seed,
        )
        gru = GRUTrainConfig(hidden_size=hidden_size, steps=gru_steps, seed=seed)
        human_train, human_test = load_splits(data, data_path, rt_unit, unseen_test_conditions=True)
        ensure_output_dir(out)
        if cache is not None:
            ensure_output_dir(cache, label="`cache`")
        progress, update = phase_progress(console, label_width=13)
        with progress:
            replicated = run_fit_seeds(
                human_train,
                human_test,
                config,
                seeds,
                gru=gru,
                baselines=baselines,
                cache=cache,
                progress=update,
            )
        paths = write_seeds_outputs(replicated, config, human_test, out)

    report = replicated.runs[0].report
    title = f"RTify ({objective}, loss {loss}) vs human test trials" + (f", seed {seed}" if seeds > 1 else "")
    table = fit_table(report, title=title)
    console.print(table)
    for note in report_notes(report):
        console.print(f"note: {note}", markup=False)
    runtime = ", ".join(f"{k} {v:.1f} s" for k, v in report["runtime_s"].items())
    console.print(f"runtime: {runtime}")
    console.print("wrote " + ", ".join(str(p) for p in paths))


def report_notes(report: dict) -> list[str]:
    """The notes of a fit.json (data, then per method), for the terminal."""
    from perceptalign.rtify.experiments.rdm.config import METHOD_LABELS

    notes = list(report.get("data", {}).get("notes", []))
    entries = [(report["model"], report["rtify"]), *report.get("baselines", {}).items()]
    for name, entry in entries:
        notes += [f"{METHOD_LABELS.get(name, name)}: {n}" for n in entry.get("notes", [])]
    return notes


#: Method names short enough for an 80-column terminal (the files keep the long ones).
TERMINAL_LABELS = {
    "rtify-human": "RTify",
    "rtify-self-penalty": "RTify-SP",
    "entropy": "entropy",
    "evidential": "evidential",
    "ddm": "DDM",
    "ddm-simple": "DDM-simple",
}


def fit_table(report: dict, title: str) -> Table:
    """Means over coherences per method, readable at 80 columns (the caption explains the short headers)."""
    from perceptalign.rtify.experiments.rdm.config import METHOD_LABELS

    table = Table(
        title=title,
        caption="means over coherences · acc = accuracy · W1 = Wasserstein-1 of signed RTs (s) · "
        "hist = summed histogram MSE · no dec = share of trials that never decided",
    )
    table.add_column("method", no_wrap=True)
    for name in ("acc", "W1 (s)", "KS", "hist", "test loss", "no dec"):
        table.add_column(name, justify="right", no_wrap=True)
    entries = [(report["model"], report["rtify"]), *report["baselines"].items()]
    for name, entry in entries:
        s = entry["summary"]
        table.add_row(
            TERMINAL_LABELS.get(name, METHOD_LABELS.get(name, name)),
            _fmt(s.get("mean_accuracy_model")),
            _fmt(s.get("mean_wasserstein")),
            _fmt(s.get("mean_ks")),
            f"{s['hist_mse_sum']:.1e}",
            _fmt(entry["test_loss"]),
            _fmt(entry["no_decision_rate"]),
        )
    return table


@rtify_app.command("compare")
def compare(
    dirs: Annotated[list[Path], typer.Argument(help="Fit directories written by `rtify fit`.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write the comparison as Markdown.")
    ] = None,
) -> None:
    """One table per coherence (human vs every method: accuracy, median correct RT, W1) and the best fit."""
    from perceptalign.rtify.experiments.rdm import compare_fits, comparison_markdown, verdict_line

    with exit_on_error():
        tables, summary, best = compare_fits(dirs)
        if out is not None:
            if out.is_dir():
                raise PerceptAlignError(f"--out {out} is a folder; give the path of a Markdown file.")
            ensure_output_dir(out.parent)
    for cond, frame in tables.items():
        table = Table(title=f"coherence {cond:g}%")
        for name in ("method", "accuracy", "median correct RT (s)", "W1 (s)"):
            table.add_column(name, justify="right")
        for method, row in frame.iterrows():
            w1 = "—" if method == "human" else _fmt(row["wasserstein"])
            table.add_row(str(method), _fmt(row["accuracy"]), _fmt(row["median_rt_correct"]), w1)
        console.print(table)
    table = Table(title="summary over coherences")
    for name in ("method", "mean W1 (s)", "mean |Δ accuracy|"):
        table.add_column(name, justify="right")
    for method, row in summary.iterrows():
        table.add_row(str(method), _fmt(row["mean_wasserstein"]), _fmt(row["mean_abs_accuracy_error"]))
    console.print(table)
    console.print(verdict_line(best))
    if out is not None:
        write_text_atomic(out, comparison_markdown(tables, summary, best))
        console.print(f"wrote {out}")
