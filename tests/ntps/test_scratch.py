"""From-scratch training: a really fresh model of the same configuration, all weights trained."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import perceptalign.cli.ntps_train  # noqa: F401  (registers `ntps lora` / `ntps scratch`)
from perceptalign.cli import app
from perceptalign.io import PerceptAlignError
from perceptalign.ntps.finetune import TrainConfig
from perceptalign.ntps.jobs.scratch import ScratchJobConfig, random_init_like, run_scratch
from perceptalign.ntps.models import load_causal_lm


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Matrices of the linear and embedding layers (norm weights start at 1 in any initialisation)."""
    kinds = (nn.Linear, nn.Embedding)
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, kinds)}


def test_random_init_differs_from_the_pretrained_weights_and_is_seeded(tiny_llama):
    loaded = load_causal_lm(str(tiny_llama))
    # The tiny fixture model is itself torch seed 0's initialisation, so seed 7 stands for "any other".
    fresh = random_init_like(loaded, seed=7)
    pretrained, new = _weights(loaded.model), _weights(fresh)
    assert pretrained.keys() == new.keys() and pretrained
    assert all(not torch.equal(pretrained[k], new[k]) for k in pretrained)
    assert fresh.config.to_dict() == loaded.model.config.to_dict()
    again = _weights(random_init_like(loaded, seed=7))
    assert all(torch.equal(new[k], again[k]) for k in new)
    assert all(p.requires_grad for p in fresh.parameters())


def test_scratch_job_trains_every_weight_and_lowers_the_loss(tiny_llama, toy_csv, tmp_path):
    out = tmp_path / "scratch"
    config = ScratchJobConfig(
        model=str(tiny_llama),
        dataset=str(toy_csv),
        out=out,
        max_length=64,
        save_model=True,
        train=TrainConfig(steps=60, batch_size=8, lr=1e-2, eval_interval=30, seed=7),
    )
    result = run_scratch(config)
    data = json.loads((out / "scratch.json").read_text())
    n_model = sum(p.numel() for p in load_causal_lm(str(tiny_llama)).model.parameters())
    assert data["n_trainable_params"] == n_model + 2 * 32 + 2  # every weight plus the head
    losses = np.asarray(result.scratch.losses)
    # The toy classes are separable by word identity: 60 steps must take the loss well below ln 2.
    assert losses[-10:].mean() < 0.5 * losses[:10].mean()
    assert [h["step"] for h in data["scratch"]["eval_history"]] == [30, 60]
    for name in (
        "scratch_head.safetensors",
        "scratch_training.png",
        "scratch_model/config.json",
        "scratch_model/head.safetensors",
    ):
        assert (out / name).is_file(), name
    # The saved model is the trained one, not the pretrained one.
    saved = _weights(load_causal_lm(str(out / "scratch_model")).model)
    pretrained = _weights(load_causal_lm(str(tiny_llama)).model)
    assert all(not torch.equal(saved[k], pretrained[k]) for k in pretrained)


def test_scratch_rejects_bad_options(tiny_llama, toy_csv, tmp_path):
    with pytest.raises(PerceptAlignError, match="`batch_size`"):
        ScratchJobConfig(
            model=str(tiny_llama), dataset=str(toy_csv), out=tmp_path / "s", train=TrainConfig(batch_size=0)
        )


def test_cli_scratch_end_to_end(tiny_llama, toy_csv, tmp_path):
    out = tmp_path / "cli"
    args = [
        "ntps",
        "scratch",
        "--model",
        str(tiny_llama),
        "--dataset",
        str(toy_csv),
        "--out",
        str(out),
        "--steps",
        "20",
        "--batch-size",
        "4",
        "--eval-interval",
        "10",
        "--lr",
        "1e-3",
        "--max-length",
        "64",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "scratch.json").read_text())
    assert data["steps"] == 20 and len(data["scratch"]["eval_history"]) == 2
    assert "from scratch" in result.output
