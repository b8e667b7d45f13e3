"""`perceptalign rtify train-backbone`: train a video backbone on random-dot motion and cache its outputs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from perceptalign.cli.errors import exit_on_error
from perceptalign.cli.progress import progress_bar
from perceptalign.cli.rtify import console, rtify_app
from perceptalign.io import atomic_path, ensure_output_dir, write_json_atomic

_HELP = (
    "Train a video backbone (c3d: causal 3-D conv net; cnn-lstm: per-frame CNN + LSTM) on fresh random-dot "
    "motion with an easy-to-hard curriculum (99.9% first, then 51.2 … 0.8%), then cache its per-frame "
    "outputs on a fixed, seeded evaluation set.\n\n"
    "Writes DIR/backbone.safetensors (weights), DIR/backbone.json (settings, training history, accuracy per "
    "coherence), DIR/outputs.safetensors (per-frame logits and LSTM states for --trials-per-coherence trials "
    "per coherence × direction: what RTify and Wong–Wang heads are fitted on), DIR/psychometric.png, "
    "DIR/training.png, and DIR/checkpoint.safetensors (rerunning resumes from it; more --epochs extends a "
    "finished run). The --frames frames stand for the 2 s stimulus (one frame = 2 s / frames)."
)


@rtify_app.command("train-backbone", help=_HELP)
def train_backbone_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    kind: Annotated[str, typer.Option("--kind", "-k", help="Backbone: c3d or cnn-lstm.")] = "c3d",
    epochs: Annotated[int, typer.Option(help="Training epochs (fresh stimuli every epoch).", min=1)] = 24,
    batches_per_epoch: Annotated[
        int, typer.Option(help="Freshly generated stimulus batches per epoch (× --batch-size trials).", min=1)
    ] = 50,
    batch_size: Annotated[int, typer.Option(help="Trials per batch (≥ 2 for batch norm).", min=2)] = 32,
    size: Annotated[int, typer.Option(help="Frame side in pixels (the paper's training scale is 42).")] = 32,
    frames: Annotated[int, typer.Option(help="Frames per clip, spanning the 2 s stimulus.", min=1)] = 24,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    epochs_per_stage: Annotated[
        int, typer.Option(help="Epochs per curriculum stage before the last (all coherences).", min=1)
    ] = 1,
    seed: Annotated[
        int, typer.Option(help="Seed of the weights, training and evaluation stimuli.", min=0)
    ] = 0,
    trials_per_coherence: Annotated[
        int, typer.Option(help="Evaluation trials per coherence and direction (cached outputs).", min=1)
    ] = 100,
    threads: Annotated[int, typer.Option(help="CPU threads for torch.", min=1)] = 2,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Resume from DIR/checkpoint.safetensors if present.")
    ] = True,
) -> None:
    """Parse options, train with a progress bar, evaluate, cache outputs, write files and print a table."""
    import torch

    from perceptalign.rtify.experiments.pixel.backbone_training import (
        BackboneTrainingConfig,
        TrainingProgress,
        compute_backbone_outputs,
        plot_psychometric,
        plot_training_history,
        psychometric_table,
        save_backbone_outputs,
        train_backbone,
        training_stimulus,
    )
    from perceptalign.rtify.experiments.pixel.stimuli import CURRICULUM_EASY_COHERENCE, PAPER_COHERENCES
    from perceptalign.rtify.experiments.pixel.video_backbones import save_backbone

    torch.set_num_threads(threads)
    with exit_on_error():
        config = BackboneTrainingConfig(
            kind=kind,
            stimulus=training_stimulus(size=size, n_frames=frames),
            epochs=epochs,
            batches_per_epoch=batches_per_epoch,
            batch_size=batch_size,
            lr=lr,
            epochs_per_stage=epochs_per_stage,
            seed=seed,
        )
        ensure_output_dir(out)
    progress = progress_bar(console, field="info", remaining=True)
    total_steps = epochs * batches_per_epoch
    t_start = time.perf_counter()
    with exit_on_error(), progress:
        task = progress.add_task(f"training {kind}", total=total_steps, info="")

        def on_batch(event: TrainingProgress) -> None:
            hardest = 100.0 * min(config.stages[event.stage])
            progress.update(
                task,
                completed=event.epoch * event.batches_per_epoch + event.batch + 1,
                info=f"epoch {event.epoch + 1} stage {event.stage} (≥{hardest:g}%) loss {event.loss:.3f}",
            )

        result = train_backbone(
            kind, config, checkpoint=out / "checkpoint.safetensors", resume=resume, progress=on_batch
        )
        train_s = time.perf_counter() - t_start
        progress.update(task, completed=total_steps)  # also when a finished checkpoint was resumed
        coherences = (*PAPER_COHERENCES, CURRICULUM_EASY_COHERENCE)
        n_eval = len(coherences) * 2 * trials_per_coherence
        eval_task = progress.add_task("evaluating", total=n_eval, info="fresh test stimuli")
        outputs = compute_backbone_outputs(
            result.model,
            config.stimulus,
            coherences=coherences,
            trials_per_condition=trials_per_coherence,
            seed=seed,
            progress=lambda done, total: progress.update(eval_task, completed=done),
        )

    table = psychometric_table(outputs)
    digest = save_backbone(out / "backbone.safetensors", result.model, {"training": config.to_dict()})
    save_backbone_outputs(out / "outputs.safetensors", outputs)
    report: dict[str, Any] = {
        "kind": kind,
        "config": config.to_dict(),
        "model_config": result.model.config(),
        "weights_sha256": digest,
        "frame_s": 1.0 / config.stimulus.frame_rate_hz,
        "curriculum_stages_pct": [[round(100 * c, 4) for c in stage] for stage in config.stages],
        "resumed_from_epoch": result.resumed_from_epoch,
        "wall_time_s": {
            "training_all_epochs": float(result.history["seconds"].sum()),
            "this_run_training": train_s,
            "this_run_total": time.perf_counter() - t_start,
        },
        "history": result.history.to_dict(orient="records"),
        "evaluation": {"seed": seed, "trials_per_condition": trials_per_coherence},
        "psychometric": table.to_dict(orient="records"),
    }
    write_json_atomic(out / "backbone.json", report)
    for name, fig in (
        ("psychometric.png", plot_psychometric({kind: table})),
        ("training.png", plot_training_history(result.history)),
    ):
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110)

    shown = Table(title=f"{kind}: accuracy on fresh test stimuli ({2 * trials_per_coherence} per coherence)")
    for name in ("coherence %", "accuracy", "± SE"):
        shown.add_column(name, justify="right")
    for row in table.itertuples():
        shown.add_row(f"{row.coherence_pct:g}", f"{row.accuracy:.3f}", f"{row.accuracy_se:.3f}")
    console.print(shown)
    all_s = float(result.history["seconds"].sum())
    console.print(
        f"training took {all_s:.0f} s over {len(result.history)} epochs ({train_s:.0f} s in this run, "
        f"resumed from epoch {result.resumed_from_epoch}); wrote backbone.safetensors, backbone.json, "
        f"outputs.safetensors, psychometric.png, training.png to {out}"
    )
