"""`perceptalign ntps lora` and `ntps scratch`: the training measurements NTPS is compared with."""

from __future__ import annotations

import time
import warnings
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
)
from perceptalign.cli.options import (
    BatchSizeOption,
    DatasetOption,
    DtypeOption,
    EvalFractionOption,
    EvalIntervalOption,
    EvalSplitOption,
    LabelColumnOption,
    LrOption,
    MaxEvalSamplesOption,
    MaxLengthOption,
    ModelOption,
    RecipeOption,
    RevisionOption,
    StepsOption,
    TextColumnOption,
    TokenizerOption,
    TrainDeviceOption,
    TrainMaxSamplesOption,
    TrainOutOption,
    TrainSeedOption,
    TrainSplitOption,
    TrustRemoteCodeOption,
)
from perceptalign.cli.progress import RateProgress


class PhaseProgress:
    """One rate bar per phase of a job (steps/s while training, texts/s while extracting)."""

    def __init__(self) -> None:
        self._bar: RateProgress | None = None
        self._phase: str | None = None
        self._done = 0

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self._phase:
            self.close()
            unit = "steps" if "ntps" not in phase and "features" not in phase else "texts"
            self._bar = RateProgress(console, phase, unit=unit).__enter__()
            self._bar.start(total)
            self._phase, self._done = phase, 0
        if self._bar is not None and done > self._done:
            self._bar.advance(done - self._done)
            self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
        self._bar, self._phase = None, None

    def __enter__(self) -> PhaseProgress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _train_config(
    recipe: str,
    part: str,
    steps: int | None,
    batch_size: int | None,
    lr: float | None,
    eval_interval: int,
    seed: int,
    eval_token_budget: int,
) -> Any:
    """The recipe's training run of ``part`` with the options the user gave (unset ones: the recipe's)."""
    from perceptalign.ntps.recipes import get_recipe

    return get_recipe(recipe).train_config(
        part,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        eval_interval=eval_interval,
        seed=seed,
        eval_token_budget=eval_token_budget,
    )


def _run(job: Any) -> Any:
    """Run a job with progress bars; a PerceptAlignError becomes a one-line message and exit code 2."""
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    with exit_on_error(), PhaseProgress() as progress:

        def status(message: str) -> None:
            progress.close()  # finish the previous phase's bar before the message
            print_status(message)

        return job(on_status=status, progress=progress)


@ntps_app.command("lora")
def lora(
    dataset: DatasetOption,
    out: TrainOutOption,
    model: ModelOption = "smollm2-135m",
    steps: StepsOption = None,
    batch_size: BatchSizeOption = None,
    lr: LrOption = None,
    eval_interval: EvalIntervalOption = 500,
    seed: TrainSeedOption = 0,
    r: Annotated[int, typer.Option("--r", help="LoRA rank r of the adapters (the paper: 32).")] = 32,
    alpha: Annotated[float, typer.Option(help="LoRA scaling α (update = α/r · B·A).")] = 32.0,
    lora_dropout: Annotated[float, typer.Option(help="Dropout on the adapter input.")] = 0.05,
    target_modules: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated layer names to adapt (default: the attention "
            "projections detected for the architecture, e.g. q_proj,k_proj,v_proj or "
            "c_attn)."
        ),
    ] = None,
    linear_baseline: Annotated[
        bool,
        typer.Option(
            "--linear-baseline/--no-linear-baseline",
            help="Also train the frozen-backbone linear head (the reference of the LoRA gain).",
        ),
    ] = True,
    ntps: Annotated[
        bool, typer.Option("--ntps/--no-ntps", help="Measure NTPS before and after LoRA (merged model).")
    ] = True,
    layers: Annotated[str | None, typer.Option(help="NTPS layers, e.g. 0,6,-1 (default all).")] = None,
    fractions: Annotated[
        str | None, typer.Option(help="NTPS fractions of rank(V) (default 0.05,…,0.95).")
    ] = None,
    token_budget: Annotated[
        int, typer.Option(help="Padded tokens per batch for NTPS statistics and evaluation.")
    ] = 4096,
    split: TrainSplitOption = "train",
    eval_split: EvalSplitOption = "test",
    eval_fraction: EvalFractionOption = 0.3,
    max_samples: TrainMaxSamplesOption = None,
    max_eval_samples: MaxEvalSamplesOption = None,
    max_length: MaxLengthOption = None,
    dtype: DtypeOption = None,
    device: TrainDeviceOption = "cpu",
    text_column: TextColumnOption = None,
    label_column: LabelColumnOption = None,
    revision: RevisionOption = None,
    trust_remote_code: TrustRemoteCodeOption = False,
    tokenizer: TokenizerOption = None,
    recipe: RecipeOption = "default",
) -> None:
    """Fine-tune LoRA adapters + a linear head, against the frozen-backbone linear head; NTPS after LoRA.

    Writes OUT/lora.json (accuracies, gain = acc(LoRA) − acc(linear head), loss curves, eval history,
    NTPS before/after), OUT/adapter/ (peft), OUT/head.safetensors, OUT/linear_head.safetensors,
    OUT/lora_training.png, OUT/ntps_before_after.png and the NTPS statistics of both models.
    With --recipe default the linear head is trained exactly like LoRA (same optimizer, steps, batches);
    with --recipe paper as published (AdamW lr 1e-4, 50 epochs at batch 64, no schedule).
    """
    from perceptalign.ntps.finetune import NTPSSettings
    from perceptalign.ntps.jobs.lora import LoraJobConfig, LoraSettings, run_lora

    targets = [t for t in (target_modules or "").replace(" ", "").split(",") if t] or None
    with exit_on_error():
        config = LoraJobConfig(
            model=model,
            dataset=dataset,
            out=out,
            split=split,
            eval_split=eval_split,
            eval_fraction=eval_fraction,
            max_samples=max_samples,
            max_eval_samples=max_eval_samples,
            max_length=max_length,
            dtype=dtype,
            text_column=text_column,
            label_column=label_column,
            revision=revision,
            trust_remote_code=trust_remote_code,
            tokenizer=tokenizer,
            recipe=recipe,
            device=device,
            train=_train_config(recipe, "lora", steps, batch_size, lr, eval_interval, seed, token_budget),
            lora=LoraSettings(r=r, alpha=alpha, dropout=lora_dropout, target_modules=targets),
            linear_baseline=linear_baseline,
            ntps=ntps,
            ntps_settings=NTPSSettings(
                layers=parse_int_list(layers, "--layers"),
                fractions=parse_float_list(fractions, "--fractions"),
                token_budget=token_budget,
            ),
        )
    print_recipe_note(recipe)
    started = time.perf_counter()
    result = _run(lambda **kw: run_lora(config, **kw)).results
    table = Table(
        title=f"LoRA — {result['model']} on {result['dataset']} ({result['n_train']} train / "
        f"{result['n_eval']} held-out texts, {result['steps']} steps × {result['batch_size']})"
    )
    for column in ("run", "trainable params", "held-out accuracy", "s/step"):
        table.add_column(column, justify="right")
    table.add_row(
        "LoRA + head",
        f"{result['n_trainable_params']:,}",
        f"{result['eval_accuracy_lora']:.4f}",
        f"{result['lora']['seconds_per_step']:.4f}",
    )
    if result["linear_head"]:
        head = result["linear_head"]
        table.add_row(
            "linear head (frozen)",
            f"{head['n_trainable_params']:,}",
            f"{result['eval_accuracy_linear_head']:.4f}",
            f"{head['seconds_per_step']:.4f}",
        )
    console.print(table)
    if result["gain"] is not None:
        console.print(
            f"LoRA gain over the linear head: {result['gain']:+.4f} (chance {result['chance_accuracy']:.3f})"
        )
    if result["ntps_before"] and result["ntps_after"]:
        before, after = result["ntps_before"], result["ntps_after"]
        mid = len(before["ntps"][-1]) // 2
        console.print(
            f"NTPS at the last layer, middle k: before {before['ntps'][-1][mid]:.4f}, "
            f"after LoRA {after['ntps'][-1][mid]:.4f}"
        )
    console.print(
        f"wrote {out / 'lora.json'}, {out / 'adapter'}, {out / 'head.safetensors'} and figures in "
        f"{time.perf_counter() - started:.1f} s"
    )


@ntps_app.command("scratch")
def scratch(
    dataset: DatasetOption,
    out: TrainOutOption,
    model: ModelOption = "smollm2-135m",
    steps: StepsOption = None,
    batch_size: BatchSizeOption = None,
    lr: LrOption = None,
    eval_interval: EvalIntervalOption = 500,
    seed: TrainSeedOption = 0,
    save_model: Annotated[
        bool, typer.Option("--save-model", help="Also save the trained model and head to OUT/scratch_model/.")
    ] = False,
    token_budget: Annotated[int, typer.Option(help="Padded tokens per evaluation batch.")] = 4096,
    split: TrainSplitOption = "train",
    eval_split: EvalSplitOption = "test",
    eval_fraction: EvalFractionOption = 0.3,
    max_samples: TrainMaxSamplesOption = None,
    max_eval_samples: MaxEvalSamplesOption = None,
    max_length: MaxLengthOption = None,
    dtype: DtypeOption = None,
    device: TrainDeviceOption = "cpu",
    text_column: TextColumnOption = None,
    label_column: LabelColumnOption = None,
    revision: RevisionOption = None,
    trust_remote_code: TrustRemoteCodeOption = False,
    tokenizer: TokenizerOption = None,
    recipe: RecipeOption = "default",
) -> None:
    """Train the same head on a randomly initialised model of the same configuration (all weights trained).

    Writes OUT/scratch.json, OUT/scratch_head.safetensors and OUT/scratch_training.png (and the model with
    --save-model). Same optimizer, schedule and batches as `ntps lora`, for the comparison; --recipe paper
    trains as the published from_scratch.py (10,000 steps).
    """
    from perceptalign.ntps.jobs.scratch import ScratchJobConfig, run_scratch

    with exit_on_error():
        config = ScratchJobConfig(
            model=model,
            dataset=dataset,
            out=out,
            split=split,
            eval_split=eval_split,
            eval_fraction=eval_fraction,
            max_samples=max_samples,
            max_eval_samples=max_eval_samples,
            max_length=max_length,
            dtype=dtype,
            text_column=text_column,
            label_column=label_column,
            revision=revision,
            trust_remote_code=trust_remote_code,
            tokenizer=tokenizer,
            recipe=recipe,
            device=device,
            train=_train_config(recipe, "scratch", steps, batch_size, lr, eval_interval, seed, token_budget),
            save_model=save_model,
        )
    print_recipe_note(recipe)
    started = time.perf_counter()
    result = _run(lambda **kw: run_scratch(config, **kw)).results
    console.print(
        f"from scratch: held-out accuracy {result['eval_accuracy_scratch']:.4f} (chance "
        f"{result['chance_accuracy']:.3f}), {result['n_trainable_params']:,} trainable parameters, "
        f"{result['scratch']['seconds_per_step']:.4f} s/step"
    )
    console.print(f"wrote {out / 'scratch.json'} in {time.perf_counter() - started:.1f} s")
