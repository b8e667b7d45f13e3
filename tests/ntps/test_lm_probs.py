"""Next-token distribution at the last real position: batched (left-padded, logits_to_keep) equals one
unpadded forward per text; top-k truncation is renormalised and its dropped mass reported; cache identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.datasets import load_text_dataset
from perceptalign.ntps.lm_probs import NextTokenCache, next_token_probs
from perceptalign.ntps.models import load_causal_lm, tokenize


def _slow_reference(loaded, texts, max_length=64) -> np.ndarray:
    """softmax of the logits after the last token, one unpadded text at a time (no batching at all)."""
    out = []
    with torch.inference_mode():
        for ids in tokenize(loaded, texts, max_length):
            logits = loaded.model(input_ids=torch.tensor([ids])).logits[0, -1]
            out.append(torch.softmax(logits.double(), -1).numpy())
    return np.stack(out)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2_left"])
def test_batched_last_position_equals_per_text_forward(fixture, toy_csv, request):
    loaded = load_causal_lm(str(request.getfixturevalue(fixture)))
    ds = load_text_dataset(str(toy_csv), max_samples=40)
    probs, mass = next_token_probs(loaded, ds, max_length=64, token_budget=256, top_k=None)
    reference = _slow_reference(loaded, ds.texts)
    # float32 forward of a 2-layer model; padding and batching change summation order only: 1e-5 absolute
    # on probabilities ≤ 1 is ~100 float32 ulps.
    np.testing.assert_allclose(probs.toarray(), reference, atol=1e-5)
    np.testing.assert_allclose(mass, 1.0, atol=1e-9)


def test_top_k_rows_are_renormalised_and_report_the_dropped_mass(tiny_llama, toy_csv):
    loaded = load_causal_lm(str(tiny_llama))
    ds = load_text_dataset(str(toy_csv), max_samples=30)
    probs, mass = next_token_probs(loaded, ds, max_length=64, token_budget=256, top_k=5)
    full = _slow_reference(loaded, ds.texts)
    top = np.sort(full, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(mass, top.sum(axis=1), atol=1e-5)
    dense = probs.toarray()
    np.testing.assert_allclose(dense.sum(axis=1), 1.0, atol=1e-6)  # float32 storage
    assert (np.count_nonzero(dense, axis=1) == 5).all()
    # the argmax (NCE's source label) is never changed by truncation
    assert (dense.argmax(axis=1) == full.argmax(axis=1)).all()


def test_cache_is_reused_and_refused_for_other_settings(tiny_llama, toy_csv, tmp_path):
    loaded = load_causal_lm(str(tiny_llama))
    ds = load_text_dataset(str(toy_csv), max_samples=20)
    cache = NextTokenCache(tmp_path)
    first = cache.load_or_compute(loaded, ds, max_length=64, token_budget=256, max_samples=20, top_k=8)
    again = cache.load_or_compute(loaded, ds, max_length=64, token_budget=256, max_samples=20, top_k=8)
    assert not first.reused and again.reused
    assert (first.probs != again.probs).nnz == 0
    np.testing.assert_array_equal(first.retained_mass, again.retained_mass)
    with pytest.raises(PerceptAlignError, match="top_k"):
        cache.load_or_compute(loaded, ds, max_length=64, token_budget=256, max_samples=20, top_k=4)
    with pytest.raises(PerceptAlignError, match="top_k must be"):
        next_token_probs(loaded, ds, max_length=64, token_budget=256, top_k=0)
