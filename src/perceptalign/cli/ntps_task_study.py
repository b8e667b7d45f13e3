"""``perceptalign ntps task-study``: the pre-registered study over the carved tasks."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from perceptalign.cli.errors import exit_on_error
from perceptalign.cli.ntps import console, ntps_app, print_status
from perceptalign.cli.progress import RateProgress

_DEFAULT_PREREG = Path("results/ntps-task-study/preregistration.json")


@ntps_app.command("task-study")
def task_study(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (report.json, report.html, …).")],
    preregistration: Annotated[
        Path,
        typer.Option(
            help="The pre-registration whose declared configuration the run follows; the report copies it "
            "and lists every deviation."
        ),
    ] = _DEFAULT_PREREG,
    tasks: Annotated[
        str | None,
        typer.Option(help="Comma-separated task names (default all; a subset is reported as a deviation)."),
    ] = None,
    reanalyse: Annotated[
        bool,
        typer.Option(
            help="Redo only the declared analysis and the report files from the per-task table already in "
            "OUT/report.json (no model, no pass)."
        ),
    ] = False,
    lora_arm: Annotated[
        bool,
        typer.Option(
            help="Run the pre-registered LoRA arm (S3: 20 tasks, r = 8, 90 steps × 8; ≈ 2–4 min per task) on "
            "the study already in OUT, then redo the analysis with it."
        ),
    ] = False,
    zoo_arm: Annotated[
        bool,
        typer.Option(
            help="Run the pre-registered scratch-LM arm (S2: scratch-lm-tiny/small/base, token-matched, "
            "trained first with `perceptalign ntps pretrain --size all`) on the study already in OUT, then "
            "redo the analysis with it (≈ 5–10 min per model on 2 cores)."
        ),
    ] = False,
    quick: Annotated[
        bool,
        typer.Option(help="Fewer permutations, bootstrap resamples and power simulations (for a smoke run)."),
    ] = False,
) -> None:
    """Pre-registered NTPS study over the tasks carved from the offline corpora (one N for all tasks).

    One pass of the declared model over the union of the tasks' texts gives every task's statistics (by
    addition) and features; then NTPS, the probe target averaged over resplits, the peers and the controls
    per task, and the declared tests: Spearman with permutations within parent, a cluster bootstrap by
    parent, simulated power, Holm, and the peers head to head. About 25 minutes on 2 CPU cores; a rerun
    reuses the saved pass when nothing that changes it differs.
    """
    from perceptalign.io import PerceptAlignError
    from perceptalign.ntps.jobs.task_study import TaskStudyConfig, reanalyse_task_study, run_task_study

    with exit_on_error():
        if not preregistration.is_file():
            raise PerceptAlignError(f"no pre-registration at {preregistration}: pass --preregistration PATH.")
        prereg = json.loads(preregistration.read_text())
        declared = prereg.get("configuration", {})
        options = {
            k: declared[k] for k in ("model", "layer", "fraction", "ridge", "max_length") if k in declared
        }
        if tasks:
            options["tasks"] = tuple(t.strip().removeprefix("task:") for t in tasks.split(",") if t.strip())
        if quick:
            options.update(n_permutations=2_000, n_boot=300, n_power_simulations=100)
        config = TaskStudyConfig(**options)
    started = time.perf_counter()
    if lora_arm:
        from perceptalign.ntps.jobs.task_lora import run_study_lora_arm

        with exit_on_error():
            report = run_study_lora_arm(
                config,
                out,
                prereg,
                on_task=lambda name, i, n: console.print(f"LoRA arm {i + 1}/{n}: {name}"),
                on_status=print_status,
            )
        _print_summary(report, out, started)
        return
    if reanalyse and not zoo_arm:  # --zoo-arm redoes the analysis itself
        with exit_on_error():
            report = reanalyse_task_study(config, out, prereg)
        _print_summary(report, out, started)
        return
    progress = RateProgress(console, "forward pass")
    callbacks: dict[str, Any] = {
        "on_status": print_status,
        "on_start": lambda n, _t: progress.start(n),
        "on_batch": progress.advance,
    }
    with exit_on_error(), progress:
        if zoo_arm:
            from perceptalign.ntps.jobs.task_study_zoo import run_study_zoo_arm

            report = run_study_zoo_arm(config, out, prereg, **callbacks)
        else:
            report = run_task_study(config, out, prereg, **callbacks)
    _print_summary(report, out, started)


def _print_summary(report: Any, out: Path, started: float) -> None:
    p1 = report.analysis["primary"]
    console.print(
        f"P1: ρ(NTPS, target) = {p1['rho']:+.3f} [{p1['ci'][0]:+.3f}, {p1['ci'][1]:+.3f}], p = {p1['p']:.3g} "
        f"(Holm {p1['p_holm']:.3g}), n = {p1['n']} tasks, power at ρ = .5: {p1['power_at_rho_0.5']:.2f}"
    )
    for test in report.analysis["secondary"]:
        console.print(
            f"{test['id']}: {'β' if test['id'] == 'S2' else 'ρ'} = {test['rho']:+.3f} "
            f"[{test['ci'][0]:+.3f}, {test['ci'][1]:+.3f}], p = {test['p']:.3g} (Holm {test['p_holm']:.3g})"
        )
    for entry in report.analysis["peers_head_to_head"]:
        console.print(
            f"  vs {entry['peer']}: ρ_peer {entry['rho_peer']:+.3f}, Δρ {entry['delta_rho']:+.3f} "
            f"[{entry['ci'][0]:+.3f}, {entry['ci'][1]:+.3f}] — {entry['verdict']}"
        )
    console.print(
        f"wrote {out / 'report.json'}, report.html, summary.md, tasks.csv "
        f"in {time.perf_counter() - started:.0f} s"
    )
