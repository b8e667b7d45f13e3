"""What the NTPS jobs share: loading the model and dataset a config names; the settings grids pass on.

Every job config (score, probe, peers, lora, scratch) names a model and a dataset with the same fields,
so loading them (with the same status messages) is written once here. The grid runners (``ntps study``,
``ntps prescreen``) hand the same extraction settings down to each job they start; that list is
:data:`EXTRACTION_SETTINGS`, so a setting added to the grids reaches every job alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from perceptalign.callbacks import StatusCallback
from perceptalign.io import ensure_output_dir
from perceptalign.ntps.datasets import TextDataset, load_text_dataset
from perceptalign.ntps.datasets.core import check_enough_texts

if TYPE_CHECKING:
    from perceptalign.ntps.models import LoadedModel


#: Settings of the feature/statistics extraction that a study or pre-screen passes to each job unchanged.
EXTRACTION_SETTINGS = (
    "layers",
    "max_samples",
    "max_length",
    "token_budget",
    "dtype",
    "seed",
    "trust_remote_code",
)


class ModelSource(Protocol):
    """The model fields of a job config (a ``tokenizer`` field, when the config has one, pairs the model
    with another tokenizer)."""

    model: str
    dtype: str
    revision: str | None
    trust_remote_code: bool


class DataSource(Protocol):
    """The dataset fields of a job config that reads one split."""

    dataset: str
    split: str
    text_column: str | None
    label_column: str | None
    max_samples: int | None
    seed: int


class OutputSource(Protocol):
    """The model and output fields of a job config."""

    model: str
    out: Path


def check_job_inputs(config: OutputSource) -> Path:
    """What can be checked before any data or weights load: the output folder is a writable folder and a
    local model folder is complete. Returns the output folder (created)."""
    from perceptalign.ntps.models import check_model_source

    out = ensure_output_dir(config.out)
    check_model_source(config.model, needs_tokenizer=getattr(config, "tokenizer", None) is None)
    return out


def load_job_model(
    config: ModelSource,
    status: StatusCallback,
    *,
    device: torch.device | str = "cpu",
    dtype: str | None = None,
    device_map: str | None = None,
) -> LoadedModel:
    """The causal LM of ``config`` (its revision and remote-code choice), announced on ``status``.

    ``device``, ``dtype`` and ``device_map`` are the resolved placement
    (:func:`perceptalign.ntps.placement.resolve_device` / ``resolve_dtype``); ``dtype`` None takes
    ``config.dtype`` as it is. The training jobs load on the CPU and move the model themselves."""
    from perceptalign.ntps.models import load_causal_lm

    tokenizer = getattr(config, "tokenizer", None)
    where = "" if torch.device(device).type == "cpu" and device_map is None else f" on {device}"
    where += f" (device_map {device_map})" if device_map else ""
    status(f"loading model {config.model}{where}" + (f" with the tokenizer {tokenizer}" if tokenizer else ""))
    return load_causal_lm(
        config.model,
        dtype=dtype or config.dtype,
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
        tokenizer=tokenizer,
        progress=status,
        device=device,
        device_map=device_map,
    )


def check_placement(config: Any) -> None:
    """Refuse a config's ``device``, ``dtype``, ``device_map`` and ``stats_memory`` (those it has) before any
    data or model loads: an unknown spec, or a device this machine lacks."""
    from perceptalign.ntps.placement import (
        check_device_map,
        check_stats_memory,
        resolve_device,
        resolve_dtype,
    )

    device = resolve_device(getattr(config, "device", "cpu"))
    resolve_dtype(config.dtype, device)
    check_device_map(getattr(config, "device_map", None), device)
    check_stats_memory(getattr(config, "stats_memory", None))


def load_job_dataset(config: DataSource, status: StatusCallback) -> TextDataset:
    """The validated split of ``config`` (with its seeded subset), announced on ``status``; refused when it is
    too small to measure anything (:func:`~perceptalign.ntps.datasets.core.check_enough_texts`)."""
    status(f"loading dataset {config.dataset} ({config.split})")
    dataset = load_text_dataset(
        config.dataset,
        config.split,
        text_column=config.text_column,
        label_column=config.label_column,
        max_samples=config.max_samples,
        seed=config.seed,
    )
    check_enough_texts(dataset)
    return dataset


def extraction_settings(config: Any) -> dict[str, Any]:
    """The :data:`EXTRACTION_SETTINGS` of a grid config, as keyword arguments of a job config."""
    return {name: getattr(config, name) for name in EXTRACTION_SETTINGS}


__all__ = [
    "EXTRACTION_SETTINGS",
    "DataSource",
    "ModelSource",
    "OutputSource",
    "check_job_inputs",
    "check_placement",
    "extraction_settings",
    "load_job_dataset",
    "load_job_model",
]
