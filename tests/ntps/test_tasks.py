"""The task factory: ≥ 60 balanced tasks at one N, deterministic content-keyed splits, correct labels."""

from __future__ import annotations

import numpy as np
import pytest

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.datasets import load_text_dataset
from perceptalign.ntps.datasets.corpora import corpus_table
from perceptalign.ntps.datasets.tasks import (
    MIN_TEST_PER_CLASS,
    N_TRAIN,
    TASKS,
    list_tasks,
    task_rows,
    task_split,
)


def test_at_least_sixty_tasks_in_several_parents():
    frame = list_tasks()
    assert len(frame) >= 60
    assert frame["name"].is_unique
    assert frame["parent"].nunique() >= 8


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_is_balanced_at_one_n_with_disjoint_splits(name):
    spec = TASKS[name]
    ts = task_split(name)
    m = N_TRAIN // len(spec.classes)
    assert all(len(rows) == m for rows in ts.train)
    assert len({len(rows) for rows in ts.test}) == 1 and len(ts.test[0]) >= MIN_TEST_PER_CLASS
    train = np.concatenate(ts.train)
    test = np.concatenate(ts.test)
    everything = np.concatenate([train, test])
    assert len(np.unique(everything)) == len(everything)  # no text in two classes or in both splits
    table, _ = corpus_table(spec.corpus)
    texts = table["text"].iloc[everything]
    assert texts.is_unique


def test_labels_follow_the_corpus_attributes():
    table, _ = corpus_table("vader")
    rows, labels = task_rows("vader-nyt-polarity", "all")
    scores = table["score"].to_numpy()[rows]
    assert np.all(scores[labels == 0] < 0) and np.all(scores[labels == 1] > 0)
    assert set(table["source"].iloc[rows]) == {"nyt"}
    # Intensity: every strong text is more intense than every mild one of the same pool.
    rows, labels = task_rows("vader-tweets-positive-intensity", "all")
    magnitude = np.abs(table["score"].to_numpy()[rows])
    assert magnitude[labels == 1].min() > magnitude[labels == 0].max()
    assert np.all(table["score"].to_numpy()[rows] > 0)
    debates, _ = corpus_table("debates")
    rows, labels = task_rows("debates-party", "all")
    speakers = debates["speaker"].to_numpy()[rows]
    assert set(speakers[labels == 0]) == {"CLINTON", "KAINE"}
    assert set(speakers[labels == 1]) == {"PENCE", "TRUMP"}


def test_tasks_sharing_a_class_pool_share_its_training_texts():
    # Keys do not depend on the task, so one pool gives one training prefix (what lets one pass serve all).
    a = task_split("vader-movie-polarity")
    b = task_split("vader-polarity")  # same classes over all sources: different pools
    c = task_split("vader-movie-strong-polarity")
    assert not np.array_equal(a.train[0], b.train[0])
    d = task_split("debates-clinton-kaine")
    e = task_split("debates-clinton-trump")
    np.testing.assert_array_equal(d.train[0], e.train[0])  # the same CLINTON pool
    assert len(np.intersect1d(a.train[0], c.train[0])) > 0


def test_resplits_reuse_the_selection_at_the_same_sizes():
    table, _ = corpus_table("rotten-tomatoes")
    ts = task_split("rt-3way")
    for r in (1, 2):
        train, test = ts.resplit(table["text"].tolist(), r)
        for c in range(3):
            assert len(train[c]) == len(ts.train[c]) and len(test[c]) == len(ts.test[c])
            selection = np.sort(np.concatenate([ts.train[c], ts.test[c]]))
            np.testing.assert_array_equal(np.sort(np.concatenate([train[c], test[c]])), selection)
        assert not np.array_equal(np.sort(train[0]), np.sort(ts.train[0]))


def test_task_loads_as_a_dataset_and_is_deterministic():
    ds = load_text_dataset("task:rt-fresh-plot", "train")
    again = load_text_dataset("task:rt-fresh-plot", "train")
    assert ds.texts == again.texts and np.array_equal(ds.labels, again.labels)
    assert len(ds) == N_TRAIN and ds.class_counts().tolist() == [N_TRAIN // 2] * 2
    assert ds.class_names == ["fresh", "plot"]
    assert ds.info["parent"] == "rotten-tomatoes"
    test = load_text_dataset("task:rt-fresh-plot", "test")
    assert not set(test.texts) & set(ds.texts)


def test_unknown_task_names_the_fix():
    with pytest.raises(PerceptAlignError, match=r"Did you mean|--tasks"):
        load_text_dataset("task:vader-movie-polarty")
    with pytest.raises(PerceptAlignError, match="fixed text/label columns"):
        load_text_dataset("task:rt-3way", text_column="x")
