"""`perceptalign rtify images`: RTify on natural images (recurrent CNN, per-image RT fits, saliency)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from perceptalign.cli.errors import exit_on_error
from perceptalign.cli.progress import phase_progress
from perceptalign.cli.rtify import console, rtify_app
from perceptalign.io import ensure_output_dir

_HELP = (
    "Train (or load from cache) a small recurrent CNN, fit RTify heads and a logit-driven Wong–Wang race "
    "to per-image RTs, sweep the self-penalised head, and draw saliency maps.\n\n"
    "Without --rt-table the RTs are GENERATED from a known process (RT = t0 + a·difficulty + noise, the "
    "difficulty being an independent teacher's predictive entropy) and written to synthetic_rts.csv, so the "
    "held-out Pearson r measures how well the fit recovers a known ranking. A real table is a CSV with "
    "columns image_id (the test split's ids, e.g. test-00042) and rt_s; several rows per image are reduced "
    "to the median.\n\n"
    "Each decider is scored on held-out images only (never on the images it was fitted to): Pearson r with a "
    "bootstrap 95 % interval over images, the same for a control fitted to shuffled RTs, and the paired "
    "Fisher-z difference between them (the fit beats the control beyond image-sampling noise when its "
    "interval lies above 0).\n\n"
    "Writes DIR/images.json (accuracy per step, the held-out scores of each decider, the self-penalised "
    "sweep), item_rts.csv, rt_scatter.png and saliency.png."
)


@rtify_app.command("images", help=_HELP)
def images(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    dataset: Annotated[
        str, typer.Option("--dataset", "-d", help="fashion-mnist (Debian dataset-fashion-mnist) or digits.")
    ] = "fashion-mnist",
    data_path: Annotated[
        Path | None,
        typer.Option("--data-path", help="Directory with the Fashion-MNIST idx files (default: see docs)."),
    ] = None,
    rt_table: Annotated[
        Path | None, typer.Option("--rt-table", help="CSV with image_id, rt_s (default: generate RTs).")
    ] = None,
    steps: Annotated[int, typer.Option("--steps", help="Recurrent steps of the CNN.", min=1)] = 6,
    width: Annotated[int, typer.Option("--width", help="CNN stem width (channels).", min=1)] = 16,
    epochs: Annotated[int, typer.Option("--epochs", help="Backbone training epochs.", min=1)] = 2,
    train_limit: Annotated[
        int | None, typer.Option("--train-limit", help="Train the CNN on at most this many images.", min=1)
    ] = None,
    items: Annotated[
        int, typer.Option("--items", help="Test images that get generated RTs (no --rt-table).", min=10)
    ] = 4000,
    fit_epochs: Annotated[int, typer.Option("--fit-epochs", help="RTify head fitting epochs.", min=0)] = 150,
    ww_epochs: Annotated[int, typer.Option("--ww-epochs", help="Wong–Wang fitting epochs.", min=0)] = 40,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Image resamples behind each held-out 95 % interval.", min=100)
    ] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (backbone, splits, RTs, fits).")] = 0,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="torch CPU threads. On a busy shared machine 1 is often several times faster than more.",
            min=1,
        ),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Retrain the CNN even if cached.")] = False,
    rt_unit: Annotated[
        str,
        typer.Option(
            "--rt-unit", help="Unit of the --rt-table reaction times: s (seconds) or ms (converted)."
        ),
    ] = "s",
) -> None:
    """Parse options, run the experiment with progress bars, print the summary."""
    import torch

    from perceptalign.io import PerceptAlignError
    from perceptalign.rtify.experiments.natural import (
        BackboneConfig,
        ImagesExperiment,
        read_rt_table,
        run_images_experiment,
    )

    if threads is not None:
        torch.set_num_threads(threads)
    with exit_on_error():
        if rt_unit not in ("s", "ms"):
            raise PerceptAlignError(f"--rt-unit must be s or ms, got {rt_unit!r}.")
        if rt_table is None and rt_unit != "s":
            raise PerceptAlignError("--rt-unit applies to --rt-table; without a table, drop it.")
        config = ImagesExperiment(
            dataset=dataset,
            data_path=None if data_path is None else str(data_path),
            rt_table=None if rt_table is None else str(rt_table),
            backbone=BackboneConfig(
                width=width, n_steps=steps, epochs=epochs, max_train=train_limit, seed=seed
            ),
            items=items,
            fit_epochs=fit_epochs,
            ww_epochs=ww_epochs,
            use_cache=not no_cache,
            seed=seed,
            rt_unit=rt_unit,
            n_bootstrap=bootstrap,
        )
        if rt_table is not None:  # read here too, so that a bad table stops before any progress bar
            read_rt_table(rt_table, rt_unit=rt_unit)
        ensure_output_dir(out)
        bar, update = phase_progress(console)

        def progress(stage: str, done: int, total: int) -> None:
            update(stage, done, total, "")

        with bar:
            summary = run_images_experiment(config, out, progress=progress)

    acc = ", ".join(f"{a:.3f}" for a in summary["accuracy_per_step"])
    console.print(f"{summary['dataset']}: test accuracy per step [{acc}]")
    table = Table(title=f"held-out Pearson r, model vs {summary['rt_source']['kind']} RT (95 % intervals)")
    columns = ("decider", "r held-out", "r before fit", "r shuffled control", "Δz vs control", "accuracy")
    for name in (*columns, "no decision"):
        table.add_column(name, justify="right")

    def with_ci(value: float | None, ci: list[float] | None) -> str:
        return "—" if value is None or ci is None else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"

    for key in ("rtify", "rtify_random_init", "wong_wang"):
        s = summary[key]
        table.add_row(
            key,
            with_ci(s["r_heldout"], s["r_heldout_ci95"]),
            f"{s['r_initial_heldout']:.3f}",
            with_ci(s["r_shuffled_heldout"], s["r_shuffled_heldout_ci95"]),
            with_ci(s["z_diff_vs_shuffled"], s["z_diff_vs_shuffled_ci95"]),
            f"{s['accuracy_heldout']:.3f}",
            f"{s['no_decision_rate_heldout']:.3f}",
        )
    console.print(table)
    sp = Table(title="self-penalised head (test set)")
    for name in ("penalty", "λ", "mean τ (steps)", "mean RT (s)", "accuracy", "no decision"):
        sp.add_column(name, justify="right")
    for row in summary["self_penalised"]:
        sp.add_row(
            row["kind"],
            f"{row['lam']:g}",
            f"{row['mean_tau']:.2f}",
            f"{row['mean_rt_s']:.3f}",
            f"{row['accuracy']:.3f}",
            f"{row['no_decision_rate']:.3f}",
        )
    console.print(sp)
    console.print(f"total {summary['total_s']:.0f} s; wrote {out / 'images.json'} and figures in {out}")
