"""Shared training loop of the NTPS comparison measurements (LoRA, frozen linear head, from scratch).

All three train the same classifier, backbone → masked mean of the last hidden state → linear head, with
the same optimizer (Adafactor with a fixed learning rate, as in the paper), the same cosine schedule with
linear warm-up and the same seeded mini-batch order, so that their held-out accuracies differ only by
what is trained: nothing of the backbone (linear head), low-rank adapters (LoRA) or everything (scratch).

Modules: ``config`` and ``schedule`` (settings, Adafactor, warm-up + cosine), ``data`` (tokenized texts,
seeded batches), ``classifier``, ``training`` (the loop), ``linear_head`` (frozen-backbone baseline),
``training_figures``, ``job`` (job inputs/records and the NTPS re-measurement of `ntps lora` /
`ntps scratch`).
"""

from __future__ import annotations

from perceptalign.ntps.finetune.classifier import (
    SequenceClassifier,
    active_dropout,
    count_trainable,
    last_hidden_state,
    masked_mean,
    trainable_parameters,
)
from perceptalign.ntps.finetune.config import TrainConfig
from perceptalign.ntps.finetune.data import (
    EVAL_SPLIT_SEED,
    Batches,
    BatchSampler,
    EncodedTexts,
    load_train_eval,
)
from perceptalign.ntps.finetune.job import (
    FinetuneJobConfig,
    NTPSSettings,
    job_record,
    load_job_inputs,
    measure_ntps,
    resolve_device,
)
from perceptalign.ntps.finetune.linear_head import FeatureRows, pooled_features, save_head, train_linear_head
from perceptalign.ntps.finetune.schedule import (
    OPTIMIZER_DESCRIPTION,
    cosine_warmup_factor,
    make_optimizer,
    make_scheduler,
    warmup_steps_for,
)
from perceptalign.ntps.finetune.training import TrainResult, evaluate, loss_curve, train_classifier
from perceptalign.ntps.finetune.training_figures import ntps_change_figure, training_figure

__all__ = [
    "EVAL_SPLIT_SEED",
    "OPTIMIZER_DESCRIPTION",
    "BatchSampler",
    "Batches",
    "EncodedTexts",
    "FeatureRows",
    "FinetuneJobConfig",
    "NTPSSettings",
    "SequenceClassifier",
    "TrainConfig",
    "TrainResult",
    "active_dropout",
    "cosine_warmup_factor",
    "count_trainable",
    "evaluate",
    "job_record",
    "last_hidden_state",
    "load_job_inputs",
    "load_train_eval",
    "loss_curve",
    "make_optimizer",
    "make_scheduler",
    "masked_mean",
    "measure_ntps",
    "ntps_change_figure",
    "pooled_features",
    "resolve_device",
    "save_head",
    "train_classifier",
    "train_linear_head",
    "trainable_parameters",
    "training_figure",
    "warmup_steps_for",
]
