"""The `ntps score` job end to end on a tiny model: statistics, resume, cache identity, outputs, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from perceptalign.cli import app
from perceptalign.io import PerceptAlignError
from perceptalign.ntps.datasets import load_text_dataset
from perceptalign.ntps.jobs.score import CHECKPOINT_FILE, ScoreConfig, run_score
from perceptalign.ntps.measure import compute_statistics, resolve_layers
from perceptalign.ntps.models import forward_hidden_states, load_causal_lm, tokenize
from perceptalign.ntps.statistics import dense_reference_statistics
from tests.conftest import build_tiny_model


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("side", ["left", "right"])
def test_streamed_statistics_equal_per_text_dense_formula(tiny_llama, toy_csv, tmp_path, side):
    """Batched, padded, length-sorted streaming == the published per-text formula on unpadded texts."""
    path = (
        tiny_llama if side == "right" else build_tiny_model(tmp_path / "left", "llama", padding_side="left")
    )
    loaded = load_causal_lm(str(path), dtype="float64")
    dataset = load_text_dataset(str(toy_csv), max_samples=40)
    acc = compute_statistics(loaded, dataset, loaded.layers, max_length=64, token_budget=200)
    stats = acc.finalize()
    ids = tokenize(loaded, dataset.texts, 64)
    for layer in loaded.layers:
        per_text = [
            forward_hidden_states(
                loaded, torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long), [layer]
            )[0][0]
            for seq in ids
        ]
        dense = dense_reference_statistics(per_text, torch.as_tensor(dataset.labels), dataset.n_classes)
        for key in ("M_xx", "M_xy", "C0", "C1"):
            # float64 model: only summation order and padded-attention rounding differ (~1e-12 relative).
            torch.testing.assert_close(getattr(stats[layer], key), getattr(dense, key), rtol=1e-8, atol=1e-10)
    assert acc.n_texts == len(dataset)
    assert acc.n_tokens == sum(len(x) for x in ids)


def test_interrupted_run_resumes_to_identical_statistics(tiny_llama, toy_csv, tmp_path):
    loaded = load_causal_lm(str(tiny_llama))
    dataset = load_text_dataset(str(toy_csv))
    layers = loaded.layers
    # Product blocks of ≥ 150 pairs span two of these ~100-pair batches, so checkpoints (taken only
    # between blocks) fall after batches 2, 4, …: the run stopped in batch 3 resumes from batch 2.
    block = 150
    full = compute_statistics(
        loaded, dataset, layers, max_length=64, token_budget=128, block_pairs=block
    ).sums()

    checkpoint = tmp_path / CHECKPOINT_FILE
    seen = []

    def stop_after_three(n_texts: int, n_tokens: int) -> None:
        seen.append(n_texts)
        if len(seen) == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        compute_statistics(
            loaded,
            dataset,
            layers,
            max_length=64,
            token_budget=128,
            checkpoint_path=checkpoint,
            checkpoint_seconds=0.0,
            on_batch=stop_after_three,
            block_pairs=block,
        )
    assert checkpoint.is_file()
    resumed_from = []
    resumed = compute_statistics(
        loaded,
        dataset,
        layers,
        max_length=64,
        token_budget=128,
        checkpoint_path=checkpoint,
        checkpoint_seconds=0.0,
        on_resume=lambda done, total: resumed_from.append(done),
        block_pairs=block,
    ).sums()
    assert resumed_from == [2]  # the checkpoint saved after batch 2; batch 3 was interrupted before saving
    assert resumed.keys() == full.keys()
    for key in full:
        # Same batches in the same order: summation is bitwise identical.
        assert torch.equal(resumed[key], full[key]), key


def test_run_score_writes_outputs_and_reuses_its_cache(tiny_llama, toy_csv, tmp_path):
    out = tmp_path / "run"
    config = ScoreConfig(model=str(tiny_llama), dataset=str(toy_csv), out=out, max_length=64)
    first = run_score(config)
    data = json.loads((out / "ntps.json").read_text())
    for key in ("model", "dataset", "split", "n_texts", "n_tokens", "n_classes", "layers", "fractions"):
        assert key in data
    assert data["layers"] == [0, 1, 2] and data["n_texts"] == 120 and data["n_classes"] == 2
    for key in ("ntps", "ntps_orthonormal", "ntps_reference"):
        table = np.asarray(data[key])
        assert table.shape == (3, 19)
        assert np.all((table >= -1e-12) & (table <= 1 + 1e-12))
    assert (out / "statistics.safetensors").is_file() and (out / "ntps_heatmap.png").stat().st_size > 1000
    assert not (out / CHECKPOINT_FILE).exists()
    assert not first.reused_cache
    second = run_score(config)
    assert second.reused_cache
    assert second.results["ntps"] == first.results["ntps"]


def test_cache_from_another_model_is_refused(tiny_llama, tiny_gpt2_left, toy_csv, tmp_path):
    out = tmp_path / "run"
    run_score(ScoreConfig(model=str(tiny_llama), dataset=str(toy_csv), out=out, max_length=64))
    with pytest.raises(PerceptAlignError, match="model"):
        run_score(ScoreConfig(model=str(tiny_gpt2_left), dataset=str(toy_csv), out=out, max_length=64))
    with pytest.raises(PerceptAlignError, match="max_length"):
        run_score(ScoreConfig(model=str(tiny_llama), dataset=str(toy_csv), out=out, max_length=32))


def test_layer_selection_and_errors():
    assert resolve_layers(None, 4) == [0, 1, 2, 3]
    assert resolve_layers([-1, 0, 0], 4) == [0, 3]
    with pytest.raises(PerceptAlignError, match="layer 7 does not exist"):
        resolve_layers([7], 4)


def test_cli_score_end_to_end(tiny_llama, toy_csv, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        [
            "ntps",
            "score",
            "--model",
            str(tiny_llama),
            "--dataset",
            str(toy_csv),
            "--out",
            str(out),
            "--layers",
            "0,-1",
            "--fractions",
            "0.25,0.5,1.0",
            "--max-length",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "ntps.json").read_text())
    assert data["layers"] == [0, 2] and data["fractions"] == [0.25, 0.5, 1.0]
    assert np.asarray(data["ntps"]).shape == (2, 3)
    assert "best layer at f = 0.5: " in result.output


def test_cli_reports_bad_input_without_traceback(tiny_llama, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,0\nworld,0\n")
    result = CliRunner().invoke(
        app,
        ["ntps", "score", "--model", str(tiny_llama), "--dataset", str(bad), "--out", str(tmp_path / "o")],
    )
    assert result.exit_code == 2
    assert "class" in result.output.lower()
