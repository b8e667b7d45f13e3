"""Trial tables: the one format in which human data, RTify heads and baselines exchange reaction times.

A trials table is a pandas DataFrame with one row per trial and columns

- ``condition`` (float or str): the experimental condition, e.g. motion coherence in percent;
- ``rt_s`` (float > 0): the reaction time in seconds;
- ``correct`` (bool): whether the response was correct;
- optionally ``subject``, ``item``, ``split`` and, for model tables, ``decided`` (bool: False for trials
  whose accumulator never crossed its threshold; their ``rt_s`` is the censoring time).

Everything downstream (metrics, losses, figures) assumes a table that went through
:func:`validate_trials`, so the checks live in one place and every bad input gets a message that names
the problem and the fix.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from perceptalign.io import PerceptAlignError, sha256_file
from perceptalign.tables import read_table

TRIAL_COLUMNS = ("condition", "rt_s", "correct")

_COLUMN_MEANING = {
    "condition": "experimental condition (e.g. coherence in %), float or str",
    "rt_s": "reaction time in seconds, > 0",
    "correct": "True for a correct response, False for an error",
}
#: A median reaction time above this many seconds means the RTs are almost surely in milliseconds.
MAX_PLAUSIBLE_MEDIAN_RT_S = 20.0
#: After a conversion from milliseconds, a median below this many seconds means they were seconds already.
MIN_PLAUSIBLE_MEDIAN_RT_S = 0.02
RT_UNITS = ("s", "ms")
_TRUE_STRINGS = {"true", "t", "1", "yes", "y", "1.0"}
_FALSE_STRINGS = {"false", "f", "0", "no", "n", "0.0"}


def _show_rows(df: pd.DataFrame, mask: pd.Series | np.ndarray, limit: int = 5) -> str:
    """Render the first offending rows (with their index) so a user can find them in their file."""
    bad = df[np.asarray(mask, dtype=bool)]
    shown = bad.head(limit).to_string()
    more = f"\n... and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"{shown}{more}"


def _to_bool(series: pd.Series, *, column: str, name: str) -> pd.Series:
    """Coerce a boolean-like column (bool, 0/1, 'true'/'false', ...) to bool; reject anything else."""
    if series.dtype == bool:
        return series.astype(bool)
    if series.isna().any():
        raise PerceptAlignError(
            f"{name}: column {column!r} has missing values in rows:\n"
            f"{_show_rows(series.to_frame(), series.isna())}\n"
            f"Fill them with True/False (or drop those trials)."
        )
    values = series.to_numpy(dtype=object)
    out = np.empty(len(values), dtype=bool)
    bad = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)) or (
            isinstance(v, (int, float, np.integer, np.floating)) and v in (0, 1)
        ):
            out[i] = bool(v)
        elif isinstance(v, str) and v.strip().lower() in _TRUE_STRINGS:
            out[i] = True
        elif isinstance(v, str) and v.strip().lower() in _FALSE_STRINGS:
            out[i] = False
        else:
            bad[i] = True
    if bad.any():
        raise PerceptAlignError(
            f"{name}: column {column!r} must be boolean-like (True/False, 1/0, 'true'/'false'); "
            f"offending rows:\n{_show_rows(series.to_frame(), bad)}\nConvert it to booleans before loading."
        )
    return pd.Series(out, index=series.index, name=column)


def _normalise_condition(series: pd.Series, name: str) -> pd.Series:
    """Numeric conditions become float (so 6.4 and '6.4' in two tables compare equal), others str."""
    if series.isna().any():
        raise PerceptAlignError(
            f"{name}: column 'condition' has missing values in rows:\n"
            f"{_show_rows(series.to_frame(), series.isna())}\nEvery trial needs a condition."
        )
    numeric = pd.to_numeric(series, errors="coerce")
    if not numeric.isna().any():
        return numeric.astype(float)
    return series.astype(str)


def check_rt_unit(rt_s: np.ndarray | Sequence[float], *, name: str = "trials") -> None:
    """Refuse reaction times in seconds whose median is implausible (> 20 s): they are milliseconds.

    A choice task with a median RT of minutes does not exist, but a millisecond column read as seconds
    gives exactly that, and every fit downstream would "work" on it and report nonsense.
    """
    values = np.asarray(rt_s, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return
    median = float(np.median(values))
    if median > MAX_PLAUSIBLE_MEDIAN_RT_S:
        raise PerceptAlignError(
            f"{name}: reaction times look like milliseconds, not seconds (median {median:.4g}; a median "
            f"above {MAX_PLAUSIBLE_MEDIAN_RT_S:g} s is implausible). Declare the RT unit as milliseconds "
            "(`rt_unit` ms) or convert the values to seconds."
        )


def check_ms_conversion(rt_s: pd.Series, name: str = "trials") -> None:
    """Refuse RTs converted from milliseconds whose median is below 20 ms: they were seconds already."""
    values = pd.to_numeric(rt_s, errors="coerce").abs().to_numpy(dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size and float(np.median(values)) < MIN_PLAUSIBLE_MEDIAN_RT_S:
        median_ms = float(np.median(values)) * 1e3
        raise PerceptAlignError(
            f"{name}: with the RT unit set to milliseconds the median reaction time is {median_ms:.3g} ms, "
            "implausibly short; the values look like seconds already. Use the RT unit 's' (the default)."
        )


def check_rt_window(
    df: pd.DataFrame, max_rt_s: float, *, name: str = "trials", window: str = "", fix: str = ""
) -> None:
    """Refuse a (validated) trials table with reaction times beyond ``max_rt_s``, the longest RT a fit sees.

    A model that simulates a fixed window cannot produce longer RTs and a histogram on that window
    drops them, so such trials would be fitted silently wrong. ``window`` describes the limit and ``fix``
    says how to change it, if it can be changed (both are appended to the message).
    """
    rt = df["rt_s"].to_numpy(dtype=float)
    beyond = rt > max_rt_s
    if beyond.any():
        what = window or f"the model's RT window ends at {max_rt_s:g} s"
        remedy = fix or "drop those trials (or check the RT unit)"
        raise PerceptAlignError(
            f"{name}: {int(beyond.sum())} of {len(rt)} trials have reaction times above {max_rt_s:g} s "
            f"(longest {float(rt.max()):.4g} s), but {what}, so they cannot be fitted. Fix: {remedy}."
        )


def check_coherences(values: Iterable[Any], *, name: str = "coherences", signed: bool = False) -> list[float]:
    """Motion coherences in percent as floats: each finite and in [0, 100] (``signed``: [−100, 100]).

    The one check used by every RTify command that takes coherences (simulation, fits, data files).
    """
    raw = list(values)
    out: list[float] = []
    bad: list[str] = []
    for value in raw:
        try:
            c = float(value)
        except (TypeError, ValueError):
            bad.append(repr(value))
            continue
        lo = -100.0 if signed else 0.0
        if not (math.isfinite(c) and lo <= c <= 100.0):
            bad.append(repr(value) if isinstance(value, str) else f"{c:g}")
        out.append(c)
    if bad:
        bounds = "between -100 and 100" if signed else "between 0 and 100"
        raise PerceptAlignError(
            f"{name} must be finite percentages {bounds} (e.g. 6.4 or 51.2); got {', '.join(bad)}."
        )
    return out


def validate_trials(
    df: pd.DataFrame, *, required_conditions: Sequence[Any] | None = None, name: str = "trials"
) -> pd.DataFrame:
    """Check a trials table and return a clean copy (fresh index, float ``rt_s``, bool ``correct``).

    Raises :class:`PerceptAlignError` naming the problem and the fix for: a non-DataFrame, an empty table,
    missing columns, non-numeric / NaN / non-finite / non-positive reaction times, a ``correct`` (or
    ``decided``) column that is not boolean-like, missing conditions, and absent ``required_conditions``.
    """
    if not isinstance(df, pd.DataFrame):
        raise PerceptAlignError(f"{name}: expected a pandas DataFrame of trials, got {type(df).__name__}.")
    missing = [c for c in TRIAL_COLUMNS if c not in df.columns]
    if missing:
        meaning = "; ".join(f"{c!r}: {_COLUMN_MEANING[c]}" for c in missing)
        raise PerceptAlignError(
            f"{name}: missing column(s) {missing} (have {list(df.columns)}). Required: {meaning}. "
            "Rename your columns (in Python, load_trials_csv maps other column names), or give signed RTs "
            "as a table with columns coherence_pct and signed_rt_s (+correct, −error)."
        )
    if len(df) == 0:
        raise PerceptAlignError(f"{name}: the table is empty; it needs at least one trial.")
    out = df.copy().reset_index(drop=True)
    raw_rt = out["rt_s"]
    rt = pd.to_numeric(raw_rt, errors="coerce")
    non_numeric = rt.isna() & raw_rt.notna()
    if non_numeric.any():
        raise PerceptAlignError(
            f"{name}: column 'rt_s' must be numeric (seconds); non-numeric values in rows:\n"
            f"{_show_rows(out, non_numeric)}\nFix or drop these rows."
        )
    if rt.isna().any():
        raise PerceptAlignError(
            f"{name}: column 'rt_s' has missing (NaN) reaction times in rows:\n{_show_rows(out, rt.isna())}\n"
            "Drop trials without a response (for model trials that never decided: a 'decided' column "
            "set to False, and their censoring time as rt_s)."
        )
    rt = rt.astype(float)
    not_finite = ~np.isfinite(rt.to_numpy())
    if not_finite.any():
        raise PerceptAlignError(
            f"{name}: column 'rt_s' has infinite reaction times in rows:\n{_show_rows(out, not_finite)}\n"
            "For trials that never decided, use their censoring time as rt_s with a 'decided' column set "
            "to False."
        )
    non_positive = rt <= 0
    if non_positive.any():
        raise PerceptAlignError(
            f"{name}: reaction times must be > 0 seconds; zero or negative values in rows:\n"
            f"{_show_rows(out, non_positive)}\nIf these are signed RTs (+correct, −error), give them as a "
            "signed-RT table (columns coherence_pct and signed_rt_s) instead of rt_s and correct."
        )
    check_rt_unit(rt.to_numpy(), name=name)
    out["rt_s"] = rt
    out["correct"] = _to_bool(out["correct"], column="correct", name=name)
    if "decided" in out.columns:
        out["decided"] = _to_bool(out["decided"], column="decided", name=name)
    out["condition"] = _normalise_condition(out["condition"], name)
    if required_conditions is not None:
        present = set(out["condition"].unique().tolist())
        wanted = _normalise_condition(
            pd.Series(list(required_conditions), dtype=object), "required_conditions"
        )
        absent = [c for c in wanted.tolist() if c not in present]
        if absent:
            raise PerceptAlignError(
                f"{name}: no trials for condition(s) {absent} (present: {sorted(present, key=str)}). "
                "Every compared condition needs trials: add trials for these conditions, or leave them out "
                "of the comparison."
            )
    return out


def trials_from_signed_rt(
    df: pd.DataFrame,
    *,
    condition_column: str = "coherence_pct",
    signed_rt_column: str = "signed_rt_s",
    split_column: str | None = "split",
    name: str = "signed-RT table",
) -> pd.DataFrame:
    """Convert a signed-RT table (+RT correct, −RT error, the published RTify format) into a trials table.

    A signed RT of exactly zero carries no choice and no time, so it is rejected rather than guessed.
    ``name`` (e.g. the file name) starts every error message.
    """
    if not isinstance(df, pd.DataFrame):
        raise PerceptAlignError(f"expected a pandas DataFrame, got {type(df).__name__}.")
    missing = [c for c in (condition_column, signed_rt_column) if c not in df.columns]
    if missing:
        raise PerceptAlignError(
            f"{name}: missing column(s) {missing} (have {list(df.columns)}). Name the columns that hold "
            "the condition and the signed reaction time (+correct, −error) (condition_column and "
            "signed_rt_column)."
        )
    signed = pd.to_numeric(df[signed_rt_column], errors="coerce")
    bad = signed.isna().to_numpy()
    if bad.any():
        raise PerceptAlignError(
            f"{name}: column {signed_rt_column!r} has non-numeric or missing values in rows:\n"
            f"{_show_rows(df, bad)}\nFix or drop these rows."
        )
    zero = (signed == 0).to_numpy()
    if zero.any():
        raise PerceptAlignError(
            f"{name}: a signed RT of 0 has no sign (correct/error) and no duration; rows:\n"
            f"{_show_rows(df, zero)}\nDrop these trials or recover their true RT and outcome."
        )
    out = pd.DataFrame(
        {
            "condition": df[condition_column].to_numpy(),
            "rt_s": np.abs(signed.to_numpy(dtype=float)),
            "correct": signed.to_numpy() > 0,
        }
    )
    if split_column is not None and split_column in df.columns:
        out["split"] = df[split_column].astype(str).to_numpy()
    return validate_trials(out, name=name)


def load_trials_csv(
    path: str | os.PathLike[str],
    *,
    condition_column: str,
    rt_column: str | None = None,
    correct_column: str | None = None,
    signed_rt_column: str | None = None,
    rt_unit: Literal["s", "ms"] = "s",
    split_column: str | None = None,
    subject_column: str | None = None,
    item_column: str | None = None,
) -> pd.DataFrame:
    """Read any CSV/TSV of trials: either ``rt_column`` + ``correct_column`` or one ``signed_rt_column``.

    The file is read by :func:`perceptalign.tables.read_table` (delimiter sniffed, UTF-8 required).
    ``rt_unit="ms"`` converts milliseconds to seconds; RTs in seconds with a median above 20 s are refused
    as milliseconds in disguise.
    """
    path = Path(path)
    check_rt_unit_name(rt_unit)
    if (signed_rt_column is None) == (rt_column is None):
        raise PerceptAlignError(
            "give either signed_rt_column= (one column, + correct / − error) or rt_column= together with "
            "correct_column=, not both and not neither."
        )
    if rt_column is not None and correct_column is None:
        raise PerceptAlignError(
            "rt_column= needs correct_column= (which column says whether a trial was correct)."
        )
    raw = read_table(path, what="trials file")
    optional = {"split": split_column, "subject": subject_column, "item": item_column}
    wanted = [condition_column, rt_column, correct_column, signed_rt_column, *optional.values()]
    missing = [c for c in wanted if c is not None and c not in raw.columns]
    if missing:
        raise PerceptAlignError(
            f"{path.name}: column(s) {missing} not found (have {list(raw.columns)}). Fix the column names."
        )
    if signed_rt_column is not None:
        tmp = pd.DataFrame(
            {
                "condition": raw[condition_column],
                "signed": _to_seconds(raw[signed_rt_column], rt_unit, path.name),
            }
        )
        out = trials_from_signed_rt(
            tmp, condition_column="condition", signed_rt_column="signed", split_column=None, name=path.name
        )
    else:
        rt = _to_seconds(raw[rt_column], rt_unit, path.name)
        out = pd.DataFrame({"condition": raw[condition_column], "rt_s": rt, "correct": raw[correct_column]})
    for target, source in optional.items():
        if source is not None:
            out[target] = raw[source].to_numpy()
    return validate_trials(out, name=path.name)


def check_rt_unit_name(rt_unit: str) -> None:
    """The unit of a file's reaction times must be one of :data:`RT_UNITS` ('s' or 'ms')."""
    if rt_unit not in RT_UNITS:
        raise PerceptAlignError(f"rt_unit (the RT unit) must be 's' or 'ms', got {rt_unit!r}.")


def _to_seconds(column: pd.Series, rt_unit: str, name: str) -> pd.Series:
    """An RT column in seconds (a column with non-numeric entries is returned as is for validation)."""
    if rt_unit == "s":
        return column
    numeric = pd.to_numeric(column, errors="coerce")
    if (numeric.isna() & column.notna()).any():
        return column
    seconds = numeric * 1e-3
    check_ms_conversion(seconds, name)
    return seconds


@dataclass(frozen=True)
class DatasetRecord:
    """A registered reaction-time dataset: where it was published, its packaged copy, how to verify a file."""

    name: str
    description: str
    source_url: str
    sha256: str  # of the uncompressed CSV, so a packaged .gz and a plain copy verify alike
    citation: str
    packaged_file: str  # inside perceptalign/data (see its README for provenance)
    env_var: str = ""  # environment variable that may point at another copy
    file_format: Literal["signed-rt", "trials"] = "signed-rt"


RT_DATASETS: dict[str, DatasetRecord] = {
    "rdm-human": DatasetRecord(
        name="rdm-human",
        description=(
            "Human reaction times in a random-dot-motion direction task: 46,644 train and 11,794 test "
            "trials, 7 coherences 0.8-51.2%, CSV columns split, coherence_pct, signed_rt_s "
            "(+correct, -error)."
        ),
        # The published copy is a pickle in the RTify authors' repository. This toolkit never loads pickles:
        # it ships a CSV holding the same numbers, verified by the checksum below.
        source_url="https://github.com/serre-lab/RTify/blob/main/dataset/human_rt_dataset.pkl",
        sha256="b7c3cbc2a1ec86dea0a6654e3e1cfbbb4f64e33c99558c55b4358621981151c0",
        citation=(
            "Cheng, Rodriguez, Chen, Kar, Watanabe, Serre. RTify: Aligning Deep Neural Networks with Human "
            "Behavioral Decisions. NeurIPS 2024 (arXiv:2411.03630)."
        ),
        packaged_file="rdm_human_rt.csv.gz",
        env_var="PERCEPTALIGN_RDM_HUMAN",
    )
}


def packaged_data_path(file_name: str) -> Path:
    """Path of a data file that ships inside the package (``perceptalign/data``)."""
    return Path(str(resources.files("perceptalign.data").joinpath(file_name)))


def content_sha256(path: Path) -> str:
    """SHA-256 of a file's content, decompressed first for ``.gz`` (what a registry checksum covers)."""
    if path.suffix != ".gz":
        return sha256_file(path)
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _resolve_registered(record: DatasetRecord, path: str | os.PathLike[str] | None) -> Path:
    """The file of a registered dataset: an explicit path, else its environment variable, else the copy
    that ships with the package."""
    if path is not None:
        resolved = Path(path)
        if not resolved.is_file():
            raise PerceptAlignError(
                f"{record.name}: the file {str(resolved)!r} given as its path does not exist."
            )
        return resolved
    if record.env_var and os.environ.get(record.env_var):
        resolved = Path(os.environ[record.env_var])
        if not resolved.is_file():
            raise PerceptAlignError(
                f"{record.name}: ${record.env_var} points at {str(resolved)!r}, which does not exist. "
                "Fix the variable or unset it (the copy that ships with the package is then used)."
            )
        return resolved
    packaged = packaged_data_path(record.packaged_file)
    if not packaged.is_file():
        raise PerceptAlignError(
            f"{record.name}: the packaged copy {packaged} is missing, so this installation of perceptalign "
            f"is incomplete: reinstall it, or give the path of a copy (sha256 {record.sha256}, from "
            f"{record.source_url} converted to CSV)."
        )
    return packaged


def load_rt_dataset(
    name_or_path: str = "rdm-human",
    *,
    split: str | None = None,
    path: str | os.PathLike[str] | None = None,
    rt_unit: Literal["s", "ms"] = "s",
) -> pd.DataFrame:
    """Load a registered dataset (checksum-verified) or a CSV/TSV file as a validated trials table.

    A registered name is read from the copy that ships with the package (``perceptalign/data``), or from
    ``path`` or its environment variable (``$PERCEPTALIGN_RDM_HUMAN`` for ``rdm-human``) when given; every
    copy is checksum-verified. A plain file path is read by
    :func:`perceptalign.tables.read_table` as a signed-RT table if it has ``coherence_pct`` and
    ``signed_rt_s`` columns, otherwise as a trials table (``condition``, ``rt_s``, ``correct``).
    ``rt_unit="ms"`` converts a file's millisecond RTs to seconds (registered datasets are in seconds).
    """
    check_rt_unit_name(rt_unit)
    if name_or_path in RT_DATASETS:
        record = RT_DATASETS[name_or_path]
        if rt_unit != "s":
            raise PerceptAlignError(
                f"{record.name} is a registered dataset with reaction times in seconds; drop the RT unit "
                "'ms' (it is only for your own files)."
            )
        file = _resolve_registered(record, path)
        actual = content_sha256(file)
        if actual != record.sha256:
            raise PerceptAlignError(
                f"{record.name}: checksum mismatch for {file}: expected {record.sha256}, got {actual}. "
                "The file is not the registered data (modified or a different version); restore it from "
                f"{record.source_url}."
            )
        raw = read_table(file, what=f"{record.name} data file", string_columns=("split",))
        if record.file_format == "signed-rt":
            table = trials_from_signed_rt(raw, name=record.name)
        else:
            table = validate_trials(raw, name=record.name)
    else:
        file = Path(name_or_path)
        if not file.exists():
            raise PerceptAlignError(
                f"{name_or_path!r} is neither a registered dataset ({sorted(RT_DATASETS)}) nor an existing "
                "CSV file."
            )
        raw = read_table(file, what="trials file", string_columns=("split",))
        columns = set(raw.columns)
        if {"coherence_pct", "signed_rt_s"} <= columns:
            raw = raw.assign(signed_rt_s=_to_seconds(raw["signed_rt_s"], rt_unit, file.name))
            table = trials_from_signed_rt(raw, name=file.name)
        elif set(TRIAL_COLUMNS) <= columns:
            raw = raw.assign(rt_s=_to_seconds(raw["rt_s"], rt_unit, file.name))
            table = validate_trials(raw, name=file.name)
        else:
            missing = ", ".join(repr(c) for c in TRIAL_COLUMNS if c not in columns)
            raise PerceptAlignError(
                f"{file.name}: not a trials table (columns {list(raw.columns)}). It lacks {missing}: use "
                "either the columns condition, rt_s, correct (one row per trial) or coherence_pct, "
                "signed_rt_s (+RT correct, −RT error); a split column (train/test) is optional."
            )
    return split_trials(table, split) if split is not None else table


#: The split labels that RTify fits understand: fit on ``train``, score on ``test``.
SPLITS = ("train", "test")


def check_split_column(df: pd.DataFrame, *, allowed: Sequence[str] = SPLITS, name: str = "trials") -> None:
    """Refuse a ``split`` column with values other than ``allowed`` (exact, lower case).

    Selecting rows by split would silently drop trials labelled e.g. ``Test``, ``val`` or left empty,
    so every such row is reported instead, with the fix.
    """
    if "split" not in df.columns:
        raise PerceptAlignError(
            f"{name}: the table has no 'split' column; add one with the values {', '.join(allowed)} "
            "(fit on train, score on test)."
        )
    raw = df["split"]
    bad = raw.isna().to_numpy() | ~raw.astype(str).isin(list(allowed)).to_numpy()
    if bad.any():
        values = sorted({"(empty)" if pd.isna(v) else repr(str(v)) for v in raw[bad]})
        raise PerceptAlignError(
            f"{name}: column 'split' must hold only {' or '.join(repr(a) for a in allowed)} (exactly, lower "
            f"case); {int(bad.sum())} row(s) have {', '.join(values)}:\n{_show_rows(df, bad)}\n"
            "Relabel them (e.g. as train or test) or drop them; they are not silently skipped."
        )


def rt_beyond(df: pd.DataFrame, window_s: float) -> pd.Series:
    """Per condition (in :func:`conditions` order), how many trials have an RT at or beyond ``window_s``.

    Such a trial is, for a model that simulates ``window_s`` seconds, a trial without a response within
    its window; fits count it (as missing mass or a censored trial) instead of refusing or dropping it.
    """
    table = validate_trials(df, name="trials")
    beyond = table["rt_s"].to_numpy(dtype=float) >= window_s
    counts = pd.Series(beyond, index=table["condition"]).groupby(level=0, sort=False).sum()
    return counts.reindex(conditions(table)).astype(int)


def censor_beyond(df: pd.DataFrame, window_s: float) -> pd.DataFrame:
    """A copy in which trials with RTs at or beyond ``window_s`` are censored: ``decided`` False and
    ``rt_s`` = ``window_s`` (the convention of model tables for "no response within the window")."""
    table = validate_trials(df, name="trials")
    beyond = table["rt_s"].to_numpy(dtype=float) >= window_s
    decided = table["decided"].to_numpy(bool) if "decided" in table.columns else np.ones(len(table), bool)
    table["decided"] = decided & ~beyond
    table.loc[beyond, "rt_s"] = float(window_s)
    return table


def split_trials(df: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of one split (e.g. 'train' / 'test'), re-indexed; errors name the available splits."""
    if "split" not in df.columns:
        raise PerceptAlignError(f"cannot select split {split!r}: the table has no 'split' column.")
    available = sorted(df["split"].astype(str).unique().tolist())
    if split not in available:
        raise PerceptAlignError(f"split {split!r} not in the table; available splits: {available}.")
    return df[df["split"].astype(str) == split].reset_index(drop=True)


def normalise_conditions(values: Sequence[Any]) -> list[Any]:
    """Condition values as they appear in validated tables: all floats if all numeric, else strings."""
    return _normalise_condition(pd.Series(list(values), dtype=object), "conditions").tolist()


def conditions(df: pd.DataFrame) -> list[Any]:
    """Sorted distinct conditions (numeric order for numbers, lexical for strings)."""
    if "condition" not in df.columns:
        raise PerceptAlignError(
            "the table has no 'condition' column; validate it with validate_trials() first."
        )
    values = df["condition"].unique().tolist()
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def default_t0_max(trials: pd.DataFrame) -> float:
    """The shared upper bound on a non-decision time fitted to ``trials``: min(0.8 s, median RT).

    A non-decision time beyond the median RT would leave most responses without decision time; the
    fastest RT is no bound because every method may explain fast outliers otherwise (lapses). Every RTify
    comparison gives all methods this one box.
    """
    return float(min(0.8, float(trials["rt_s"].median())))
