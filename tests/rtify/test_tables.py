"""perceptalign.tables.read_table: delimited text tables are read right, or refused with the reason."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from perceptalign.io import PerceptAlignError
from perceptalign.tables import read_table

CLEAN = "condition,rt_s,correct\n6.4,0.5,1\n51.2,0.4,0\n"


def _file(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def test_clean_csv(tmp_path: Path) -> None:
    df = read_table(_file(tmp_path, "t.csv", CLEAN))
    assert list(df.columns) == ["condition", "rt_s", "correct"]
    assert df["rt_s"].tolist() == [0.5, 0.4] and df["condition"].tolist() == [6.4, 51.2]


@pytest.mark.parametrize(("name", "sep"), [("t.csv", "\t"), ("t.csv", ";"), ("t.txt", "\t"), ("t.tsv", "\t")])
def test_delimiter_is_sniffed_from_the_header(tmp_path: Path, name: str, sep: str) -> None:
    df = read_table(_file(tmp_path, name, CLEAN.replace(",", sep)))
    pd.testing.assert_frame_equal(df, read_table(_file(tmp_path, "comma.csv", CLEAN)))


def test_tsv_is_always_tab_separated(tmp_path: Path) -> None:
    # commas inside the values of a .tsv are data, not delimiters
    df = read_table(_file(tmp_path, "t.tsv", "text\tlabel\na, b, c\t1\n"))
    assert df.to_dict("list") == {"text": ["a, b, c"], "label": [1]}


def test_compressed_csv(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(CLEAN.replace(",", "\t").encode()))
    assert read_table(path)["rt_s"].tolist() == [0.5, 0.4]
    zipped = tmp_path / "t.csv.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("t.csv", CLEAN)
    assert read_table(zipped)["rt_s"].tolist() == [0.5, 0.4]
    with zipfile.ZipFile(zipped, "a") as archive:
        archive.writestr("other.csv", CLEAN)
    with pytest.raises(PerceptAlignError, match="holds 2 files; a zipped table must hold exactly one"):
        read_table(zipped)


def test_string_columns_stay_text(tmp_path: Path) -> None:
    path = _file(tmp_path, "t.csv", "id,text,label\n00123,123,1\n00456,4.50,0\n")
    df = read_table(path, string_columns=["id", "text", "not_there"])
    assert df["id"].tolist() == ["00123", "00456"] and df["text"].tolist() == ["123", "4.50"]
    assert df["label"].tolist() == [1, 0]
    assert read_table(path)["id"].tolist() == [123, 456]  # without it pandas reads numbers


def test_utf8_bom_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    df = read_table(_file(tmp_path, "t.csv", b"\xef\xbb\xbf" + CLEAN.encode()))
    assert list(df.columns) == ["condition", "rt_s", "correct"]


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.csv", b"", r"trials file .*empty\.csv is empty: it needs a header row and at least one row"),
        ("blank.csv", b"\n\n", r"is empty: it needs a header row and at least one row"),
        (
            "header.csv",
            b"condition,rt_s,correct\n",
            r"has a header \(condition, rt_s, correct\) but no data rows",
        ),
        (
            "latin1.csv",
            "condition,label\n6.4,café\n".encode("latin-1"),
            r"is not UTF-8: the first invalid byte is at byte 23 \(line 2, bytes e9\)\. Save it as UTF-8 "
            r"\(e\.g\. `iconv -f latin1 -t utf-8",
        ),
        ("utf16.csv", CLEAN.encode("utf-16"), r"is UTF-16 encoded; save it as UTF-8"),
        (
            "ragged.csv",
            b"condition,rt_s,correct\n6.4,0.5,1\n6.4,0.5,1\n6.4,0.5,1,9\n",
            r"line 4 has 4 fields but the header has 3 \(comma-separated\)",
        ),
        (
            "shifted.csv",  # every row one field longer: pandas alone would shift the columns silently
            b"condition,rt_s\n6.4,0.5,1\n51.2,0.4,0\n",
            r"line 2 has 3 fields but the header has 2",
        ),
        ("tabbed.tsv", b"a\tb\n1\t2\t3\n", r"line 2 has 3 fields but the header has 2 \(tab-separated\)"),
        ("quote.csv", b'a,b\n"x,1\n', r"cannot be parsed as a comma-separated table .*every opening \""),
        ("data.xlsx", b"PK\x03\x04", r"cannot read a table from a file with '\.xlsx'"),
        ("noext", b"a,b\n1,2\n", r"cannot read a table from a file with 'no suffix'"),
        ("bad.csv.gz", b"not gzip at all", r"cannot be read \(.*\); check the file and its compression"),
    ],
)
def test_bad_files_raise_a_clear_error(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    path = _file(tmp_path, name, data)
    with pytest.raises(PerceptAlignError, match=message):
        read_table(path, what="trials file")


def test_missing_path_and_folder(tmp_path: Path) -> None:
    with pytest.raises(PerceptAlignError, match=r"table .*nope\.csv does not exist; check the path"):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(PerceptAlignError, match="is a folder; give the path of a table file"):
        read_table(tmp_path)


def test_latin1_offset_beyond_the_first_chunk(tmp_path: Path) -> None:
    """The byte offset is counted over the whole file, across the 1 MiB reading chunks, and a valid
    two-byte character split by a chunk boundary is not mistaken for the bad byte."""
    head = "id,text\n0,"
    filler = "a" * ((1 << 20) - 1 - len(head))  # "é" starts on the last byte of the first chunk
    data = (head + filler + "é\n").encode("utf-8") + b"1,caf\xe9\n"
    assert data[(1 << 20) - 1 : (1 << 20) + 1] == "é".encode()
    path = _file(tmp_path, "big.csv", data)
    with pytest.raises(PerceptAlignError, match=rf"at byte {len(data) - 2} \(line 3, bytes e9\)"):
        read_table(path)
