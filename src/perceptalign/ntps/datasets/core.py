"""The labelled-text container every NTPS measurement consumes, its validation, and split/dedup helpers.

Kept free of any loading code so that probes, statistics and tests can build a :class:`TextDataset`
directly; the loaders (offline archives, hub, local files) all funnel through :func:`validate_text_dataset`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from perceptalign.io import PerceptAlignError

#: Split names an offline dataset accepts ("all" = train + test, in a fixed order).
OFFLINE_SPLITS = ("train", "test", "all")
#: Fraction and seed of the deterministic split used when a dataset publishes no test split
#: (docs/ntps.md, "The paper's protocol").
TEST_FRACTION = 0.3
SPLIT_SEED = 42
_SHOW = 5  # how many offending row indices an error message lists


@dataclass
class TextDataset:
    """One split of a text-classification dataset: texts, integer labels and the full class list.

    ``class_names`` always covers every class of the dataset (all splits), so a split or subset that lacks a
    class keeps the same label space; probes and NTPS moments then have a fixed number of columns.
    """

    name: str
    split: str
    texts: list[str]
    labels: np.ndarray
    class_names: list[str]
    source: str
    info: dict[str, object] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.texts = list(self.texts)
        self.labels = np.asarray(self.labels)
        self.class_names = [str(c) for c in self.class_names]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.texts)

    def class_counts(self) -> np.ndarray:
        """Number of rows per class (length ``n_classes``, zeros for absent classes)."""
        return np.bincount(self.labels.astype(np.int64), minlength=self.n_classes)

    def select(self, indices: Sequence[int] | np.ndarray) -> TextDataset:
        """Rows at ``indices`` (in that order), same label space and provenance."""
        idx = np.asarray(indices, dtype=np.int64)
        return TextDataset(
            name=self.name,
            split=self.split,
            texts=[self.texts[i] for i in idx],
            labels=self.labels[idx].copy(),
            class_names=list(self.class_names),
            source=self.source,
            info=dict(self.info),
        )

    def subset(self, max_samples: int | None, seed: int = 0) -> TextDataset:
        """A deterministic, shuffled subset of at most ``max_samples`` rows, stratified by class.

        Class quotas are proportional to the class counts (largest remainder), with every present class
        getting at least one row when ``max_samples`` allows it, so a small subset still has ≥ 2 classes.
        ``None`` (or a value ≥ len) returns all rows in their original order.
        """
        if max_samples is not None and (
            isinstance(max_samples, bool) or not isinstance(max_samples, (int, np.integer)) or max_samples < 1
        ):
            raise PerceptAlignError(
                f"max_samples must be a positive integer or None, got {max_samples!r}: "
                "pass e.g. max_samples=1000."
            )
        if max_samples is None or max_samples >= len(self):
            return self.select(np.arange(len(self)))
        rng = np.random.default_rng(seed)
        labels = self.labels.astype(np.int64)
        present = np.unique(labels)
        counts = np.array([(labels == c).sum() for c in present])
        quotas = _proportional_quotas(counts, int(max_samples))
        chosen = [
            rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(present, quotas, strict=True)
        ]
        picked = np.concatenate(chosen)
        return self.select(picked[rng.permutation(len(picked))])


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry as shown by ``perceptalign ntps datasets``."""

    name: str
    kind: str  # "hub" or "offline"
    description: str
    n_classes: int | None
    source: str
    note: str | None = None  # a known caveat of the dataset (e.g. its splits), shown under the table


def _proportional_quotas(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainder), ≥ 1 each if possible."""
    n = counts.sum()
    exact = counts * total / n
    quotas = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[: total - quotas.sum()]] += 1
    if total >= len(counts):
        # Give every absent class one row, taken from the class with the largest quota (> 1).
        for c in np.flatnonzero(quotas == 0):
            donor = int(np.argmax(quotas))
            quotas[donor] -= 1
            quotas[c] = 1
    return np.minimum(quotas, counts)


def stratified_split(
    texts: Sequence[str], labels: np.ndarray, *, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> np.ndarray:
    """Boolean mask of test rows: per class, the ``round(test_fraction · n_c)`` rows of smallest hash key.

    The key is sha256(seed, text), so the split depends only on the content, never on row order or on
    the numpy version, and identical texts always land on the same side (no train/test leakage).
    """
    labels = np.asarray(labels)
    keys = np.array([hashlib.sha256(f"{seed}\x00{t}".encode()).hexdigest() for t in texts])
    is_test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = math.floor(test_fraction * len(idx) + 0.5)
        is_test[idx[np.argsort(keys[idx], kind="stable")[:n_test]]] = True
    # Identical texts of one class share a key and are adjacent in the order; a boundary could still cut a
    # group, so pull every copy of a test text into test.
    test_texts = {t for t, m in zip(texts, is_test, strict=True) if m}
    return np.array([t in test_texts for t in texts], dtype=bool)


def dedupe_texts(texts: Sequence[str], labels: Sequence[str]) -> tuple[list[str], list[str], dict[str, int]]:
    """Keep one copy of each text; drop every copy of a text that carries conflicting labels.

    A text with two labels is ambiguous ground truth and would sit on both sides of any decision boundary,
    so it is removed rather than resolved by majority. Order of first occurrence is preserved.
    """
    seen: dict[str, set[str]] = {}
    for t, y in zip(texts, labels, strict=True):
        seen.setdefault(t, set()).add(y)
    conflicting = {t for t, ys in seen.items() if len(ys) > 1}
    out_t: list[str] = []
    out_y: list[str] = []
    emitted: set[str] = set()
    for t, y in zip(texts, labels, strict=True):
        if t in conflicting or t in emitted:
            continue
        emitted.add(t)
        out_t.append(t)
        out_y.append(y)
    stats = {
        "rows_in": len(texts),
        "duplicates_removed": len(texts) - len(seen),
        "conflicting_texts_dropped": len(conflicting),
        "rows_out": len(out_t),
    }
    return out_t, out_y, stats


def _rows(mask: np.ndarray | Sequence[bool]) -> str:
    idx = np.flatnonzero(np.asarray(mask, dtype=bool))
    shown = ", ".join(str(i) for i in idx[:_SHOW])
    return f"{len(idx)} row(s), first at index {shown}" + (" …" if len(idx) > _SHOW else "")


def validate_text_dataset(ds: TextDataset) -> None:
    """Raise :class:`PerceptAlignError` unless ``ds`` is usable for NTPS; on success labels become int64.

    Every check names the offending rows and the fix, because a bad row silently corrupts the moment
    statistics (an empty text contributes no tokens; a label ≥ C breaks the one-hot matrix).
    """
    where = f"dataset {ds.name!r} (split {ds.split!r})"
    if ds.labels.ndim != 1:
        raise PerceptAlignError(
            f"{where}: labels must be a 1-D array of class indices, got shape {ds.labels.shape}."
        )
    if len(ds.texts) != len(ds.labels):
        raise PerceptAlignError(
            f"{where} has {len(ds.texts)} texts but {len(ds.labels)} labels: pass one label per text."
        )
    if len(ds.texts) == 0:
        raise PerceptAlignError(f"{where} has no rows: check the split name and any row filters.")
    if len(ds.class_names) < 2:
        raise PerceptAlignError(
            f"{where} has {len(ds.class_names)} class ({ds.class_names}); NTPS needs at least 2 classes: "
            "choose a label column with two or more distinct values."
        )
    if len(set(ds.class_names)) != len(ds.class_names):
        raise PerceptAlignError(
            f"{where}: class_names contain duplicates {ds.class_names}; make them unique."
        )
    missing = np.array([t is None or (isinstance(t, float) and math.isnan(t)) for t in ds.texts])
    not_str = np.array([not isinstance(t, str) for t in ds.texts]) & ~missing
    if not_str.any():
        first = ds.texts[int(np.flatnonzero(not_str)[0])]
        raise PerceptAlignError(
            f"{where}: texts must be strings, but {_rows(not_str)} are {type(first).__name__} "
            f"(e.g. {first!r}). Pick the right text column, or convert the values to text."
        )
    blank = missing | np.array([isinstance(t, str) and not t.strip() for t in ds.texts])
    if blank.any():
        raise PerceptAlignError(
            f"{where}: {_rows(blank)} have missing, empty or whitespace-only text; drop those rows "
            "(they carry no tokens for the model)."
        )
    labels = ds.labels
    if labels.dtype.kind == "f":
        _check_whole_numbers(
            labels, where, "labels must be whole class indices", "map them to integer classes."
        )
    elif labels.dtype.kind not in "iu":
        raise PerceptAlignError(
            f"{where}: labels must be integer class indices, got dtype {labels.dtype}; "
            "encode string labels with their sorted class names first."
        )
    bad = (labels < 0) | (labels >= ds.n_classes)
    if bad.any():
        raise PerceptAlignError(
            f"{where}: labels must lie in [0, {ds.n_classes}) for classes {ds.class_names[:10]}, but "
            f"{_rows(bad)} are outside (values {sorted({int(v) for v in labels[bad]})[:_SHOW]}). "
            "Fix the labels or list every class in class_names."
        )
    present = np.unique(labels)
    if len(present) < 2:
        raise PerceptAlignError(
            f"{where}: all {len(labels)} rows have class {ds.class_names[int(present[0])]!r}; NTPS needs at "
            "least 2 classes present: use a larger max_samples or another split."
        )
    ds.labels = labels.astype(np.int64)


#: Fewest texts a measurement job accepts, and fewest texts per class present: below these the moments
#: are built from single texts and every score is noise (a label column of identifiers, or a toy file).
MIN_TEXTS = 10
MIN_TEXTS_PER_CLASS = 2


def check_enough_texts(ds: TextDataset) -> None:
    """Refuse data too small to measure anything: fewer than :data:`MIN_TEXTS` texts, or a present class
    with fewer than :data:`MIN_TEXTS_PER_CLASS` (e.g. a label column of ids gives one text per class)."""
    where = f"dataset {ds.name!r} (split {ds.split!r})"
    if len(ds) < MIN_TEXTS:
        raise PerceptAlignError(
            f"{where} has only {len(ds)} texts; measurements need at least {MIN_TEXTS} (and far more for "
            "stable numbers): use more data or a larger max_samples."
        )
    counts = ds.class_counts()
    rare = [ds.class_names[c] for c in np.flatnonzero((counts > 0) & (counts < MIN_TEXTS_PER_CLASS))]
    if rare:
        shown = ", ".join(repr(c) for c in rare[:_SHOW]) + (" …" if len(rare) > _SHOW else "")
        hint = (
            " Most classes have a single text: is the label column an identifier?"
            if len(rare) > len(ds) / 2
            else ""
        )
        raise PerceptAlignError(
            f"{where}: {len(rare)} of {int((counts > 0).sum())} classes have fewer than "
            f"{MIN_TEXTS_PER_CLASS} texts ({shown}).{hint} Drop or merge those classes, or choose another "
            "label column."
        )


def _check_whole_numbers(labels: np.ndarray, where: str, requirement: str, fix: str) -> None:
    """Float labels must be NaN-free whole numbers; ``requirement`` and ``fix`` word the caller's error."""
    nan = np.isnan(labels)
    if nan.any():
        raise PerceptAlignError(f"{where}: labels are NaN at {_rows(nan)}; drop or label those rows.")
    frac = labels != np.round(labels)
    if frac.any():
        raise PerceptAlignError(f"{where}: {requirement}, but {_rows(frac)} are fractional; {fix}")


def encode_string_labels(values: Sequence[object], where: str) -> tuple[np.ndarray, list[str]]:
    """Map labels to indices of their sorted unique string values (whole column, all splits)."""
    missing = np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in values])
    if missing.any():
        raise PerceptAlignError(
            f"{where}: labels are missing (NaN/None) at {_rows(missing)}; drop or label those rows."
        )
    names = sorted({str(v) for v in values})
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[str(v)] for v in values], dtype=np.int64), names


def encode_integer_labels(values: np.ndarray, where: str) -> tuple[np.ndarray, list[str]]:
    """Integer labels stay as they are; classes are 0..max over the whole column (all splits)."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        _check_whole_numbers(
            values,
            where,
            "numeric labels must be whole numbers",
            "use integer classes or string class names.",
        )
    values = values.astype(np.int64)
    neg = values < 0
    if neg.any():
        raise PerceptAlignError(
            f"{where}: labels must be ≥ 0, but {_rows(neg)} are negative; "
            "drop unlabelled rows or remap classes."
        )
    return values, [str(i) for i in range(int(values.max()) + 1)]
