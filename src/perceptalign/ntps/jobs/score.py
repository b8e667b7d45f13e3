"""The `ntps score` job: model + dataset → per-layer statistics (resumable) → NTPS table, cache and heat map.

The statistics are the only expensive part (one forward pass over the data); they are cached beside the
results with metadata that identifies model, data and tokenisation, and checkpointed while they are
accumulated so that an interrupted run resumes where it stopped. The model and the statistics run on the
``device`` the config names (``auto``: a GPU when there is one); where they ran, in which dtype, and how
the layers were split into passes is recorded in ``ntps.json``, not in the cache's identity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from perceptalign.callbacks import BatchCallback
from perceptalign.io import PerceptAlignError, read_json, write_json_atomic
from perceptalign.ntps.distributed import (
    DistributedContext,
    init_distributed,
    main_process_first,
    rank_checkpoint_path,
    rank_device,
)
from perceptalign.ntps.identity import check_identity, data_identity
from perceptalign.ntps.jobs.inputs import (
    check_job_inputs,
    check_placement,
    load_job_dataset,
    load_job_model,
)
from perceptalign.ntps.measure import (
    cached_or_computed_statistics,
    resolve_layers,
    validate_extraction_settings,
    validate_solver_settings,
)
from perceptalign.ntps.models import (
    check_max_length,
    resolve_max_length,
    resolve_model_path,
)
from perceptalign.ntps.placement import LayerGroupPlan, resolve_device, resolve_dtype
from perceptalign.ntps.statistics import (
    LayerStatistics,
    save_statistics,
)
from perceptalign.ntps.statistics.precision import precision_policy
from perceptalign.ntps.subspace import DEFAULT_FRACTIONS, ntps_all_layers

STATISTICS_FILE = "statistics.safetensors"
CHECKPOINT_FILE = ".statistics.checkpoint.safetensors"
RESULTS_FILE = "ntps.json"
HEATMAP_FILE = "ntps_heatmap.png"


@dataclass(frozen=True)
class ScoreConfig:
    """Everything that defines one `ntps score` run (the CLI fills it from its options).

    ``device``: auto, cpu, cuda, cuda:N or mps (:func:`~perceptalign.ntps.placement.resolve_device`);
    ``dtype`` auto: bfloat16 on CUDA, float32 elsewhere. ``device_map`` auto spreads a model too large for
    one GPU over every visible GPU. ``stats_memory``: GB the float64 statistics may use (default: what the
    statistics device has free); layers beyond it are measured in further passes over the data.
    """

    model: str
    dataset: str
    out: Path
    split: str = "train"
    layers: list[int] | None = None
    max_samples: int | None = None
    max_length: int | str = 512  # tokens, or "model": the model's own maximum
    token_budget: int = 2048
    dtype: str = "auto"
    fractions: list[float] | None = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    ks: list[int] | None = None
    text_column: str | None = None
    label_column: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    seed: int = 0
    checkpoint_seconds: float = 60.0
    ridge: float = 0.0
    overwrite: bool = False
    tokenizer: str | None = None  # another tokenizer for the model (hub id or folder), e.g. OpenELM's Llama-2
    device: str = "auto"
    device_map: str | None = None
    stats_memory: float | None = None  # GB

    def __post_init__(self) -> None:
        """Reject settings that cannot work before any model or data is loaded."""
        check_placement(self)
        object.__setattr__(self, "max_length", check_max_length(self.max_length))
        validate_extraction_settings(max_length=self.max_length, token_budget=self.token_budget)
        validate_solver_settings(fractions=self.fractions, ks=self.ks, ridge=self.ridge)
        if not self.checkpoint_seconds > 0:
            raise PerceptAlignError(f"`checkpoint_seconds` must be > 0, got {self.checkpoint_seconds}.")


def refuse_other_data(cache: Path, identity: dict[str, Any]) -> None:
    """Refuse a statistics cache of other data before the model is loaded (the full identity, model
    included, is checked again once the model is known)."""
    meta_path = cache.with_suffix(".json")
    if meta_path.is_file():
        check_identity(read_json(meta_path), identity, what="the statistics cache", path=cache.parent)


def check_ks_fit(ks: Sequence[int] | None, hidden_size: int) -> None:
    """Absolute ks beyond the hidden size can never be met; say so before the data are streamed."""
    too_large = [int(k) for k in ks or () if int(k) > hidden_size]
    if too_large:
        raise PerceptAlignError(
            f"k = {too_large} exceed the model's hidden size {hidden_size}, the most directions V can have; "
            f"use ks ≤ {hidden_size} (they must also stay within each layer's numerical rank) or fractions."
        )


@dataclass
class ScoreResult:
    results: dict[str, Any]
    statistics: dict[int, LayerStatistics]
    out: Path
    reused_cache: bool
    written: bool = True  # False on the non-zero ranks of a distributed run (results = {}, nothing written)


def run_score(
    config: ScoreConfig,
    *,
    on_status: Callable[[str], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: BatchCallback | None = None,
) -> ScoreResult:
    """Run the whole `ntps score` job and write ``ntps.json``, the statistics cache and the heat map.

    Under torchrun (RANK/WORLD_SIZE/… in the environment, see :mod:`perceptalign.ntps.distributed`) the
    batches are shared by the processes and their sums all-reduced; only rank 0 reports through the
    callbacks and writes files, the other ranks return ``written=False`` once rank 0 is done. With a CUDA
    ``device`` each rank takes ``cuda:LOCAL_RANK`` and the sums are all-reduced by NCCL; on the CPU by
    gloo. The layer-group plan is reported on ``on_status`` before the first batch.
    """
    device = resolve_device(config.device)
    context = init_distributed(device=device)
    try:
        if context is not None and config.device_map is not None:
            raise PerceptAlignError(
                "`device_map` auto spreads one model over all GPUs, but under torchrun every process loads "
                "its own copy: use either torchrun (one GPU per process) or `device_map` auto (one process)."
            )
        return _run_score(config, context, rank_device(device, context), on_status, on_start, on_batch)
    finally:
        if context is not None:
            context.close()


def _run_score(
    config: ScoreConfig,
    context: DistributedContext | None,
    device: torch.device,
    on_status: Callable[[str], None] | None,
    on_start: Callable[[int, int], None] | None,
    on_batch: BatchCallback | None,
) -> ScoreResult:
    main = context is None or context.is_main
    if not main:
        on_status = on_start = on_batch = None
    status = on_status or (lambda _msg: None)
    dtype = resolve_dtype(config.dtype, device)
    out = check_job_inputs(config)
    cache = out / STATISTICS_FILE
    if context is not None:
        status(
            f"distributed run: {context.world_size} processes ({context.backend}), batches round-robin"
            + (f", one GPU per process (this one {device})" if device.type == "cuda" else "")
        )
    # Rank 0 fills the dataset and embedded-model caches before the others read them; the weights are
    # then loaded by all ranks at once.
    with main_process_first(context):
        dataset = load_job_dataset(config, status)
        if not config.overwrite:
            refuse_other_data(cache, data_identity(dataset, config.max_samples))
        if context is not None:
            resolve_model_path(config.model, status, needs_tokenizer=config.tokenizer is None)
    loaded = load_job_model(config, status, device=device, dtype=dtype, device_map=config.device_map)
    layers = resolve_layers(config.layers, loaded.n_hidden_states)
    check_ks_fit(config.ks, loaded.hidden_size)
    max_length = resolve_max_length(config.max_length, loaded)
    if max_length != config.max_length:
        status(f"max_length 'model': {max_length} tokens (the model's own maximum)")
    passes = [1]  # layer-group passes: the progress bar counts every text once per pass

    def on_plan(plan: LayerGroupPlan) -> None:
        passes[0] = len(plan.groups)
        status(plan.describe())
        if on_start and context is None:
            on_start(len(dataset) * passes[0], 0)

    measured = cached_or_computed_statistics(
        loaded,
        dataset,
        layers,
        max_length=max_length,
        max_samples=config.max_samples,
        token_budget=config.token_budget,
        cache=cache,
        reuse=not config.overwrite,
        checkpoint_path=out / CHECKPOINT_FILE,
        checkpoint_seconds=config.checkpoint_seconds,
        on_batch=on_batch,
        on_resume=lambda done, total: status(f"resuming from checkpoint: batch {done}/{total}"),
        distributed=context,
        on_shard=lambda n_shard, n_total: (
            status(f"rank 0 streams {n_shard} of {n_total} texts; progress shows rank 0's share"),
            on_start(n_shard * passes[0], 0) if on_start else None,
        ),
        stats_memory=config.stats_memory,
        on_plan=on_plan,
    )
    statistics, metadata, reused = measured.statistics, measured.metadata, measured.reused
    if reused:
        status(f"reusing statistics cache {cache}")
    if not main:
        assert context is not None
        context.barrier()  # rank 0 has saved the cache: the partial sums may go
        rank_checkpoint_path(out / CHECKPOINT_FILE, context.rank).unlink(missing_ok=True)
        context.barrier()  # wait for rank 0's files, so that no rank returns before the job is done
        return ScoreResult(results={}, statistics=statistics, out=out, reused_cache=reused, written=False)
    status("solving subspaces")
    try:
        scores = ntps_all_layers(statistics, fractions=config.fractions, ks=config.ks, ridge=config.ridge)
    except PerceptAlignError:
        # A run that fails leaves no cache behind: a rerun on fixed data must not meet these statistics.
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)
        raise
    if not reused:
        save_statistics(cache, statistics, metadata)
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)
    if context is not None:
        context.barrier()  # the cache is on disk before any rank drops its partial sums
        rank_checkpoint_path(out / CHECKPOINT_FILE, context.rank).unlink(missing_ok=True)
    results: dict[str, Any] = {
        "model": loaded.model_id,
        "model_fingerprint": loaded.fingerprint,
        "dataset": dataset.name,
        "dataset_source": dataset.source,
        "split": dataset.split,
        "n_texts": len(dataset),
        "n_tokens": int(metadata["n_tokens"]),
        "n_classes": dataset.n_classes,
        "class_names": list(dataset.class_names),
        "max_length": max_length,
        "dtype": dtype,
        # Where and how the statistics were made: provenance, not identity (see statistics_metadata).
        "device": str(device),
        "device_map": config.device_map,
        "statistics_precision": precision_policy(loaded.statistics_device).as_dict(),
        "layer_groups": measured.layer_plan.as_dict() if measured.layer_plan is not None else None,
        **scores,
        "definitions": {
            "ntps": "‖P_Vk U‖²/‖U‖², U = top rank(M_xy) generalized eigenvectors of (M_xy M_xyᵀ, M_xx) "
            "(M_xx-orthonormal), V_k = top k generalized eigenvectors of (C1 C1ᵀ, C0)",
            "ntps_orthonormal": "mean cos² of the principal angles between span(U) and span(V_k)",
            "ntps_probe": "‖P_Vk W*‖²/‖W*‖² for the least-squares probe W* = M_xx⁻¹ M_xy (the quantity the "
            "linear-setting bounds use; U's columns weighted by their eigenvalues)",
            "ntps_reference": "the published estimator reproduced exactly (float32, absolute 1e-8 cut-off, "
            "k = int(f·kept rank), bottom of both spectra); ill-posed, for comparison with published numbers",
        },
    }
    write_json_atomic(out / RESULTS_FILE, results)
    from perceptalign.ntps.figures import ntps_heatmap
    from perceptalign.plotting import save_figure

    save_figure(ntps_heatmap(results), out / HEATMAP_FILE)
    if context is not None:
        context.barrier()  # the other ranks return once the results are written
    return ScoreResult(results=results, statistics=statistics, out=out, reused_cache=reused)
