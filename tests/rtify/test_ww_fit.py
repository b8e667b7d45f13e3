"""Wong–Wang fitting: parameter recovery from WW-simulated data, the soft first-passage sample against the
hard decisions, no collapse into no-decision at dt = 5 ms on the human data, the logit scale's closed
form, logit ≡ coherence drive, averaging, fit.json."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from perceptalign.io import PerceptAlignError, read_json
from perceptalign.rtify.experiments.rdm import HumanTargets, compare_fits
from perceptalign.rtify.experiments.rdm.wongwang_fit import (
    WWFitConfig,
    WWTrials,
    build_ww,
    coherence_trials,
    fit_ww_to_human,
    init_logit_scale,
    input_kind,
    predict_ww_table,
    project_parameters,
    run_ww_fit,
    write_ww_outputs,
    ww_parameters,
    ww_sample,
)
from perceptalign.rtify.trials import load_rt_dataset, split_trials

COH = (3.2, 12.8, 51.2)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def human_like(seed: int = 0, n: int = 150) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train/test trials tables: shifted-gamma RTs, accuracy rising with coherence."""
    rng = np.random.default_rng(seed)
    out = []
    for split in ("train", "test"):
        rows = []
        for c in COH:
            rt = 0.3 + rng.gamma(2.0, 0.2 if c < 10 else 0.12, n)
            correct = rng.random(n) < (0.6 if c < 10 else 0.9)
            rows.append(pd.DataFrame({"condition": c, "rt_s": rt, "correct": correct, "split": split}))
        out.append(pd.concat(rows, ignore_index=True))
    return out[0], out[1]


def test_parameter_recovery_threshold_and_motor_delay() -> None:
    """WW-simulated "human" data with known θ = 0.42 and motor delay 0.25 s (others at their defaults): the
    fit, started at θ = 0.6 and 0.1 s, recovers both. Tolerances (0.04 each) are twice the largest error
    over three seeds of this variant (60 steps of 200 trials per coherence: errors ≤ .011; with 100
    trials ≤ .02). J_ext is not in this test any more: with the noise integrated correctly the RTs of
    three coherences constrain J_ext and θ only along a shallow valley (at 60 steps J_ext ends 10-35 %
    high with θ correspondingly high; 150 steps reach 10 %), and the choice itself carries no gradient
    (see the module docstring of wongwang_fit)."""
    truth = build_ww(WWFitConfig(dt_ms=20.0, init={"threshold": 0.42, "motor_delay_s": 0.25}))
    data = predict_ww_table(truth, coherence_trials(COH, 2000), seed=123)
    data = data[data["decided"]]
    config = WWFitConfig(
        dt_ms=20.0,
        steps=60,
        n_train=200,
        lr=0.08,
        learn=("threshold", "motor_delay_s"),
        fine_dt_ms=None,
        init={"threshold": 0.6, "motor_delay_s": 0.1},
    )
    model = build_ww(config)
    targets = HumanTargets.from_table(data, list(COH), config.hist_config())
    fit_ww_to_human(model, coherence_trials(COH, 200), targets, config)
    got = ww_parameters(model)
    assert abs(got["threshold"] - 0.42) < 0.04
    assert abs(got["motor_delay_s"] - 0.25) < 0.04
    # Parameters outside `learn` did not move.
    assert got["I0"] == pytest.approx(0.3255) and got["J_ext"] == pytest.approx(0.0156)


def test_soft_sample_sits_on_the_hard_decisions_and_has_gradients() -> None:
    """The "soft" estimator's sample: per condition, its mass is the decided fraction and its mass-weighted
    mean RT and accuracy are those of the hard decisions on the same noise (the temperature smooths each
    crossing over a fraction of a step); every learnable parameter gets a finite gradient."""
    config = WWFitConfig(dt_ms=10.0, max_time_s=1.5)
    model = build_ww(config)
    conds = [3.2, 51.2]
    trials = coherence_trials(conds, 100)
    sample, no_decision = ww_sample(model, trials, config, torch.Generator().manual_seed(0))
    hard = model(trials.drive, generator=torch.Generator().manual_seed(0))
    assert no_decision == pytest.approx(hard.no_decision_rate)
    for k in range(2):
        cells = sample.cond_idx == k
        trial = trials.cond_idx == k
        mass = sample.w_correct[cells] + sample.w_error[cells]
        decided = hard.decided[trial]
        assert float(mass.detach().sum()) == pytest.approx(float(decided.sum()), abs=0.5)
        mean_rt = float((mass * sample.rt_s[cells]).detach().sum() / mass.detach().sum())
        assert mean_rt == pytest.approx(float(hard.rt_s.detach()[trial][decided].mean()), abs=0.005)
        acc = float(sample.w_correct[cells].detach().sum() / mass.detach().sum())
        hard_acc = float((hard.choice[trial][decided] == 0).float().mean())
        assert acc == pytest.approx(hard_acc, abs=0.01)
    train = human_like()[0]
    targets = HumanTargets.from_table(train[train["condition"].isin(conds)], conds, config.hist_config())
    loss, _ = config.hist_config().rt_loss(sample, targets)
    loss.backward()
    for name in ("J11", "J12", "J_ext", "I0", "sigma", "threshold", "motor_delay_s"):
        grad = getattr(model, name).grad
        assert grad is not None and torch.isfinite(grad), name


def test_fit_at_5_ms_does_not_collapse_into_no_decision() -> None:
    """The collapse seen at dt = 5 ms on the human data (no-decision rate .02 → .30 within 10 steps, and
    at dt = 1 ms .01 → .79 within 24) came from the straight-through choice gradient, whose sign is
    wrong for I₀ and J₁₁ (module docstring of wongwang_fit). A short fit at 5 ms with the rollback guard
    disabled (max_no_decision = 1) must end with no more undecided trials than it started with; 1400
    trials per evaluation give a s.e. < .004 on rates below .01, so the margin .02 is > 5 s.e."""
    table = load_rt_dataset("rdm-human")
    train = split_trials(table, "train")
    conds = [3.2, 12.8, 51.2]
    train = train[train["condition"].isin(conds)]
    config = WWFitConfig(dt_ms=5.0, steps=25, n_train=100, fine_dt_ms=None, max_no_decision=1.0)
    model = build_ww(config)
    targets = HumanTargets.from_table(train, conds, config.hist_config())
    evaluation = coherence_trials(conds, 1400 // len(conds))
    before = predict_ww_table(model, evaluation, seed=1)["decided"].mean()
    history = fit_ww_to_human(model, coherence_trials(conds, 100), targets, config, max_delay_s=0.2)
    after = predict_ww_table(model, evaluation, seed=1)["decided"].mean()
    assert not any(h["rolled_back"] for h in history)
    assert (1 - after) <= (1 - before) + 0.02
    assert max(h["no_decision_rate"] for h in history) < 0.05


def test_logit_scale_closed_form_and_sign() -> None:
    """Mean signed logit m_c = c/5 exactly → w = 5; leftward trials carry negated logits."""
    conds = [3.2, 12.8, 51.2]
    k = torch.arange(3).repeat_interleave(4)
    correct_choice = torch.tensor([0, 1] * 6)  # alternate right (choice 0) / left (choice 1)
    c = torch.tensor(conds)[k]
    logits = torch.where(correct_choice == 0, c / 5, -c / 5).unsqueeze(1).expand(-1, 6).contiguous()
    trials = WWTrials(logits, k, correct_choice, conds, frame_s=2.0 / 6)
    assert init_logit_scale(trials) == pytest.approx(
        5.0, rel=1e-6
    )  # logits are float32: c/5 carries ~1e-7 relative rounding
    wrong = WWTrials(-logits, k, correct_choice, conds, frame_s=2.0 / 6)
    with pytest.raises(PerceptAlignError, match="wrong way"):
        init_logit_scale(wrong)
    with pytest.raises(PerceptAlignError, match="no evidence"):
        init_logit_scale(WWTrials(torch.zeros_like(logits), k, correct_choice, conds))


def test_logit_drive_equals_coherence_drive() -> None:
    """LogitWW with w·logit = c (per-frame series of a constant) is the coherence-driven model: same RTs
    and choices for the same noise (float32 scaling w·(c/w) may differ from c in the last bit, so RTs
    are compared to one integration step)."""
    config = WWFitConfig(dt_ms=10.0)
    coh = coherence_trials((6.4, 25.6), 50)
    w = 4.0
    frames = (coh.drive / w).unsqueeze(1).expand(-1, 8).contiguous()
    a = build_ww(config)(coh.drive, generator=torch.Generator().manual_seed(3))
    logit = build_ww(config, input_scale=w)
    assert input_kind(logit) == "logit" and input_kind(build_ww(config)) == "coherence"
    b = logit(frames, generator=torch.Generator().manual_seed(3), frame_s=0.25)
    assert torch.equal(a.choice, b.choice)
    assert torch.allclose(a.rt_s, b.rt_s, atol=0.0101)


def test_polyak_average_of_last_iterates() -> None:
    """With average_last = 0.5 over 4 steps the returned J_ext is the mean of the last two iterates."""
    train, _ = human_like()
    config = WWFitConfig(steps=4, n_train=30, average_last=0.5, fine_dt_ms=None, dt_ms=20.0)
    model = build_ww(config)
    targets = HumanTargets.from_table(train, list(COH), config.hist_config())
    history = fit_ww_to_human(model, coherence_trials(COH, 30), targets, config, max_delay_s=0.3)
    expected = (history[-1]["J_ext"] + history[-2]["J_ext"]) / 2
    assert ww_parameters(model)["J_ext"] == pytest.approx(expected, rel=1e-6)
    assert all(0 <= h["motor_delay_s"] <= 0.3 for h in history)  # projected into [0, fastest RT]


def test_project_parameters_clamps_into_box() -> None:
    model = build_ww(WWFitConfig())
    with torch.no_grad():
        model.threshold.fill_(3.0)
        model.sigma.fill_(-1.0)
    project_parameters(model, {"threshold": (0.15, 0.95), "sigma": (1e-3, 0.1)})
    assert float(model.threshold.detach()) == pytest.approx(0.95)
    assert float(model.sigma.detach()) == pytest.approx(1e-3)


def test_predict_table_marks_correct_by_population() -> None:
    """For leftward trials (correct choice 1) the table's `correct` is the complement of choice 0."""
    model = build_ww(WWFitConfig(dt_ms=10.0))
    right = predict_ww_table(model, coherence_trials((51.2,), 200), seed=1)
    assert right["correct"].mean() > 0.9  # 51.2%: WW is almost always right
    left = WWTrials(
        torch.full((200,), -51.2),
        torch.zeros(200, dtype=torch.long),
        torch.ones(200, dtype=torch.long),
        [51.2],
    )
    assert predict_ww_table(model, left, seed=1)["correct"].mean() > 0.9


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "kl"}, "loss must be"),
        ({"dt_ms": 0.0}, "dt_ms"),
        ({"dt_ms": 80.0}, "dt_ms"),
        ({"steps": 0}, "steps"),
        ({"estimator": "straight-through"}, "estimator"),
        ({"temperature": 0.0}, "temperature"),
        ({"learn": ("J_ext", "tau_s")}, "unknown Wong–Wang parameter"),
        ({"init": {"threshold": 1.5}}, "outside its range"),
        ({"average_last": 1.0}, "average_last"),
        ({"lr": -1.0}, "lr"),
    ],
)
def test_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(PerceptAlignError, match=match):
        WWFitConfig(**kwargs)


def test_trials_and_inputs_errors() -> None:
    with pytest.raises(PerceptAlignError, match="percentages"):
        coherence_trials([150.0], 3)
    with pytest.raises(PerceptAlignError, match="no trials for condition"):
        WWTrials(
            torch.ones(3), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), [1.0, 2.0]
        )
    train, test = human_like()
    with pytest.raises(PerceptAlignError, match="both fit_trials and eval_trials"):
        run_ww_fit(train, test, WWFitConfig(steps=1), fit_trials=coherence_trials(COH, 2))
    bad = test.assign(condition=99.0)
    with pytest.raises(PerceptAlignError, match="no training trials"):
        run_ww_fit(train, bad, WWFitConfig(steps=1))
    with pytest.raises(PerceptAlignError, match="non-zero"):
        build_ww(WWFitConfig(), input_scale=0.0)


def test_run_and_outputs_are_compare_compatible(tmp_path: Path) -> None:
    """Tiny end-to-end fit: fit.json in the `rtify fit` method schema (compare reads it), its per-condition
    accuracy equals the written trials' accuracy, the fine-dt check and the four figures exist."""
    train, test = human_like()
    config = WWFitConfig(steps=3, n_train=20, n_eval=60, dt_ms=20.0, fine_dt_ms=10.0)
    run = run_ww_fit(train, test, config)
    paths = write_ww_outputs(run, test, tmp_path)
    names = {p.name for p in paths}
    assert {"fit.json", "signed_rt_histograms.png", "ww_trajectories.png"} <= names
    report = read_json(tmp_path / "fit.json")
    assert report["model"] == "ww-coherence" and report["settings"]["input"] == "coherence"
    table = run.result.tables["ww-coherence"]
    decided = table[table["decided"]]
    for row in report["rtify"]["per_condition"]:
        sub = decided[decided["condition"] == row["condition"]]
        assert row["accuracy_model"] == pytest.approx(sub["correct"].mean())
    assert report["rtify"]["dt_check"]["dt_ms"] == 10.0
    assert math.isfinite(report["rtify"]["test_loss"])
    tables, summary, _ = compare_fits([tmp_path])
    assert "ww-coherence" in summary.index and set(tables) == set(COH)


def _stall_on_second_call(model):  # type: ignore[no-untyped-def]
    """Simulates a step into the no-decision regime: the 2nd simulation gets 20 ms, so no trial decides."""
    original = model.trajectories
    calls = [0]

    def trajectories(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return original(*args, **({**kwargs, "max_time_s": 0.02} if calls[0] == 2 else kwargs))

    model.trajectories = trajectories
    return model


def test_no_decision_step_is_rolled_back() -> None:
    """After a step with every trial undecided, the parameters (and Adam state) of the last healthy step
    come back exactly, the step size is halved, and that iterate is left out of the average."""
    train, _ = human_like()
    config = WWFitConfig(steps=3, n_train=30, dt_ms=20.0, fine_dt_ms=None, average_last=0.0)
    model = _stall_on_second_call(build_ww(config))
    targets = HumanTargets.from_table(train, list(COH), config.hist_config())
    history = fit_ww_to_human(model, coherence_trials(COH, 30), targets, config)
    assert [h["rolled_back"] for h in history] == [0.0, 1.0, 0.0]
    assert history[1]["no_decision_rate"] == 1.0
    for name in ("J_ext", "threshold", "I0"):
        assert history[2][name] == history[0][name]  # restored bit for bit
        assert history[1][name] != history[0][name]  # the stalled step had moved it
