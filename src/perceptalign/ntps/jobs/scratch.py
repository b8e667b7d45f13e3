"""`ntps scratch`: the same classifier on a randomly initialised model of the same configuration.

This is the lower reference of the comparison: what the architecture and the labelled data alone reach
with the same head, optimizer, schedule, steps and batches, without any pretraining. Pretraining helps a
task to the extent that the linear head or LoRA on the pretrained model beat this number.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from perceptalign.callbacks import PhaseCallback, StatusCallback
from perceptalign.io import atomic_directory, write_json_atomic
from perceptalign.ntps.finetune import (
    EncodedTexts,
    FinetuneJobConfig,
    SequenceClassifier,
    TrainResult,
    active_dropout,
    job_record,
    load_job_inputs,
    resolve_device,
    save_head,
    train_classifier,
    training_figure,
)
from perceptalign.ntps.jobs.inputs import check_job_inputs
from perceptalign.ntps.models import DTYPES, LoadedModel, resolve_max_length

RESULTS_FILE = "scratch.json"
HEAD_FILE = "scratch_head.safetensors"
MODEL_DIR = "scratch_model"
TRAINING_FIGURE = "scratch_training.png"


def random_init_like(loaded: LoadedModel, seed: int, trust_remote_code: bool = False) -> nn.Module:
    """A fresh causal LM with ``loaded``'s configuration and dtype, initialised from ``seed``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        loaded.model.config, dtype=DTYPES[loaded.dtype], trust_remote_code=trust_remote_code
    )
    model.requires_grad_(True)
    return model


@dataclass(frozen=True)
class ScratchJobConfig(FinetuneJobConfig):
    """`ntps scratch`: data/model/optimisation (see :class:`FinetuneJobConfig`), whether to keep the model.

    The recipe's ``scratch`` run: ``default`` trains like the default LoRA run (5,000 steps); ``paper``
    is the published from_scratch.py (10,000 steps, Adafactor weight decay 1e-5, head dropout 0.05,
    float32 weights under bf16 autocast)."""

    RECIPE_PART: ClassVar[str] = "scratch"

    save_model: bool = False


@dataclass
class ScratchJobResult:
    results: dict[str, Any]
    out: Path
    scratch: TrainResult


def run_scratch(
    config: ScratchJobConfig,
    *,
    on_status: StatusCallback | None = None,
    progress: PhaseCallback | None = None,
) -> ScratchJobResult:
    """Train a randomly initialised copy of the model with the head; write ``scratch.json`` and figures."""
    status = on_status or (lambda _msg: None)
    device = resolve_device(config.device)
    out = check_job_inputs(config)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    train_ds, eval_ds, eval_source, loaded = load_job_inputs(config, status)
    assert config.train is not None
    max_length = resolve_max_length(config.max_length, loaded)
    if max_length != config.max_length:
        status(f"max_length 'model': {max_length} tokens (the model's own maximum)")
    train_enc = EncodedTexts.from_dataset(loaded, train_ds, max_length)
    eval_enc = EncodedTexts.from_dataset(loaded, eval_ds, max_length)
    status("initialising a random model of the same configuration")
    model = random_init_like(loaded, config.train.seed, config.trust_remote_code)
    loaded.model = model  # the pretrained weights are not needed any more
    seconds["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.manual_seed(config.train.seed)  # same head initialisation as the LoRA and linear-head runs
    classifier = SequenceClassifier(
        model, loaded.hidden_size, train_ds.n_classes, head_dropout=config.train.head_dropout
    )
    scratch = train_classifier(
        classifier,
        train_enc,
        eval_enc,
        config.train,
        name="from scratch + head",
        device=device,
        progress=progress,
    )
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    metadata = {
        "model_config_of": loaded.model_id,
        "backbone": "scratch",
        "init_seed": config.train.seed,
        "pooling": "masked mean of the last hidden state",
        "hidden_size": loaded.hidden_size,
        "class_names": json.dumps(list(train_ds.class_names)),
    }
    save_head(out / HEAD_FILE, classifier.head, metadata)
    if config.save_model:
        with atomic_directory(out / MODEL_DIR) as tmp:
            model.to("cpu").save_pretrained(str(tmp))
            loaded.tokenizer.save_pretrained(str(tmp))
            save_head(tmp / "head.safetensors", classifier.head, metadata)
    from perceptalign.plotting import save_figure

    save_figure(
        training_figure([scratch], f"{loaded.model_id} (random init) on {train_ds.name}"),
        out / TRAINING_FIGURE,
    )
    seconds["save"] = time.perf_counter() - t0

    results: dict[str, Any] = {
        "model": loaded.model_id,
        "init": f"random (AutoModelForCausalLM.from_config, torch seed {config.train.seed})",
        **job_record(config, train_ds, eval_ds, eval_source, device, max_length),
        "n_trainable_params": scratch.n_trainable,
        "backbone_dropout_in_train_mode": active_dropout(model),
        "eval_accuracy_scratch": scratch.eval_accuracy,
        "scratch": scratch.summary(),
        "seconds": seconds,
        "files": {
            "head": HEAD_FILE,
            "model": MODEL_DIR if config.save_model else None,
            "training_figure": TRAINING_FIGURE,
        },
        "config": json.loads(json.dumps(asdict(config), default=str)),
    }
    if config.recipe != "default":
        from perceptalign.ntps.recipes import get_recipe

        results["recipe_note"] = get_recipe(config.recipe).note
    write_json_atomic(out / RESULTS_FILE, results)
    return ScratchJobResult(results=results, out=out, scratch=scratch)
