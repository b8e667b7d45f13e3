"""One forward pass over the union of many carved tasks' texts: features of every text, moments of every
task half (:class:`~perceptalign.ntps.statistics.grouped.GroupedStatistics`), saved with their identity.

Each task's training texts are split in two halves (first and second half of each class in key order),
so that split-half reliability comes from the same pass; a task's statistics are the sum of its halves.
The saved pass is reused only when its identity (model fingerprint, layer, tokenisation, the exact texts
and memberships) matches, so a rerun never returns numbers made from other inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perceptalign.io import PerceptAlignError, load_tensors, save_tensors_atomic
from perceptalign.ntps.datasets.corpora import corpus_table
from perceptalign.ntps.datasets.tasks import get_task, task_split
from perceptalign.ntps.features import mean_pool
from perceptalign.ntps.models import LoadedModel, iter_hidden_states, token_budget_batches, tokenize
from perceptalign.ntps.statistics import LayerStatistics
from perceptalign.ntps.statistics.grouped import GroupedStatistics, Membership

PASS_FORMAT = 1
_META_KEY = "perceptalign_task_pass"


@dataclass(frozen=True)
class TaskUniverse:
    """The texts of a set of tasks, each once, and where each task's rows sit among them."""

    tasks: tuple[str, ...]
    texts: tuple[str, ...]
    keys: tuple[tuple[str, int], ...]  # (corpus, row) of each text
    memberships: tuple[tuple[Membership, ...], ...]  # ((task, half), class) per text

    @classmethod
    def build(cls, tasks: Sequence[str]) -> TaskUniverse:
        names = [get_task(t).name for t in tasks]
        if len(set(names)) != len(names):
            raise PerceptAlignError(f"tasks {names} list a task twice.")
        index: dict[tuple[str, int], int] = {}
        texts: list[str] = []
        members: list[list[Membership]] = []

        def slot(corpus: str, row: int, table_texts: list[str]) -> int:
            key = (corpus, int(row))
            if key not in index:
                index[key] = len(texts)
                texts.append(table_texts[int(row)])
                members.append([])
            return index[key]

        for name in names:
            spec = get_task(name)
            table_texts = corpus_table(spec.corpus)[0]["text"].tolist()
            ts = task_split(name)
            for c, rows in enumerate(ts.train):
                half = len(rows) // 2
                for position, row in enumerate(rows):
                    members[slot(spec.corpus, row, table_texts)].append(((name, int(position >= half)), c))
            for rows in ts.test:
                for row in rows:
                    slot(spec.corpus, row, table_texts)
        keys = tuple(sorted(index, key=index.__getitem__))
        return cls(tuple(names), tuple(texts), keys, tuple(tuple(m) for m in members))

    def rows(self, corpus: str, corpus_rows: np.ndarray) -> np.ndarray:
        """Universe indices of corpus rows."""
        lookup = {key: i for i, key in enumerate(self.keys)}
        return np.array([lookup[(corpus, int(r))] for r in corpus_rows], dtype=np.int64)

    def digest(self) -> str:
        """sha256 over the texts and memberships in order (the data part of the pass identity)."""
        h = hashlib.sha256()
        for text, member in zip(self.texts, self.memberships, strict=True):
            for part in (text, json.dumps(sorted([[t, h_, c] for (t, h_), c in member]))):
                data = part.encode("utf-8")
                h.update(len(data).to_bytes(8, "little"))
                h.update(data)
        return h.hexdigest()


@dataclass
class TaskPass:
    """Features (n_texts × d, float32) of the declared layer and the moment sums of every task half."""

    universe: TaskUniverse
    layer: int
    features: np.ndarray
    grouped: GroupedStatistics
    identity: dict[str, Any]

    def statistics(self, task: str, halves: Sequence[int] = (0, 1)) -> LayerStatistics:
        """The moments of a task's training texts (both halves by default)."""
        return self.grouped.finalize(*((task, h) for h in halves))[self.layer]


def pass_identity(loaded: LoadedModel, universe: TaskUniverse, layer: int, max_length: int) -> dict[str, Any]:
    return {
        "format": PASS_FORMAT,
        "model": loaded.model_id,
        "fingerprint": loaded.fingerprint,
        "dtype": loaded.dtype,
        "padding_side": loaded.padding_side,
        "layer": layer,
        "max_length": max_length,
        "n_texts": len(universe.texts),
        "tasks": list(universe.tasks),
        "data_sha256": universe.digest(),
    }


def run_task_pass(
    loaded: LoadedModel,
    universe: TaskUniverse,
    layer: int,
    *,
    max_length: int,
    token_budget: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> TaskPass:
    """Stream every text once: pooled features for all, grouped moments for the training texts."""
    targets = {(name, h): len(get_task(name).classes) for name in universe.tasks for h in (0, 1)}
    grouped = GroupedStatistics([layer], loaded.hidden_size, targets)
    features = np.empty((len(universe.texts), loaded.hidden_size), dtype=np.float32)
    token_ids = tokenize(loaded, universe.texts, max_length)
    batches = token_budget_batches([len(x) for x in token_ids], token_budget)
    for _, batch in iter_hidden_states(loaded, token_ids, batches, [layer]):
        hidden = batch.hidden_states[0]
        pooled = mean_pool(hidden, batch.attention_mask)
        if not bool(torch.isfinite(pooled).all()):
            raise PerceptAlignError(
                f"layer {layer} produced non-finite hidden states (dtype {loaded.dtype}); rerun with float32."
            )
        features[batch.indices] = pooled.to(torch.float32).numpy()
        grouped.update([hidden], batch.attention_mask, [universe.memberships[i] for i in batch.indices])
        if on_batch:
            on_batch(len(batch.indices), batch.n_tokens)
    identity = pass_identity(loaded, universe, layer, max_length)
    return TaskPass(universe, layer, features, grouped, identity)


def save_task_pass(path: Path, result: TaskPass) -> None:
    tensors = {"features": torch.from_numpy(result.features)}
    for target in result.grouped.targets:
        name, half = target
        for key, value in result.grouped.sums(target).items():
            tensors[f"{name}|{half}|{key}"] = value
    save_tensors_atomic(path, tensors, {_META_KEY: json.dumps(result.identity)})


def load_task_pass(
    path: Path, universe: TaskUniverse, identity: dict[str, Any], hidden_size: int
) -> TaskPass | None:
    """The saved pass when its identity equals ``identity``; None when there is none or it differs."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        saved = json.loads((fh.metadata() or {}).get(_META_KEY, "null"))
    if saved != json.loads(json.dumps(identity)):
        return None
    tensors = load_tensors(path)
    layer = int(identity["layer"])
    targets = {(name, h): len(get_task(name).classes) for name in universe.tasks for h in (0, 1)}
    grouped = GroupedStatistics([layer], hidden_size, targets)
    by_target: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key != "features":
            name, half, stat = key.split("|", 2)
            by_target.setdefault((name, int(half)), {})[stat] = value
    for target, sums in by_target.items():
        grouped.add_sums(target, sums)
    return TaskPass(universe, layer, tensors["features"].numpy(), grouped, identity)
