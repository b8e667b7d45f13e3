"""Labelled text in a local table file (.csv, .tsv, .jsonl, .json, .parquet; may be compressed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from perceptalign.io import PerceptAlignError, sha256_file
from perceptalign.tables import read_table

from .core import TextDataset, encode_integer_labels, encode_string_labels

LOCAL_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")
SPLIT_COLUMN = "split"


def table_suffix(path: str | Path) -> str | None:
    """The table format of ``path`` (ignoring a compression suffix), or None if it is not a table file."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes and suffixes[-1] in LOCAL_SUFFIXES else None


def _read_table(path: Path, text_column: str) -> pd.DataFrame:
    kind = table_suffix(path)
    try:
        if kind in (".csv", ".tsv"):
            # The text column is read as strings so that "123" stays a text; empty cells stay NaN and are
            # reported by validation as missing texts. Bad files (empty, not UTF-8, ragged rows, a
            # tab-separated .csv) are handled by the one reader the RTify trial files use too.
            return read_table(path, what="dataset file", string_columns=[text_column])
        if kind == ".jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        if kind == ".json":
            try:
                return pd.read_json(path, dtype=False)
            except ValueError:
                return pd.read_json(path, lines=True, dtype=False)
        return pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise PerceptAlignError(
            f"could not read {path} as a {kind} table ({type(exc).__name__}: {str(exc)[:200]}). "
            "Check the file format, or convert it to UTF-8 CSV with a header row."
        ) from exc


_SCALARS = (str, bool, int, float, np.integer, np.floating, np.bool_)


def _check_scalar_labels(column: pd.Series, where: str) -> None:
    """A label is one class name or number; a dict or list (e.g. annotator records in JSONL) is not."""
    if column.dtype != object:
        return
    nested = np.array([v is not None and not isinstance(v, _SCALARS) for v in column.tolist()])
    if nested.any():
        first = column.tolist()[int(np.flatnonzero(nested)[0])]
        raise PerceptAlignError(
            f"{where}: labels must be single values (a class name or number), but {int(nested.sum())} "
            f"row(s) hold {type(first).__name__} values, first at row {int(np.flatnonzero(nested)[0])}: "
            f"{str(first)[:80]}. Flatten the file so that the label column holds the class itself."
        )


def _text_values(column: pd.Series) -> list[object]:
    """Texts as strings: numbers become their text (as a CSV reader keeps "123"), so a number-only text
    means the same in every file type; missing values stay missing for validation to report."""
    return [
        str(v) if isinstance(v, (int, float, np.integer, np.floating)) and not pd.isna(v) else v
        for v in column.tolist()
    ]


def encode_label_column(column: pd.Series, where: str) -> tuple[np.ndarray, list[str]]:
    """Single-valued labels → class indices: string labels → sorted unique names, numeric/bool → 0..max;
    nested values (dicts, lists) and mixed types are refused."""
    _check_scalar_labels(column, where)
    if column.dtype == bool:
        return column.to_numpy(dtype=np.int64), ["False", "True"]
    if pd.api.types.is_numeric_dtype(column.dtype):
        return encode_integer_labels(column.to_numpy(), where)
    values = column.tolist()
    kinds = {type(v) for v in values if not (v is None or (isinstance(v, float) and np.isnan(v)))}
    if len(kinds) > 1:
        raise PerceptAlignError(
            f"{where}: the label column mixes types {sorted(k.__name__ for k in kinds)}; "
            "use all strings (class names) or all integers."
        )
    return encode_string_labels(values, where)


def load_local(
    path: str | Path, split: str, *, text_column: str | None = None, label_column: str | None = None
) -> TextDataset:
    """Load a local table; the whole file is ``split`` unless a ``split`` column selects rows.

    The class list is computed over the whole file (every split), so train and test of one file always
    share a label space.
    """
    path = Path(path).expanduser()
    if table_suffix(path) is None:
        raise PerceptAlignError(
            f"{path} is not a supported table file: use one of {', '.join(LOCAL_SUFFIXES)}."
        )
    if not path.is_file():
        raise PerceptAlignError(
            f"no such file: {path}. Check the path (relative paths start at {Path.cwd()})."
        )
    text_column = text_column or "text"
    label_column = label_column or "label"
    frame = _read_table(path, text_column)
    missing = [c for c in (text_column, label_column) if c not in frame.columns]
    if missing:
        raise PerceptAlignError(
            f"{path} has no column(s) {missing}; available columns: {[str(c) for c in frame.columns]}. "
            "Pass `text_column` / `label_column`."
        )
    where = f"{path.name}, column {label_column!r}"
    labels, class_names = encode_label_column(frame[label_column], where)
    texts = _text_values(frame[text_column])
    if SPLIT_COLUMN in frame.columns and split != "all":
        values = frame[SPLIT_COLUMN].astype(str)
        available = sorted(values.unique())
        if split not in available:
            raise PerceptAlignError(
                f"{path} has no rows with split {split!r}; its {SPLIT_COLUMN!r} column holds {available} "
                "(or pass split='all' for the whole file)."
            )
        rows = np.flatnonzero((values == split).to_numpy())
        texts = [texts[i] for i in rows]
        labels = labels[rows]
    return TextDataset(
        name=path.stem.split(".")[0],
        split=split,
        texts=texts,
        labels=labels,
        class_names=class_names,
        source=f"{path.resolve()} (sha256 {sha256_file(path)[:16]})",
        info={"text_column": text_column, "label_column": label_column},
    )
