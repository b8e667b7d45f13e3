"""Abstract RDM task and GRU backbone: the stream's statistics against its generative formula, seeding,
caching, and the property every RDM observer must have (accuracy grows with coherence)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from perceptalign.io import PerceptAlignError, load_tensors
from perceptalign.rtify.experiments.rdm.task import (
    GRUBackbone,
    GRUTrainConfig,
    RDMTaskConfig,
    accuracy_by_condition,
    load_or_train_gru,
    make_trials,
    motion_energy,
)

TINY_TASK = RDMTaskConfig(coherences=(3.2, 12.8, 51.2), dt=0.05, n_steps=40)
TINY_GRU = GRUTrainConfig(hidden_size=16, steps=150, batch_size=64, lr=1e-2, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[GRUBackbone, dict]:
    torch.set_num_threads(1)
    return load_or_train_gru(TINY_TASK, TINY_GRU, cache=tmp_path_factory.mktemp("gru"))


def test_motion_energy_matches_generative_formula() -> None:
    task = RDMTaskConfig(coherences=(25.6,), n_steps=50, gain=1.2, noise=0.7)
    n = 4000
    coh = torch.full((n,), 25.6)
    labels = torch.arange(n) % 2
    x = motion_energy(coh, labels, task, torch.Generator().manual_seed(0))
    diff = x[..., 0] - x[..., 1]  # (N, T): drift g·c/100·d per step, variance 2σ²
    direction = labels.float() * 2 - 1
    signal = diff * direction.unsqueeze(1)
    expected_mean = 1.2 * 0.256
    samples = signal.numel()
    # Standard error of the mean of 200k draws with sd √2·0.7 ≈ 0.99 is 0.0022: 5 SE tolerance.
    assert abs(float(signal.mean()) - expected_mean) < 5 * math.sqrt(2 * 0.49 / samples)
    # Variance of the difference is 2σ² = 0.98; the sample variance's relative SE is √(2/n) ≈ 0.3 %.
    assert float(signal.var()) == pytest.approx(2 * 0.49, rel=0.02)
    # The two channels are symmetric around zero: their sum has mean 0.
    assert abs(float((x[..., 0] + x[..., 1]).mean())) < 5 * math.sqrt(2 * 0.49 / samples)


def test_make_trials_balanced_and_seeded() -> None:
    a = make_trials(TINY_TASK, 10, seed=3)
    b = make_trials(TINY_TASK, 10, seed=3)
    c = make_trials(TINY_TASK, 10, seed=4)
    assert a.x.shape == (30, TINY_TASK.n_steps, 2)
    assert torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.x, c.x)
    for coh in TINY_TASK.coherences:
        labels = a.labels[a.coherence == torch.tensor(coh)]
        assert len(labels) == 10 and int(labels.sum()) == 5  # exactly balanced directions


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"coherences": ()}, "coherences"),
        ({"coherences": (150.0,)}, "percentages"),
        ({"coherences": (1.0, 1.0)}, "distinct"),
        ({"dt": 0.0}, "dt"),
        ({"n_steps": 1}, "n_steps"),
        ({"noise": -1.0}, "noise"),
    ],
)
def test_task_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(PerceptAlignError, match=match):
        RDMTaskConfig(**kwargs)


def test_train_config_and_input_errors() -> None:
    with pytest.raises(PerceptAlignError, match="steps"):
        GRUTrainConfig(steps=0)
    with pytest.raises(PerceptAlignError, match="n_per_condition"):
        make_trials(TINY_TASK, 0, seed=0)
    with pytest.raises(PerceptAlignError, match="GRU input"):
        GRUBackbone(2, 4)(torch.zeros(3, 5, 3))


def test_trained_gru_accuracy_increases_with_coherence(trained: tuple[GRUBackbone, dict]) -> None:
    model, _ = trained
    acc = accuracy_by_condition(model, TINY_TASK, n_per_condition=400, seed=99)
    # Binomial SE at n = 400 is ≤ 0.025; ideal-observer accuracies after 40 steps are ≈ .57, .75, .997,
    # so the orderings below hold with > 3 SE margin for any reasonably trained network.
    assert acc[51.2] > 0.9
    assert acc[51.2] > acc[12.8] + 0.08
    assert acc[12.8] > acc[3.2] + 0.03
    # And the network beats chance at a medium coherence (> 5 SE above 0.5).
    assert acc[12.8] > 0.5 + 5 * 0.025


def test_gru_weights_are_cached_and_keyed(trained: tuple[GRUBackbone, dict]) -> None:
    model, info = trained
    assert info["cached"] is False
    # The fixture's own cache folder (its temp name depends on which other tests made a "gru" folder first).
    cache = Path(info["path"]).parent
    again, info2 = load_or_train_gru(TINY_TASK, TINY_GRU, cache=cache)
    assert info2["cached"] is True and info2["path"] == info["path"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name])
    stored = load_tensors(info["path"])
    assert set(stored) == set(model.state_dict())
    other = GRUTrainConfig(hidden_size=16, steps=151, batch_size=64, lr=1e-2, seed=0)
    from perceptalign.rtify.experiments.rdm.task import _cache_key

    assert _cache_key(TINY_TASK, other) != _cache_key(TINY_TASK, TINY_GRU)
