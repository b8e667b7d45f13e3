"""The LM's own next-token distribution after each text (the "source label" of NCE and LEEP), cached.

NCE and LEEP treat the pretrained model as a classifier over its vocabulary: θ(x) = p(next token | x) at
the last real position of text x. The vocabulary is large (49k–150k), so n × vocab float64 does not fit
for real datasets. Kept here: the top-``top_k`` probabilities of each row, RENORMALISED to sum to 1, as a
``scipy.sparse.csr_matrix`` (float32); ``retained_mass`` records how much probability the truncation
dropped (LEEP on the truncated rows is an approximation whose error is bounded by that mass; NCE uses
only the argmax, which truncation never changes). ``top_k=None`` keeps the full distribution (as a
sparse matrix with every entry), for small vocabularies or exactness checks.

The full LM is run (with its own output head, so soft-capping or logit scaling of some architectures is
applied), batches are LEFT-padded with position ids from the mask so that the last column is every row's
last real token, and only that column's logits are computed when the model supports ``logits_to_keep``.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch
from safetensors import safe_open

from perceptalign.callbacks import BatchCallback
from perceptalign.io import PerceptAlignError, load_tensors, save_tensors_atomic
from perceptalign.ntps.datasets import TextDataset
from perceptalign.ntps.identity import check_identity, statistics_metadata
from perceptalign.ntps.models import LoadedModel, input_device, pad_batch, token_budget_batches, tokenize

DEFAULT_TOP_K = 256
_META_KEY = "perceptalign_lm_probs"



@dataclass
class NextTokenProbs:
    """Row i: the (renormalised top-k) next-token distribution after text i; plus what was dropped."""

    probs: scipy.sparse.csr_matrix
    retained_mass: np.ndarray  # probability mass of the kept entries before renormalising, per row
    metadata: dict[str, Any]
    reused: bool = False


def _accepts(module: torch.nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.inference_mode()
def last_position_logits(loaded: LoadedModel, token_ids: list[list[int]]) -> torch.Tensor:
    """Logits (B × vocab, float32) of the next token after each sequence, in one padded forward pass."""
    model = loaded.model
    pad_id = int(loaded.tokenizer.pad_token_id)
    input_ids, mask = pad_batch(token_ids, pad_id, "left")
    device = input_device(model)
    input_ids, mask = input_ids.to(device), mask.to(device)
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask, "use_cache": False}
    if _accepts(model, "position_ids"):
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    logits = model(**kwargs).logits
    return logits[:, -1, :].to(torch.float32).cpu()


def next_token_probs(
    loaded: LoadedModel,
    dataset: TextDataset,
    *,
    max_length: int,
    token_budget: int,
    top_k: int | None = DEFAULT_TOP_K,
    on_batch: BatchCallback | None = None,
) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """Top-k renormalised next-token probabilities per text (CSR n × vocab, float32) and the kept mass."""
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) < 1):
        raise PerceptAlignError(
            f"top_k must be a positive integer or None (full distribution), got {top_k!r}."
        )
    token_ids = tokenize(loaded, dataset.texts, max_length)
    batches = token_budget_batches([len(x) for x in token_ids], token_budget)
    n = len(token_ids)
    vocab: int | None = None
    k = 0
    indices: np.ndarray | None = None
    values: np.ndarray | None = None
    mass = np.empty(n, dtype=np.float64)
    for batch in batches:
        logits = last_position_logits(loaded, [token_ids[i] for i in batch])
        if not bool(torch.isfinite(logits).all()):
            raise PerceptAlignError(
                f"the model produced non-finite logits (dtype {loaded.dtype}); rerun with `dtype` float32."
            )
        probs = torch.softmax(logits.to(torch.float64), dim=-1)
        if vocab is None:
            vocab = probs.shape[1]
            k = vocab if top_k is None else min(int(top_k), vocab)
            indices = np.empty((n, k), dtype=np.int64)
            values = np.empty((n, k), dtype=np.float64)
        top = torch.topk(probs, k, dim=-1)
        rows = np.asarray(batch, dtype=np.int64)
        assert indices is not None and values is not None
        indices[rows] = top.indices.numpy()
        values[rows] = top.values.numpy()
        mass[rows] = top.values.sum(dim=-1).numpy()
        if on_batch:
            on_batch(len(batch), sum(len(token_ids[i]) for i in batch))
    assert indices is not None and values is not None and vocab is not None
    values = values / mass[:, None]
    matrix = scipy.sparse.csr_matrix(
        (values.ravel().astype(np.float32), indices.ravel(), np.arange(0, n * k + 1, k)), shape=(n, vocab)
    )
    matrix.sort_indices()
    return matrix, mass


class NextTokenCache:
    """``DIR/lm_probs_{split}.safetensors``: CSR arrays + the identity of model, data and top_k."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, split: str) -> Path:
        return self.directory / f"lm_probs_{split}.safetensors"

    def load_or_compute(
        self,
        loaded: LoadedModel,
        dataset: TextDataset,
        *,
        max_length: int,
        token_budget: int,
        max_samples: int | None = None,
        top_k: int | None = DEFAULT_TOP_K,
        on_batch: BatchCallback | None = None,
        overwrite: bool = False,
    ) -> NextTokenProbs:
        """Reuse a cache made with the same model, data, tokenisation and top_k (a cache of other inputs is
        refused); else — or with ``overwrite`` — compute and save."""
        meta = statistics_metadata(loaded, dataset, [], max_length, max_samples)
        meta.pop("layers")
        meta.update(kind="next_token_probs", top_k=top_k)
        meta = json.loads(json.dumps(meta))
        path = self.path(dataset.split)
        if path.is_file() and not overwrite:
            cached = self._load(path)
            check_identity(cached.metadata, meta, what="the next-token cache", path=path, ignore=())
            return cached
        probs, mass = next_token_probs(
            loaded, dataset, max_length=max_length, token_budget=token_budget, top_k=top_k, on_batch=on_batch
        )
        meta["vocab_size"] = int(probs.shape[1])
        tensors = {
            "data": torch.from_numpy(probs.data.astype(np.float32)),
            "indices": torch.from_numpy(probs.indices.astype(np.int64)),
            "indptr": torch.from_numpy(probs.indptr.astype(np.int64)),
            "retained_mass": torch.from_numpy(mass),
        }
        save_tensors_atomic(path, tensors, metadata={_META_KEY: json.dumps(meta)})
        return NextTokenProbs(probs, mass, meta, reused=False)

    @staticmethod
    def _load(path: Path) -> NextTokenProbs:
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = dict(fh.metadata() or {})
            meta = json.loads(header[_META_KEY])
            t = load_tensors(path)
            shape = (len(t["indptr"]) - 1, int(meta["vocab_size"]))
            probs = scipy.sparse.csr_matrix(
                (t["data"].numpy(), t["indices"].numpy(), t["indptr"].numpy()), shape=shape
            )
        except (KeyError, ValueError, OSError, Exception) as exc:  # safetensors raises its own types
            raise PerceptAlignError(f"{path} is not a readable next-token cache ({exc}); delete it.") from exc
        return NextTokenProbs(probs, t["retained_mass"].numpy().astype(np.float64), meta, reused=True)


__all__ = ["DEFAULT_TOP_K", "NextTokenCache", "NextTokenProbs", "last_position_logits", "next_token_probs"]
