"""`perceptalign ntps peers | study | report | prescreen`: the comparison study and what it says."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from perceptalign.cli.errors import exit_on_error
from perceptalign.cli.ntps import (
    console,
    ntps_app,
    parse_float_list,
    parse_int_list,
    print_recipe_note,
    print_status,
    run_with_progress,
)
from perceptalign.cli.options import (
    DatasetOption,
    DeviceMapOption,
    DeviceOption,
    DtypeOption,
    FractionsOption,
    LabelColumnOption,
    LayersOption,
    MaxLengthOption,
    MaxSamplesPerDatasetOption,
    ModelOption,
    OverwriteOption,
    RecipeOption,
    RevisionOption,
    StatsMemoryOption,
    SubsetSeedOption,
    TextColumnOption,
    TokenBudgetOption,
    TokenizerOption,
    TopKOption,
    TrustRemoteCodeOption,
)
from perceptalign.cli.progress import progress_bar


def _names(value: str, what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise typer.BadParameter(f"{what} needs at least one comma-separated name (got {value!r})")
    return names


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


@ntps_app.command("peers")
def peers(
    dataset: DatasetOption,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output directory (peers.json, peers.csv; shares the "
            "feature cache with `ntps probe` in the same directory).",
        ),
    ],
    model: ModelOption = "smollm2-135m",
    split: Annotated[str, typer.Option(help="Split whose features the metrics read.")] = "train",
    metrics: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated peer metrics (default all: logme, h_score, "
            "h_score_shrinkage, nce, leep, gbc, transrate, transrate_release, rankme, alpha_req, "
            "lidar, knn_accuracy, fisher_ratio, cv_logistic_accuracy)."
        ),
    ] = None,
    layers: LayersOption = None,
    max_samples: MaxSamplesPerDatasetOption = None,
    max_length: MaxLengthOption = 512,
    token_budget: TokenBudgetOption = 2048,
    dtype: DtypeOption = "auto",
    device: DeviceOption = "auto",
    device_map: DeviceMapOption = None,
    top_k: TopKOption = 256,
    text_column: TextColumnOption = None,
    label_column: LabelColumnOption = None,
    revision: RevisionOption = None,
    trust_remote_code: TrustRemoteCodeOption = False,
    tokenizer: TokenizerOption = None,
    seed: SubsetSeedOption = 0,
    overwrite: OverwriteOption = False,
) -> None:
    """Every peer transferability metric per layer on the cached mean-pooled features.

    NCE and LEEP come from the model's own next-token distribution after the last real token of each text
    (one full-LM pass, cached as lm_probs_<split>.safetensors) and are shown on the last layer's row.
    """
    from perceptalign.ntps.jobs.peers import PeersConfig, run_peers

    with exit_on_error():
        config = PeersConfig(
            model=model,
            dataset=dataset,
            out=out,
            split=split,
            layers=parse_int_list(layers, "--layers"),
            metrics=_names(metrics, "--metrics") if metrics else None,
            max_samples=max_samples,
            max_length=max_length,
            token_budget=token_budget,
            dtype=dtype or "auto",
            device=device,
            device_map=device_map,
            top_k=top_k or None,
            text_column=text_column,
            label_column=label_column,
            revision=revision,
            trust_remote_code=trust_remote_code,
            tokenizer=tokenizer,
            seed=seed,
            overwrite=overwrite,
        )
    started = time.perf_counter()
    result = run_with_progress(lambda **callbacks: run_peers(config, **callbacks), "forward passes")
    table = Table(
        title=f"Peer metrics — {result.results['model']} on {result.results['dataset']} "
        f"({result.results['n_texts']} texts)"
    )
    columns = list(result.table.columns)
    for column in columns:
        table.add_column(column, justify="right")
    for record in result.table.to_dict(orient="records"):
        table.add_row(*[str(record["layer"])] + [_f(record[c]) for c in columns[1:]])
    console.print(table)
    console.print(f"wrote {out / 'peers.json'}, {out / 'peers.csv'} in {time.perf_counter() - started:.1f} s")


@ntps_app.command("study")
def study(
    models: Annotated[
        str,
        typer.Option(
            "--models", help="Comma-separated models (hub ids, local directories or embedded aliases)."
        ),
    ],
    datasets: Annotated[
        str,
        typer.Option(
            "--datasets", help="Comma-separated datasets (registry names, hub datasets or local files)."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Study directory: results store (cells/), per-cell "
            "runs (runs/), study.json, results.csv. Rerun to resume.",
        ),
    ],
    measure: Annotated[
        str, typer.Option(help="Comma-separated measures: ntps, probe, peers, lora.")
    ] = "ntps,probe,peers",
    layers: LayersOption = None,
    fractions: FractionsOption = None,
    max_samples: MaxSamplesPerDatasetOption = None,
    max_length: MaxLengthOption = None,
    token_budget: TokenBudgetOption = 2048,
    dtype: DtypeOption = "auto",
    device: DeviceOption = "auto",
    device_map: DeviceMapOption = None,
    stats_memory: StatsMemoryOption = None,
    peer_metrics: Annotated[
        str | None, typer.Option(help="Comma-separated peer metrics (default all).")
    ] = None,
    top_k: TopKOption = 256,
    lora_steps: Annotated[int, typer.Option(help="LoRA optimizer steps (the paper: 5000).")] = 5000,
    lora_batch_size: Annotated[int, typer.Option(help="LoRA batch size (the paper: 1).")] = 1,
    lora_lr: Annotated[float, typer.Option(help="LoRA learning rate.")] = 1e-4,
    lora_r: Annotated[int, typer.Option(help="LoRA rank r of the adapters (the paper: 32).")] = 32,
    lora_max_eval_samples: Annotated[
        int | None, typer.Option(help="Score LoRA on at most this many held-out texts.")
    ] = None,
    seed: SubsetSeedOption = 0,
    trust_remote_code: TrustRemoteCodeOption = False,
    stop_on_error: Annotated[
        bool,
        typer.Option(
            "--stop-on-error", help="Stop at the first failing cell (default: record it and go on)."
        ),
    ] = False,
    recipe: RecipeOption = "default",
) -> None:
    """Run NTPS, probes, peers and LoRA over models × datasets, skipping what is already stored.

    Each finished cell is stored atomically; an interrupted study resumes where it stopped (the per-cell
    jobs also reuse their caches). Settings are fixed per study directory.
    """
    from perceptalign.ntps.jobs.study import StudyConfig, iter_cells, run_study
    from perceptalign.ntps.subspace import DEFAULT_FRACTIONS

    with exit_on_error():
        config = StudyConfig(
            models=_names(models, "--models"),
            datasets=_names(datasets, "--datasets"),
            out=out,
            measures=_names(measure, "--measure"),
            layers=parse_int_list(layers, "--layers"),
            fractions=parse_float_list(fractions, "--fractions") or list(DEFAULT_FRACTIONS),
            max_samples=max_samples,
            max_length=max_length,
            token_budget=token_budget,
            dtype=dtype or "auto",
            device_map=device_map,
            stats_memory=stats_memory,
            peer_metrics=_names(peer_metrics, "--peer-metrics") if peer_metrics else None,
            top_k=top_k or None,
            lora_steps=lora_steps,
            lora_batch_size=lora_batch_size,
            lora_lr=lora_lr,
            lora_r=lora_r,
            lora_alpha=float(lora_r),
            lora_max_eval_samples=lora_max_eval_samples,
            device=device,
            seed=seed,
            trust_remote_code=trust_remote_code,
            keep_going=not stop_on_error,
            recipe=recipe,
        )
    print_recipe_note(recipe)
    started = time.perf_counter()
    progress = progress_bar(console, label="cells", field="where")
    with exit_on_error():
        total = len(list(iter_cells(config)))
        with progress:
            task = progress.add_task("cells", total=total, where="")

            def on_cell(event: Any) -> None:
                where = f"{event.measure} · {event.model} · {event.dataset}"
                if event.state == "running":
                    progress.update(task, where=where)
                elif event.state == "failed":
                    progress.console.print(f"[yellow]failed[/yellow] {where}: {event.error}")
                    progress.advance(task)
                else:
                    if event.state == "done":
                        progress.console.print(f"[green]done[/green] {where} ({event.seconds:.1f} s)")
                    progress.advance(task)

            result = run_study(config, on_cell=on_cell, on_status=print_status)
    console.print(
        f"{len(result.ran)} cells run, {len(result.skipped)} already stored, {len(result.failed)} failed, in "
        f"{time.perf_counter() - started:.1f} s. Results: {out / 'results.csv'}; next: "
        f"`perceptalign ntps report {out}`."
    )
    if result.failed:
        console.print(f"[yellow]failed cells are listed in {out / 'failures.json'}[/yellow]")
        raise typer.Exit(code=1)


@ntps_app.command("report")
def report(
    directory: Annotated[Path, typer.Argument(help="Study directory written by `ntps study`.")],
    fixed_layer: Annotated[str, typer.Option(help="A-priori layer: last, middle or an index.")] = "last",
    fixed_fraction: Annotated[float, typer.Option(help="A-priori fraction f of rank(V).")] = 0.5,
    probe_layer: Annotated[
        str, typer.Option(help="Layer of the probe-accuracy target: last, middle or an index.")
    ] = "last",
    score_metric: Annotated[
        str, typer.Option(help="NTPS variant: ntps, ntps_orthonormal or ntps_probe.")
    ] = "ntps",
    permutations: Annotated[int, typer.Option(help="Permutations of every null distribution.")] = 2000,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples of every interval.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of permutations and bootstrap.")] = 0,
    figures: Annotated[bool, typer.Option(help="Draw the figures (off: numbers and tables only).")] = True,
) -> None:
    """Write DIR/report.html (self-contained) and DIR/report.json from a study's stored results.

    Reads the study's files only (no model is loaded), so the single-word Fig 1 is not drawn.
    """
    from perceptalign.ntps.jobs.report import ReportConfig, build_report

    def layer(value: str) -> str | int:
        return value if value in ("last", "middle") else int(value) if value.isdigit() else value

    with exit_on_error():
        config = ReportConfig(
            directory=directory,
            fixed_layer=layer(fixed_layer),
            fixed_fraction=fixed_fraction,
            probe_layer=layer(probe_layer),
            score_metric=score_metric,
            n_permutations=permutations,
            n_bootstrap=bootstrap,
            seed=seed,
            figures=figures,
        )
    with exit_on_error():
        result = build_report(config, on_status=print_status)
    for line in result.report["statements"]:
        console.print(f"• {line}")
    for note in result.report.get("figure_notes", []):
        console.print(f"[yellow]{note}[/yellow]")
    console.print(f"wrote {result.html_path} and {result.json_path}")


@ntps_app.command("prescreen")
def prescreen(
    datasets: Annotated[str, typer.Option("--datasets", help="Comma-separated candidate datasets.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output directory (prescreen.json, prescreen.csv, NTPS runs).")
    ],
    model: ModelOption = "smollm2-135m",
    study_dir: Annotated[
        Path | None,
        typer.Option(
            "--study", help="A study directory: reuse its NTPS and fit the NTPS → LoRA-gain relation on it."
        ),
    ] = None,
    layer: Annotated[
        str, typer.Option(help="Layer the datasets are ranked at: last, middle or an index.")
    ] = "last",
    fraction: Annotated[float, typer.Option(help="Fraction f of rank(V) the datasets are ranked at.")] = 0.5,
    cost_json: Annotated[
        Path | None,
        typer.Option(
            "--cost-json",
            help="Output of `benchmarks/ntps_cost.py --json` with the probe/LoRA cost ratios to NTPS, used "
            "when the study has no measured cell times (default: results/ntps-offline-study/cost.json).",
        ),
    ] = None,
    layers: LayersOption = None,
    max_samples: MaxSamplesPerDatasetOption = None,
    max_length: MaxLengthOption = 512,
    token_budget: TokenBudgetOption = 2048,
    dtype: DtypeOption = "float32",
    seed: SubsetSeedOption = 0,
    trust_remote_code: TrustRemoteCodeOption = False,
) -> None:
    """Rank candidate datasets (and their best layers) by NTPS; predict the LoRA gain; say what it saved."""
    from perceptalign.ntps.jobs.prescreen import PrescreenConfig, run_prescreen

    chosen: str | int = layer if layer in ("last", "middle") else int(layer) if layer.isdigit() else layer
    with exit_on_error():
        config = PrescreenConfig(
            model=model,
            datasets=_names(datasets, "--datasets"),
            out=out,
            study=study_dir,
            layer=chosen,
            fraction=fraction,
            cost_json=cost_json,
            layers=parse_int_list(layers, "--layers"),
            max_samples=max_samples,
            max_length=max_length,
            token_budget=token_budget,
            dtype=dtype,
            seed=seed,
            trust_remote_code=trust_remote_code,
        )
    # run_prescreen takes no on_start: the bar counts texts without a total (several NTPS runs).
    result = run_with_progress(lambda on_start, **callbacks: run_prescreen(config, **callbacks), "statistics")
    res = result.results
    table = Table(title=f"Pre-screen — {model} (NTPS at layer {config.layer}, f = {config.fraction})")
    gain = res["gain_model"]["available"]
    for column in ["rank", "dataset", "NTPS", "best layer (NTPS)", "source"] + (
        ["expected LoRA gain [95% PI]", "isotonic"] if gain else []
    ):
        table.add_column(column)
    for row in result.datasets.to_dict(orient="records"):
        cells = [
            str(row["rank"]),
            row["dataset"],
            _f(row["ntps"]),
            f"{row['best_layer']} ({_f(row['best_layer_ntps'])})",
            row["source"],
        ]
        if gain:
            cells += [
                f"{row['expected_gain']:+.3f} [{row['gain_low95']:+.3f}, {row['gain_high95']:+.3f}]",
                f"{row['expected_gain_isotonic']:+.3f}",
            ]
        table.add_row(*cells)
    console.print(table)
    if not gain:
        console.print(f"[dim]no gain prediction: {res['gain_model'].get('reason')}[/dim]")
    cost = res["cost"]
    console.print(f"NTPS took {cost['ntps_seconds']:.1f} s. Cost of the alternatives ({cost['source']}):")
    for key, seconds in cost["estimated_seconds"].items():
        console.print(
            f"  {key.replace('_', ' ')}: ≈ {seconds:.0f} s ({cost['ratios_to_ntps'][key]:.1f} × NTPS)"
        )
    console.print(f"wrote {out / 'prescreen.json'}, {out / 'prescreen.csv'}")
