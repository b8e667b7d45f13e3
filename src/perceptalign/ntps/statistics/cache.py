"""The statistics cache: safetensors moments plus JSON metadata, refused when made with another
model, dataset or tokenizer setting."""

from __future__ import annotations

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
from perceptalign.ntps.identity import check_identity, jsonable
from perceptalign.ntps.statistics.common import (
    _FORMAT_VERSION,
    STAT_KEYS,
    LayerStatistics,
    _safetensors_metadata,
)

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
    meta = jsonable(dict(metadata))
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

    ``expected``: every key but the provenance keys (see :mod:`perceptalign.ntps.identity`) is compared with
    the cached metadata, so a cache of other data, model or tokenisation is refused
    (:class:`~perceptalign.ntps.identity.CacheMismatchError`); ``expected["layers"]`` may be a subset of
    the cached layers (only those are returned).
    """
    tensor_path, json_path = _resolve_paths(path)
    if not tensor_path.is_file() or not json_path.is_file():
        missing = [p.name for p in (tensor_path, json_path) if not p.is_file()]
        if len(missing) == 1:
            raise PerceptAlignError(
                f"the statistics cache at {tensor_path.parent} is incomplete ({missing[0]} is missing), so "
                "it cannot be trusted; recompute it with `overwrite`, or delete "
                f"{tensor_path.name if missing[0] == json_path.name else json_path.name}."
            )
        raise PerceptAlignError(
            f"no statistics cache at {path} (need {tensor_path.name} and {json_path.name}); "
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
        check_identity(meta, expected, what="the statistics cache", path=tensor_path.parent)
        if expected.get("layers") is not None:
            requested = [int(layer) for layer in expected["layers"]]
            missing = sorted(set(requested) - set(layers))
            if missing:
                raise PerceptAlignError(
                    f"the statistics cache at {path} holds layers {layers} but layers {missing} were "
                    "requested; recompute with those layers (use another `out`, or delete the cache)."
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
