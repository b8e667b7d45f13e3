"""The statistics cache: safetensors moments plus JSON metadata, refused when made with another
model, dataset or tokenizer setting."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from perceptalign.io import (
    PerceptAlignError,
    load_tensors,
    read_json,
    save_tensors_atomic,
    write_json_atomic,
)
from perceptalign.ntps.statistics.common import (
    _FORMAT_VERSION,
    STAT_KEYS,
    LayerStatistics,
    _safetensors_metadata,
)

#: Metadata keys that identify how a statistics cache was made; a cache made with other values is refused.
IDENTITY_KEYS = (
    "model",
    "model_fingerprint",
    "dataset",
    "split",
    "max_length",
    "padding_side",
    "dtype",
    "n_classes",
    "class_names",
    "max_samples",
)
#: Keys starting with one of these (tokenizer settings) or ending in "fingerprint" are identity keys too.
IDENTITY_PREFIXES = ("tokenizer",)
_WRITE_ID_KEY = "perceptalign_write_id"


def _resolve_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    return path / "statistics.safetensors", path / "statistics.json"


def save_statistics(
    path_dir_or_file: str | os.PathLike[str],
    stats: Mapping[int, LayerStatistics],
    metadata: Mapping[str, Any],
) -> None:
    """Write ``layer{l}.{key}`` float64 tensors (safetensors) and the metadata (JSON) beside them.

    A directory gets ``statistics.safetensors`` + ``statistics.json``; a ``*.safetensors`` path gets a
    ``.json`` of the same stem. Each file is written atomically and both carry the same random write id,
    so a crash between the two writes is detected on load instead of pairing new tensors with old metadata.
    ``metadata["layers"]`` is set from ``stats``.
    """
    if not stats:
        raise PerceptAlignError("no layer statistics to save.")
    tensor_path, json_path = _resolve_paths(path_dir_or_file)
    tensors: dict[str, Tensor] = {}
    shape = None
    for layer in sorted(stats):
        layer_stats = stats[layer]
        for key in STAT_KEYS:
            value = getattr(layer_stats, key)
            tensors[f"layer{int(layer)}.{key}"] = value.detach().to("cpu", torch.float64)
        current = (tuple(layer_stats.M_xx.shape), tuple(layer_stats.M_xy.shape))
        if shape is not None and current != shape:
            raise PerceptAlignError(f"layer {layer} statistics have shapes {current}, other layers {shape}.")
        shape = current
    meta = _jsonable(dict(metadata))
    meta["layers"] = sorted(int(layer) for layer in stats)
    write_id = uuid.uuid4().hex
    meta[_WRITE_ID_KEY] = write_id
    meta["statistics_format"] = _FORMAT_VERSION
    save_tensors_atomic(tensor_path, tensors, metadata={_WRITE_ID_KEY: write_id})
    write_json_atomic(json_path, meta)


def load_statistics(
    path: str | os.PathLike[str], expected: Mapping[str, Any] | None = None
) -> tuple[dict[int, LayerStatistics], dict[str, Any]]:
    """Read statistics written by :func:`save_statistics`, refusing a cache made with other settings.

    ``expected``: the identity keys (model, fingerprint, dataset, split, max_length, padding side, dtype,
    n_classes, max_samples, tokenizer settings, …) are compared with the cached metadata;
    ``expected["layers"]`` may be a subset of the cached layers (only those are returned).
    """
    tensor_path, json_path = _resolve_paths(path)
    if not tensor_path.is_file() or not json_path.is_file():
        raise PerceptAlignError(
            f"no complete statistics cache at {path} (need {tensor_path.name} and {json_path.name}); "
            "compute the statistics first."
        )
    meta = read_json(json_path)
    write_id = _safetensors_metadata(tensor_path).get(_WRITE_ID_KEY)
    if write_id is None or write_id != meta.get(_WRITE_ID_KEY):
        raise PerceptAlignError(
            f"{tensor_path} and {json_path} were not written together (an interrupted save?); "
            "delete both files and recompute."
        )
    layers = [int(layer) for layer in meta["layers"]]
    if expected is not None:
        _check_identity(meta, expected, path)
        if expected.get("layers") is not None:
            requested = [int(layer) for layer in expected["layers"]]
            missing = sorted(set(requested) - set(layers))
            if missing:
                raise PerceptAlignError(
                    f"the statistics cache at {path} holds layers {layers} but layers {missing} were "
                    "requested; recompute with those layers (use another --out, or delete the cache)."
                )
            layers = requested
    tensors = load_tensors(tensor_path)
    out = {}
    for layer in layers:
        try:
            out[layer] = LayerStatistics(**{key: tensors[f"layer{layer}.{key}"] for key in STAT_KEYS})
        except KeyError as exc:
            raise PerceptAlignError(
                f"statistics cache {tensor_path} lacks {exc}; delete it and recompute."
            ) from exc
    return out, meta


def _is_identity_key(key: str) -> bool:
    return key in IDENTITY_KEYS or key.startswith(IDENTITY_PREFIXES) or key.endswith("fingerprint")


def _check_identity(
    meta: Mapping[str, Any], expected: Mapping[str, Any], path: str | os.PathLike[str]
) -> None:
    expected_json = _jsonable(dict(expected))
    differing = []
    for key, want in expected_json.items():
        if not _is_identity_key(key):
            continue
        have = meta.get(key)
        if have != want:
            differing.append(f"{key}: cached {have!r}, requested {want!r}")
    if differing:
        raise PerceptAlignError(
            f"the statistics cache at {path} was made with other settings (" + "; ".join(differing) + "). "
            "Use another --out directory for these settings, or delete the cache to recompute it."
        )


def _jsonable(obj: Any) -> Any:
    """Normalise metadata the way it will read back from JSON (tuples → lists, dtypes → 'float32')."""

    def default(value: Any) -> Any:
        if isinstance(value, torch.dtype):
            return str(value).removeprefix("torch.")
        if isinstance(value, Path):
            return str(value)
        if hasattr(value, "tolist"):
            return value.tolist()
        raise TypeError(f"metadata value of type {type(value).__name__} is not JSON-serialisable")

    try:
        return json.loads(json.dumps(obj, default=default))
    except (TypeError, ValueError) as exc:
        raise PerceptAlignError(f"statistics metadata must be JSON-serialisable: {exc}") from exc
