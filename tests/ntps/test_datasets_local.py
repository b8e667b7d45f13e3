"""Local table files: formats, the optional split column, label encoding over the whole file, errors."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.datasets import load_text_dataset

ROWS = pd.DataFrame(
    {
        "text": ["a fine film", "a dull film", "an odd film", "123", "a great film", "a bad film"],
        "label": ["pos", "neg", "odd", "pos", "pos", "neg"],
        "split": ["train", "train", "train", "train", "test", "test"],
    }
)


def write(frame: pd.DataFrame, path) -> str:
    name = str(path)
    if name.endswith(".csv"):
        frame.to_csv(path, index=False)
    elif name.endswith(".tsv"):
        frame.to_csv(path, index=False, sep="\t")
    elif name.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True)
    elif name.endswith(".json"):
        frame.to_json(path, orient="records")
    elif name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    return name


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_split_column_selects_rows_and_classes_span_the_file(tmp_path, suffix):
    path = write(ROWS, tmp_path / f"reviews{suffix}")
    test = load_text_dataset(path, "test")
    train = load_text_dataset(path, "train")
    # "odd" occurs only in train, yet the test split has the same 3-class label space.
    assert test.class_names == train.class_names == ["neg", "odd", "pos"]
    assert test.texts == ["a great film", "a bad film"] and test.labels.tolist() == [2, 0]
    assert train.texts[3] == "123"  # a numeric-looking text stays a string
    assert len(load_text_dataset(path, "all")) == 6
    assert test.name == "reviews" and str(tmp_path) in test.source and "sha256" in test.source
    with pytest.raises(PerceptAlignError, match=r"no rows with split 'validation'.*\['test', 'train'\]"):
        load_text_dataset(path, "validation")


def test_file_without_split_column_is_used_whole_under_the_requested_name(tmp_path):
    path = write(ROWS.drop(columns="split"), tmp_path / "all.csv")
    ds = load_text_dataset(path, "test")
    assert len(ds) == 6 and ds.split == "test"


def test_integer_labels_and_custom_columns(tmp_path):
    frame = pd.DataFrame({"sentence": ["x", "y", "z", "w"], "target": [0, 2, 2, 0]})
    path = write(frame, tmp_path / "ints.jsonl")
    ds = load_text_dataset(path, text_column="sentence", label_column="target")
    assert ds.class_names == ["0", "1", "2"] and ds.labels.tolist() == [0, 2, 2, 0]


def test_boolean_labels(tmp_path):
    path = write(
        pd.DataFrame({"text": ["x", "y", "z"], "label": [True, False, True]}), tmp_path / "b.parquet"
    )
    ds = load_text_dataset(path)
    assert ds.class_names == ["False", "True"] and ds.labels.tolist() == [1, 0, 1]


def test_compressed_csv_and_json_lines_fallback(tmp_path):
    gz = tmp_path / "data.csv.gz"
    gz.write_bytes(gzip.compress(ROWS.to_csv(index=False).encode()))
    assert len(load_text_dataset(str(gz), "all")) == 6
    lines = tmp_path / "lines.json"  # JSON Lines content under a .json name
    lines.write_text("\n".join(json.dumps(r) for r in ROWS.to_dict(orient="records")) + "\n")
    assert len(load_text_dataset(str(lines), "all")) == 6


def test_max_samples_subset(tmp_path):
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(100)], "label": ["a"] * 80 + ["b"] * 20})
    path = write(frame, tmp_path / "big.csv")
    sub = load_text_dataset(path, max_samples=10, seed=5)
    assert len(sub) == 10 and sorted(sub.labels.tolist()) == [0] * 8 + [1] * 2
    assert sub.texts == load_text_dataset(path, max_samples=10, seed=5).texts


@pytest.mark.parametrize(
    ("frame", "kwargs", "pattern"),
    [
        (
            ROWS,
            {"text_column": "body"},
            r"no column\(s\) \['body'\]; available columns: \['text', 'label', 'split'\]",
        ),
        (ROWS.assign(label="pos"), {}, "at least 2 classes"),
        (
            ROWS.assign(text=["ok", "", "ok2", "  ", "x", "y"]),
            {"split": "all"},
            r"2 row\(s\), first at index 1, 3",
        ),
        (ROWS.assign(label=["pos", None, "neg", "pos", "neg", "pos"]), {}, r"missing \(NaN/None\) at 1 row"),
        (pd.DataFrame({"text": list("abc"), "label": [0, -1, 1]}), {}, "negative"),
        (pd.DataFrame({"text": list("abc"), "label": [0.0, 1.5, 1.0]}), {}, "fractional"),
        (pd.DataFrame({"text": list("abc"), "label": [0.0, float("nan"), 1.0]}), {}, "NaN at 1 row"),
        (pd.DataFrame({"text": list("abc"), "label": [1, "x", 1]}), {}, "mixes types"),
    ],
)
def test_errors_name_the_problem(tmp_path, frame, kwargs, pattern):
    path = tmp_path / ("data.jsonl" if frame is not ROWS and "mixes" in pattern else "data.csv")
    write(frame, path)
    with pytest.raises(PerceptAlignError, match=pattern):
        load_text_dataset(str(path), **kwargs)


def test_missing_text_cell_is_reported(tmp_path):
    path = tmp_path / "holes.csv"
    path.write_text("text,label\nhello,a\n,b\nworld,b\n")
    with pytest.raises(PerceptAlignError, match=r"1 row\(s\), first at index 1 have missing"):
        load_text_dataset(str(path))


def test_missing_file_and_unreadable_file(tmp_path):
    with pytest.raises(PerceptAlignError, match="no such file"):
        load_text_dataset(str(tmp_path / "nope.csv"))
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(PerceptAlignError, match=r"could not read .*bad\.parquet"):
        load_text_dataset(str(bad))
