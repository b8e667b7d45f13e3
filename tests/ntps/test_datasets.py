"""TextDataset, subsets, the deterministic split, dedup, validation and the registry front door."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.datasets import (
    HUB_SPECS,
    OFFLINE_SPECS,
    TextDataset,
    list_datasets,
    load_text_dataset,
    stratified_split,
    validate_text_dataset,
)
from perceptalign.ntps.datasets.core import _proportional_quotas, dedupe_texts


def make(labels, n_classes=None, texts=None) -> TextDataset:
    labels = np.asarray(labels)
    n_classes = n_classes or int(labels.max()) + 1
    texts = texts if texts is not None else [f"text {i}" for i in range(len(labels))]
    return TextDataset("toy", "train", texts, labels, [f"c{i}" for i in range(n_classes)], "memory")


# ------------------------------------------------------------------------------------------- subset


def test_subset_is_deterministic_and_seed_dependent():
    ds = make(np.arange(300) % 3)
    a, b, c = ds.subset(50, seed=1), ds.subset(50, seed=1), ds.subset(50, seed=2)
    assert a.texts == b.texts and np.array_equal(a.labels, b.labels)
    assert a.texts != c.texts
    assert len(set(a.texts)) == 50  # no row drawn twice


def test_subset_is_stratified_and_keeps_label_space():
    labels = np.array([0] * 600 + [1] * 300 + [2] * 100)
    ds = make(labels, n_classes=4)  # class 3 absent everywhere
    sub = ds.subset(100, seed=0)
    # Largest-remainder quotas of 100 over (600, 300, 100)/1000 are exactly (60, 30, 10).
    assert sub.class_counts().tolist() == [60, 30, 10, 0]
    assert sub.n_classes == 4 and sub.class_names == ds.class_names
    # Each row keeps its own label: the text encodes the original index.
    for t, y in zip(sub.texts, sub.labels, strict=True):
        assert labels[int(t.split()[1])] == y


def test_subset_gives_every_present_class_a_row_when_possible():
    labels = np.array([0] * 995 + [1] * 3 + [2] * 2)
    sub = make(labels).subset(3, seed=0)
    assert sorted(sub.labels.tolist()) == [0, 1, 2]


def test_subset_none_or_large_returns_everything_in_order():
    ds = make(np.arange(10) % 2)
    for m in (None, 10, 99):
        assert ds.subset(m).texts == ds.texts


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_subset_rejects_bad_max_samples(bad):
    with pytest.raises(PerceptAlignError, match="max_samples"):
        make(np.arange(10) % 2).subset(bad)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=8), st.integers(1, 400))
def test_proportional_quotas_properties(counts, total):
    counts = np.array(counts)
    total = min(total, int(counts.sum()))
    q = _proportional_quotas(counts, total)
    assert q.sum() == total
    assert np.all(q <= counts) and np.all(q >= 0)
    if total >= len(counts):
        assert np.all(q >= 1)
    exact = counts * total / counts.sum()
    if np.all(exact >= 1):  # the ≥ 1 rule is inactive: pure largest remainder, within 1 of the exact share
        assert np.all(np.abs(q - exact) < 1)


# -------------------------------------------------------------------------------------- split, dedup


def test_stratified_split_counts_order_invariance_and_seed():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=500)
    texts = [f"doc {i}" for i in range(500)]
    mask = stratified_split(texts, labels)
    for c in range(3):
        n_c = (labels == c).sum()
        assert mask[labels == c].sum() == int(np.floor(0.3 * n_c + 0.5))
    perm = rng.permutation(500)
    mask_perm = stratified_split([texts[i] for i in perm], labels[perm])
    assert {texts[i] for i in perm[mask_perm]} == {t for t, m in zip(texts, mask, strict=True) if m}
    assert not np.array_equal(stratified_split(texts, labels, seed=7), mask)


def test_stratified_split_keeps_identical_texts_together():
    texts = ["same"] * 7 + [f"u{i}" for i in range(13)]
    labels = np.zeros(20, dtype=int)
    mask = stratified_split(texts, labels)
    assert len(set(mask[:7].tolist())) == 1


def test_dedupe_drops_conflicts_and_collapses_copies():
    texts = ["a", "b", "a", "c", "b", "d"]
    labels = ["x", "y", "x", "x", "z", "y"]
    out_t, out_y, stats = dedupe_texts(texts, labels)
    assert out_t == ["a", "c", "d"] and out_y == ["x", "x", "y"]
    assert stats == {"rows_in": 6, "duplicates_removed": 2, "conflicting_texts_dropped": 1, "rows_out": 3}


# --------------------------------------------------------------------------------------- validation


def test_validate_accepts_good_data_and_normalises_dtype():
    ds = make(np.array([0.0, 1.0, 1.0]))
    validate_text_dataset(ds)
    assert ds.labels.dtype == np.int64


@pytest.mark.parametrize(
    ("ds", "pattern"),
    [
        (TextDataset("t", "train", ["a", "b"], np.array([0]), ["x", "y"], "m"), "2 texts but 1 labels"),
        (TextDataset("t", "train", [], np.array([], dtype=int), ["x", "y"], "m"), "no rows"),
        (TextDataset("t", "train", ["a", "b"], np.array([0, 0]), ["x"], "m"), "at least 2 classes"),
        (TextDataset("t", "train", ["a", "b"], np.array([0, 1]), ["x", "x"], "m"), "duplicates"),
        (
            TextDataset("t", "train", ["a", 3, 4.5], np.array([0, 1, 0]), ["x", "y"], "m"),
            r"2 row\(s\), first at index 1, 2 are int \(e\.g\. 3\)",
        ),
        (
            TextDataset(
                "t", "train", ["a", None, float("nan"), "b"], np.array([0, 1, 0, 1]), ["x", "y"], "m"
            ),
            r"2 row\(s\), first at index 1, 2 have missing",
        ),
        (
            TextDataset("t", "train", ["a", " \n", "", "b"], np.array([0, 1, 0, 1]), ["x", "y"], "m"),
            r"index 1, 2.*whitespace",
        ),
        (TextDataset("t", "train", ["a", "b"], np.array([0.0, np.nan]), ["x", "y"], "m"), "NaN at 1 row"),
        (TextDataset("t", "train", ["a", "b"], np.array([0.0, 0.5]), ["x", "y"], "m"), "fractional"),
        (
            TextDataset("t", "train", ["a", "b", "c"], np.array([0, 1, 2]), ["x", "y"], "m"),
            r"\[0, 2\).*values \[2\]",
        ),
        (TextDataset("t", "train", ["a", "b"], np.array([-1, 1]), ["x", "y"], "m"), r"values \[-1\]"),
        (
            TextDataset("t", "train", ["a", "b"], np.array(["x", "y"]), ["x", "y"], "m"),
            "integer class indices",
        ),
        (
            TextDataset("t", "train", ["a", "b"], np.array([1, 1]), ["x", "y"], "m"),
            "all 2 rows have class 'y'",
        ),
        (TextDataset("t", "train", ["a", "b"], np.array([[0, 1]]), ["x", "y"], "m"), "1-D"),
    ],
)
def test_validate_errors_name_problem_and_fix(ds, pattern):
    with pytest.raises(PerceptAlignError, match=pattern):
        validate_text_dataset(ds)


def test_validate_lists_only_the_first_few_rows():
    texts = ["ok"] + [""] * 20
    with pytest.raises(PerceptAlignError, match=r"20 row\(s\), first at index 1, 2, 3, 4, 5 …"):
        validate_text_dataset(make(np.arange(21) % 2, texts=texts))


# ------------------------------------------------------------------------------------------ registry


def test_list_datasets_covers_both_registries():
    infos = list_datasets()
    assert [i.name for i in infos] == [*HUB_SPECS, *OFFLINE_SPECS]
    assert len(HUB_SPECS) == 12 and len(OFFLINE_SPECS) == 8
    kinds = {i.name: i.kind for i in infos}
    assert kinds["sst2"] == "hub" and kinds["vader-movie"] == "offline"
    offline = {i.name: i for i in infos if i.kind == "offline"}
    assert offline["chatterbot-topics"].n_classes == 21
    assert "vadersentiment==3.3.2" in offline["vader-nyt"].source
    assert all(i.description and i.source for i in infos)


@pytest.mark.parametrize(("typo", "suggestion"), [("vader-movies", "vader-movie"), ("bankin77", "banking77")])
def test_unknown_name_suggests_close_matches(typo, suggestion):
    with pytest.raises(PerceptAlignError, match=f"Did you mean '{suggestion}'") as err:
        load_text_dataset(typo)
    assert "chatterbot-topics" in str(err.value) and "imdb" in str(err.value)


def test_unknown_name_without_close_match_lists_registry():
    with pytest.raises(PerceptAlignError, match="unknown dataset 'zzzz'") as err:
        load_text_dataset("zzzz")
    assert "Did you mean" not in str(err.value) and "vader-tweets" in str(err.value)


def test_offline_names_reject_column_overrides():
    with pytest.raises(PerceptAlignError, match="fixed text/label columns"):
        load_text_dataset("vader-movie", text_column="x")


def test_existing_non_table_path_is_rejected(tmp_path):
    (tmp_path / "data.txt").write_text("hello\n")
    with pytest.raises(PerceptAlignError, match="not a supported table file"):
        load_text_dataset(str(tmp_path / "data.txt"))
