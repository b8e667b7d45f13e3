"""What the NTPS jobs share: model/dataset loading from a config, the settings grids hand down, and the
record every training job writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.datasets import load_text_dataset
from perceptalign.ntps.finetune import FinetuneJobConfig, TrainConfig, job_record, load_train_eval
from perceptalign.ntps.jobs.inputs import (
    EXTRACTION_SETTINGS,
    extraction_settings,
    load_job_dataset,
    load_job_model,
)
from perceptalign.ntps.jobs.peers import PeersConfig
from perceptalign.ntps.jobs.prescreen import PrescreenConfig
from perceptalign.ntps.jobs.probe import ProbeConfig
from perceptalign.ntps.jobs.score import ScoreConfig
from perceptalign.ntps.jobs.study import StudyConfig


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("cls", [ScoreConfig, ProbeConfig, PeersConfig, StudyConfig, PrescreenConfig])
def test_every_grid_and_job_config_has_the_extraction_settings(cls):
    # A grid can only hand a setting down unchanged if both sides name it the same.
    assert set(EXTRACTION_SETTINGS) <= _fields(cls)


@pytest.mark.parametrize("grid", ["study", "prescreen"])
def test_extraction_settings_reach_the_job_unchanged(grid):
    values = dict(
        layers=[0, -1],
        max_samples=17,
        max_length=33,
        token_budget=999,
        dtype="float64",
        seed=5,
        trust_remote_code=True,
    )
    if grid == "study":
        config = StudyConfig(models=["m"], datasets=["d"], out=Path("o"), **values)
    else:
        config = PrescreenConfig(model="m", datasets=["d"], out=Path("o"), **values)
    job = ScoreConfig(model="m", dataset="d", out=Path("o"), **extraction_settings(config))
    assert {name: getattr(job, name) for name in values} == values
    # Settings outside the list keep the job's own defaults (a grid does not leak, e.g., its fractions).
    assert job.fractions == ScoreConfig(model="m", dataset="d", out=Path("o")).fractions


def test_load_job_dataset_is_the_named_split_and_subset(toy_csv):
    config = ProbeConfig(model="m", dataset=str(toy_csv), out=Path("o"), max_samples=40, seed=3)
    messages: list[str] = []
    got = load_job_dataset(config, messages.append)
    direct = load_text_dataset(str(toy_csv), "train", max_samples=40, seed=3)
    assert got.texts == direct.texts
    np.testing.assert_array_equal(got.labels, direct.labels)
    assert messages == [f"loading dataset {toy_csv} (train)"]


def test_load_job_dataset_names_a_missing_column(toy_csv):
    config = ProbeConfig(model="m", dataset=str(toy_csv), out=Path("o"), text_column="sentence")
    with pytest.raises(PerceptAlignError, match="sentence"):
        load_job_dataset(config, lambda _m: None)


def test_load_job_model_uses_the_config_dtype(tiny_llama):
    import torch

    config = ScoreConfig(model=str(tiny_llama), dataset="d", out=Path("o"), dtype="float64")
    messages: list[str] = []
    loaded = load_job_model(config, messages.append)
    assert loaded.dtype == "float64"
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float64}
    assert messages[0] == f"loading model {tiny_llama}"


def test_load_job_model_refuses_an_unknown_dtype(tiny_llama):
    # The job config refuses it at construction, before any data or model loads ...
    with pytest.raises(PerceptAlignError, match="unknown `dtype` 'float8'"):
        ScoreConfig(model=str(tiny_llama), dataset="d", out=Path("o"), dtype="float8")
    # ... and loading refuses it too, for configs that check nothing.
    config = SimpleNamespace(model=str(tiny_llama), dtype="float8", revision=None, trust_remote_code=False)
    with pytest.raises(PerceptAlignError, match="dtype"):
        load_job_model(config, lambda _m: None)


def test_job_record_describes_the_data_and_optimisation(toy_csv):
    import torch

    config = FinetuneJobConfig(
        model="m", dataset=str(toy_csv), out=Path("o"), max_length=64, train=TrainConfig(steps=40, lr=3e-4)
    )
    train, held_out, source = load_train_eval(
        str(toy_csv), split="train", eval_split="test", eval_fraction=0.3
    )
    record = job_record(config, train, held_out, source, torch.device("cpu"))
    # chance accuracy, independently: the majority class share of the held-out labels
    share = pd.Series(held_out.labels).value_counts(normalize=True).max()
    assert record["chance_accuracy"] == pytest.approx(share, abs=1e-12)
    assert (record["n_train"], record["n_eval"]) == (len(train), len(held_out))
    assert record["n_train"] + record["n_eval"] == len(pd.read_csv(toy_csv))
    assert record["warmup_steps"] == config.train.warmup_steps == 2  # round(0.05 · 40)
    assert (record["steps"], record["lr"], record["device"]) == (40, 3e-4, "cpu")
    assert record["optimizer"].startswith("Adafactor(")
