"""`perceptalign rtify fit-ww` and `rtify pixel-rdm`: Wong–Wang and every head on human RDM RTs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

from perceptalign.callbacks import PhaseStatusCallback
from perceptalign.cli.errors import exit_on_error
from perceptalign.cli.progress import phase_progress
from perceptalign.cli.rtify import check_step_ms, console, rtify_app
from perceptalign.cli.rtify_fit import RTUnitOption, ThreadsOption, load_splits, use_threads
from perceptalign.io import PerceptAlignError, ensure_output_dir

_INPUTS = ("coherence", "backbone")
_LOGITS = ("frames", "clip")


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _progress() -> tuple[Progress, PhaseStatusCallback]:
    return phase_progress(console, label_width=20)


def _per_condition_table(title: str, entries: list[tuple[str, dict[str, Any]]]) -> Table:
    table = Table(title=title)
    for name in ("coherence %", "method", "accuracy", "median correct RT (s)", "W1 (s)"):
        table.add_column(name, justify="right")
    conds = [row["condition"] for row in entries[0][1]["per_condition"]]
    for k, cond in enumerate(conds):
        first = entries[0][1]["per_condition"][k]
        table.add_row(
            f"{cond:g}", "human", _fmt(first["accuracy_human"]), _fmt(first["median_rt_correct_human"]), "—"
        )
        for name, entry in entries:
            row = entry["per_condition"][k]
            table.add_row(
                "",
                name,
                _fmt(row["accuracy_model"]),
                _fmt(row["median_rt_correct_model"]),
                _fmt(row["wasserstein"]),
            )
    return table


@rtify_app.command("fit-ww")
def fit_ww(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (fit.json and figures).")],
    input_kind: Annotated[
        str,
        typer.Option(
            "--input", help="coherence: WW driven by the coherence; backbone: by a frozen backbone's logit."
        ),
    ] = "coherence",
    backbone: Annotated[
        Path | None,
        typer.Option(
            "--backbone", help="Directory written by `rtify train-backbone` (for --input backbone)."
        ),
    ] = None,
    logit: Annotated[
        str, typer.Option("--logit", help="Backbone drive: frames (per-frame logits) or clip (clip logit).")
    ] = "frames",
    data: Annotated[
        str, typer.Option("--data", help="Registered dataset (rdm-human) or a CSV path with a split column.")
    ] = "rdm-human",
    data_path: Annotated[
        Path | None, typer.Option("--data-path", help="Where the registered dataset's CSV lies.")
    ] = None,
    dt: Annotated[
        float,
        typer.Option(
            "--dt",
            help="Output (readout) step in ms; the model integrates in Euler sub-steps of at most 1 ms.",
        ),
    ] = 10.0,
    fine_dt: Annotated[
        float,
        typer.Option("--fine-dt", help="Also evaluate the fitted model at this step (ms); 0 to skip."),
    ] = 1.0,
    loss: Annotated[
        str, typer.Option("--loss", help="Distance: wasserstein (default), mse (published) or quantile.")
    ] = "wasserstein",
    acc_weight: Annotated[float, typer.Option("--acc-weight", help="Weight of the accuracy KL term.")] = 1.0,
    steps: Annotated[int, typer.Option("--steps", help="Adam steps (fresh noise each).", min=1)] = 300,
    lr: Annotated[float, typer.Option("--lr", help="Relative learning rate (× parameter scale).")] = 0.02,
    trials: Annotated[
        int, typer.Option("--trials", help="Simulated trials per coherence per step.", min=2)
    ] = 300,
    eval_trials: Annotated[
        int, typer.Option("--eval-trials", help="Simulated evaluation trials per coherence.", min=2)
    ] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    rt_unit: RTUnitOption = "s",
    threads: ThreadsOption = 1,
) -> None:
    """Fit the Wong–Wang model to human RTs (coherence- or backbone-driven) and evaluate on the test split.

    fit.json has the same method schema as `rtify fit`, so `rtify compare` puts WW next to RTify and DDM.
    """
    from perceptalign.rtify.experiments.pixel.pixel_experiment import backbone_drive, load_outputs_dir
    from perceptalign.rtify.experiments.rdm import check_split_tables
    from perceptalign.rtify.experiments.rdm.wongwang_fit import WWFitConfig, run_ww_fit, write_ww_outputs

    check_step_ms(dt, "--dt")
    use_threads(threads)
    check_step_ms(fine_dt, "--fine-dt", allow_zero=True)
    with exit_on_error():
        if input_kind not in _INPUTS:
            raise PerceptAlignError(f"--input must be one of {list(_INPUTS)}, got {input_kind!r}.")
        if logit not in _LOGITS:
            raise PerceptAlignError(f"--logit must be one of {list(_LOGITS)}, got {logit!r}.")
        if input_kind == "backbone" and backbone is None:
            raise PerceptAlignError(
                "--input backbone needs --backbone DIR (a `rtify train-backbone` output)."
            )
        if input_kind == "coherence" and backbone is not None:
            raise PerceptAlignError("--backbone is only used with --input backbone; drop it or add that.")
        config = WWFitConfig(
            loss=loss,  # type: ignore[arg-type]
            acc_weight=acc_weight,
            dt_ms=dt,
            fine_dt_ms=fine_dt if fine_dt > 0 else None,
            steps=steps,
            lr=lr,
            n_train=trials,
            n_eval=eval_trials,
            seed=seed,
        )
        human_train, human_test = load_splits(data, data_path, rt_unit, windows=[config.hist_config()])
        fit_trials = eval_pool = None
        if input_kind == "backbone":
            assert backbone is not None
            outputs = load_outputs_dir(backbone)
            conds = check_split_tables(human_train, human_test)
            drive = backbone_drive(outputs, logit)
            fit_trials = drive.pool_trials(conds, "fit")
            eval_pool = drive.pool_trials(conds, "eval")
        ensure_output_dir(out)
        progress, update = _progress()
        with progress:
            run = run_ww_fit(
                human_train,
                human_test,
                config,
                fit_trials=fit_trials,
                eval_trials=eval_pool,
                name=None if input_kind == "coherence" else f"ww-{logit}",
                progress=update,
            )
        paths = write_ww_outputs(run, human_test, out, seed=seed)

    report = run.result.report
    entry = report["rtify"]
    console.print(
        _per_condition_table(
            f"Wong–Wang ({report['model']}, dt {dt:g} ms) vs human test", [(report["model"], entry)]
        )
    )
    s = entry["summary"]
    line = (
        f"mean W1 {_fmt(s.get('mean_wasserstein'))} s, mean KS {_fmt(s.get('mean_ks'))}, "
        f"test loss {_fmt(entry['test_loss'])}, no decision {_fmt(entry['no_decision_rate'])}"
    )
    if "dt_check" in entry:
        fine_s = entry["dt_check"]["summary"]
        line += f"; at dt {entry['dt_check']['dt_ms']:g} ms: mean W1 {_fmt(fine_s.get('mean_wasserstein'))} s"
    console.print(line)
    params = ", ".join(f"{k} {v:.4g}" for k, v in entry["params"].items() if isinstance(v, float))
    console.print(f"parameters: {params}")
    console.print("runtime: " + ", ".join(f"{k} {v:.1f} s" for k, v in report["runtime_s"].items()))
    console.print("wrote " + ", ".join(str(p) for p in paths))


@rtify_app.command("pixel-rdm")
def pixel_rdm(
    backbone: Annotated[
        Path, typer.Option("--backbone", help="Directory written by `rtify train-backbone` (outputs cache).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    heads: Annotated[
        str,
        typer.Option(
            "--heads",
            help="Comma-separated heads: ww-frames, ww-clip, rtify-head-human, rtify-head-self-penalty.",
        ),
    ] = "ww-frames,ww-clip,rtify-head-human,rtify-head-self-penalty",
    data: Annotated[
        str, typer.Option("--data", help="Registered dataset (rdm-human) or a CSV path with a split column.")
    ] = "rdm-human",
    data_path: Annotated[
        Path | None, typer.Option("--data-path", help="Where the registered dataset's CSV lies.")
    ] = None,
    dt: Annotated[
        float, typer.Option("--dt", help="WW output (readout) step in ms; Euler sub-steps are ≤ 1 ms.")
    ] = 10.0,
    fine_dt: Annotated[
        float, typer.Option("--fine-dt", help="Also evaluate the WW heads at this step (ms); 0 to skip.")
    ] = 1.0,
    loss: Annotated[
        str, typer.Option("--loss", help="Distance: wasserstein (default), mse (published) or quantile.")
    ] = "wasserstein",
    steps: Annotated[int, typer.Option("--steps", help="Optimisation steps of every head.", min=1)] = 300,
    ww_steps: Annotated[
        int | None,
        typer.Option(
            "--ww-steps",
            help="Adam steps of the WW heads only (default: --steps); each step costs 2 hard WW runs per "
            "dynamical parameter, far more than an RTify head's step.",
            min=1,
        ),
    ] = None,
    lam: Annotated[float, typer.Option("--lam", help="Self-penalty weight λ (τ in frames).")] = 0.0035,
    trials: Annotated[
        int, typer.Option("--trials", help="WW simulated trials per coherence per step.", min=2)
    ] = 300,
    eval_trials: Annotated[
        int,
        typer.Option(
            "--eval-trials",
            help="WW simulated evaluation trials per coherence (RTify heads: the whole eval pool).",
            min=2,
        ),
    ] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    rt_unit: RTUnitOption = "s",
    threads: ThreadsOption = 1,
) -> None:
    """Run every head on a trained backbone's cached outputs and write the pixel-RDM comparison table.

    Every head is an estimator (as in `rtify fit`), fitted on the even trials of each cached (coherence,
    direction) cell and scored on the odd ones, against the human test split.

    Writes fit.json (compatible with `rtify compare`), pixel_rdm.md / pixel_rdm.csv (per coherence: human
    vs each head, accuracy, median correct RT, W1 on the test split) and figures.
    """
    from perceptalign.rtify.estimators import RTifyHeadConfig
    from perceptalign.rtify.experiments.pixel.pixel_experiment import (
        HEAD_LABELS,
        PixelRDMConfig,
        load_outputs_dir,
        run_pixel_rdm,
        write_pixel_rdm_outputs,
    )
    from perceptalign.rtify.experiments.rdm.wongwang_fit import WWFitConfig
    from perceptalign.rtify.objective import RTLoss

    check_step_ms(dt, "--dt")
    use_threads(threads)
    check_step_ms(fine_dt, "--fine-dt", allow_zero=True)
    with exit_on_error():
        config = PixelRDMConfig(
            heads=tuple(h.strip() for h in heads.split(",") if h.strip()),
            ww=WWFitConfig(
                loss=loss,  # type: ignore[arg-type]
                dt_ms=dt,
                fine_dt_ms=fine_dt if fine_dt > 0 else None,
                steps=steps if ww_steps is None else ww_steps,
                n_train=trials,
                n_eval=eval_trials,
                seed=seed,
            ),
            head=RTifyHeadConfig(
                loss=RTLoss(kind=loss),  # type: ignore[arg-type]
                head_steps=steps,
                lr=0.03,
                lam=lam,
                seed=seed,
            ),
            seed=seed,
        )
        outputs = load_outputs_dir(backbone)
        human_train, human_test = load_splits(
            data, data_path, rt_unit, windows=[config.head.fit_config(), config.ww.hist_config()]
        )
        ensure_output_dir(out)
        progress, update = _progress()
        with progress:
            run = run_pixel_rdm(outputs, human_train, human_test, config, progress=update)
        paths = write_pixel_rdm_outputs(run, human_test, out, seed=seed)

    report = run.result.report
    entries = [
        (HEAD_LABELS[n], report["rtify"] if n == report["model"] else report["baselines"][n])
        for n in report["methods"]
    ]
    console.print(_per_condition_table("pixel RDM: heads on the frozen backbone vs human test", entries))
    summary = Table(title="mean over coherences")
    for name in ("method", "parameters", "mean W1 (s)", "mean accuracy", "no decision", "fit (s)"):
        summary.add_column(name, justify="right")
    for name, entry in entries:
        s = entry["summary"]
        summary.add_row(
            name,
            _fmt(entry.get("n_params")),
            _fmt(s.get("mean_wasserstein")),
            _fmt(s.get("mean_accuracy_model")),
            _fmt(entry["no_decision_rate"]),
            _fmt(entry.get("fit_seconds")),
        )
    console.print(summary)
    console.print("wrote " + ", ".join(str(p) for p in paths))
