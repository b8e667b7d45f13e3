"""`recipe` paper | default: the paper preset equals the published values field by field, the default preset
is what every job did before recipes existed, and both reach the jobs (Python API and CLI)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from perceptalign.cli import app
from perceptalign.io import PerceptAlignError
from perceptalign.ntps.finetune import BatchSampler, TrainConfig
from perceptalign.ntps.finetune.schedule import (
    OPTIMIZER_DESCRIPTION,
    SCHEDULES,
    make_optimizer,
    make_scheduler,
    optimizer_description,
)
from perceptalign.ntps.recipes import (
    DEFAULT,
    PAPER,
    PAPER_NOTE,
    RECIPES,
    ProbeRecipe,
    TrainingRecipe,
    get_recipe,
)
from perceptalign.ntps.recipes import SCHEDULES as RECIPE_SCHEDULES

# The published values (github.com/Yu-AngCheng/NTPS, commit 1d2a433), written out once more by hand.
PUBLISHED = {
    "max_length": "model",
    "probe": {"standardize": True, "solver": "saga", "C": 1.0, "tol": 0.01, "max_iter": 1000},
    "lora": {
        "optimizer": "adafactor",
        "lr": 1e-4,
        "weight_decay": 1e-5,
        "schedule": "cosine_hf",
        "warmup_fraction": 0.05,
        "steps": 5000,
        "epochs": None,
        "batch_size": 1,
        "head_dropout": 0.05,
        "weights_dtype": "bfloat16",
        "autocast": "bfloat16",
    },
    "linear_baseline": {
        "optimizer": "adamw",
        "lr": 1e-4,
        "weight_decay": 0.01,
        "schedule": "constant",
        "warmup_fraction": 0.0,
        "steps": None,
        "epochs": 50,
        "batch_size": 64,
        "head_dropout": 0.05,
        "weights_dtype": "bfloat16",
        "autocast": "bfloat16",
    },
    "scratch": {
        "optimizer": "adafactor",
        "lr": 1e-4,
        "weight_decay": 1e-5,
        "schedule": "cosine_hf",
        "warmup_fraction": 0.05,
        "steps": 10_000,
        "epochs": None,
        "batch_size": 1,
        "head_dropout": 0.05,
        "weights_dtype": "float32",
        "autocast": "bfloat16",
    },
}


# --------------------------------------------------------------------------------------------------
# the presets themselves


def test_paper_preset_equals_the_published_values_field_by_field():
    assert PAPER.name == "paper" and PAPER.max_length == PUBLISHED["max_length"]
    for part in ("probe", "lora", "linear_baseline", "scratch"):
        config = getattr(PAPER, part)
        expected = PUBLISHED[part]
        assert {f.name for f in fields(config)} == set(expected), part  # no field left unchecked
        for name, value in expected.items():
            assert getattr(config, name) == value, f"{part}.{name}: {getattr(config, name)!r} != {value!r}"
    assert PAPER.note == PAPER_NOTE and "ntps_reference" in PAPER.note
    for difference in ("held-out", "top of both spectra", "medical"):
        assert difference in PAPER.note


def test_paper_train_configs_carry_every_published_training_choice():
    lora = PAPER.train_config("lora")
    assert (lora.optimizer, lora.lr, lora.weight_decay, lora.schedule) == (
        "adafactor",
        1e-4,
        1e-5,
        "cosine_hf",
    )
    assert (lora.steps, lora.batch_size, lora.head_dropout, lora.autocast) == (5000, 1, 0.05, "bfloat16")
    assert lora.warmup_steps == 250  # int(0.05 · 5000)
    linear = PAPER.train_config("linear_baseline")
    assert (linear.optimizer, linear.lr, linear.weight_decay, linear.schedule) == (
        "adamw",
        1e-4,
        0.01,
        "constant",
    )
    assert (linear.epochs, linear.batch_size, linear.head_dropout) == (50, 64, 0.05)
    assert linear.steps_for(6_920) == 50 * math.ceil(6_920 / 64) and linear.warmup_for(5_450) == 0
    scratch = PAPER.train_config("scratch")
    assert (scratch.steps, scratch.weight_decay, scratch.head_dropout) == (10_000, 1e-5, 0.05)
    assert scratch.warmup_steps == 500


def test_default_preset_is_todays_behaviour():
    assert DEFAULT.note is None and DEFAULT.max_length == 512
    assert DEFAULT.train_config("lora") == TrainConfig()  # the defaults every job used
    assert DEFAULT.train_config("scratch") == TrainConfig()
    assert DEFAULT.linear_baseline is None  # the linear head is trained exactly like LoRA
    assert DEFAULT.train_config("linear_baseline") == TrainConfig()
    from perceptalign.ntps.probes import DEFAULT_MAX_ITER, LogisticProbe

    probe = LogisticProbe()
    assert (
        (DEFAULT.probe.solver, DEFAULT.probe.tol, DEFAULT.probe.max_iter, DEFAULT.probe.C)
        == (
            probe.solver,
            probe.tol,
            DEFAULT_MAX_ITER,
            probe.C,
        )
        == ("lbfgs", 1e-4, 2000, 1.0)
    )
    assert optimizer_description() == OPTIMIZER_DESCRIPTION


def test_recipes_are_frozen_and_validated():
    assert set(RECIPES) == {"paper", "default"}
    with pytest.raises(AttributeError):
        PAPER.max_length = 512  # type: ignore[misc]
    with pytest.raises(PerceptAlignError, match="exactly one of steps and epochs"):
        TrainingRecipe("adafactor", 1e-4, 0.0, "cosine", 0.05, 10, 2, 1, 0.0, None, None)
    with pytest.raises(PerceptAlignError, match="solver"):
        ProbeRecipe(True, "newton", 1.0, 1e-4, 100)
    assert RECIPE_SCHEDULES == SCHEDULES


def test_unknown_recipe_names_the_parameter():
    with pytest.raises(PerceptAlignError, match=r"`recipe` must be one of paper, default \(got 'papers'\)"):
        get_recipe("papers")
    assert get_recipe(PAPER) is PAPER
    with pytest.raises(PerceptAlignError, match="unknown training settings"):
        PAPER.train_config("lora", stepz=3)


# --------------------------------------------------------------------------------------------------
# what the training loop does with them


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_transformers_cosine_schedule_is_reproduced():
    from transformers import get_cosine_schedule_with_warmup

    params = [torch.nn.Parameter(torch.zeros(2))]
    ours = make_scheduler(torch.optim.SGD(params, lr=1.0), 200, 10, "cosine_hf")
    theirs = get_cosine_schedule_with_warmup(torch.optim.SGD(params, lr=1.0), 10, 200)
    for _ in range(200):
        assert ours.get_last_lr()[0] == pytest.approx(theirs.get_last_lr()[0], abs=1e-12)
        ours.step()
        theirs.step()
    constant = make_scheduler(torch.optim.SGD(params, lr=0.5), 50, 0, "constant")
    for _ in range(50):
        assert constant.get_last_lr()[0] == 0.5
        constant.step()


def test_optimizers_of_the_recipes():
    params = [torch.nn.Parameter(torch.zeros(3))]
    adamw = make_optimizer(params, 1e-4, kind="adamw", weight_decay=0.01)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.01
    assert adamw.defaults["betas"] == (0.9, 0.999) and adamw.defaults["eps"] == 1e-8  # torch's defaults
    adafactor = make_optimizer(params, 1e-4, weight_decay=1e-5)
    assert type(adafactor).__name__ == "Adafactor" and adafactor.defaults["weight_decay"] == 1e-5
    assert adafactor.defaults["relative_step"] is False and adafactor.defaults["scale_parameter"] is False
    assert make_optimizer(params, 1e-4).defaults["weight_decay"] == 0.0


def test_epoch_aligned_batches_cover_each_epoch_once_with_a_short_last_batch():
    sampler = BatchSampler(10, 4, seed=0, epoch_aligned=True)
    for _ in range(3):
        epoch = [sampler.next() for _ in range(3)]
        assert [len(b) for b in epoch] == [4, 4, 2]
        assert sorted(i for b in epoch for i in b) == list(range(10))
    # Without it, batches straddle epochs (today's behaviour, unchanged).
    straddling = BatchSampler(10, 4, seed=0)
    assert [len(straddling.next()) for _ in range(5)] == [4] * 5


# --------------------------------------------------------------------------------------------------
# job configs (Python API)


def test_probe_config_takes_the_recipe_and_explicit_values_win(tmp_path):
    from perceptalign.ntps.jobs.probe import ProbeConfig

    default = ProbeConfig(model="m", dataset="d", out=tmp_path)
    assert (default.max_length, default.solver, default.tol, default.max_iter, default.C) == (
        512,
        "lbfgs",
        1e-4,
        2000,
        1.0,
    )
    paper = ProbeConfig(model="m", dataset="d", out=tmp_path, recipe="paper")
    assert (paper.max_length, paper.solver, paper.tol, paper.max_iter, paper.C) == (
        "model",
        "saga",
        0.01,
        1000,
        1.0,
    )
    mixed = ProbeConfig(model="m", dataset="d", out=tmp_path, recipe="paper", max_iter=50, max_length=64)
    assert (mixed.max_iter, mixed.max_length, mixed.solver) == (50, 64, "saga")
    with pytest.raises(PerceptAlignError, match="`recipe` must be one of"):
        ProbeConfig(model="m", dataset="d", out=tmp_path, recipe="published")


def test_training_job_configs_take_the_recipe(tmp_path):
    from perceptalign.ntps.jobs.lora import LoraJobConfig
    from perceptalign.ntps.jobs.scratch import ScratchJobConfig

    default = LoraJobConfig(model="m", dataset="d", out=tmp_path)
    assert (default.max_length, default.dtype, default.train) == (512, "float32", TrainConfig())
    assert default.linear_train is default.train
    custom = LoraJobConfig(model="m", dataset="d", out=tmp_path, train=TrainConfig(steps=40, lr=3e-4))
    assert custom.linear_train == TrainConfig(steps=40, lr=3e-4)  # the head follows LoRA, as before

    paper = LoraJobConfig(model="m", dataset="d", out=tmp_path, recipe="paper")
    assert (paper.max_length, paper.dtype) == ("model", "bfloat16")
    assert paper.train == PAPER.train_config("lora")
    assert paper.linear_train == PAPER.train_config("linear_baseline")
    assert (paper.lora.r, paper.lora.alpha, paper.lora.dropout) == (32, 32.0, 0.05)  # lora_finetuning.py
    short = LoraJobConfig(
        model="m",
        dataset="d",
        out=tmp_path,
        recipe="paper",
        train=PAPER.train_config("lora", steps=7, seed=3),
    )
    assert short.train.steps == 7 and short.train.weight_decay == 1e-5
    assert short.linear_train.seed == 3 and short.linear_train.epochs == 50

    assert ScratchJobConfig(model="m", dataset="d", out=tmp_path).train == TrainConfig()
    scratch = ScratchJobConfig(model="m", dataset="d", out=tmp_path, recipe="paper")
    assert (scratch.train.steps, scratch.dtype, scratch.max_length) == (10_000, "float32", "model")
    with pytest.raises(PerceptAlignError, match="`max_length` must be"):
        ScratchJobConfig(model="m", dataset="d", out=tmp_path, max_length=1)


def test_study_settings_of_the_default_recipe_are_unchanged(tmp_path):
    from perceptalign.ntps.jobs.study import StudyConfig

    default = StudyConfig(models=["m"], datasets=["d"], out=tmp_path)
    assert default.max_length == 512 and "recipe" not in default.settings()  # old digests stay valid
    paper = StudyConfig(models=["m"], datasets=["d"], out=tmp_path, recipe="paper")
    assert paper.max_length == "model" and paper.settings()["recipe"] == "paper"
    assert paper.digest("ntps") != default.digest("ntps")


# --------------------------------------------------------------------------------------------------
# end to end


def test_paper_lora_job_runs_and_records_its_recipe(tiny_llama, toy_csv, tmp_path):
    from perceptalign.ntps.jobs.lora import LoraJobConfig, run_lora

    config = LoraJobConfig(
        model=str(tiny_llama),
        dataset=str(toy_csv),
        out=tmp_path,
        max_eval_samples=30,
        recipe="paper",
        train=PAPER.train_config("lora", steps=4, eval_interval=2),
        ntps=False,
    )
    results = run_lora(config).results
    n_train = results["n_train"]
    assert results["dtype"] == "bfloat16" and results["max_length"] == 128  # the tiny Llama's maximum
    assert (
        results["recipe"] == "paper" and results["head_dropout"] == 0.05 and results["autocast"] == "bfloat16"
    )
    assert "weight_decay=1e-05" in results["optimizer"] and "transformers' cosine" in results["optimizer"]
    head = results["linear_head"]
    assert head["epochs"] == 50 and head["steps"] == 50 * math.ceil(n_train / 64)
    assert "AdamW" in head["optimizer"] and "constant" in head["optimizer"]
    assert results["recipe_note"] == PAPER_NOTE
    assert math.isfinite(results["gain"])
    saved = json.loads((tmp_path / "lora.json").read_text())
    assert saved["config"]["linear_train"]["optimizer"] == "adamw"


def test_default_lora_record_has_no_recipe_keys(tiny_llama, toy_csv, tmp_path):
    from perceptalign.ntps.jobs.lora import LoraJobConfig, run_lora

    config = LoraJobConfig(
        model=str(tiny_llama),
        dataset=str(toy_csv),
        out=tmp_path,
        max_length=64,
        max_eval_samples=20,
        train=TrainConfig(steps=3, eval_interval=3),
        ntps=False,
    )
    results = run_lora(config).results
    assert results["optimizer"] == OPTIMIZER_DESCRIPTION and "recipe" not in results
    assert "recipe_note" not in results and "optimizer" not in results["linear_head"]


def _probe_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    base = ["ntps", "probe", "--model", str(model), "--dataset", str(data), "--out", str(out)]
    return [*base, "--layers", "0,-1", "--test-fraction", "0.3", *extra]


def test_cli_probe_paper_recipe_prints_its_note_once(tiny_llama, toy_csv, tmp_path):
    runner = CliRunner()
    paper = runner.invoke(app, _probe_args(tiny_llama, toy_csv, tmp_path / "paper", "--recipe", "paper"))
    assert paper.exit_code == 0, paper.output
    flat = " ".join(paper.output.split())
    assert flat.count("recipe 'paper'") == 1 and "ntps_reference" in flat
    results = json.loads((tmp_path / "paper" / "probe.json").read_text())
    assert results["recipe"] == "paper" and results["max_length"] == 128
    assert results["logistic"] == {"solver": "saga", "C": 1.0, "tol": 0.01, "max_iter": 1000}
    default = runner.invoke(app, _probe_args(tiny_llama, toy_csv, tmp_path / "default"))
    assert default.exit_code == 0, default.output
    assert "recipe 'paper'" not in default.output
    results = json.loads((tmp_path / "default" / "probe.json").read_text())
    assert results["logistic"] == {"solver": "lbfgs", "C": 1.0, "tol": 1e-4, "max_iter": 2000}
    assert results["max_length"] == 512


def test_cli_unknown_recipe_is_refused_with_the_flag(tmp_path):
    result = CliRunner().invoke(
        app, ["ntps", "scratch", "--dataset", "x.csv", "--out", str(tmp_path), "--recipe", "published"]
    )
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "--recipe must be one of paper, default" in text, text


def test_the_recipe_option_is_offered_where_the_issue_asks():
    import typer.main

    commands = typer.main.get_command(app).commands["ntps"].commands  # type: ignore[attr-defined]
    for name in ("probe", "lora", "scratch", "study"):
        assert any("--recipe" in p.opts for p in commands[name].params), name
    for name in ("score", "probe", "peers", "lora", "scratch"):
        assert any("--tokenizer" in p.opts for p in commands[name].params), name


def test_train_config_rejects_unknown_choices():
    with pytest.raises(PerceptAlignError, match="optimizer"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(PerceptAlignError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(PerceptAlignError, match="epochs"):
        TrainConfig(epochs=0)
    assert asdict(TrainConfig())["epochs"] is None


def test_paper_scratch_job_runs(tiny_llama, toy_csv, tmp_path):
    from perceptalign.ntps.jobs.scratch import ScratchJobConfig, run_scratch

    config = ScratchJobConfig(
        model=str(tiny_llama),
        dataset=str(toy_csv),
        out=tmp_path,
        max_eval_samples=20,
        recipe="paper",
        train=PAPER.train_config("scratch", steps=3, eval_interval=3),
    )
    results = run_scratch(config).results
    assert (results["recipe"], results["dtype"], results["autocast"], results["head_dropout"]) == (
        "paper",
        "float32",
        "bfloat16",
        0.05,
    )
    assert results["max_length"] == 128 and results["recipe_note"] == PAPER_NOTE
    assert 0.0 <= results["eval_accuracy_scratch"] <= 1.0


def test_intent_registry_note_says_the_split_check_was_not_run():
    from perceptalign.ntps.datasets import list_datasets
    from perceptalign.ntps.datasets.hub import find_hub_spec

    note = find_hub_spec("intent").note
    assert note is not None and "not run offline" in note and "unverified" in note
    assert next(d for d in list_datasets() if d.name == "intent").note == note
