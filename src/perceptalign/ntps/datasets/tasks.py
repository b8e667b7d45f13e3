"""The task factory: 66 balanced classification tasks carved from the offline corpora, all at one N.

Why tasks: a study that correlates NTPS with what it should predict replicates over *tasks*, not rows; six
datasets give a one-sided Spearman test power .24 at ρ = .5. Why one N: where N ≲ d, NTPS rises with the
number of training texts (ρ = .97 with N over 29 carved tasks), so tasks of different sizes would be
ranked by their size. Every task therefore trains on exactly :data:`N_TRAIN` texts, split equally over its
classes, and tests on up to :data:`MAX_TEST_PER_CLASS` texts per class (the same number for every class).

Splits are deterministic and content-keyed: within each class, texts are ordered by
sha256(``task-split``, r, text); the canonical split (r = 0) takes the first ``N_TRAIN / C`` texts of each
class for training and the next ``t`` for testing (t = min(smallest class − N_TRAIN / C, 500)). The keys do
not depend on the task, so tasks that share a class pool share training texts, which lets one pass over
the union of texts give every task's statistics (:mod:`perceptalign.ntps.statistics.grouped`).
Resplits r = 1 … 4 reorder the same canonical selection (train ∪ test) and split it again at the same
sizes, for the probe target averaged over resplits.

A task is used wherever a dataset is: ``--dataset task:<name>`` (splits ``train``, ``test``, ``all``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import combinations

import numpy as np
import pandas as pd

from perceptalign.io import PerceptAlignError

from .core import TextDataset
from .corpora import CORPORA, corpus_table

#: Training texts of every task (all classes together): fixed so that NTPS is compared at one N.
N_TRAIN = 240
#: Most test texts per class (the same count for every class of a task).
MAX_TEST_PER_CLASS = 500
#: Fewest test texts per class a task may have.
MIN_TEST_PER_CLASS = 30
#: Canonical split (0) and the resplits used to average the probe target.
RESPLITS = (0, 1, 2, 3, 4)
TASK_PREFIX = "task:"

Selector = Callable[[pd.DataFrame], "pd.Series[bool]"]


@dataclass(frozen=True)
class TaskSpec:
    """One carved task: its parent corpus, and for each class the rows of that corpus it holds."""

    name: str
    parent: str  # the cluster a task belongs to (tasks of one parent share texts and are not independent)
    corpus: str
    description: str
    classes: tuple[tuple[str, Selector], ...]

    @property
    def class_names(self) -> list[str]:
        return [name for name, _ in self.classes]

    @property
    def n_train_per_class(self) -> int:
        return N_TRAIN // len(self.classes)


def _eq(column: str, *values: str) -> Selector:
    return lambda t: t[column].isin(values)


def _vader_half(source: str | None, polarity: str | None, strong: bool) -> Selector:
    """Strong (|score| above the median) or mild (at or below) texts of a source, optionally of one polarity.

    The median is taken over the rows the selector ranges over (the source, or the source × polarity), so
    "strong" means the top half of that pool's intensity.
    """

    def select(t: pd.DataFrame) -> pd.Series:
        pool = t["polarity"] != "neutral"
        if source is not None:
            pool &= t["source"] == source
        if polarity is not None:
            pool &= t["polarity"] == polarity
        magnitude = t["score"].abs()
        median = float(magnitude[pool].median())
        return pool & ((magnitude > median) if strong else (magnitude <= median))

    return select


def _vader_polarity(polarity: str, source: str | None = None) -> Selector:
    def select(t: pd.DataFrame) -> pd.Series:
        rows = t["polarity"] == polarity
        return rows & (t["source"] == source) if source is not None else rows

    return select


def _vader_source(source: str, polarity: str | None = None) -> Selector:
    def select(t: pd.DataFrame) -> pd.Series:
        rows = (t["source"] == source) & (t["polarity"] != "neutral")
        return rows & (t["polarity"] == polarity) if polarity is not None else rows

    return select


def _both(first: Selector, second: Selector) -> Selector:
    return lambda t: first(t) & second(t)


_SOURCES = ("movie", "tweets", "amazon", "nyt")
_CANDIDATES = ("CLINTON", "KAINE", "PENCE", "TRUMP")
_MODERATORS = ("COOPER", "HOLT", "QUIJANO", "RADDATZ", "WALLACE")
_CHATTERBOT_PAIR_TOPICS = ("ai", "coding", "emotion", "trivia")  # ≥ 150 texts: 120 train + ≥ 30 test
_CHATTERBOT_MANY_TOPICS = ("ai", "coding", "conversations", "emotion", "psychology", "trivia")


def _task_specs() -> list[TaskSpec]:
    specs: list[TaskSpec] = []

    def add(name: str, parent: str, corpus: str, description: str, *classes: tuple[str, Selector]) -> None:
        specs.append(TaskSpec(name, parent, corpus, description, tuple(classes)))

    for s in _SOURCES:
        parent = f"vader-{s}"
        add(
            f"vader-{s}-polarity",
            parent,
            "vader",
            f"VADER {s}: negative vs positive valence",
            ("negative", _vader_polarity("negative", s)),
            ("positive", _vader_polarity("positive", s)),
        )
        add(
            f"vader-{s}-intensity",
            parent,
            "vader",
            f"VADER {s}: mild vs strong |valence| (median split)",
            ("mild", _vader_half(s, None, False)),
            ("strong", _vader_half(s, None, True)),
        )
        for pol in ("negative", "positive"):
            add(
                f"vader-{s}-{pol}-intensity",
                parent,
                "vader",
                f"VADER {s}, {pol} texts: mild vs strong |valence| (median split within {pol})",
                ("mild", _vader_half(s, pol, False)),
                ("strong", _vader_half(s, pol, True)),
            )
        for strong, word in ((True, "strong"), (False, "mild")):
            half = _vader_half(s, None, strong)
            add(
                f"vader-{s}-{word}-polarity",
                parent,
                "vader",
                f"VADER {s}, {word} texts (median split of |valence|): negative vs positive",
                ("negative", _both(half, _vader_polarity("negative"))),
                ("positive", _both(half, _vader_polarity("positive"))),
            )
    add(
        "vader-polarity",
        "vader-cross",
        "vader",
        "VADER, all four sources pooled: negative vs positive",
        ("negative", _vader_polarity("negative")),
        ("positive", _vader_polarity("positive")),
    )
    add(
        "vader-domain",
        "vader-cross",
        "vader",
        "VADER: which source a snippet comes from (4-way)",
        *((s, _vader_source(s)) for s in _SOURCES),
    )
    for a, b in combinations(_SOURCES, 2):
        add(
            f"vader-domain-{a}-{b}",
            "vader-cross",
            "vader",
            f"VADER: {a} vs {b} snippets",
            (a, _vader_source(a)),
            (b, _vader_source(b)),
        )
        for pol in ("negative", "positive"):
            add(
                f"vader-{pol}-domain-{a}-{b}",
                "vader-cross",
                "vader",
                f"VADER {pol} snippets: {a} vs {b}",
                (a, _vader_source(a, pol)),
                (b, _vader_source(b, pol)),
            )

    rt = "rotten-tomatoes"
    for a, b in (("fresh", "rotten"), ("fresh", "plot"), ("plot", "rotten")):
        add(
            f"rt-{a}-{b}",
            rt,
            rt,
            f"Rotten Tomatoes: {a} vs {b}",
            (a, _eq("category", a)),
            (b, _eq("category", b)),
        )
    add(
        "rt-3way",
        rt,
        rt,
        "Rotten Tomatoes: fresh / plot / rotten",
        *((c, _eq("category", c)) for c in ("fresh", "plot", "rotten")),
    )

    add(
        "debates-party",
        "debates",
        "debates",
        "2016 debates, candidates only: Democratic vs Republican",
        ("Democratic", _eq("speaker", "CLINTON", "KAINE")),
        ("Republican", _eq("speaker", "PENCE", "TRUMP")),
    )
    for a, b in combinations(_CANDIDATES, 2):
        add(
            f"debates-{a.lower()}-{b.lower()}",
            "debates",
            "debates",
            f"2016 debates: {a} vs {b}",
            (a.lower(), _eq("speaker", a)),
            (b.lower(), _eq("speaker", b)),
        )
    add(
        "debates-candidate-moderator",
        "debates",
        "debates",
        "2016 debates: candidate vs moderator statements",
        ("candidate", _eq("speaker", *_CANDIDATES)),
        ("moderator", _eq("speaker", *_MODERATORS)),
    )
    add(
        "debates-running-mates",
        "debates",
        "debates",
        "2016 debates: presidential (Clinton, Trump) vs vice-presidential (Kaine, Pence) candidates",
        ("presidential", _eq("speaker", "CLINTON", "TRUMP")),
        ("vice-presidential", _eq("speaker", "KAINE", "PENCE")),
    )

    for a, b in combinations(_CHATTERBOT_PAIR_TOPICS, 2):
        add(
            f"chatterbot-{a}-{b}",
            "chatterbot",
            "chatterbot",
            f"ChatterBot statements: topic {a} vs {b}",
            (a, _eq("topic", a)),
            (b, _eq("topic", b)),
        )
    add(
        "chatterbot-6way",
        "chatterbot",
        "chatterbot",
        "ChatterBot statements: 6 topics",
        *((c, _eq("topic", c)) for c in _CHATTERBOT_MANY_TOPICS),
    )

    add(
        "guardian-pandemic",
        "guardian",
        "guardian",
        "Guardian headlines 2020: January–February vs April–July (before vs during the first COVID wave)",
        ("before", _eq("month", "2020-01", "2020-02")),
        ("during", _eq("month", "2020-04", "2020-05", "2020-06", "2020-07")),
    )
    add(
        "guardian-month",
        "guardian",
        "guardian",
        "Guardian headlines 2020: month, January to June (6-way)",
        *((m, _eq("month", m)) for m in ("2020-01", "2020-02", "2020-03", "2020-04", "2020-05", "2020-06")),
    )
    return specs


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _task_specs()}


def split_key(text: str, resplit: int) -> str:
    """The content key that orders texts within a class for split ``resplit`` (task-independent)."""
    return hashlib.sha256(f"task-split\x00{resplit}\x00{text}".encode()).hexdigest()


@dataclass(frozen=True)
class TaskSplit:
    """Row indices into the corpus table: per class, canonical train and test rows in key order."""

    spec: TaskSpec
    train: tuple[np.ndarray, ...]  # one array per class
    test: tuple[np.ndarray, ...]

    @property
    def n_test_per_class(self) -> int:
        return len(self.test[0])

    def resplit(self, texts: Sequence[str], r: int) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """Train/test rows of resplit ``r``: the canonical selection of each class reordered and cut again."""
        if r == 0:
            return self.train, self.test
        m = self.spec.n_train_per_class
        trains, tests = [], []
        for tr, te in zip(self.train, self.test, strict=True):
            pool = np.concatenate([tr, te])
            order = np.argsort([split_key(texts[i], r) for i in pool], kind="stable")
            trains.append(pool[order[:m]])
            tests.append(pool[order[m:]])
        return tuple(trains), tuple(tests)


def _class_rows(spec: TaskSpec, table: pd.DataFrame) -> list[np.ndarray]:
    rows = []
    taken = np.zeros(len(table), dtype=bool)
    for name, select in spec.classes:
        mask = np.asarray(select(table), dtype=bool)
        if (mask & taken).any():
            raise PerceptAlignError(f"task {spec.name!r}: class {name!r} overlaps another class.")
        taken |= mask
        rows.append(np.flatnonzero(mask))
    return rows


@cache
def task_split(name: str) -> TaskSplit:
    """The canonical split of a task (computed once per process; it depends only on the corpus)."""
    spec = get_task(name)
    table, _ = corpus_table(spec.corpus)
    texts = table["text"].tolist()
    pools = _class_rows(spec, table)
    m = spec.n_train_per_class
    n_test = min(min(len(p) for p in pools) - m, MAX_TEST_PER_CLASS)
    if n_test < MIN_TEST_PER_CLASS:
        sizes = {c: len(p) for c, p in zip(spec.class_names, pools, strict=True)}
        raise PerceptAlignError(
            f"task {name!r} has too few texts: class sizes {sizes}, but each class needs {m} training and "
            f"{MIN_TEST_PER_CLASS} test texts."
        )
    train, test = [], []
    for pool in pools:
        order = pool[np.argsort([split_key(texts[i], 0) for i in pool], kind="stable")]
        train.append(order[:m])
        test.append(order[m : m + n_test])
    return TaskSplit(spec, tuple(train), tuple(test))


def get_task(name: str) -> TaskSpec:
    bare = name.removeprefix(TASK_PREFIX)
    if bare not in TASKS:
        import difflib

        close = difflib.get_close_matches(bare, list(TASKS), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(TASK_PREFIX + c) for c in close)}?" if close else ""
        raise PerceptAlignError(
            f"unknown task {name!r}.{hint} List the tasks with `perceptalign ntps datasets --tasks`."
        )
    return TASKS[bare]


def task_rows(name: str, split: str, resplit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Corpus row indices and labels of a task's split (classes in order, key order within a class)."""
    spec = get_task(name)
    ts = task_split(spec.name)
    if resplit == 0:
        train, test = ts.train, ts.test
    else:
        table, _ = corpus_table(spec.corpus)
        train, test = ts.resplit(table["text"].tolist(), resplit)
    parts = {"train": [train], "test": [test], "all": [train, test]}
    if split not in parts:
        raise PerceptAlignError(f"unknown split {split!r} for task {name!r}: choose train, test or all.")
    rows, labels = [], []
    for group in parts[split]:
        for c, r in enumerate(group):
            rows.append(r)
            labels.append(np.full(len(r), c, dtype=np.int64))
    return np.concatenate(rows), np.concatenate(labels)


def load_task(name: str, split: str = "train") -> TextDataset:
    """One split of a carved task as a :class:`TextDataset` (the canonical split)."""
    spec = get_task(name)
    table, meta = corpus_table(spec.corpus)
    rows, labels = task_rows(spec.name, split)
    ts = task_split(spec.name)
    return TextDataset(
        name=TASK_PREFIX + spec.name,
        split=split,
        texts=table["text"].iloc[rows].tolist(),
        labels=labels,
        class_names=spec.class_names,
        source=f"task {spec.name} of corpus {spec.corpus}: {meta['source']}",
        info={
            "task": spec.name,
            "parent": spec.parent,
            "corpus": spec.corpus,
            "n_train": N_TRAIN,
            "n_test_per_class": ts.n_test_per_class,
            "split_rule": "per class in sha256('task-split', 0, text) order: N_TRAIN/C train, next t test",
        },
    )


def list_tasks() -> pd.DataFrame:
    """Every task with its parent, classes and sizes (builds the corpora on first use)."""
    records = []
    for spec in TASKS.values():
        ts = task_split(spec.name)
        records.append(
            {
                "name": TASK_PREFIX + spec.name,
                "parent": spec.parent,
                "classes": len(spec.classes),
                "n_train": N_TRAIN,
                "n_test": ts.n_test_per_class * len(spec.classes),
                "description": spec.description,
            }
        )
    return pd.DataFrame.from_records(records)


__all__ = [
    "CORPORA",
    "MAX_TEST_PER_CLASS",
    "N_TRAIN",
    "RESPLITS",
    "TASKS",
    "TASK_PREFIX",
    "TaskSpec",
    "TaskSplit",
    "get_task",
    "list_tasks",
    "load_task",
    "split_key",
    "task_rows",
    "task_split",
]
