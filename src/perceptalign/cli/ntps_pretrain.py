"""`perceptalign ntps pretrain`: train the from-scratch model zoo on the offline corpus."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from perceptalign.cli.errors import exit_on_error, fail
from perceptalign.cli.ntps import console, ntps_app, print_status
from perceptalign.cli.progress import progress_bar


class _StepProgress:
    """Progress bar with steps/s, tokens/s and the running train (and last validation) loss."""

    def __init__(self, description: str) -> None:
        self._progress = progress_bar(console, field="info", remaining=True)
        self._description = description
        self._task: int | None = None
        self._t0 = 0.0
        self._first = 0
        self._val: float | None = None

    def __enter__(self) -> _StepProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def __call__(self, event) -> None:  # event: perceptalign.ntps.pretrain.PretrainEvent
        if self._task is None:
            self._first = event.step - 1
            self._t0 = time.perf_counter()
            self._task = self._progress.add_task(
                self._description, total=event.total_steps, completed=self._first, info=""
            )
        if event.val_loss is not None:
            self._val = event.val_loss
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        steps = event.step - self._first
        info = (
            f"{steps / elapsed:.2f} steps/s {steps * event.tokens / elapsed:.0f} tok/s loss {event.loss:.3f}"
        )
        if self._val is not None:
            info += f" val {self._val:.3f}"
        self._progress.update(self._task, completed=event.step, info=info)


@ntps_app.command("pretrain")
def pretrain(
    size: Annotated[str, typer.Option(help="Model size: tiny, small, base, or all.")] = "tiny",
    steps: Annotated[
        int | None, typer.Option(help="Optimisation steps (default: the size's recipe).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Windows per step (default 16).")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Tokens per packed window (default 256).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: the size's recipe).")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of initialisation and data order (default 0).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Parent directory of the model directories (scratch-lm-<size>). Default: the model cache, "
            "where the aliases scratch-lm-<size> find them."
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Resume an interrupted run of the same settings from its checkpoint.")
    ] = True,
    threads: Annotated[
        int | None,
        typer.Option(
            help="CPU threads for torch (default: torch's choice). On a shared machine 1 thread per "
            "free core avoids spin-waiting; results are bitwise reproducible only at the same count."
        ),
    ] = None,
) -> None:
    """Train small Llama causal LMs from scratch on the offline corpus (≈15 min per size on 2 cores).

    The corpus (train splits of the offline datasets plus other text in the same archives, test texts
    filtered out) and its 4k BPE are built and cached on first use. Each model lands in
    OUT/scratch-lm-<size> as a normal Hugging Face directory with perceptalign_pretrain.json.
    """
    from perceptalign.ntps.pretrain import SIZES, PretrainConfig, default_model_dir, pretrain_zoo_model

    if threads is not None:
        if threads < 1:
            fail(f"--threads must be ≥ 1 (got {threads}).")
        import torch

        torch.set_num_threads(threads)
    sizes = list(SIZES) if size == "all" else [size]
    rows = []
    with exit_on_error():
        for name in sizes:
            config = PretrainConfig.for_size(
                name, steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, seed=seed
            )
            target = (out / f"scratch-lm-{name}") if out is not None else default_model_dir(name)
            with _StepProgress(f"scratch-lm-{name}") as progress:
                result = pretrain_zoo_model(
                    config,
                    target,
                    resume=resume,
                    status=print_status,
                    progress=progress,
                )
            if result.reused:
                console.print(
                    f"[dim]{result.out_dir} already holds this run; kept it (--no-resume retrains)[/dim]"
                )
            elif result.resumed_from:
                console.print(f"[dim]resumed scratch-lm-{name} from step {result.resumed_from}[/dim]")
            rows.append(result)
    table = Table(title="from-scratch zoo (losses in nats/token on the held-out corpus documents)")
    for column in ("model", "params", "steps", "tokens", "train", "val", "val ppl", "unigram", "min"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        table.add_row(
            f"scratch-lm-{r.config.size}",
            f"{r.parameters['non_embedding'] / 1e6:.2f}M",
            str(r.steps),
            f"{r.steps * r.config.tokens_per_step / 1e6:.2f}M",
            f"{r.train_loss:.3f}",
            f"{r.val_loss:.3f}",
            f"{r.val_perplexity:.1f}",
            f"{r.unigram_val_loss:.3f}",
            f"{r.wall_seconds / 60:.1f}",
        )
    console.print(table)
    console.print("params = non-embedding; unigram = add-one unigram cross-entropy (the floor to beat)")
    for r in rows:
        console.print(f"wrote {r.out_dir}")
