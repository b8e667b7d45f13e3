"""Mean-pooled features: equal to per-text unpadded forwards, padding-side invariant, cached with identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceptalign.io import PerceptAlignError, save_tensors_atomic
from perceptalign.ntps.datasets import load_text_dataset
from perceptalign.ntps.features import FeatureCache, extract_features, mean_pool
from perceptalign.ntps.models import forward_hidden_states, load_causal_lm, tokenize


def test_mean_pool_equals_a_loop_over_real_tokens():
    """Vectorised masked mean vs. an explicit per-row loop, with pads on both sides and pad values ≠ 0."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 7, 3, generator=gen, dtype=torch.float64) * 10
    mask = torch.zeros(4, 7, dtype=torch.long)
    mask[0, :7] = 1
    mask[1, :2] = 1  # right-padded
    mask[2, 4:] = 1  # left-padded
    mask[3, 6:] = 1  # one real token
    expected = torch.stack([hidden[b][mask[b].bool()].mean(0) for b in range(4)])
    # Same float64 values, different summation order: agreement to ~1e-15 relative.
    torch.testing.assert_close(mean_pool(hidden, mask), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(PerceptAlignError, match="no real tokens"):
        mean_pool(hidden, torch.zeros(4, 7, dtype=torch.long))


def test_pooled_features_equal_per_text_unpadded_forward(tiny_llama, toy_csv):
    """Length-sorted, padded token-budget batches == one unpadded forward per text, in dataset order."""
    loaded = load_causal_lm(str(tiny_llama), dtype="float64")
    dataset = load_text_dataset(str(toy_csv), max_samples=30)
    # A budget of 120 tokens forces several batches of mixed lengths (texts are 3–20 tokens).
    features = extract_features(loaded, dataset, [0, -1], max_length=64, token_budget=120)
    assert sorted(features) == [0, loaded.n_hidden_states - 1]
    ids = tokenize(loaded, dataset.texts, 64)
    for layer, array in features.items():
        assert array.dtype == np.float32 and array.shape == (len(dataset), loaded.hidden_size)
        unpadded = [
            forward_hidden_states(
                loaded, torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long), [layer]
            )
            for seq in ids
        ]
        reference = np.stack([states[0][0].mean(0).numpy() for states in unpadded])
        # float64 model, features stored as float32: the only error is the float32 rounding (~6e-8 relative).
        np.testing.assert_allclose(array, reference, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2_left"])
def test_left_and_right_padding_give_the_same_features(fixture, request, toy_csv):
    """Pads are masked and positions come from the mask, so the padding side cannot change the features."""
    loaded = load_causal_lm(str(request.getfixturevalue(fixture)), dtype="float64")
    dataset = load_text_dataset(str(toy_csv), max_samples=24)
    by_side = {}
    for side in ("left", "right"):
        loaded.tokenizer.padding_side = side
        by_side[side] = extract_features(loaded, dataset, loaded.layers, max_length=64, token_budget=100)
    for layer in loaded.layers:
        # float64 forward: padded attention only reorders sums (~1e-15); float32 storage rounds identically
        # except at ties, so allow one float32 ulp.
        np.testing.assert_allclose(by_side["left"][layer], by_side["right"][layer], rtol=1e-6, atol=1e-7)


def test_cache_is_written_reused_and_subset_by_layer(tiny_llama, toy_csv, tmp_path):
    loaded = load_causal_lm(str(tiny_llama))
    dataset = load_text_dataset(str(toy_csv), max_samples=40)
    cache = FeatureCache(tmp_path)
    calls = []
    first = cache.load_or_extract(
        loaded, dataset, None, max_length=64, token_budget=256, on_batch=lambda n, t: calls.append((n, t))
    )
    assert not first.reused and first.path == tmp_path / "features_train.safetensors"
    assert sum(n for n, _ in calls) == len(dataset)
    assert (
        first.metadata["n_tokens"]
        == sum(t for _, t in calls)
        == sum(map(len, tokenize(loaded, dataset.texts, 64)))
    )
    assert (tmp_path / "features_train.json").is_file()
    calls.clear()
    again = cache.load_or_extract(
        loaded, dataset, [-1], max_length=64, token_budget=256, on_batch=lambda n, t: calls.append((n, t))
    )
    assert again.reused and calls == []  # no forward pass
    last = loaded.n_hidden_states - 1
    assert list(again.features) == [last]
    np.testing.assert_array_equal(again.features[last], first.features[last])
    np.testing.assert_array_equal(again.labels, dataset.labels)
    # The token budget only changes batching, not the features: not part of the identity.
    assert cache.load_or_extract(loaded, dataset, None, max_length=64, token_budget=64).reused


def test_mismatching_cache_is_refused_naming_the_key(tiny_llama, tiny_gpt2_left, toy_csv, tmp_path):
    llama = load_causal_lm(str(tiny_llama))
    dataset = load_text_dataset(str(toy_csv), max_samples=30)
    cache = FeatureCache(tmp_path)
    cache.load_or_extract(llama, dataset, [0, 1], max_length=64, token_budget=256)
    with pytest.raises(
        PerceptAlignError, match=r"max_length: cached 64, now 32.*overwrite"
    ):
        cache.load_or_extract(llama, dataset, [0, 1], max_length=32, token_budget=256)
    with pytest.raises(PerceptAlignError, match="model_fingerprint"):
        cache.load_or_extract(
            load_causal_lm(str(tiny_gpt2_left)), dataset, [0], max_length=64, token_budget=256
        )
    with pytest.raises(PerceptAlignError, match="data_sha256"):
        cache.load_or_extract(
            llama,
            load_text_dataset(str(toy_csv), max_samples=30, seed=1),
            [0],
            max_length=64,
            token_budget=256,
        )
    with pytest.raises(PerceptAlignError, match=r"layers \[2\] were requested \(key 'layers'\)"):
        cache.load_or_extract(llama, dataset, [0, 2], max_length=64, token_budget=256)


def test_foreign_or_badly_named_cache_files_are_refused(tmp_path):
    cache = FeatureCache(tmp_path)
    save_tensors_atomic(tmp_path / "features_train.safetensors", {"x": torch.zeros(2)})
    with pytest.raises(PerceptAlignError, match="not written by perceptalign"):
        cache.load("train")
    (tmp_path / "features_test.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PerceptAlignError, match="not a readable safetensors"):
        cache.load("test")
    with pytest.raises(PerceptAlignError, match="no feature cache"):
        cache.load("validation")
    with pytest.raises(PerceptAlignError, match="cannot name a cache file"):
        cache.path("../train")
    with pytest.raises(PerceptAlignError, match="shape"):
        cache.save("train", {0: np.zeros((3, 2))}, np.zeros(4, dtype=np.int64), {})
