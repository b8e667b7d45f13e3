"""One pass of a dataset through a causal LM → per-layer NTPS moment statistics: the core that every NTPS
path runs (the ``ntps score`` job, the LoRA job's before/after measurements, and ``perceptalign.ntps.score``).

Texts are tokenised once, grouped into length-sorted token-budget batches, and streamed through the base
model; each batch's hidden states are added into float64 sums (:class:`StatisticsAccumulator`).
Optionally checkpointed (resumable, bit for bit) and sharded across processes (round-robin batches,
all-reduced sums).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from perceptalign.callbacks import BatchCallback
from perceptalign.io import PerceptAlignError
from perceptalign.ntps.datasets import TextDataset
from perceptalign.ntps.distributed import (
    DistributedContext,
    rank_checkpoint_path,
    resume_shard,
    shard_plan,
)
from perceptalign.ntps.identity import statistics_metadata
from perceptalign.ntps.models import LoadedModel, iter_hidden_states, token_budget_batches, tokenize
from perceptalign.ntps.statistics import (
    DEFAULT_BLOCK_PAIRS,
    LayerStatistics,
    StatisticsAccumulator,
    load_statistics,
)


def validate_extraction_settings(
    *, max_length: int | str | None = None, token_budget: int | None = None
) -> None:
    """The tokenisation settings every extraction job shares: at least one next-token pair per text, or
    ``'model'`` for the model's own maximum (a setting passed as None is not checked)."""
    if max_length is not None:
        from perceptalign.ntps.models import check_max_length

        check_max_length(max_length)
    if token_budget is not None and token_budget < 1:
        raise PerceptAlignError(f"`token_budget` must be ≥ 1 token per batch (got {token_budget}).")


def validate_solver_settings(
    *, fractions: Sequence[float] | None, ks: Sequence[int] | None, ridge: float
) -> None:
    """The subspace settings every NTPS measurement shares, checked before any data or model loads (ks
    are checked against each layer's rank once the statistics exist)."""
    if ks is not None and (not ks or any(int(k) < 1 for k in ks)):
        raise PerceptAlignError(f"`ks` must be positive integers, got {ks}.")
    if fractions is not None and (not fractions or any(not 0 < float(f) <= 1 for f in fractions)):
        raise PerceptAlignError(f"`fractions` must lie in (0, 1], got {fractions}.")
    if not (math.isfinite(ridge) and ridge >= 0):
        raise PerceptAlignError(f"`ridge` must be a finite number ≥ 0, got {ridge}.")


def resolve_layers(requested: Sequence[int] | None, n_hidden_states: int) -> list[int]:
    """Validate requested layer indices (negative counts from the end); default all, 0 = embeddings."""
    if not requested:
        return list(range(n_hidden_states))
    layers = []
    for layer in requested:
        index = layer + n_hidden_states if layer < 0 else layer
        if not 0 <= index < n_hidden_states:
            raise PerceptAlignError(
                f"layer {layer} does not exist: the model has hidden states 0..{n_hidden_states - 1} "
                "(0 = embedding output)."
            )
        layers.append(index)
    return sorted(set(layers))


def compute_statistics(
    loaded: LoadedModel,
    dataset: TextDataset,
    layers: Sequence[int],
    *,
    max_length: int,
    token_budget: int,
    checkpoint_path: Path | None = None,
    checkpoint_seconds: float = 60.0,
    identity: dict[str, Any] | None = None,
    on_batch: BatchCallback | None = None,
    on_resume: Callable[[int, int], None] | None = None,
    distributed: DistributedContext | None = None,
    on_shard: Callable[[int, int], None] | None = None,
    block_pairs: int = DEFAULT_BLOCK_PAIRS,
) -> StatisticsAccumulator:
    """Stream the dataset through the model once and accumulate per-layer moments.

    With a checkpoint path, partial sums are saved atomically at most every ``checkpoint_seconds`` and
    a rerun with the same identity resumes after the last saved batch; batches are deterministic
    (length-sorted), so the resumed result equals an uninterrupted run.

    With a ``distributed`` context of several processes, this rank streams only its round-robin share of
    the batches (``on_shard`` gets its number of texts and the total), checkpoints to its own
    ``.rank{r}`` file (resuming only with the same world size), and every rank returns the all-reduced
    statistics of the whole dataset. ``block_pairs``: see :class:`StatisticsAccumulator`.
    """
    token_ids = tokenize(loaded, dataset.texts, max_length)
    if all(len(ids) < 2 for ids in token_ids):
        raise PerceptAlignError(
            f"all {len(token_ids)} texts are a single token after tokenisation (max_length {max_length}), so "
            "there is no next token to predict and C0, C1 would be zero: use texts of at least two tokens."
        )
    batches = token_budget_batches([len(x) for x in token_ids], token_budget)
    labels = torch.as_tensor(dataset.labels, dtype=torch.long)
    plan = {
        **(identity or {}),
        "token_budget": token_budget,
        "n_batches": len(batches),
        "block_pairs": block_pairs,
    }
    accumulator = StatisticsAccumulator(
        layers, loaded.hidden_size, dataset.n_classes, block_pairs=block_pairs
    )
    start = 0
    sharded = distributed is not None and distributed.world_size > 1
    if sharded:
        assert distributed is not None
        batches, plan = distributed.shard(batches), shard_plan(plan, distributed)
        if on_shard:
            on_shard(sum(len(batch) for batch in batches), len(token_ids))
        if checkpoint_path is not None:
            saved_shard, start = resume_shard(distributed, checkpoint_path, plan)
            checkpoint_path = rank_checkpoint_path(checkpoint_path, distributed.rank)
            if saved_shard is not None:
                accumulator = saved_shard
                if on_resume:
                    on_resume(start, len(batches))
    elif checkpoint_path is not None and checkpoint_path.is_file():
        saved, extra = StatisticsAccumulator.load_checkpoint(checkpoint_path)
        if extra.get("plan") == json.loads(json.dumps(plan)):
            accumulator, start = saved, int(extra["next_batch"])
            if on_resume:
                on_resume(start, len(batches))
    last_save = time.monotonic()
    for number, batch in iter_hidden_states(loaded, token_ids, batches, layers, start_batch=start):
        accumulator.update(batch.hidden_states, batch.attention_mask, labels[batch.indices])
        if on_batch:
            on_batch(len(batch.indices), batch.n_tokens)
        # Saved only between product blocks, so a resumed run flushes exactly where this one does.
        due = time.monotonic() - last_save >= checkpoint_seconds and accumulator.at_block_boundary
        if checkpoint_path is not None and due and number + 1 < len(batches):
            accumulator.save_checkpoint(checkpoint_path, {"plan": plan, "next_batch": number + 1})
            last_save = time.monotonic()
    if sharded:
        assert distributed is not None
        distributed.all_reduce_statistics(accumulator)
    return accumulator


@dataclass
class MeasuredStatistics:
    """Per-layer moments with the identity they were made from (``metadata``, including ``n_tokens``)."""

    statistics: dict[int, LayerStatistics]
    metadata: dict[str, Any]
    reused: bool


def cached_or_computed_statistics(
    loaded: LoadedModel,
    dataset: TextDataset,
    layers: Sequence[int],
    *,
    max_length: int,
    max_samples: int | None,
    token_budget: int,
    cache: Path | None = None,
    reuse: bool = True,
    on_compute: Callable[[], None] | None = None,
    **compute_options: Any,
) -> MeasuredStatistics:
    """The moments of ``loaded`` on ``dataset``: from ``cache`` when its identity matches (a cache made
    from other inputs is refused, naming what differs), else one pass through the model.

    The one "load or compute" behind ``ntps score``, the LoRA job's measurements and
    ``perceptalign.ntps.score``. Nothing is saved here: each caller saves once its own work succeeded, so
    a failed run leaves no cache. ``on_compute`` is called just before a pass starts;
    ``compute_options`` go to :func:`compute_statistics` (checkpoints, callbacks, distribution).
    """
    metadata = statistics_metadata(loaded, dataset, layers, max_length, max_samples)
    if reuse and cache is not None and (cache.is_file() or cache.with_suffix(".json").is_file()):
        cached, cached_meta = load_statistics(cache, expected=metadata)
        metadata["n_tokens"] = cached_meta["n_tokens"]
        return MeasuredStatistics({layer: cached[layer] for layer in layers}, metadata, reused=True)
    if on_compute is not None:
        on_compute()
    accumulator = compute_statistics(
        loaded,
        dataset,
        layers,
        max_length=max_length,
        token_budget=token_budget,
        identity=metadata,
        **compute_options,
    )
    metadata["n_tokens"] = accumulator.n_tokens
    return MeasuredStatistics(accumulator.finalize(), metadata, reused=False)


__all__ = [
    "MeasuredStatistics",
    "cached_or_computed_statistics",
    "compute_statistics",
    "resolve_layers",
    "validate_extraction_settings",
    "validate_solver_settings",
]
