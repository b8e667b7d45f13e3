"""The Python front door of NTPS: own hidden states, loaded models, the result object."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import perceptalign.ntps as ntps
from perceptalign.io import PerceptAlignError
from perceptalign.ntps.statistics import dense_reference_statistics
from perceptalign.ntps.subspace import ntps_all_layers

FRACTIONS = (0.1, 0.5, 0.9)


def _padded_batch(seed: int = 0, n: int = 24, width: int = 11, d: int = 6, n_layers: int = 2):
    """Random hidden states, texts of 1..width tokens, each row padded on a random side."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (n,), generator=gen)
    left = torch.rand(n, generator=gen) < 0.5
    mask = torch.zeros(n, width, dtype=torch.long)
    for row, (length, on_left) in enumerate(zip(lengths.tolist(), left.tolist(), strict=True)):
        span = slice(width - length, width) if on_left else slice(0, length)
        mask[row, span] = 1
    states = [torch.randn(n, width, d, generator=gen, dtype=torch.float64) for _ in range(n_layers)]
    labels = torch.arange(n) % 3
    return states, mask, labels


def test_ntps_from_hidden_equals_the_dense_per_text_formula():
    states, mask, labels = _padded_batch()
    assert mask[:, 0].any() and mask[:, -1].any() and not mask.all()  # both padding sides occur
    result = ntps.ntps_from_hidden(states, mask, labels, fractions=FRACTIONS)
    dense = {}
    for layer, hidden in enumerate(states):
        per_text = [hidden[row][mask[row].bool()] for row in range(len(labels))]
        dense[layer] = dense_reference_statistics(per_text, labels, 3)
    expected = ntps_all_layers(dense, fractions=FRACTIONS)
    # Both sides are float64 sums of the same products in another order: equal to ~1e-12; 1e-8 leaves
    # room for the eigen-solves of slightly different inputs.
    for name in ("ntps", "ntps_orthonormal", "ntps_probe"):
        np.testing.assert_allclose(result.table(name).to_numpy(), np.array(expected[name]), rtol=0, atol=1e-8)
    assert result.info["n_texts"] == 24 and result.info["n_tokens"] == int(mask.sum())


def test_ntps_from_hidden_takes_one_tensor_and_names_layers():
    states, mask, labels = _padded_batch(seed=1, n_layers=1)
    one = ntps.ntps_from_hidden(states[0], mask, labels, layers=[7], fractions=FRACTIONS)
    assert one.layers == [7] and list(one.ntps.columns) == list(FRACTIONS)
    with pytest.raises(PerceptAlignError, match="layer names"):
        ntps.ntps_from_hidden(states, mask, labels, layers=[1, 2])


def test_result_tables_best_layer_and_json_round_trip(tmp_path):
    states, mask, labels = _padded_batch(seed=2, n_layers=3)
    result = ntps.ntps_from_hidden(states, mask, labels, fractions=FRACTIONS)
    table = result.ntps
    assert isinstance(table, pd.DataFrame)
    assert table.index.name == "layer" and table.columns.name == "fraction"
    best = result.best(0.5)
    assert best.ntps == table[0.5].max() and best.layer == int(table[0.5].idxmax())
    assert result.best().column == 0.5  # the middle column by default
    with pytest.raises(PerceptAlignError, match="not computed"):
        result.best(0.3)
    result.to_json(tmp_path / "r.json")
    again = ntps.NTPSResult.load(tmp_path / "r.json")
    pd.testing.assert_frame_equal(again.ntps, table)
    assert json.loads(result.to_json())["n_texts"] == 24


def test_score_on_a_loaded_model_equals_the_cli_job(tiny_llama, toy_csv, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from perceptalign.ntps.jobs.score import ScoreConfig, run_score

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    frame = pd.read_csv(toy_csv)
    names = np.where(frame["label"] == 1, "pos", "neg")  # string labels are encoded like a file's
    result = ntps.score(
        model, tokenizer, frame["text"].tolist(), names, layers=[0, -1], fractions=FRACTIONS, max_length=32
    )
    job = run_score(
        ScoreConfig(
            model=str(tiny_llama),
            dataset=str(toy_csv),
            out=tmp_path,
            layers=[0, -1],
            fractions=list(FRACTIONS),
            max_length=32,
        )
    )
    assert result.layers == job.results["layers"] and result.info["n_tokens"] == job.results["n_tokens"]
    # Same engine, same batches: the statistics are bitwise equal, so the tables are too.
    np.testing.assert_array_equal(result.ntps.to_numpy(), np.array(job.results["ntps"]))
    assert result.info["class_names"] == ["neg", "pos"]


def test_score_refuses_bad_labels_and_settings(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    with pytest.raises(PerceptAlignError, match="at least 2 classes"):
        ntps.score(model, tokenizer, ["a film", "the plot"], [1, 1])
    with pytest.raises(PerceptAlignError, match="`max_length` must be ≥ 2"):
        ntps.score(model, tokenizer, ["a film", "the plot"], [0, 1], max_length=1)


def test_front_door_exports_what_it_documents():
    for name in ntps.__all__:
        assert getattr(ntps, name) is not None
    assert {"ntps_from_hidden", "score", "NTPSResult", "StatisticsAccumulator"} <= set(ntps.__all__)
