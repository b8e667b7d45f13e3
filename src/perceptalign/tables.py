"""Reading delimited text tables (.csv / .tsv, optionally compressed) with one clear error per bad file.

Every toolkit path that reads a user's table goes through :func:`read_table`, so an empty file, a file
that is not UTF-8, a row with extra fields or a tab-separated file named ``.csv`` ends in a
:class:`~perceptalign.io.PerceptAlignError` that names the problem and the fix, never in a pandas
traceback or a silently misread table.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import os
import re
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

import pandas as pd

from perceptalign.io import PerceptAlignError

__all__ = ["TABLE_SUFFIXES", "read_table"]

#: Suffixes of the delimited text formats :func:`read_table` reads (before an optional compression suffix).
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".tab")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zip", ".zst")
#: Delimiters recognised in the header line of a .csv/.txt/.tab file, in order of preference on a tie.
_SNIFFED = (",", "\t", ";")
_DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon"}
_FIELDS_MESSAGE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _split_suffix(path: Path) -> tuple[str, str]:
    """(table suffix, compression suffix or '') of ``path``, lower-cased."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes[-1] if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES else ""
    rest = suffixes[:-1] if compression else suffixes
    return (rest[-1] if rest else ""), compression


@contextmanager
def _open_bytes(path: Path, compression: str) -> Iterator[IO[bytes]]:
    """The file's (decompressed) bytes as a binary stream."""
    with ExitStack() as stack:
        if compression == ".gz":
            yield stack.enter_context(gzip.open(path, "rb"))
        elif compression == ".bz2":
            yield stack.enter_context(bz2.open(path, "rb"))
        elif compression == ".xz":
            yield stack.enter_context(lzma.open(path, "rb"))
        elif compression == ".zip":
            archive = stack.enter_context(zipfile.ZipFile(path))
            members = [m for m in archive.namelist() if not m.endswith("/")]
            if len(members) != 1:
                raise PerceptAlignError(
                    f"{path} holds {len(members)} files; a zipped table must hold exactly one file."
                )
            yield stack.enter_context(archive.open(members[0]))
        elif compression == ".zst":
            try:
                import zstandard
            except ImportError as exc:
                raise PerceptAlignError(
                    f"{path} is zstd-compressed and the zstandard package is not installed; install it "
                    "(pip install zstandard) or decompress the file (unzstd)."
                ) from exc
            raw = stack.enter_context(open(path, "rb"))
            yield stack.enter_context(zstandard.ZstdDecompressor().stream_reader(raw))
        else:
            yield stack.enter_context(open(path, "rb"))


def _header_line(path: Path, compression: str) -> bytes:
    with _open_bytes(path, compression) as stream:
        return stream.readline(1 << 20)


def _sniff_delimiter(header: bytes) -> str:
    """The delimiter (comma, tab or semicolon) that occurs most often in the header line; comma if none."""
    counts = {d: header.count(d.encode()) for d in _SNIFFED}
    best = max(_SNIFFED, key=lambda d: counts[d])  # max keeps the first of equal counts: comma wins ties
    return best if counts[best] else ","


def _first_bad_utf8(path: Path, compression: str) -> tuple[int, int, bytes]:
    """(byte offset, line number, offending bytes) of the first byte sequence that is not UTF-8."""
    offset, line, pending = 0, 1, b""
    with _open_bytes(path, compression) as stream:
        while True:
            chunk = stream.read(1 << 20)
            data = pending + chunk
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                if chunk and exc.reason == "unexpected end of data":
                    # a multi-byte character split by the chunk boundary: decode it with the next chunk
                    line += data.count(b"\n", 0, exc.start)
                    offset += exc.start
                    pending = data[exc.start :]
                    continue
                return offset + exc.start, line + data.count(b"\n", 0, exc.start), data[exc.start : exc.end]
            if not chunk:
                return -1, -1, b""
            line += data.count(b"\n")
            offset += len(data)
            pending = b""


def _first_long_row(path: Path, compression: str, sep: str, n_fields: int) -> tuple[int, int] | None:
    """(line number, number of fields) of the first row with more than ``n_fields`` fields, if any."""
    with _open_bytes(path, compression) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        reader = csv.reader(text, delimiter=sep)
        for row in reader:
            if len(row) > n_fields:
                return reader.line_num, len(row)
    return None


def read_table(
    path: str | os.PathLike[str], *, what: str = "table", string_columns: Sequence[str] = ()
) -> pd.DataFrame:
    """Read a delimited UTF-8 text table (.csv, .tsv, .txt, .tab; optionally .gz/.bz2/.xz/.zip/.zst).

    ``.tsv`` files are tab-separated; for the other suffixes the delimiter (comma, tab or semicolon) is
    the one that occurs most often in the header line, so a tab-separated file named ``.csv`` is read
    correctly. Columns named in ``string_columns`` are read as text (``"0123"`` stays ``"0123"``).
    ``what`` describes the file in messages (e.g. ``"trials file"``).

    Raises :class:`PerceptAlignError` for a missing file or folder, an unsupported suffix, an empty
    file, a file that is not UTF-8 (naming the byte offset; encodings are never guessed), a row with
    more fields than the header (naming the line), unbalanced quotes, and a header without data rows.
    """
    path = Path(path)
    label = f"{what} {path}"
    if path.is_dir():
        raise PerceptAlignError(f"{label} is a folder; give the path of a table file (.csv or .tsv).")
    if not path.is_file():
        raise PerceptAlignError(f"{label} does not exist; check the path.")
    suffix, compression = _split_suffix(path)
    if suffix not in TABLE_SUFFIXES:
        shown = suffix or "no suffix"
        raise PerceptAlignError(
            f"{label}: cannot read a table from a file with {shown!r}; save it as UTF-8 text, comma- or "
            f"tab-separated, with one of the suffixes {', '.join(TABLE_SUFFIXES)}."
        )
    try:
        header = _header_line(path, compression)
    except (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError) as exc:
        raise PerceptAlignError(
            f"{label} cannot be read ({exc}); check the file and its compression."
        ) from exc
    if header.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise PerceptAlignError(
            f"{label} is UTF-16 encoded; save it as UTF-8 (e.g. `iconv -f utf-16 -t utf-8`, or 'CSV UTF-8' "
            "in a spreadsheet program)."
        )
    sep = "\t" if suffix == ".tsv" else _sniff_delimiter(header)
    dtype = dict.fromkeys(string_columns, str)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            # index_col=False: a row with one field more than the header must not turn the first column
            # into the index (pandas' default) and shift every value into the wrong column.
            df = pd.read_csv(
                path, sep=sep, encoding="utf-8-sig", dtype=dtype or None, index_col=False, compression="infer"
            )
    except pd.errors.EmptyDataError as exc:
        raise PerceptAlignError(f"{label} is empty: it needs a header row and at least one row.") from exc
    except UnicodeDecodeError as exc:
        offset, line, bad = _first_bad_utf8(path, compression)
        where = f"byte {offset} (line {line}, bytes {bad.hex(' ')})" if offset >= 0 else "somewhere"
        raise PerceptAlignError(
            f"{label} is not UTF-8: the first invalid byte is at {where}. Save it as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv` for a Latin-1 file, or 'CSV UTF-8' in a "
            "spreadsheet program); the encoding is not guessed."
        ) from exc
    except pd.errors.ParserError as exc:
        raise _parser_error(label, path, compression, sep, str(exc)) from exc
    except (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError, ValueError) as exc:
        raise PerceptAlignError(f"{label} cannot be read as a table ({exc}).") from exc
    if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
        raise _parser_error(label, path, compression, sep, "")
    if len(df) == 0:
        raise PerceptAlignError(
            f"{label} has a header ({', '.join(map(str, df.columns))}) but no data rows; add at least one "
            "row."
        )
    return df


def _parser_error(label: str, path: Path, compression: str, sep: str, detail: str) -> PerceptAlignError:
    name = _DELIMITER_NAMES.get(sep, repr(sep))
    header = _header_line(path, compression).decode("utf-8-sig", errors="replace").rstrip("\r\n")
    n_fields = len(next(csv.reader([header], delimiter=sep), []))
    long_row = _first_long_row(path, compression, sep, n_fields)
    match = _FIELDS_MESSAGE.search(detail)
    if long_row is None and match:
        long_row = int(match.group(2)), int(match.group(3))
    if long_row is not None:
        line, seen = long_row
        return PerceptAlignError(
            f"{label}: line {line} has {seen} fields but the header has {n_fields} ({name}-separated). "
            f"Remove the extra field(s), or quote values that contain a {name}."
        )
    return PerceptAlignError(
        f"{label} cannot be parsed as a {name}-separated table ({detail.strip() or 'malformed rows'}). "
        'Check the quoting: every opening " needs a closing one.'
    )
