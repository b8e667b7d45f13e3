"""Tokenized train/eval texts and the seeded, length-aware mini-batch order shared by every training job."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.datasets import TextDataset, load_text_dataset, stratified_split
from perceptalign.ntps.models import (
    LoadedModel,
    pad_batch,
    token_budget_batches,
    tokenize,
)

#: Published split seed, reused for the held-out fraction of a dataset that has a single split.
EVAL_SPLIT_SEED = 42


@dataclass
class EncodedTexts:
    """Tokenised texts with labels, padded on the tokenizer's side on demand."""

    token_ids: list[list[int]]
    labels: torch.Tensor
    pad_id: int
    padding_side: str

    def __len__(self) -> int:
        return len(self.token_ids)

    @classmethod
    def from_dataset(cls, loaded: LoadedModel, dataset: TextDataset, max_length: int) -> EncodedTexts:
        return cls(
            token_ids=tokenize(loaded, dataset.texts, max_length),
            labels=torch.as_tensor(dataset.labels, dtype=torch.long),
            pad_id=int(loaded.tokenizer.pad_token_id),
            padding_side=loaded.padding_side,
        )

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        input_ids, mask = pad_batch([self.token_ids[i] for i in indices], self.pad_id, self.padding_side)
        return input_ids, mask, self.labels[list(indices)]

    def eval_batches(self, token_budget: int) -> list[list[int]]:
        return token_budget_batches([len(x) for x in self.token_ids], token_budget)


class Batches(Protocol):
    """What the training loop needs from a data set: its size, padded batches and eval batches."""

    def __len__(self) -> int: ...

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def eval_batches(self, token_budget: int) -> list[list[int]]: ...


class BatchSampler:
    """Seeded mini-batches: a fresh permutation per epoch, consumed ``batch_size`` indices at a time.

    Every run of one comparison builds its own sampler with the same seed, so LoRA, the linear head and
    the scratch model see exactly the same sequence of batches. ``epoch_aligned`` keeps batches within one
    epoch, its last batch shorter (a shuffled ``DataLoader`` without ``drop_last``, as the paper's
    epoch-counted linear baseline); otherwise a batch may straddle two epochs.
    """

    def __init__(self, n: int, batch_size: int, seed: int, *, epoch_aligned: bool = False) -> None:
        if n < 1:
            raise PerceptAlignError("the training set is empty; check the split and `max_samples`.")
        self.n, self.batch_size = n, batch_size
        self.epoch_aligned = epoch_aligned
        self._generator = torch.Generator().manual_seed(seed)
        self._order: list[int] = []

    def next(self) -> list[int]:
        if self.epoch_aligned:
            if not self._order:
                self._order = torch.randperm(self.n, generator=self._generator).tolist()
            batch, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
            return batch
        while len(self._order) < self.batch_size:
            self._order.extend(torch.randperm(self.n, generator=self._generator).tolist())
        batch, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        return batch


def load_train_eval(
    dataset: str,
    *,
    split: str = "train",
    eval_split: str = "test",
    eval_fraction: float = 0.3,
    max_samples: int | None = None,
    max_eval_samples: int | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    seed: int = 0,
) -> tuple[TextDataset, TextDataset, str]:
    """Training and held-out sets, plus a description of where the held-out set came from.

    The eval split is used when the dataset has one with other content; otherwise (no such split, or a
    local file without a ``split`` column, which loads whole under any split name) a stratified
    ``eval_fraction`` of the training split is held out by the content-hash split (seed 42), so the same
    text never lands on both sides.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise PerceptAlignError(f"`eval_fraction` must lie in (0, 1) (got {eval_fraction!r}).")
    columns = {"text_column": text_column, "label_column": label_column}
    train = load_text_dataset(dataset, split, **columns)
    held_out: TextDataset | None = None
    reason = ""
    if eval_split != split:
        try:
            held_out = load_text_dataset(dataset, eval_split, **columns)
        except PerceptAlignError as exc:
            reason = f" (split {eval_split!r} unavailable: {str(exc)[:160]})"
        if held_out is not None and _content_digest(held_out) == _content_digest(train):
            held_out, reason = None, f" (split {eval_split!r} has the same rows as {split!r})"
        if held_out is not None and held_out.class_names != train.class_names:
            raise PerceptAlignError(
                f"splits {split!r} and {eval_split!r} of {dataset!r} have different class lists "
                f"({train.class_names} vs {held_out.class_names}); pick splits of one labelling."
            )
    if held_out is None:
        is_eval = stratified_split(
            train.texts, train.labels, test_fraction=eval_fraction, seed=EVAL_SPLIT_SEED
        )
        if is_eval.all() or not is_eval.any():
            raise PerceptAlignError(
                f"cannot hold out {eval_fraction:.0%} of {len(train)} texts; use a dataset with a test split "
                "or more rows."
            )
        held_out = train.select(np.flatnonzero(is_eval))
        held_out.split = f"{split}[held-out {eval_fraction:g}]"
        train = train.select(np.flatnonzero(~is_eval))
        train.split = f"{split}[rest]"
        source = f"stratified {eval_fraction:g} of {split!r} by content hash (seed {EVAL_SPLIT_SEED}){reason}"
    else:
        source = f"split {eval_split!r}"
    train = train.subset(max_samples, seed=seed)
    held_out = held_out.subset(max_eval_samples, seed=seed)
    return train, held_out, source


def _content_digest(ds: TextDataset) -> str:
    digest = hashlib.sha256()
    for text, label in zip(ds.texts, ds.labels.tolist(), strict=True):
        digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()
