"""`perceptalign ntps probe`: held-out linear probes on cached mean-pooled features, per layer."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from perceptalign.cli.errors import exit_on_error
from perceptalign.cli.ntps import console, ntps_app, parse_int_list, print_recipe_note, run_with_progress
from perceptalign.cli.options import (
    DatasetOption,
    DeviceMapOption,
    DeviceOption,
    DtypeOption,
    LabelColumnOption,
    LayersOption,
    MaxLengthOption,
    ModelOption,
    OverwriteOption,
    RecipeOption,
    RevisionOption,
    TextColumnOption,
    TokenBudgetOption,
    TokenizerOption,
    TrustRemoteCodeOption,
)


@ntps_app.command("probe")
def probe(
    dataset: DatasetOption,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output directory (probe.json, probe.csv, probe_layers.png, feature "
            "caches). Put it beside `ntps score`'s ntps.json to overlay NTPS in the figure.",
        ),
    ],
    model: ModelOption = "smollm2-135m",
    split: Annotated[str, typer.Option(help="Split the probes are fit on.")] = "train",
    eval_split: Annotated[
        str | None,
        typer.Option(
            help="Held-out split the probes are scored on. Default: `test` when the dataset "
            "has one, else a stratified 30% of --split (seed 42). Naming a split that does "
            "not exist is an error."
        ),
    ] = None,
    test_fraction: Annotated[
        float | None,
        typer.Option(
            help="Instead of an eval split, hold out this stratified fraction of --split "
            "(by text hash, seed 42) — for a single file without a `split` column."
        ),
    ] = None,
    layers: LayersOption = None,
    max_samples: Annotated[
        int | None,
        typer.Option(help="Use at most this many texts of each split (seeded stratified subset).", min=1),
    ] = None,
    max_length: MaxLengthOption = None,
    token_budget: TokenBudgetOption = 2048,
    dtype: DtypeOption = "auto",
    device: DeviceOption = "auto",
    device_map: DeviceMapOption = None,
    cv: Annotated[
        int | None,
        typer.Option(
            help="Also report K-fold stratified cross-validated accuracy on --split "
            "(mean ± sd); every class needs ≥ K training texts."
        ),
    ] = None,
    max_iter: Annotated[
        int | None,
        typer.Option(
            help="Iteration cap of the logistic-regression fits (unset: the --recipe's: lbfgs 2000; the "
            "paper's saga 1000).",
            min=1,
        ),
    ] = None,
    ntps_fraction: Annotated[
        float,
        typer.Option(help="Fraction f of rank(V) whose NTPS is plotted/tabled when OUT/ntps.json exists."),
    ] = 0.5,
    text_column: TextColumnOption = None,
    label_column: LabelColumnOption = None,
    revision: RevisionOption = None,
    trust_remote_code: TrustRemoteCodeOption = False,
    tokenizer: TokenizerOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the --max-samples subsets and of the CV folds.")] = 0,
    overwrite: OverwriteOption = False,
    recipe: RecipeOption = "default",
) -> None:
    """Fit linear probes per layer on --split and score them on held-out data.

    Per layer: standardize + L2 logistic regression (C = 1; lbfgs, or the published saga with
    --recipe paper) → accuracy and log-loss, and standardize + least squares on one-hot targets → MSE
    (mean over samples and classes). The published probes were
    scored on their own training data; those scores are shown as train_* so their saturation is visible.
    Features (masked mean of each layer's hidden states) are cached in OUT/features_{split}.safetensors
    and reused on reruns with the same model, data and tokenisation; a cache made otherwise is refused
    (naming what differs) unless --overwrite recomputes it.
    """
    from perceptalign.ntps.jobs.probe import ProbeConfig, run_probe

    with exit_on_error():
        config = ProbeConfig(
            model=model,
            dataset=dataset,
            out=out,
            split=split,
            eval_split=eval_split,
            test_fraction=test_fraction,
            layers=parse_int_list(layers, "--layers"),
            max_samples=max_samples,
            max_length=max_length,
            token_budget=token_budget,
            dtype=dtype or "auto",
            device=device,
            device_map=device_map,
            cv=cv,
            max_iter=max_iter,
            text_column=text_column,
            label_column=label_column,
            revision=revision,
            trust_remote_code=trust_remote_code,
            tokenizer=tokenizer,
            seed=seed,
            ntps_fraction=ntps_fraction,
            overwrite=overwrite,
            recipe=recipe,
        )
    print_recipe_note(recipe)
    started = time.perf_counter()
    result = run_with_progress(lambda **callbacks: run_probe(config, **callbacks), "features")
    print_probe_table(result.results)
    console.print(
        f"wrote {out / 'probe.json'}, {out / 'probe.csv'}, {out / 'probe_layers.png'} "
        f"in {time.perf_counter() - started:.1f} s"
    )
    best = result.results["best_layer"]
    row = next(r for r in result.results["rows"] if r["layer"] == best)
    console.print(
        f"best layer {best}: held-out accuracy {row['accuracy']:.4f} (train {row['train_accuracy']:.4f}, "
        f"majority class {result.results['majority_class_accuracy']:.4f})"
    )


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def print_probe_table(results: dict) -> None:
    evaluation = results["evaluation"]["description"]
    table = Table(
        title=f"Linear probes — {results['model']} on {results['dataset']}: fit on {results['n_train']} "
        f"{results['split']!r} texts, scored on {results['n_test']} ({evaluation}), "
        f"{results['n_classes']} classes"
    )
    columns = results["columns"]
    headers = [
        ("layer", "layer"),
        ("accuracy", "acc"),
        ("log_loss", "log-loss"),
        ("mse", "mse"),
        ("train_accuracy", "train acc"),
        ("train_mse", "train mse"),
    ]
    if "cv_accuracy_mean" in columns:
        headers.append(("cv_accuracy_mean", "cv acc ± sd"))
    if "ntps" in columns:
        headers.append(("ntps", f"ntps@{results['ntps_overlay']['fraction']:g}"))
    for _, title in headers:
        table.add_column(title, justify="right")
    for row in results["rows"]:
        cells = []
        for key, _ in headers:
            if key == "layer":
                cells.append(str(row["layer"]) + ("" if row["converged"] else "*"))
            elif key == "cv_accuracy_mean":
                cells.append(f"{_fmt(row[key])} ± {_fmt(row['cv_accuracy_sd'])}")
            else:
                cells.append(_fmt(row[key]))
        table.add_row(*cells)
    console.print(table)
    if not all(row["converged"] for row in results["rows"]):
        console.print(
            f"[yellow]*[/yellow] the {results.get('logistic', {}).get('solver', 'lbfgs')} fit hit "
            "--max-iter on this layer; raise --max-iter."
        )
