"""One pass of a dataset through a causal LM → per-layer NTPS moment statistics: the core that every NTPS
path runs (the ``ntps score`` job, the LoRA job's before/after measurements, and ``perceptalign.ntps.score``).

Texts are tokenised once, grouped into length-sorted token-budget batches, and streamed through the base
model; each batch's hidden states are added into float64 sums (:class:`StatisticsAccumulator`) on the
device the model runs on, under the device's precision policy
(:func:`~perceptalign.ntps.statistics.precision.precision_policy`), so hidden states are never copied to
the host per batch. When the sums of all layers do not fit the device's memory, the layers are measured
in groups, one pass over the data each (:func:`~perceptalign.ntps.placement.plan_layer_groups`).
Optionally checkpointed (resumable, bit for bit on one device) and sharded across processes (round-robin
batches, all-reduced sums).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

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
from perceptalign.ntps.placement import (
    LayerGroupPlan,
    forward_reserve_bytes,
    plan_layer_groups,
    statistics_layer_bytes,
    statistics_memory_budget,
)
from perceptalign.ntps.statistics import (
    DEFAULT_BLOCK_PAIRS,
    LayerStatistics,
    StatisticsAccumulator,
    load_statistics,
)
from perceptalign.ntps.statistics.precision import PrecisionPolicy, precision_policy

#: Stands for "no limit" when ranks agree on the smallest memory budget (an unknown budget is no limit).
_UNLIMITED = 2**62


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
    stats_memory: float | None = None,
    on_plan: Callable[[LayerGroupPlan], None] | None = None,
) -> StatisticsAccumulator:
    """Stream the dataset through the model and accumulate per-layer moments; the result is on the host.

    The sums are made on ``loaded.statistics_device`` under its precision policy. Their memory is planned
    first (:func:`layer_group_plan`, reported through ``on_plan`` before any batch): ``stats_memory`` (GB)
    overrides the budget read from the device. When all layers do not fit, each group of layers gets its
    own pass over the data (the forward pass is repeated, once per group); each group's finished sums are
    moved to the host and the groups are joined at the end. Every layer's sums are the same, bit for bit,
    whichever group it was measured in (a layer's arithmetic never depends on the other layers).

    With a checkpoint path, partial sums are saved atomically at most every ``checkpoint_seconds`` and
    a rerun with the same identity resumes after the last saved batch; batches are deterministic
    (length-sorted), so the resumed result equals an uninterrupted run. With several layer groups the
    checkpoint's identity includes the group, so a resume never mixes groups; each finished group is
    kept in its own file (``….group{g}.safetensors``) until all are joined, so a rerun skips the finished
    groups and resumes inside the interrupted one. A rerun whose plan differs (e.g. other free memory;
    pin it with ``stats_memory``) cannot use the checkpoints of the other plan and starts over.

    With a ``distributed`` context of several processes, this rank streams only its round-robin share of
    the batches (``on_shard`` gets its number of texts and the total), checkpoints to its own
    ``.rank{r}`` file (resuming only with the same world size), and every rank returns the all-reduced
    statistics of the whole dataset (the ranks agree on the smallest memory budget, so they run the same
    groups). ``block_pairs``: see :class:`StatisticsAccumulator`.
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
    policy = precision_policy(loaded.statistics_device)
    sharded = distributed is not None and distributed.world_size > 1
    layer_plan = layer_group_plan(
        loaded,
        layers,
        dataset.n_classes,
        token_budget=token_budget,
        block_pairs=block_pairs,
        stats_memory=stats_memory,
        policy=policy,
        distributed=distributed if sharded else None,
    )
    if on_plan:
        on_plan(layer_plan)
    if sharded:
        assert distributed is not None
        batches, plan = distributed.shard(batches), shard_plan(plan, distributed)
        if on_shard:
            on_shard(sum(len(batch) for batch in batches), len(token_ids))
    stream = _Stream(loaded, token_ids, batches, labels, dataset.n_classes, policy, block_pairs)
    if len(layer_plan.groups) == 1:
        accumulator = stream.run(
            list(layers), plan, checkpoint_path, checkpoint_seconds, on_batch, on_resume, distributed
        )
        return accumulator.to("cpu")
    parts: list[StatisticsAccumulator] = []
    finished_files = []
    for index, group in enumerate(layer_plan.groups):
        group_plan = {**plan, "layer_group": {"index": index, "of": len(layer_plan.groups), "layers": group}}
        finished = _finished_group_path(checkpoint_path, index, distributed if sharded else None)
        accumulator = _load_finished_group(finished, group_plan, distributed if sharded else None)
        if accumulator is None:
            accumulator = stream.run(
                group, group_plan, checkpoint_path, checkpoint_seconds, on_batch, on_resume, distributed
            ).to("cpu")
            if finished is not None:
                accumulator.save_checkpoint(finished, {"plan": group_plan, "complete": True})
        elif on_resume:
            on_resume(len(batches), len(batches))
        if finished is not None:
            finished_files.append(finished)
        parts.append(accumulator)
    if any((p.n_texts, p.n_tokens) != (parts[0].n_texts, parts[0].n_tokens) for p in parts):
        raise PerceptAlignError(
            "the layer groups counted different texts or tokens: the data changed between passes or "
            "a finished group is stale; delete the .statistics.checkpoint*.group* files and rerun."
        )
    result = StatisticsAccumulator.join_layers(parts)
    for path in finished_files:  # the joined sums are returned; the caller saves them as it sees fit
        path.unlink(missing_ok=True)
    return result


def layer_group_plan(
    loaded: LoadedModel,
    layers: Sequence[int],
    n_classes: int,
    *,
    token_budget: int,
    block_pairs: int = DEFAULT_BLOCK_PAIRS,
    stats_memory: float | None = None,
    policy: PrecisionPolicy | None = None,
    distributed: DistributedContext | None = None,
) -> LayerGroupPlan:
    """How many passes the statistics of ``layers`` need on the model's statistics device.

    The budget is ``stats_memory`` GB when given, else the free memory of the device that holds the sums
    (:func:`~perceptalign.ntps.placement.statistics_memory_budget`) less a reserve for one batch's forward
    pass; with several processes, the smallest budget of any rank (so that all run the same groups).
    """
    policy = policy or precision_policy(loaded.statistics_device)
    product_bytes = 8 if loaded.dtype == "float64" else 4
    reserve = forward_reserve_bytes(token_budget, loaded.hidden_size, loaded.n_hidden_states, loaded.dtype)
    budget, source = statistics_memory_budget(
        policy.sum_device, stats_memory=stats_memory, reserve_bytes=reserve
    )
    if distributed is not None and distributed.world_size > 1:
        smallest = -distributed.max_int([-(_UNLIMITED if budget is None else budget)])[0]
        budget = None if smallest >= _UNLIMITED else smallest
        source += " (smallest of all ranks)"
    groups = plan_layer_groups(
        layers,
        loaded.hidden_size,
        n_classes,
        budget_bytes=budget,
        block_pairs=block_pairs,
        product_bytes=product_bytes,
    )
    per_layer = statistics_layer_bytes(
        loaded.hidden_size, n_classes, block_pairs=block_pairs, product_bytes=product_bytes
    )
    return LayerGroupPlan(groups, per_layer, budget, str(policy.sum_device), source)


class _Stream:
    """One dataset's batches through one model: a pass accumulates the statistics of a group of layers."""

    def __init__(
        self,
        loaded: LoadedModel,
        token_ids: list[list[int]],
        batches: list[list[int]],
        labels: Tensor,
        n_classes: int,
        policy: PrecisionPolicy,
        block_pairs: int,
    ) -> None:
        self.loaded, self.token_ids, self.batches, self.labels = loaded, token_ids, batches, labels
        self.n_classes, self.policy, self.block_pairs = n_classes, policy, block_pairs

    def run(
        self,
        layers: list[int],
        plan: dict[str, Any],
        checkpoint_path: Path | None,
        checkpoint_seconds: float,
        on_batch: BatchCallback | None,
        on_resume: Callable[[int, int], None] | None,
        distributed: DistributedContext | None,
    ) -> StatisticsAccumulator:
        """One pass over this rank's batches for ``layers`` (resumed from a matching checkpoint), with the
        sums all-reduced over the ranks at the end; the sums stay on the statistics device."""
        options = self.policy.accumulator_options()
        accumulator = StatisticsAccumulator(
            layers, self.loaded.hidden_size, self.n_classes, block_pairs=self.block_pairs, **options
        )
        start = 0
        sharded = distributed is not None and distributed.world_size > 1
        if sharded:
            assert distributed is not None
            if checkpoint_path is not None:
                saved_shard, start = resume_shard(
                    distributed, checkpoint_path, plan, accumulator_options=options
                )
                checkpoint_path = rank_checkpoint_path(checkpoint_path, distributed.rank)
                if saved_shard is not None:
                    accumulator = saved_shard
                    if on_resume:
                        on_resume(start, len(self.batches))
        elif checkpoint_path is not None and checkpoint_path.is_file():
            saved, extra = StatisticsAccumulator.load_checkpoint(checkpoint_path, **options)
            if extra.get("plan") == json.loads(json.dumps(plan)):
                accumulator, start = saved, int(extra["next_batch"])
                if on_resume:
                    on_resume(start, len(self.batches))
        last_save = time.monotonic()
        batches = iter_hidden_states(self.loaded, self.token_ids, self.batches, layers, start_batch=start)
        for number, batch in batches:
            accumulator.update(batch.hidden_states, batch.attention_mask, self.labels[batch.indices])
            if on_batch:
                on_batch(len(batch.indices), batch.n_tokens)
            # Saved only between product blocks, so a resumed run flushes exactly where this one does.
            due = time.monotonic() - last_save >= checkpoint_seconds and accumulator.at_block_boundary
            if checkpoint_path is not None and due and number + 1 < len(self.batches):
                accumulator.save_checkpoint(checkpoint_path, {"plan": plan, "next_batch": number + 1})
                last_save = time.monotonic()
        if sharded:
            assert distributed is not None
            distributed.all_reduce_statistics(accumulator)
        return accumulator


def _finished_group_path(
    checkpoint_path: Path | None, index: int, distributed: DistributedContext | None
) -> Path | None:
    """Where a finished layer group's (all-reduced) sums wait until all groups are joined."""
    if checkpoint_path is None:
        return None
    path = checkpoint_path.with_name(f"{checkpoint_path.stem}.group{index}{checkpoint_path.suffix}")
    return rank_checkpoint_path(path, distributed.rank) if distributed is not None else path


def _load_finished_group(
    path: Path | None, plan: Mapping[str, Any], distributed: DistributedContext | None
) -> StatisticsAccumulator | None:
    """The finished group saved at ``path`` by a run of this plan, else None; with several ranks, only
    when every rank has its copy (otherwise all redo the group together)."""
    found: StatisticsAccumulator | None = None
    if path is not None and path.is_file():
        try:
            saved, extra = StatisticsAccumulator.load_checkpoint(path)
        except PerceptAlignError:
            saved, extra = None, {}
        if saved is not None and extra.get("complete") and extra.get("plan") == json.loads(json.dumps(plan)):
            found = saved
    if distributed is not None and distributed.world_size > 1:
        return None if distributed.max_int([0 if found is not None else 1])[0] else found
    return found


@dataclass
class MeasuredStatistics:
    """Per-layer moments with the identity they were made from (``metadata``, including ``n_tokens``)."""

    statistics: dict[int, LayerStatistics]
    metadata: dict[str, Any]
    reused: bool
    layer_plan: LayerGroupPlan | None = None  # how the statistics were made (None when reused)


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
    plans: list[LayerGroupPlan] = []
    report_plan = compute_options.pop("on_plan", None)

    def on_plan(plan: LayerGroupPlan) -> None:
        plans.append(plan)
        if report_plan is not None:
            report_plan(plan)

    accumulator = compute_statistics(
        loaded,
        dataset,
        layers,
        max_length=max_length,
        token_budget=token_budget,
        identity=metadata,
        on_plan=on_plan,
        **compute_options,
    )
    metadata["n_tokens"] = accumulator.n_tokens
    return MeasuredStatistics(accumulator.finalize(), metadata, reused=False, layer_plan=plans[0])


__all__ = [
    "MeasuredStatistics",
    "cached_or_computed_statistics",
    "compute_statistics",
    "layer_group_plan",
    "resolve_layers",
    "validate_extraction_settings",
    "validate_solver_settings",
]
