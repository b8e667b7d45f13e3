"""NTPS from Python: from hidden states a user already has, from moment statistics, or from any loaded LM.

These are the functions behind ``perceptalign.ntps``; the CLI's ``ntps score`` job runs the same
statistics engine (:func:`perceptalign.ntps.measure.cached_or_computed_statistics`) and the same solver
(:func:`perceptalign.ntps.subspace.ntps_all_layers`), adding caching, checkpoints and files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.datasets.core import TextDataset, validate_text_dataset
from perceptalign.ntps.datasets.local import encode_label_column
from perceptalign.ntps.result import NTPSResult
from perceptalign.ntps.statistics import LayerStatistics, StatisticsAccumulator
from perceptalign.ntps.statistics.precision import precision_policy
from perceptalign.ntps.subspace import DEFAULT_FRACTIONS, ntps_all_layers


def ntps_from_statistics(
    statistics: Mapping[int, LayerStatistics],
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    ks: Sequence[int] | None = None,
    ridge: float = 0.0,
    info: Mapping[str, Any] | None = None,
) -> NTPSResult:
    """Solve the subspaces of per-layer moments (``{layer: LayerStatistics}``, e.g. from
    :meth:`StatisticsAccumulator.finalize` or a statistics cache) and return the result tables."""
    tables = ntps_all_layers(statistics, fractions=fractions, ks=ks, ridge=ridge)
    return NTPSResult(tables=tables, info=dict(info or {}))


def ntps_from_hidden(
    hidden_states: Tensor | Sequence[Tensor],
    attention_mask: Tensor,
    labels: Tensor | Sequence[int] | np.ndarray,
    *,
    n_classes: int | None = None,
    layers: Sequence[int] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    ks: Sequence[int] | None = None,
    ridge: float = 0.0,
) -> NTPSResult:
    """NTPS of hidden states the caller computed: one ``B×T×d`` tensor, or one per layer.

    ``attention_mask`` is ``B×T`` of 0/1 (1 = real token; each row's real tokens contiguous, padding on
    either side, rows may differ); ``labels`` are ``B`` integer classes in ``[0, n_classes)``
    (``n_classes`` defaults to ``max(labels) + 1``). ``layers`` names the tensors (default 0, 1, …). The
    moments are accumulated in float64 exactly as ``ntps score`` does, on the device of the hidden states
    (under its precision policy); for data that do not fit in memory at once, feed batches to a
    :class:`StatisticsAccumulator` and call :func:`ntps_from_statistics`.
    """
    states = [hidden_states] if isinstance(hidden_states, Tensor) else list(hidden_states)
    if not states:
        raise PerceptAlignError("hidden_states is empty; pass one B×T×d tensor or one per layer.")
    names = list(range(len(states))) if layers is None else [int(layer) for layer in layers]
    if len(names) != len(states):
        raise PerceptAlignError(f"got {len(states)} hidden-state tensors but {len(names)} layer names.")
    labels_t = torch.as_tensor(np.asarray(labels)) if not isinstance(labels, Tensor) else labels
    if n_classes is None:
        if labels_t.numel() == 0 or labels_t.is_floating_point():
            raise PerceptAlignError("labels must be a non-empty 1-D array of integer classes.")
        n_classes = int(labels_t.max()) + 1
    if states[0].dim() != 3:
        raise PerceptAlignError(f"hidden states must be B×T×d tensors, got shape {tuple(states[0].shape)}.")
    options = precision_policy(states[0].device).accumulator_options()
    accumulator = StatisticsAccumulator(names, int(states[0].shape[-1]), n_classes, **options)
    accumulator.update(states, attention_mask, labels_t)
    info = {"n_texts": accumulator.n_texts, "n_tokens": accumulator.n_tokens, "n_classes": n_classes}
    statistics = accumulator.to("cpu").finalize()
    return ntps_from_statistics(statistics, fractions=fractions, ks=ks, ridge=ridge, info=info)


def score(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[Any] | np.ndarray,
    *,
    layers: Sequence[int] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    ks: Sequence[int] | None = None,
    ridge: float = 0.0,
    max_length: int | str = 512,
    token_budget: int = 2048,
    on_batch: Callable[[int, int], None] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    stats_memory: float | None = None,
) -> NTPSResult:
    """NTPS of a loaded Hugging Face causal LM on labelled texts, for every layer (or ``layers``).

    ``labels``: class names (strings) or integer classes. One forward pass of the base model over
    length-sorted token-budget batches; ``layers`` are hidden-state indices (0 = embeddings, negative
    from the end). ``max_length``: tokens per text, or ``'model'`` for the model's own maximum (long texts
    weigh more: a text's share of C0/C1 grows roughly with L³). ``on_batch(n_texts, n_tokens)`` is called
    after each batch (for a progress bar).

    ``device``: ``auto`` runs a model that is already on a GPU (or spread over several by accelerate)
    where it is, and moves a CPU model to ``cuda:0`` / ``mps`` when there is one; ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps`` move it there. ``dtype``: ``auto`` keeps the model's own dtype (the weights of a
    model you loaded are never rounded behind your back); an explicit dtype converts it. Both act on
    ``model`` in place, as ``model.to`` does. ``stats_memory``: GB the float64 statistics may use
    (default: what the device has free); beyond it the layers are measured in several passes.
    """
    from perceptalign.ntps.measure import (
        cached_or_computed_statistics,
        resolve_layers,
        validate_extraction_settings,
    )
    from perceptalign.ntps.models import as_loaded_model, check_max_length, resolve_max_length

    validate_extraction_settings(max_length=max_length, token_budget=token_budget)
    dataset = _text_dataset(texts, labels)
    loaded = as_loaded_model(place_model(model, device=device, dtype=dtype), tokenizer)
    max_length = resolve_max_length(check_max_length(max_length), loaded)
    measured = cached_or_computed_statistics(
        loaded,
        dataset,
        resolve_layers(layers, loaded.n_hidden_states),
        max_length=max_length,
        max_samples=None,
        token_budget=token_budget,
        on_batch=on_batch,
        stats_memory=stats_memory,
    )
    info = {
        "model": loaded.model_id,
        "device": str(loaded.device),
        "dtype": loaded.dtype,
        "n_texts": len(dataset),
        "n_tokens": measured.metadata["n_tokens"],
        "n_classes": dataset.n_classes,
        "class_names": dataset.class_names,
        "max_length": max_length,
    }
    return ntps_from_statistics(measured.statistics, fractions=fractions, ks=ks, ridge=ridge, info=info)


def place_model(model: nn.Module, *, device: str = "auto", dtype: str = "auto") -> nn.Module:
    """Put a model the caller loaded where :func:`score`'s ``device`` and ``dtype`` say (in place).

    ``device`` auto leaves a model that is on an accelerator (or dispatched by accelerate) where it is and
    moves a CPU model to the accelerator :func:`~perceptalign.ntps.placement.resolve_device` picks;
    ``dtype`` auto leaves the weights' dtype as it is. A dispatched model is never moved (accelerate's
    hooks place its parts); naming a device for it is refused.
    """
    from perceptalign.ntps.models import DTYPES, input_device
    from perceptalign.ntps.placement import resolve_device, resolve_dtype

    dispatched = bool(getattr(model, "hf_device_map", None))
    current = input_device(model)
    if str(device).strip().lower() == "auto":
        target = current if dispatched or current.type != "cpu" else resolve_device("auto")
    else:
        target = resolve_device(device)
        if dispatched and target != current:
            raise PerceptAlignError(
                f"the model is spread over devices by accelerate (hf_device_map), so it cannot be moved to "
                f"`device` {device}; pass `device` 'auto' to run it where it is."
            )
    if str(dtype).strip().lower() != "auto":
        wanted = DTYPES[resolve_dtype(dtype, target)]
        if dispatched and any(p.dtype != wanted for p in model.parameters() if p.is_floating_point()):
            raise PerceptAlignError(
                f"the model is spread over devices by accelerate, so its `dtype` cannot be changed here; "
                f"load it in {dtype} (from_pretrained(dtype=…)) or pass `dtype` 'auto'."
            )
        if not dispatched:
            model = model.to(dtype=wanted)
    if not dispatched and target != current:
        model = model.to(target)
    return model


def _text_dataset(texts: Sequence[str], labels: Sequence[Any] | np.ndarray) -> TextDataset:
    if np.ndim(labels) != 1:
        raise PerceptAlignError(f"labels must be one value per text, got shape {np.shape(labels)}.")
    encoded, class_names = encode_label_column(pd.Series(list(labels)), "labels")
    dataset = TextDataset(
        name="texts", split="all", texts=list(texts), labels=encoded, class_names=class_names, source="python"
    )
    validate_text_dataset(dataset)
    return dataset


__all__ = ["ntps_from_hidden", "ntps_from_statistics", "place_model", "score"]
