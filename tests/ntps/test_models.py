"""Model adapter: loading, batching, padding-side invariance and the errors users hit."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.models import (
    forward_hidden_states,
    load_causal_lm,
    pad_batch,
    token_budget_batches,
    tokenize,
)
from tests.conftest import make_sentences


def test_token_budget_batches_cover_every_text_once_within_budget():
    lengths = [5, 60, 12, 33, 7, 59, 21, 44, 8, 30] * 7
    batches = token_budget_batches(lengths, token_budget=200)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= 200 or len(batch) == 1


def test_length_sorted_batching_removes_most_padding():
    lengths = [(i * 37) % 56 + 5 for i in range(400)]  # mixed 5–60 token texts
    sorted_batches = token_budget_batches(lengths, token_budget=1024)

    def padding_fraction(batches):
        real = sum(lengths[i] for b in batches for i in b)
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        return 1 - real / padded

    naive = [list(range(i, min(i + 32, 400))) for i in range(0, 400, 32)]
    assert padding_fraction(naive) > 0.3  # the published input-order batching
    assert padding_fraction(sorted_batches) < 0.1


def test_token_budget_must_be_positive():
    with pytest.raises(PerceptAlignError, match="token budget"):
        token_budget_batches([3, 4], 0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_pad_batch_places_tokens_on_the_requested_side(side):
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, side=side)
    assert ids.shape == (2, 3)
    assert mask.sum(1).tolist() == [3, 1]
    assert (mask[1, 0] == 1) == (side == "right")
    assert ids[1][mask[1].bool()].tolist() == [8]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2_left"])
def test_hidden_states_do_not_depend_on_padding_side(fixture, request):
    """Real-token hidden states must equal those of the unpadded text, whatever the padding side."""
    loaded = load_causal_lm(str(request.getfixturevalue(fixture)))
    ids = tokenize(loaded, [s for s, _ in make_sentences(4, seed=3)], max_length=64)
    layers = loaded.layers
    for side in ("left", "right"):
        input_ids, mask = pad_batch(ids, loaded.tokenizer.pad_token_id, side)
        padded = forward_hidden_states(loaded, input_ids, mask, layers)
        for row, seq in enumerate(ids):
            alone = forward_hidden_states(
                loaded, torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long), layers
            )
            for layer in range(len(layers)):
                got = padded[layer][row][mask[row].bool()]
                # float32 attention over different padded widths: ~1e-6 relative rounding differences.
                torch.testing.assert_close(got, alone[layer][0], rtol=1e-4, atol=1e-5)


def test_pad_token_falls_back_to_eos_and_padding_side_is_read(tiny_gpt2_left):
    loaded = load_causal_lm(str(tiny_gpt2_left))
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token
    assert loaded.padding_side == "left"
    assert loaded.n_hidden_states == 3 and loaded.hidden_size == 32


def test_fingerprint_is_stable_and_changes_with_weights(tiny_llama, tmp_path):
    first = load_causal_lm(str(tiny_llama)).fingerprint
    assert load_causal_lm(str(tiny_llama)).fingerprint == first
    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama, copy)
    model = load_causal_lm(str(copy)).model
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(copy)
    assert load_causal_lm(str(copy)).fingerprint != first


def test_truncation_to_max_length(tiny_llama):
    loaded = load_causal_lm(str(tiny_llama))
    ids = tokenize(loaded, ["the film was very very very good and the plot was great " * 5], max_length=7)
    assert len(ids[0]) == 7


def test_bad_model_inputs(tiny_llama, tmp_path):
    with pytest.raises(PerceptAlignError, match="unknown dtype"):
        load_causal_lm(str(tiny_llama), dtype="float8")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PerceptAlignError, match=r"config\.json"):
        load_causal_lm(str(tmp_path / "empty"))
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"GGUF")
    with pytest.raises(PerceptAlignError, match="is a file"):
        load_causal_lm(str(weights))
    with pytest.raises(PerceptAlignError, match="`max_length`"):
        tokenize(load_causal_lm(str(tiny_llama)), ["a b"], max_length=0)


def test_remote_code_is_refused_unless_asked(tiny_llama, tmp_path):
    remote = tmp_path / "remote"
    shutil.copytree(tiny_llama, remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
        "AutoConfig": "configuration_evil.EvilConfig",
    }
    config["model_type"] = "evil-unknown"
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(PerceptAlignError, match="`trust_remote_code`"):
        load_causal_lm(str(remote))


@pytest.mark.slow
def test_embedded_smollm2_completes_a_fact():
    loaded = load_causal_lm("smollm2-135m")
    assert loaded.n_hidden_states == 31 and loaded.hidden_size == 576
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(**ids).logits
    assert loaded.tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"


def test_small_datasets_are_not_batched_into_one_wide_batch():
    """With few texts the budget alone would put 4–56-token texts in one batch (~45% padding)."""
    lengths = [(i * 29) % 53 + 4 for i in range(128)]
    batches = token_budget_batches(lengths, token_budget=4096, max_padding=0.1)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert 1 - sum(lengths) / padded < 0.2
    assert sorted(i for b in batches for i in b) == list(range(128))
