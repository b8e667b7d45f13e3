"""Job configuration, inputs and records, and the NTPS re-measurement shared by `ntps lora` and
`ntps scratch`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from perceptalign.callbacks import PhaseCallback, StatusCallback
from perceptalign.io import PerceptAlignError
from perceptalign.ntps.datasets import TextDataset
from perceptalign.ntps.finetune.config import TrainConfig
from perceptalign.ntps.finetune.data import load_train_eval
from perceptalign.ntps.finetune.schedule import optimizer_description
from perceptalign.ntps.models import LoadedModel


@dataclass(frozen=True)
class FinetuneJobConfig:
    """Model, data and optimisation of one training job (the CLI fills it from its options).

    ``recipe`` (``default`` or ``paper``, :mod:`perceptalign.ntps.recipes`) fills what is left as None:
    ``max_length`` (512 / the model's own maximum), ``dtype`` (the weights: float32 / the published
    bfloat16 for LoRA, float32 for scratch) and ``train`` (the recipe's run of this job's kind; to change a
    few of its settings pass ``train=get_recipe(name).train_config(part, steps=…)``). Settings given
    explicitly win over the recipe.
    """

    #: Which training run of the recipe this job is (``lora`` or ``scratch``).
    RECIPE_PART: ClassVar[str] = "lora"

    model: str
    dataset: str
    out: Path
    split: str = "train"
    eval_split: str = "test"
    eval_fraction: float = 0.3
    max_samples: int | None = None
    max_eval_samples: int | None = None
    max_length: int | str | None = None  # None: the recipe's; "model": the model's own maximum
    dtype: str | None = None  # None: the recipe's (float32 unless the recipe loads bfloat16 weights)
    text_column: str | None = None
    label_column: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    device: str = "cpu"
    train: TrainConfig | None = None  # None: the recipe's run of this kind (the default: TrainConfig())
    recipe: str = "default"
    tokenizer: str | None = None  # another tokenizer for the model (hub id or folder)

    def __post_init__(self) -> None:
        from perceptalign.ntps.models import DTYPES, check_max_length
        from perceptalign.ntps.recipes import get_recipe

        recipe = get_recipe(self.recipe)
        training = getattr(recipe, self.RECIPE_PART)
        if self.max_length is None:
            object.__setattr__(self, "max_length", recipe.max_length)
        object.__setattr__(self, "max_length", check_max_length(self.max_length))
        if self.dtype is None:
            object.__setattr__(self, "dtype", training.weights_dtype or "float32")
        if self.dtype not in DTYPES:
            raise PerceptAlignError(f"unknown `dtype` {self.dtype!r}; choose one of {sorted(DTYPES)}.")
        if self.train is None:
            object.__setattr__(self, "train", recipe.train_config(self.RECIPE_PART))
        resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``; refuses a device this machine does not have."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise PerceptAlignError(f"unknown `device` {name!r}; use cpu, cuda, cuda:0 or mps.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PerceptAlignError(f"`device` {name} requested but torch sees no CUDA device; use `device` cpu.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PerceptAlignError(f"`device` {name} requested but MPS is unavailable; use `device` cpu.")
    return device


def load_job_inputs(
    config: FinetuneJobConfig, status: StatusCallback
) -> tuple[TextDataset, TextDataset, str, LoadedModel]:
    """Datasets (train, held-out, where held-out came from) and the pretrained model of a job."""
    from perceptalign.ntps.jobs.inputs import load_job_model

    status(f"loading dataset {config.dataset}")
    train_ds, eval_ds, eval_source = load_train_eval(
        config.dataset,
        split=config.split,
        eval_split=config.eval_split,
        eval_fraction=config.eval_fraction,
        max_samples=config.max_samples,
        max_eval_samples=config.max_eval_samples,
        text_column=config.text_column,
        label_column=config.label_column,
        seed=config.train.seed,
    )
    return train_ds, eval_ds, eval_source, load_job_model(config, status)


def job_record(
    config: FinetuneJobConfig,
    train_ds: TextDataset,
    eval_ds: TextDataset,
    eval_source: str,
    device: torch.device,
    max_length: int | None = None,
) -> dict[str, Any]:
    """The data and optimisation entries every training job records (lora.json and scratch.json alike).

    One definition keeps the jobs' results comparable key for key: the comparison rests on their data,
    held-out set and optimisation being the same. ``max_length``: the tokens per text actually used
    (``config.max_length`` resolved when it is 'model').
    """
    assert config.train is not None
    train = config.train
    record = {
        "dataset": train_ds.name,
        "dataset_source": train_ds.source,
        "n_train": len(train_ds),
        "n_eval": len(eval_ds),
        "eval_source": eval_source,
        "n_classes": train_ds.n_classes,
        "class_names": list(train_ds.class_names),
        "chance_accuracy": float(eval_ds.class_counts().max() / len(eval_ds)),
        "max_length": max_length if max_length is not None else config.max_length,
        "dtype": config.dtype,
        "device": str(device),
        "steps": train.steps_for(len(train_ds)),
        "batch_size": train.batch_size,
        "lr": train.lr,
        "warmup_steps": train.warmup_for(train.steps_for(len(train_ds))),
        "optimizer": optimizer_description(train.optimizer, train.weight_decay, train.schedule),
        "seed": train.seed,
    }
    if config.recipe != "default" or train.head_dropout or train.autocast or train.epochs:
        record.update(
            recipe=config.recipe,
            head_dropout=train.head_dropout,
            autocast=train.autocast,
            epochs=train.epochs,
        )
    return record


@dataclass(frozen=True)
class NTPSSettings:
    """Which layers and k to score when NTPS is re-measured after training."""

    layers: list[int] | None = None
    fractions: list[float] | None = None
    ks: list[int] | None = None
    token_budget: int = 4096
    ridge: float = 0.0

    def __post_init__(self) -> None:
        from perceptalign.ntps.measure import validate_extraction_settings, validate_solver_settings

        validate_extraction_settings(token_budget=self.token_budget)
        validate_solver_settings(fractions=self.fractions, ks=self.ks, ridge=self.ridge)


def measure_ntps(
    loaded: LoadedModel,
    dataset: TextDataset,
    settings: NTPSSettings,
    *,
    max_length: int,
    max_samples: int | None,
    cache: Path | None = None,
    reuse: bool = True,
    phase: str = "ntps",
    progress: PhaseCallback | None = None,
) -> tuple[dict[str, Any], bool]:
    """NTPS tables of ``loaded`` on ``dataset`` with the statistics and subspace code of `ntps score`.

    With ``cache`` and ``reuse``, statistics saved there with the same identity (model fingerprint, data
    hash, tokenisation) are reused and other statistics are refused; fresh statistics are saved there
    (``reuse=False`` always recomputes and overwrites: trained weights change every run). Returns the
    ``ntps_all_layers`` dict (plus ``n_tokens``) and whether the cache was reused.
    """
    from perceptalign.ntps.measure import cached_or_computed_statistics, resolve_layers
    from perceptalign.ntps.statistics import save_statistics
    from perceptalign.ntps.subspace import DEFAULT_FRACTIONS, ntps_all_layers

    done = 0

    def on_batch(n_texts: int, _n_tokens: int) -> None:
        nonlocal done
        done += n_texts
        if progress:
            progress(phase, done, len(dataset))

    measured = cached_or_computed_statistics(
        loaded,
        dataset,
        resolve_layers(settings.layers, loaded.n_hidden_states),
        max_length=max_length,
        max_samples=max_samples,
        token_budget=settings.token_budget,
        cache=cache,
        reuse=reuse,
        on_compute=(lambda: progress(phase, 0, len(dataset))) if progress else None,
        on_batch=on_batch,
    )
    statistics, metadata, reused = measured.statistics, measured.metadata, measured.reused
    if not reused and cache is not None:
        save_statistics(cache, statistics, metadata)
    fractions = None if settings.ks else (settings.fractions or list(DEFAULT_FRACTIONS))
    scores = ntps_all_layers(
        statistics, fractions=fractions or DEFAULT_FRACTIONS, ks=settings.ks, ridge=settings.ridge
    )
    scores.update(
        model=loaded.model_id,
        model_fingerprint=loaded.fingerprint,
        dataset=dataset.name,
        split=dataset.split,
        n_texts=len(dataset),
        n_tokens=int(metadata["n_tokens"]),
        n_classes=dataset.n_classes,
    )
    return scores, reused
