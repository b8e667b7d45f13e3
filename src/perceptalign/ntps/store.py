"""One resumable results table for a study: model × dataset × method × metric × layer × config → value.

A study over 8 models × 12 datasets runs for hours and will be interrupted. Each finished cell (one model,
one dataset, one method) is written as ONE file, atomically (temporary file + rename), and the table is the
union of those files. So a killed run never leaves a half-written cell: a cell is either entirely stored
or absent, and a rerun skips exactly the stored cells. Rewriting a cell replaces it (no duplicates).

Long format, one row per number::

    model, dataset, method, metric, layer, config, value      (the key and the number)
    model_fingerprint, data_sha256, n_texts, settings, seconds, run_at, source   (provenance)

``layer`` is a hidden-state index (0 = embedding output) or -1 for numbers that belong to no layer (LoRA
accuracies, wall times); ``config`` is the NTPS fraction f of rank(V) (or an absolute k), NaN when the
metric has no configuration. ``seconds`` is the wall time of the whole cell, ``settings`` a digest of the
study settings that produced it (a cell made with other settings is not "stored" for ``has``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from perceptalign.io import PerceptAlignError, write_text_atomic

KEY_COLUMNS = ("model", "dataset", "method", "metric", "layer", "config")
PROVENANCE_COLUMNS = (
    "model_fingerprint",
    "data_sha256",
    "n_texts",
    "settings",
    "seconds",
    "run_at",
    "source",
)
COLUMNS = (*KEY_COLUMNS, "value", *PROVENANCE_COLUMNS)
CELL_SUFFIX = ".jsonl"
NO_LAYER = -1
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def slug(name: str, max_length: int = 40) -> str:
    """A file-name-safe, readable and collision-free label for a model or dataset name (or path)."""
    text = str(name)
    readable = _SLUG.sub("_", Path(text).name if os.sep in text or "/" in text else text).strip("._-")
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{readable[:max_length] or 'x'}-{digest}"


def _clean_row(row: Mapping[str, Any]) -> dict[str, Any]:
    missing = [c for c in ("model", "dataset", "method", "metric", "value") if c not in row]
    if missing:
        raise PerceptAlignError(
            f"a results row lacks {missing}; every row needs model, dataset, method, metric and value "
            f"(got keys {sorted(row)})."
        )
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        raise PerceptAlignError(f"unknown results columns {unknown}; allowed: {list(COLUMNS)}.")
    out: dict[str, Any] = {}
    for column in COLUMNS:
        value = row.get(column)
        if column in ("model", "dataset", "method", "metric"):
            if not isinstance(value, str) or not value:
                raise PerceptAlignError(
                    f"results column {column!r} must be a non-empty string, got {value!r}."
                )
        elif column == "layer":
            value = NO_LAYER if value is None else value
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < NO_LAYER:
                raise PerceptAlignError(f"layer must be an integer ≥ 0 (or -1 for none), got {value!r}.")
            value = int(value)
        elif column in ("config", "value", "seconds"):
            value = math.nan if value is None else float(value)
        elif column == "n_texts":
            value = None if value is None else int(value)
        elif value is not None:
            value = str(value)
        out[column] = value
    return out


def _cell_key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    return (row["model"], row["dataset"], row["method"])


class ResultsStore:
    """The results table of one study directory: ``DIR/cells/<method>/<model>--<dataset>.jsonl``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    @property
    def cells_dir(self) -> Path:
        return self.directory / "cells"

    def cell_path(self, model: str, dataset: str, method: str) -> Path:
        return self.cells_dir / slug(method) / f"{slug(model)}--{slug(dataset)}{CELL_SUFFIX}"

    def has(self, model: str, dataset: str, method: str, settings: str | None = None) -> bool:
        """True when the cell is stored (and, if ``settings`` is given, was made with those settings)."""
        path = self.cell_path(model, dataset, method)
        if not path.is_file():
            return False
        if settings is None:
            return True
        rows = self._read_cell(path)
        return bool(rows) and all(r.get("settings") == settings for r in rows)

    def add(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store rows, grouped by cell (model, dataset, method); each cell's file is REPLACED atomically.

        A cell must therefore be added whole, in one call. Returns the number of rows written.
        """
        cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for row in rows:
            clean = _clean_row(row)
            cells.setdefault(_cell_key(clean), []).append(clean)
        for (model, dataset, method), cell_rows in cells.items():
            keys = [tuple(r[c] for c in KEY_COLUMNS) for r in cell_rows]
            seen: set[tuple[Any, ...]] = set()
            for key in keys:
                norm = tuple("nan" if isinstance(k, float) and math.isnan(k) else k for k in key)
                if norm in seen:
                    raise PerceptAlignError(
                        f"two rows of cell {(model, dataset, method)} share the key "
                        f"{dict(zip(KEY_COLUMNS, key, strict=True))}"
                        "; every (metric, layer, config) may appear once per cell."
                    )
                seen.add(norm)
            text = "".join(json.dumps(_jsonable(r), allow_nan=True) + "\n" for r in cell_rows)
            write_text_atomic(self.cell_path(model, dataset, method), text)
        return sum(len(v) for v in cells.values())

    def remove(self, model: str, dataset: str, method: str) -> bool:
        """Delete one cell (to force its recomputation); returns whether it existed."""
        path = self.cell_path(model, dataset, method)
        existed = path.is_file()
        path.unlink(missing_ok=True)
        return existed

    def cells(self) -> list[tuple[str, str, str]]:
        """Stored (model, dataset, method) cells, read from the files themselves (names are hashed)."""
        out = []
        for path in self._cell_files():
            rows = self._read_cell(path)
            if rows:
                out.append(_cell_key(rows[0]))
        return sorted(out)

    def table(self) -> pd.DataFrame:
        """All stored rows as one DataFrame with the columns of :data:`COLUMNS` (empty table if none)."""
        rows: list[dict[str, Any]] = []
        for path in self._cell_files():
            rows.extend(self._read_cell(path))
        frame = pd.DataFrame(rows, columns=list(COLUMNS))
        frame["layer"] = frame["layer"].astype("int64")
        for column in ("config", "value", "seconds"):
            frame[column] = pd.to_numeric(frame[column]).astype("float64")
        return frame.sort_values(list(KEY_COLUMNS), kind="stable", ignore_index=True)

    def _cell_files(self) -> list[Path]:
        if not self.cells_dir.is_dir():
            return []
        # Temporary files of an interrupted write start with '.' and end in '.tmp': never part of the table.
        return sorted(p for p in self.cells_dir.glob(f"*/*{CELL_SUFFIX}") if not p.name.startswith("."))

    @staticmethod
    def _read_cell(path: Path) -> list[dict[str, Any]]:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            return [_clean_row(json.loads(line)) for line in lines if line.strip()]
        except (ValueError, PerceptAlignError) as exc:
            raise PerceptAlignError(
                f"results cell {path} is not readable ({exc}); delete it to recompute that cell."
            ) from exc


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


__all__ = ["COLUMNS", "KEY_COLUMNS", "NO_LAYER", "PROVENANCE_COLUMNS", "ResultsStore", "slug"]
