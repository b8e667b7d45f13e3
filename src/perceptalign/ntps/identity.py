"""What identifies a cached NTPS measurement, and the one check that refuses a cache made from other inputs.

Every NTPS cache (moment statistics, pooled features, next-token probabilities) records the inputs that
change its numbers: the model (name and weights fingerprint), the data (a hash over every text and label
in order, their number, the split, the columns and the subset), and the tokenisation (maximum length,
padding side, dtype). A rerun reuses a cache only when all of them match.

The check is default-deny: every key of the expected identity is compared, except the few listed in
:data:`PROVENANCE_KEYS`, which describe how a cache was made without changing what it holds. So a key
added to the identity later is compared at once, and a cache written by an older version that lacks it is
refused rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perceptalign.io import PerceptAlignError

if TYPE_CHECKING:
    from perceptalign.ntps.datasets import TextDataset
    from perceptalign.ntps.models import LoadedModel

#: Keys recorded with a cache that are not compared: counts and timings measured while making it, the
#: layers (a cache may hold more layers than a rerun asks for; checked separately), and the batching and
#: block settings, which only change the order of float64 additions (sums equal to ~1e-12 relative).
PROVENANCE_KEYS = frozenset(
    {
        "layers",
        "n_tokens",
        "extract_seconds",
        "hidden_size",
        "token_budget",
        "block_pairs",
        "n_batches",
    }
)

#: What a differing key most likely means, so that a refusal tells the user what they changed.
_MEANING = {
    "data_sha256": "the texts or labels differ: an edited file, another text/label column, split, seed "
    "or subset",
    "n_texts": "another number of texts",
    "model": "another model",
    "model_fingerprint": "the model's weights or configuration changed",
    "text_column": "another text column",
    "label_column": "another label column",
    "subset_seed": "another seed for the subset of texts",
    "max_samples": "another subset size",
    "class_names": "other classes",
}


class CacheMismatchError(PerceptAlignError):
    """A cache exists but was made from other inputs; ``fields`` names the identity keys that differ."""

    def __init__(self, message: str, fields: Sequence[str]) -> None:
        super().__init__(message)
        self.fields = list(fields)


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples → lists, numpy values → numbers, dtypes → 'float32')."""

    def default(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if hasattr(value, "tolist"):
            return value.tolist()
        if type(value).__name__ == "dtype":  # torch.dtype, without importing torch here
            return str(value).removeprefix("torch.")
        raise TypeError(f"metadata value of type {type(value).__name__} is not JSON-serialisable")

    try:
        return json.loads(json.dumps(obj, default=default))
    except (TypeError, ValueError) as exc:
        raise PerceptAlignError(f"cache metadata must be JSON-serialisable: {exc}") from exc


def differing_fields(
    cached: Mapping[str, Any], expected: Mapping[str, Any], ignore: Iterable[str] = PROVENANCE_KEYS
) -> dict[str, tuple[Any, Any]]:
    """``{key: (cached value, expected value)}`` for every identity key of ``expected`` that differs."""
    skip = set(ignore)
    return {
        key: (cached.get(key), want)
        for key, want in jsonable(dict(expected)).items()
        if key not in skip and cached.get(key) != want
    }


def check_identity(
    cached: Mapping[str, Any],
    expected: Mapping[str, Any],
    *,
    what: str,
    path: str | os.PathLike[str],
    ignore: Iterable[str] = PROVENANCE_KEYS,
) -> None:
    """Refuse (:class:`CacheMismatchError`) a cache whose identity differs, naming each field and the fix."""
    differing = differing_fields(cached, expected, ignore)
    if not differing:
        return
    parts = []
    for key, (have, want) in differing.items():
        meaning = f" ({_MEANING[key]})" if key in _MEANING else ""
        parts.append(f"{key}: cached {_short(have)}, now {_short(want)}{meaning}")
    raise CacheMismatchError(
        f"{what} at {path} was computed from other inputs and is not reused: " + "; ".join(parts) + ". "
        "Recompute it in place with `overwrite`, or write to another output folder.",
        list(differing),
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + "…" + text[-12:]


def data_sha256(dataset: TextDataset) -> str:
    """Hash of every (label, text) in order; each text is length-prefixed, so no two datasets collide by
    moving a tab or newline between neighbouring rows."""
    digest = hashlib.sha256()
    for text, label in zip(dataset.texts, dataset.labels.tolist(), strict=True):
        encoded = text.encode()
        digest.update(f"{label}\t{len(encoded)}\t".encode())
        digest.update(encoded)
    return digest.hexdigest()


def data_identity(dataset: TextDataset, max_samples: int | None) -> dict[str, Any]:
    """The part of a cache's identity that the data alone decide (checkable before a model is loaded)."""
    return {
        "dataset": dataset.name,
        "split": dataset.split,
        "text_column": dataset.info.get("text_column"),
        "label_column": dataset.info.get("label_column"),
        "max_samples": max_samples,
        "subset_seed": dataset.info.get("subset_seed"),
        "data_sha256": data_sha256(dataset),
        "n_texts": len(dataset),
        "n_classes": dataset.n_classes,
        "class_names": list(dataset.class_names),
    }


def statistics_metadata(
    loaded: LoadedModel,
    dataset: TextDataset,
    layers: Sequence[int],
    max_length: int,
    max_samples: int | None,
) -> dict[str, Any]:
    """The identity of a cache of ``loaded`` on ``dataset``: model, data, subset and tokenisation."""
    # The device is deliberately NOT part of the identity: the dtype (which is) is what changes the numbers
    # materially, and the precision policy (statistics/precision.py: float32 products without TF32,
    # float64 sums) keeps statistics from different devices within 1e-5 of each other. The device,
    # device_map and layer-group plan are recorded with the job's results instead (ntps.json).
    return {
        "model": loaded.model_id,
        "model_fingerprint": loaded.fingerprint,
        "tokenizer": type(loaded.tokenizer).__name__,
        **data_identity(dataset, max_samples),
        "max_length": max_length,
        "padding_side": loaded.padding_side,
        "dtype": loaded.dtype,
        "layers": list(layers),
    }


__all__ = [
    "PROVENANCE_KEYS",
    "CacheMismatchError",
    "check_identity",
    "data_identity",
    "data_sha256",
    "differing_fields",
    "jsonable",
    "statistics_metadata",
]
