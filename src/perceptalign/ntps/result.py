"""The NTPS result a library user holds: layer × k tables as pandas DataFrames, the best layer, JSON.

The solver (:func:`perceptalign.ntps.subspace.ntps_all_layers`) returns JSON-ready lists; this wraps them
so that a user reads ``result.ntps.loc[layer, 0.5]`` instead of indexing nested lists, and so that the
CLI's ``ntps.json`` and the Python API hold the same numbers in the same layout.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from perceptalign.io import PerceptAlignError, read_json, write_json_atomic

#: The layer × k tables of a result, in the order they are documented.
TABLES = ("ntps", "ntps_orthonormal", "ntps_probe", "ntps_reference")


class BestLayer(NamedTuple):
    """The layer of highest NTPS at one fraction (or k)."""

    layer: int
    column: float
    ntps: float


@dataclass(frozen=True)
class NTPSResult:
    """NTPS of every layer and fraction (or absolute k), with the data it was measured on.

    ``tables`` is the dictionary the solver returns (``layers``, ``fractions`` or ``ks``, one list per
    layer for each of :data:`TABLES`, ``k_u``, ``rank_v``); ``info`` carries what was measured (model,
    dataset, ``n_texts``, ``n_tokens``, …). Columns of the DataFrames are the fractions f of rank(V), or
    the absolute k when the result was computed with ``ks``.
    """

    tables: Mapping[str, Any]
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [key for key in ("layers", "ntps", "ntps_orthonormal") if key not in self.tables]
        if missing:
            raise PerceptAlignError(f"an NTPS result needs the tables {missing}; pass the solver's output.")

    # ---- tables ----------------------------------------------------------------------------------

    @property
    def layers(self) -> list[int]:
        return [int(layer) for layer in self.tables["layers"]]

    @property
    def by_fraction(self) -> bool:
        """True when the columns are fractions of rank(V), False when they are absolute k."""
        return bool(self.tables.get("fractions"))

    @property
    def columns(self) -> list[float]:
        if self.by_fraction:
            return [float(f) for f in self.tables["fractions"]]
        return [int(k) for k in self.tables["ks"][0]]

    def table(self, name: str) -> pd.DataFrame:
        """One layer × column table (``ntps``, ``ntps_orthonormal``, ``ntps_probe`` or ``ntps_reference``);
        a table that was not computed is all NaN."""
        if name not in TABLES:
            raise PerceptAlignError(f"unknown table {name!r}; choose one of {list(TABLES)}.")
        values = self.tables.get(name)
        shape = (len(self.layers), len(self.columns))
        array = np.full(shape, np.nan)
        if values:
            array = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
        frame = pd.DataFrame(array, index=pd.Index(self.layers, name="layer"), columns=self.columns)
        frame.columns.name = "fraction" if self.by_fraction else "k"
        return frame

    @property
    def ntps(self) -> pd.DataFrame:
        """‖P_Vk U‖²/‖U‖² (U: the directions a least-squares probe uses, V_k: the top-k next-token ones)."""
        return self.table("ntps")

    @property
    def ntps_orthonormal(self) -> pd.DataFrame:
        """Mean cos² of the principal angles between span(U) and span(V_k)."""
        return self.table("ntps_orthonormal")

    @property
    def ntps_probe(self) -> pd.DataFrame:
        """‖P_Vk W*‖²/‖W*‖² for the least-squares probe W* = M_xx⁻¹ M_xy."""
        return self.table("ntps_probe")

    @property
    def ntps_reference(self) -> pd.DataFrame:
        """The published selection (bottom of both spectra); only for comparison with published numbers."""
        return self.table("ntps_reference")

    @property
    def k(self) -> pd.DataFrame:
        """The number of V directions behind each cell (k = ⌊f · rank(V)⌋ for fractions)."""
        frame = pd.DataFrame(
            np.asarray(self.tables["ks"], dtype=np.int64),
            index=pd.Index(self.layers, name="layer"),
            columns=self.columns,
        )
        frame.columns.name = "fraction" if self.by_fraction else "k"
        return frame

    def best(self, column: float | None = None, table: str = "ntps") -> BestLayer:
        """The layer of highest NTPS at ``column`` (a fraction or k; default the middle column).

        NTPS grows with k, so comparing layers only makes sense at one fraction; the best over all
        columns would always be the largest k.
        """
        frame = self.table(table)
        columns = list(frame.columns)
        if column is None:
            chosen = columns[len(columns) // 2]
        else:
            near = min(columns, key=lambda c: abs(c - column))
            if not math.isclose(near, column, rel_tol=1e-9, abs_tol=1e-12):
                raise PerceptAlignError(f"column {column} was not computed; available: {columns}.")
            chosen = near
        values = frame[chosen]
        if values.isna().all():
            raise PerceptAlignError(f"{table} has no value at {chosen} on any layer.")
        layer = int(values.idxmax())
        return BestLayer(layer=layer, column=chosen, ntps=float(values.loc[layer]))

    # ---- JSON ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The layout of ``ntps.json``: the measurement info, then the solver's tables."""
        return {**dict(self.info), **dict(self.tables)}

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The result as JSON text; with ``path``, also written there atomically."""
        payload = self.to_dict()
        if path is not None:
            write_json_atomic(Path(path), payload)
        return json.dumps(payload, indent=2, default=_json_default)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> NTPSResult:
        keys = {"layers", "fractions", "ks", "k_u", "rank_v", *TABLES}
        return cls(
            tables={k: v for k, v in payload.items() if k in keys},
            info={k: v for k, v in payload.items() if k not in keys},
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NTPSResult:
        """Read an ``ntps.json`` written by ``perceptalign ntps score`` or :meth:`to_json`."""
        path = Path(path)
        if path.is_dir():
            path = path / "ntps.json"
        if not path.is_file():
            raise PerceptAlignError(f"no NTPS result at {path}; run `perceptalign ntps score` first.")
        return cls.from_dict(read_json(path))

    def __repr__(self) -> str:
        what = ", ".join(f"{k}={self.info[k]!r}" for k in ("model", "dataset", "n_texts") if k in self.info)
        unit = "fractions" if self.by_fraction else "ks"
        return f"NTPSResult({what}{', ' if what else ''}layers={self.layers}, {unit}={self.columns})"


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


__all__ = ["TABLES", "BestLayer", "NTPSResult"]
