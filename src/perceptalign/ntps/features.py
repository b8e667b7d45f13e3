"""Mean-pooled sentence features per layer, and an on-disk cache that knows what made them.

Linear probes (and the peer metrics) read the same n×d sentence vectors x̄_n that NTPS's M_xx is built
from: the masked mean of a layer's hidden states over the real tokens of each text. Extracting them is the
only expensive step of a probe run, so they are cached per split, and a cache made with another model,
data subset or tokenisation is refused rather than silently reused.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from perceptalign.callbacks import BatchCallback
from perceptalign.io import PerceptAlignError, load_tensors, save_tensors_atomic, write_json_atomic
from perceptalign.ntps.datasets import TextDataset
from perceptalign.ntps.identity import check_identity, jsonable, statistics_metadata
from perceptalign.ntps.measure import resolve_layers
from perceptalign.ntps.models import LoadedModel, iter_hidden_states, token_budget_batches, tokenize

FEATURES_KIND = "mean_pooled_features"
FEATURES_FORMAT = 1
#: safetensors header key holding the JSON metadata (authoritative; the .json file beside it is a copy
#: for people, so the tensors and their identity can never come from two different writes).
_META_KEY = "perceptalign_features"
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over the time axis (B×T×d, B×T → B×d), accumulated in float64.

    float64 so that bf16/fp16 models do not lose the mean to rounding over hundreds of tokens; pads are
    excluded whichever side they are on. The sum runs where the states are (a GPU's float64), except on
    MPS, which has no float64: its states are pooled on the host.
    """
    if hidden.device.type == "mps":
        hidden = hidden.cpu()
    mask = attention_mask.to(device=hidden.device, dtype=torch.float64)
    counts = mask.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        raise PerceptAlignError("a text in the batch has no real tokens; remove empty texts.")
    return torch.einsum("bt,btd->bd", mask, hidden.to(torch.float64)) / counts


def extract_features(
    loaded: LoadedModel,
    dataset: TextDataset,
    layers: Sequence[int],
    *,
    max_length: int,
    token_budget: int,
    on_batch: BatchCallback | None = None,
) -> dict[int, np.ndarray]:
    """Per layer, the mean-pooled hidden states of every text (n×d float32, in dataset order).

    One pass over the data with length-sorted token-budget batches; keys are the resolved (non-negative)
    hidden-state indices, 0 = embedding output.
    """
    layers = resolve_layers(layers, loaded.n_hidden_states)
    token_ids = tokenize(loaded, dataset.texts, max_length)
    batches = token_budget_batches([len(x) for x in token_ids], token_budget)
    out = {layer: np.empty((len(dataset), loaded.hidden_size), dtype=np.float32) for layer in layers}
    for _, batch in iter_hidden_states(loaded, token_ids, batches, layers):
        rows = np.asarray(batch.indices, dtype=np.int64)
        for layer, hidden in zip(layers, batch.hidden_states, strict=True):
            pooled = mean_pool(hidden, batch.attention_mask)
            if not bool(torch.isfinite(pooled).all()):
                raise PerceptAlignError(
                    f"layer {layer} produced non-finite hidden states (dtype {loaded.dtype}); rerun with "
                    "`dtype` float32."
                )
            out[layer][rows] = pooled.to(torch.float32).cpu().numpy()
        if on_batch:
            on_batch(len(rows), batch.n_tokens)
    return out


def feature_metadata(
    loaded: LoadedModel,
    dataset: TextDataset,
    layers: Sequence[int],
    max_length: int,
    max_samples: int | None,
) -> dict[str, Any]:
    """What identifies a feature cache: the statistics identity (model, data hash, tokenisation) + kind."""
    meta = statistics_metadata(loaded, dataset, layers, max_length, max_samples)
    meta.update(
        {"kind": FEATURES_KIND, "features_format": FEATURES_FORMAT, "hidden_size": loaded.hidden_size}
    )
    return meta


@dataclass
class CachedFeatures:
    """Features of one split as used by the probes, with the metadata they were saved with."""

    features: dict[int, np.ndarray]
    labels: np.ndarray
    metadata: dict[str, Any]
    reused: bool
    path: Path


class FeatureCache:
    """``DIR/features_{split}.safetensors`` (keys ``layer{l}``, ``labels``) + ``features_{split}.json``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, split: str) -> Path:
        if not _SPLIT_NAME.match(split):
            raise PerceptAlignError(
                f"split name {split!r} cannot name a cache file: use letters, digits, '_', '-' or '.'."
            )
        return self.directory / f"features_{split}.safetensors"

    def save(
        self, split: str, features: Mapping[int, np.ndarray], labels: np.ndarray, metadata: Mapping[str, Any]
    ) -> Path:
        """Write the tensors and metadata atomically (one file carries both; the .json is a copy)."""
        if not features:
            raise PerceptAlignError("no layer features to save.")
        labels = np.asarray(labels, dtype=np.int64)
        tensors: dict[str, torch.Tensor] = {"labels": torch.from_numpy(labels.copy())}
        for layer in sorted(features):
            array = np.asarray(features[layer], dtype=np.float32)
            if array.ndim != 2 or array.shape[0] != len(labels):
                raise PerceptAlignError(
                    f"layer {layer} features have shape {array.shape}, expected ({len(labels)}, d)."
                )
            tensors[f"layer{int(layer)}"] = torch.from_numpy(np.ascontiguousarray(array))
        meta = jsonable({**metadata, "layers": sorted(int(layer) for layer in features)})
        path = self.path(split)
        save_tensors_atomic(path, tensors, metadata={_META_KEY: json.dumps(meta)})
        write_json_atomic(path.with_suffix(".json"), meta)
        return path

    def exists(self, split: str) -> bool:
        return self.path(split).is_file()

    def load(self, split: str, expected: Mapping[str, Any] | None = None) -> CachedFeatures:
        """Read a cache, refusing one whose identity differs from ``expected`` (named key and fix).

        ``expected["layers"]`` may be a subset of the cached layers; only those are returned.
        """
        path = self.path(split)
        if not path.is_file():
            raise PerceptAlignError(f"no feature cache at {path}; extract the features first.")
        meta = _read_header(path)
        cached_layers = [int(layer) for layer in meta.get("layers", [])]
        layers = cached_layers
        if expected is not None:
            check_identity(meta, expected, what="the feature cache", path=path)
            if expected.get("layers") is not None:
                layers = [int(layer) for layer in expected["layers"]]
                missing = sorted(set(layers) - set(cached_layers))
                if missing:
                    raise PerceptAlignError(
                        f"the feature cache {path} holds layers {cached_layers} but layers {missing} were "
                        f"requested (key 'layers'); use another `out` directory, or delete {path.name} to "
                        "extract all requested layers."
                    )
        tensors = load_tensors(path)
        try:
            labels = tensors["labels"].numpy().astype(np.int64)
            features = {layer: tensors[f"layer{layer}"].numpy() for layer in layers}
        except KeyError as exc:
            raise PerceptAlignError(
                f"feature cache {path} lacks tensor {exc}; delete it and re-extract."
            ) from exc
        return CachedFeatures(features, labels, meta, reused=True, path=path)

    def load_or_extract(
        self,
        loaded: LoadedModel,
        dataset: TextDataset,
        layers: Sequence[int] | None,
        *,
        max_length: int,
        token_budget: int,
        max_samples: int | None = None,
        on_batch: BatchCallback | None = None,
        overwrite: bool = False,
    ) -> CachedFeatures:
        """Reuse a matching cache for ``dataset.split`` (a cache of other inputs is refused), else extract
        (one pass) and cache atomically; ``overwrite`` always extracts and replaces the cache."""
        layers = resolve_layers(layers, loaded.n_hidden_states)
        expected = feature_metadata(loaded, dataset, layers, max_length, max_samples)
        if self.exists(dataset.split) and not overwrite:
            cached = self.load(dataset.split, expected)
            if not np.array_equal(cached.labels, dataset.labels):
                raise PerceptAlignError(
                    f"the feature cache {cached.path} has other labels than the data (key 'labels'); "
                    f"delete {cached.path.name} to re-extract."
                )
            return cached
        n_tokens = 0

        def count(n_texts: int, tokens: int) -> None:
            nonlocal n_tokens
            n_tokens += tokens
            if on_batch:
                on_batch(n_texts, tokens)

        started = time.perf_counter()
        features = extract_features(
            loaded, dataset, layers, max_length=max_length, token_budget=token_budget, on_batch=count
        )
        meta = {**expected, "n_tokens": n_tokens, "extract_seconds": round(time.perf_counter() - started, 3)}
        path = self.save(dataset.split, features, dataset.labels, meta)
        return CachedFeatures(
            features, np.asarray(dataset.labels, dtype=np.int64), jsonable(meta), False, path
        )


def _read_header(path: Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise PerceptAlignError(f"{path} is not a readable safetensors file ({exc}); delete it.") from exc
    if _META_KEY not in header:
        raise PerceptAlignError(
            f"{path} was not written by perceptalign's feature cache (no metadata); delete it or use "
            "another `out` directory."
        )
    return json.loads(header[_META_KEY])


__all__ = [
    "CachedFeatures",
    "FeatureCache",
    "extract_features",
    "feature_metadata",
    "mean_pool",
]
