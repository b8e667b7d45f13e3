"""The `ntps peers` job: every peer transferability metric, per layer, on the probes' cached features.

Peers are only comparable with NTPS when they see the same data: the same mean-pooled sentence vectors
(the feature cache that `ntps probe` writes and reads, so a probe run in the same directory is reused)
of the same split. NCE and LEEP need no features: they read the LM's own next-token distribution after
each text (:mod:`perceptalign.ntps.lm_probs`), which belongs to the output head; they are reported once,
on the row of the last layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from perceptalign.io import PerceptAlignError, write_json_atomic, write_text_atomic
from perceptalign.ntps.lm_probs import DEFAULT_TOP_K, NextTokenCache
from perceptalign.ntps.peer_metrics import PEER_METRICS, compute_peer_metrics

RESULTS_FILE = "peers.json"
TABLE_FILE = "peers.csv"
LM_METRICS = tuple(name for name, m in PEER_METRICS.items() if m.needs_lm_probs)
FEATURE_METRICS = tuple(name for name, m in PEER_METRICS.items() if not m.needs_lm_probs)


@dataclass(frozen=True)
class PeersConfig:
    """One `ntps peers` run (the CLI fills it from its options)."""

    model: str
    dataset: str
    out: Path
    split: str = "train"
    layers: list[int] | None = None
    metrics: list[str] | None = None
    max_samples: int | None = None
    max_length: int | str = 512  # tokens, or "model": the model's own maximum
    token_budget: int = 2048
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 elsewhere
    top_k: int | None = DEFAULT_TOP_K
    text_column: str | None = None
    label_column: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    seed: int = 0
    overwrite: bool = False  # recompute the feature and next-token caches in ``out``
    tokenizer: str | None = None  # another tokenizer for the model (hub id or folder)
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    device_map: str | None = None  # auto: spread the model over every visible GPU

    def __post_init__(self) -> None:
        from perceptalign.ntps.jobs.inputs import check_placement
        from perceptalign.ntps.models import check_max_length

        check_placement(self)
        object.__setattr__(self, "max_length", check_max_length(self.max_length))
        resolve_metrics(self.metrics)  # unknown metric names are refused before any work


@dataclass
class PeersResult:
    table: pd.DataFrame  # one row per layer, one column per metric (LM metrics only on the last layer)
    results: dict[str, Any]
    out: Path


def resolve_metrics(metrics: Sequence[str] | None) -> list[str]:
    """Validated metric names (default: all registered)."""
    if not metrics:
        return list(PEER_METRICS)
    unknown = [m for m in metrics if m not in PEER_METRICS]
    if unknown:
        raise PerceptAlignError(f"unknown peer metrics {unknown}; choose from {sorted(PEER_METRICS)}.")
    return list(dict.fromkeys(metrics))


def run_peers(
    config: PeersConfig,
    *,
    on_status: Callable[[str], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    on_layer: Callable[[int, int], None] | None = None,
) -> PeersResult:
    """Load (or extract) the features, compute the metrics per layer, write peers.json and peers.csv."""
    from perceptalign.ntps.features import FeatureCache, feature_metadata
    from perceptalign.ntps.jobs.inputs import check_job_inputs, load_job_dataset, load_job_model
    from perceptalign.ntps.measure import resolve_layers
    from perceptalign.ntps.models import resolve_max_length
    from perceptalign.ntps.placement import resolve_device, resolve_dtype

    status = on_status or (lambda _msg: None)
    metrics = resolve_metrics(config.metrics)
    out = check_job_inputs(config)
    dataset = load_job_dataset(config, status)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    loaded = load_job_model(config, status, device=device, dtype=dtype, device_map=config.device_map)
    layers = resolve_layers(config.layers, loaded.n_hidden_states)
    max_length = resolve_max_length(config.max_length, loaded)
    cache = FeatureCache(out)
    need_lm = any(m in LM_METRICS for m in metrics)
    pending = 0
    if cache.exists(dataset.split) and not config.overwrite:
        cache.load(dataset.split, feature_metadata(loaded, dataset, layers, max_length, config.max_samples))
    else:
        pending += len(dataset)
    lm_cache = NextTokenCache(out)
    if need_lm and (config.overwrite or not lm_cache.path(dataset.split).is_file()):
        pending += len(dataset)
    if on_start and pending:
        on_start(pending, 0)
    timing: dict[str, float] = {}
    started = time.perf_counter()
    features = cache.load_or_extract(
        loaded,
        dataset,
        layers,
        max_length=max_length,
        token_budget=config.token_budget,
        max_samples=config.max_samples,
        on_batch=on_batch,
        overwrite=config.overwrite,
    )
    timing["features_seconds"] = time.perf_counter() - started
    probs = None
    if need_lm:
        started = time.perf_counter()
        probs = lm_cache.load_or_compute(
            loaded,
            dataset,
            max_length=max_length,
            token_budget=config.token_budget,
            max_samples=config.max_samples,
            top_k=config.top_k,
            on_batch=on_batch,
            overwrite=config.overwrite,
        )
        timing["next_token_seconds"] = time.perf_counter() - started
    status("computing peer metrics")
    started = time.perf_counter()
    last = loaded.n_hidden_states - 1
    feature_metrics = [m for m in metrics if m in FEATURE_METRICS]
    lm_metrics = [m for m in metrics if m in LM_METRICS]
    rows = []
    failures: dict[str, str] = {}
    for done, layer in enumerate(layers, start=1):
        row: dict[str, Any] = {"layer": int(layer)}
        X = features.features[layer]
        for metric in feature_metrics + lm_metrics:
            if metric in lm_metrics and layer != layers[-1]:
                row[metric] = np.nan
                continue
            try:
                # NCE/LEEP ignore the features; any matrix with n rows satisfies the interface.
                value = compute_peer_metrics(
                    X,
                    features.labels,
                    next_token_probs=probs.probs if probs is not None and metric in lm_metrics else None,
                    metrics=[metric],
                )[metric]
            except PerceptAlignError as exc:  # e.g. too few samples per class for a CV metric
                value = np.nan
                failures.setdefault(metric, str(exc))
            row[metric] = value
        rows.append(row)
        if on_layer:
            on_layer(done, len(layers))
    for metric, reason in failures.items():
        status(f"peer metric {metric} not computed: {reason}")
    timing["metrics_seconds"] = time.perf_counter() - started
    table = pd.DataFrame(rows, columns=["layer", *feature_metrics, *lm_metrics])
    results: dict[str, Any] = {
        "model": loaded.model_id,
        "model_fingerprint": loaded.fingerprint,
        "dataset": dataset.name,
        "split": dataset.split,
        "n_texts": len(dataset),
        "n_classes": dataset.n_classes,
        "data_sha256": features.metadata.get("data_sha256"),
        "dtype": dtype,
        "device": str(device),
        "device_map": config.device_map,
        "layers": [int(x) for x in layers],
        "last_layer": last,
        "metrics": metrics,
        "higher_is_better": {m: PEER_METRICS[m].higher_is_better for m in metrics},
        "lm_metrics_layer": int(layers[-1]) if lm_metrics else None,
        "next_token_top_k": config.top_k if lm_metrics else None,
        "next_token_retained_mass_mean": float(np.mean(probs.retained_mass)) if probs is not None else None,
        "features_reused": features.reused,
        "not_computed": failures,
        "rows": [
            {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
            for r in rows
        ],
        "timing": {k: round(v, 4) for k, v in timing.items()},
        "definitions": {
            "features": "mean-pooled hidden states of the split (the probes' feature cache)",
            "nce/leep": "from the LM's next-token distribution after the last real token (top-k "
            "renormalised); "
            "reported on the last requested layer's row only",
        },
    }
    write_json_atomic(out / RESULTS_FILE, results)
    write_text_atomic(out / TABLE_FILE, table.to_csv(index=False))
    return PeersResult(table=table, results=results, out=out)


__all__ = ["FEATURE_METRICS", "LM_METRICS", "PeersConfig", "PeersResult", "resolve_metrics", "run_peers"]
