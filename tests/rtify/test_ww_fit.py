"""Wong–Wang fitting: parameter recovery from WW-simulated data, the straight-through choice against an
independent computation, the logit scale's closed form, logit ≡ coherence drive, averaging, fit.json."""

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
    CoherenceWW,
    LogitWW,
    WWFitConfig,
    WWTrials,
    build_ww,
    coherence_trials,
    fit_ww_to_human,
    init_logit_scale,
    predict_ww_table,
    project_parameters,
    run_ww_fit,
    straight_through_correct,
    write_ww_outputs,
    ww_parameters,
)

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


def test_parameter_recovery_j_ext_and_threshold() -> None:
    """WW-simulated "human" data with known J_ext = 0.010, θ = 0.42 (others at their defaults): the fit,
    started 100% / 0.18 away, recovers both. Tolerances (15% on J_ext, 0.05 on θ) are twice the
    seed-to-seed spread measured for this fast variant (60 steps of 200 trials per coherence)."""
    truth = CoherenceWW(build_ww(WWFitConfig(dt_ms=20.0, init={"J_ext": 0.010, "threshold": 0.42})))
    data = predict_ww_table(truth, coherence_trials(COH, 2000), seed=123)
    data = data[data["decided"]]
    config = WWFitConfig(
        dt_ms=20.0,
        steps=60,
        n_train=200,
        lr=0.08,
        learn=("J_ext", "threshold"),
        fine_dt_ms=None,
        init={"J_ext": 0.02, "threshold": 0.6},
    )
    model = CoherenceWW(build_ww(config))
    targets = HumanTargets.from_table(data, list(COH), config.hist_config())
    fit_ww_to_human(model, coherence_trials(COH, 200), targets, config)
    got = ww_parameters(model)
    assert abs(got["J_ext"] - 0.010) / 0.010 < 0.15
    assert abs(got["threshold"] - 0.42) < 0.05
    # Parameters outside `learn` did not move.
    assert got["I0"] == pytest.approx(0.3255) and got["J11"] == pytest.approx(0.2609)


def test_straight_through_value_is_hard_and_gradient_is_soft() -> None:
    """Value: exactly the hard outcome. Gradient: that of sigmoid(k·(S_c − S_w)) at the first crossing,
    recomputed independently (crossing found with numpy on the detached trajectory)."""
    k = 10.0
    model = CoherenceWW(build_ww(WWFitConfig(dt_ms=10.0)))
    trials = coherence_trials((6.4,), 64)
    gen = torch.Generator().manual_seed(0)
    out = model(trials.drive, generator=gen, return_trajectories=True)
    p = straight_through_correct(out, trials.correct_choice, k)
    hard = (out.choice == trials.correct_choice).float()
    assert torch.equal(p.detach(), hard)
    (grad_st,) = torch.autograd.grad(p.sum(), model.ww.J_ext, retain_graph=True)

    traj = out.trajectories
    theta = float(model.ww.threshold.detach())
    s = traj.detach().numpy()
    crossed = (s > theta).any(axis=2)
    tau = np.where(crossed.any(axis=1), crossed.argmax(axis=1), s.shape[1] - 1)
    at = traj[torch.arange(len(tau)), torch.as_tensor(tau)]  # (B, 2), still differentiable
    soft = torch.sigmoid(k * (at[:, 0] - at[:, 1]))  # coherence > 0: population 1 (index 0) correct
    (grad_ref,) = torch.autograd.grad(soft.sum(), model.ww.J_ext)
    # Same graph values, different gather path: agreement to float32 rounding of the adjoint sums.
    assert float(grad_st) == pytest.approx(float(grad_ref), rel=1e-4, abs=1e-6)
    assert float(grad_ref) > 0  # more external drive widens the correct population's margin

    with pytest.raises(PerceptAlignError, match="return_trajectories"):
        straight_through_correct(model(trials.drive, generator=gen), trials.correct_choice, k)


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
    a = CoherenceWW(build_ww(config))(coh.drive, generator=torch.Generator().manual_seed(3))
    b = LogitWW(build_ww(config), w)(frames, generator=torch.Generator().manual_seed(3), frame_s=0.25)
    assert torch.equal(a.choice, b.choice)
    assert torch.allclose(a.rt_s, b.rt_s, atol=0.0101)


def test_polyak_average_of_last_iterates() -> None:
    """With average_last = 0.5 over 4 steps the returned J_ext is the mean of the last two iterates."""
    train, _ = human_like()
    config = WWFitConfig(steps=4, n_train=30, average_last=0.5, fine_dt_ms=None, dt_ms=20.0)
    model = CoherenceWW(build_ww(config))
    targets = HumanTargets.from_table(train, list(COH), config.hist_config())
    history = fit_ww_to_human(model, coherence_trials(COH, 30), targets, config, max_delay_s=0.3)
    expected = (history[-1]["J_ext"] + history[-2]["J_ext"]) / 2
    assert ww_parameters(model)["J_ext"] == pytest.approx(expected, rel=1e-6)
    assert all(0 <= h["motor_delay_s"] <= 0.3 for h in history)  # projected into [0, fastest RT]


def test_project_parameters_clamps_into_box() -> None:
    model = CoherenceWW(build_ww(WWFitConfig()))
    with torch.no_grad():
        model.ww.threshold.fill_(3.0)
        model.ww.sigma.fill_(-1.0)
    project_parameters(model, {"threshold": (0.15, 0.95), "sigma": (1e-3, 0.1)})
    assert float(model.ww.threshold.detach()) == pytest.approx(0.95) and float(
        model.ww.sigma.detach()
    ) == pytest.approx(1e-3)


def test_predict_table_marks_correct_by_population() -> None:
    """For leftward trials (correct choice 1) the table's `correct` is the complement of choice 0."""
    model = CoherenceWW(build_ww(WWFitConfig(dt_ms=10.0)))
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
        LogitWW(build_ww(WWFitConfig()), 0.0)


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


class _StallOnSecondCall(CoherenceWW):
    """Simulates a step into the no-decision regime: the 2nd forward gets 20 ms, so no trial decides."""

    calls = 0

    def forward(self, x: torch.Tensor, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        return super().forward(x, **({**kwargs, "max_time_s": 0.02} if self.calls == 2 else kwargs))


def test_no_decision_step_is_rolled_back() -> None:
    """After a step with every trial undecided, the parameters (and Adam state) of the last healthy step
    come back exactly, the step size is halved, and that iterate is left out of the average."""
    train, _ = human_like()
    config = WWFitConfig(steps=3, n_train=30, dt_ms=20.0, fine_dt_ms=None, average_last=0.0)
    model = _StallOnSecondCall(build_ww(config))
    targets = HumanTargets.from_table(train, list(COH), config.hist_config())
    history = fit_ww_to_human(model, coherence_trials(COH, 30), targets, config)
    assert [h["rolled_back"] for h in history] == [0.0, 1.0, 0.0]
    assert history[1]["no_decision_rate"] == 1.0
    for name in ("J_ext", "threshold", "I0"):
        assert history[2][name] == history[0][name]  # restored bit for bit
        assert history[1][name] != history[0][name]  # the stalled step had moved it
