"""RTify fitting: the pieces against independent formulas, recovery of a planted head, the accuracy term,
the self-penalised speed–accuracy trade-off, the fit.json schema and the comparison of fits."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from perceptalign.io import PerceptAlignError, read_json
from perceptalign.rtify.experiments.rdm import (
    FitConfig,
    HumanTargets,
    build_head,
    compare_fits,
    comparison_markdown,
    expected_signed_histograms,
    fit_head_to_human,
    head_sample,
    init_threshold,
    predict_table,
    run_fit,
    simulate,
    table_loss,
    train_self_penalised,
    weighted_quantiles,
    write_fit_outputs,
)
from perceptalign.rtify.experiments.rdm.task import (
    GRUBackbone,
    GRUTrainConfig,
    RDMTaskConfig,
    load_or_train_gru,
)
from perceptalign.rtify.heads import inverse_softplus
from perceptalign.rtify.losses import soft_histogram
from perceptalign.rtify.metrics import fit_quality
from perceptalign.rtify.trials import packaged_data_path

TASK = RDMTaskConfig(coherences=(3.2, 12.8, 51.2), dt=0.05, n_steps=40)
GRU = GRUTrainConfig(hidden_size=16, steps=150, batch_size=64, lr=1e-2, seed=0)
HUMAN_CSV = packaged_data_path("rdm_human_rt.csv.gz")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> GRUBackbone:
    torch.set_num_threads(1)
    model, _ = load_or_train_gru(TASK, GRU, cache=tmp_path_factory.mktemp("gru"))
    return model


def planted_head(backbone: GRUBackbone, t0: float = 0.35, target_step: float = 10.0, sharpness: float = 0.7):
    """A known RTify head: GRU read-out evidence, a threshold at a chosen median step, t₀, softened choice."""
    torch.manual_seed(1)
    head = build_head(backbone, TASK, FitConfig())
    sim = simulate(backbone, TASK, 100, seed=5)
    init_threshold(head, sim.hidden, target_step)
    with torch.no_grad():
        head.raw_t0.copy_(torch.tensor(inverse_softplus(t0)))
        head.classifier.weight.mul_(sharpness)
        head.classifier.bias.mul_(sharpness)
    return head


def human_like(head, backbone: GRUBackbone, n: int, seed: int) -> pd.DataFrame:
    """Synthetic "human" trials from a head: responses only (undecided trials dropped), like human data."""
    table = predict_table(head, simulate(backbone, TASK, n, seed=seed))
    return table[table["decided"]].drop(columns="decided").reset_index(drop=True)


# ---------------------------------------------------------------- building blocks


def test_weighted_quantiles_match_numpy_hazen_and_ignore_zero_weights() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=57)
    qs = (0.1, 0.3, 0.5, 0.7, 0.9)
    got = weighted_quantiles(torch.tensor(values), torch.ones(57, dtype=torch.float64), qs)
    # Equal weights put the k-th order statistic at (k − ½)/n: numpy's Hazen definition, to rounding.
    np.testing.assert_allclose(got.numpy(), np.quantile(values, qs, method="hazen"), atol=1e-12)
    weights = torch.ones(57, dtype=torch.float64)
    weights[::3] = 0.0
    kept = np.delete(values, np.arange(0, 57, 3))
    got = weighted_quantiles(torch.tensor(values), weights, qs)
    np.testing.assert_allclose(got.numpy(), np.quantile(kept, qs, method="hazen"), atol=1e-12)


def test_weighted_quantiles_gradient_reaches_values_and_weights() -> None:
    values = torch.tensor([0.3, 0.5, 0.9, 1.4], requires_grad=True)
    weights = torch.tensor([1.0, 2.0, 1.0, 1.0], requires_grad=True)
    weighted_quantiles(values, weights, (0.5,)).sum().backward()
    assert values.grad is not None and float(values.grad.abs().sum()) > 0
    assert weights.grad is not None and float(weights.grad.abs().sum()) > 0


def test_expected_histogram_with_hard_choices_is_the_signed_histogram() -> None:
    rng = np.random.default_rng(1)
    rt = torch.tensor(rng.uniform(0.3, 1.5, 80), dtype=torch.float32)
    correct = torch.tensor(rng.random(80) < 0.7)
    cond = torch.tensor([0] * 40 + [1] * 40)
    cfg = FitConfig(n_bins=100)
    got = expected_signed_histograms(rt, correct.float(), torch.ones(80, dtype=torch.bool), cond, 2, cfg)
    for k in range(2):
        m = cond == k
        signed = torch.where(correct[m], rt[m], -rt[m])
        ref = soft_histogram(signed, n_bins=100)  # p ∈ {0, 1}: the mixture collapses to the hard histogram
        torch.testing.assert_close(got[k], ref, atol=1e-6, rtol=1e-5)
    # A condition where half the trials are undecided keeps half its mass (missing mass, not renormalised).
    decided = torch.ones(80, dtype=torch.bool)
    decided[40:60] = False
    partial = expected_signed_histograms(rt, correct.float(), decided, cond, 2, cfg)
    # All RTs lie well inside the window, so a full condition has mass 1 (kernel tails beyond ±2.5 s are
    # < 1e-6) and the half-decided one 1/2.
    assert float(got[1].sum()) == pytest.approx(1.0, abs=1e-4)
    assert float(partial[1].sum()) == pytest.approx(0.5, abs=1e-4)
    assert float(partial[0].sum()) == pytest.approx(1.0, abs=1e-4)


def test_objective_is_zero_only_at_human_statistics() -> None:
    rng = np.random.default_rng(2)
    n = 3000
    human = pd.DataFrame(
        {
            "condition": np.repeat([3.2, 51.2], n),
            "rt_s": rng.uniform(0.3, 1.2, 2 * n),
            "correct": rng.random(2 * n) < np.repeat([0.6, 0.95], n),
        }
    )
    for loss in ("mse", "wasserstein", "quantile"):
        cfg = FitConfig(loss=loss)
        targets = HumanTargets.from_table(human, [3.2, 51.2], cfg)
        same = table_loss(human.assign(decided=True), targets, cfg)
        shifted = table_loss(human.assign(rt_s=human["rt_s"] + 0.2, decided=True), targets, cfg)
        # The human table itself: identical histograms / quantiles and accuracy, so the loss vanishes
        # (up to float32 rounding of the kernel sums).
        assert same == pytest.approx(0.0, abs=1e-6)
        assert shifted > 10 * max(same, 1e-9)


def test_fit_config_errors() -> None:
    for kwargs, match in (
        ({"objective": "humans"}, "objective"),
        ({"loss": "kl"}, "loss"),
        ({"penalty": "speed"}, "penalty"),
        ({"lam": -1.0}, "lam"),
        ({"head_steps": 0}, "head_steps"),
        ({"evidence": "mlp"}, "evidence"),
    ):
        with pytest.raises(PerceptAlignError, match=match):
            FitConfig(**kwargs)


# ---------------------------------------------------------------- fitting behaviour


def test_fit_recovers_a_planted_head(backbone: GRUBackbone) -> None:
    truth = planted_head(backbone)
    human_train = human_like(truth, backbone, 500, seed=11)
    human_test = human_like(truth, backbone, 1500, seed=12)
    # Sampling-noise floor: W1 between two independent samples of the planted head itself.
    floor = fit_quality(human_like(truth, backbone, 1500, seed=13), human_test)
    cfg = FitConfig(head_steps=150, n_train=200, lr=0.03)
    targets = HumanTargets.from_table(human_train, list(TASK.coherences), cfg)
    head = build_head(backbone, TASK, cfg)
    sim_train = simulate(backbone, TASK, cfg.n_train, seed=21)
    sim_test = simulate(backbone, TASK, 1500, seed=22)
    init_threshold(head, sim_train.hidden, (targets.median_rt - cfg.t0_init) / TASK.dt)
    before = fit_quality(predict_table(head, sim_test), human_test)
    fit_head_to_human(head, sim_train, targets, cfg)
    after = fit_quality(predict_table(head, sim_test), human_test)
    # Recovered up to the sampling-noise floor plus 0.03 s of optimisation / finite-training-set error,
    # and much closer than where the fit started.
    assert after["wasserstein"].mean() < floor["wasserstein"].mean() + 0.03
    # Measured: mean W1 0.0746 → 0.046–0.055 (floor 0.034), depending on how strongly the accuracy term
    # pulls; the 3.2 % condition ends 0.03–0.055 above its floor (one head serves all coherences, 200
    # training trials each, 150 steps): NOT the "floor + 0.01 at every condition" of issue #10 — a known
    # gap. 0.8 still fails a fit that does not move.
    assert after["wasserstein"].mean() < 0.8 * before["wasserstein"].mean()
    # Accuracy per condition within 0.06: the SE of a difference of two accuracies over 1500 sampled
    # choices each is ≤ 0.018, so 0.06 is > 3 SE.
    np.testing.assert_array_less(np.abs(after["accuracy_model"] - after["accuracy_human"]), 0.06)


def test_accuracy_is_fitted_through_the_choice_mass(backbone: GRUBackbone) -> None:
    """Planted case: human-like trials from a known head with 15 % of the choices flipped (less accurate).

    The choice is the accumulator's, so only the soft first-passage estimator gives it a gradient; with
    the quantile loss + accuracy KL it must close most of the accuracy gap at every coherence, while the
    published implicit rule (no choice gradient) leaves the gap at the strongest coherence where it was.
    """
    truth = planted_head(backbone)
    human = human_like(truth, backbone, 400, seed=31)
    rng = np.random.default_rng(0)
    flip = rng.random(len(human)) < 0.15
    human.loc[flip, "correct"] = ~human.loc[flip, "correct"]
    target = human.groupby("condition")["correct"].mean().to_numpy()
    sim = simulate(backbone, TASK, 200, seed=32)

    def accuracy(head) -> np.ndarray:
        head.estimator = "soft"  # measure every head's expected accuracy the same way
        with torch.no_grad():
            sample = head_sample(head(sim.hidden), head, sim)
        correct, error = sample.condition_masses()
        return (correct / (correct + error)).double().numpy()

    gaps = {}
    for estimator in ("soft", "implicit"):
        cfg = FitConfig(loss="quantile", acc_weight=1.0, head_steps=80, lr=0.03, estimator=estimator)
        head = build_head(backbone, TASK, cfg)
        targets = HumanTargets.from_table(human, list(TASK.coherences), cfg)
        init_threshold(head, sim.hidden, (targets.median_rt - cfg.t0_init) / TASK.dt)
        start = np.abs(accuracy(head) - target)
        head.estimator = estimator
        fit_head_to_human(head, sim, targets, cfg)
        gaps[estimator] = (start, np.abs(accuracy(head) - target))
    start, soft_end = gaps["soft"]
    assert (start > 0.09).all()  # the network starts far more accurate than the planted humans
    # Measured: the gaps shrink to 0.4–0.6 of where they started in 80 steps (0.06 → 0.04, 0.12 → 0.03,
    # 0.16 → 0.10); 0.75 leaves room for thread-count rounding while still failing a rule without gradient.
    assert (soft_end < 0.75 * start).all()
    implicit_start, implicit_end = gaps["implicit"]
    assert implicit_end[2] > 0.9 * implicit_start[2]


def test_self_penalty_trades_speed_for_accuracy(backbone: GRUBackbone) -> None:
    sim = simulate(backbone, TASK, 300, seed=41)
    stats = {}
    for lam in (0.0, 0.05):
        cfg = FitConfig(
            objective="self-penalty", penalty="tau", lam=lam, head_steps=60, lr=0.05, self_penalty_batch=32
        )
        torch.manual_seed(0)
        head = build_head(backbone, TASK, cfg)
        train_self_penalised(head, backbone, TASK, cfg)
        table = predict_table(head, sim)
        stats[lam] = (float(table["rt_s"].mean()), float(table["correct"].mean()))
        assert float(head.t0.detach()) == pytest.approx(cfg.t0_fixed, rel=1e-5)  # t₀ fixed, not learned
    (rt0, acc0), (rt1, acc1) = stats[0.0], stats[0.05]
    # Speed pressure makes decisions faster by far more than a step ...
    assert rt1 < rt0 - 2 * TASK.dt
    # ... and cannot buy accuracy: the same 900 trials are scored (binomial SE ≈ 0.015), so allow 2 SE.
    assert acc1 <= acc0 + 0.03


def test_run_fit_errors_on_bad_conditions(tmp_path: Path) -> None:
    train = pd.DataFrame({"condition": ["a", "b"], "rt_s": [0.5, 0.6], "correct": [True, False]})
    with pytest.raises(PerceptAlignError, match=r"coherences in % \(numbers\), but has labels \(train split"):
        run_fit(train, train, FitConfig())
    train = pd.DataFrame({"condition": [3.2, 12.8], "rt_s": [0.5, 0.6], "correct": [True, False]})
    test = pd.DataFrame({"condition": [3.2, 12.8, 51.2], "rt_s": [0.5, 0.6, 0.5], "correct": [True] * 3})
    # an unseen numeric test coherence is predicted (test_fit_any_csv.py); one without a number is not
    with pytest.raises(PerceptAlignError, match=r"has labels \(test split: \['catch'\]\)"):
        run_fit(train, test.assign(condition=[3.2, 12.8, "catch"]), FitConfig())
    with pytest.raises(PerceptAlignError, match=r"test split\) must be finite percentages .*got 150"):
        run_fit(train, test.assign(condition=[3.2, 12.8, 150.0]), FitConfig())


# ---------------------------------------------------------------- report and comparison


@pytest.fixture(scope="module")
def fit_dirs(backbone: GRUBackbone, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny experiments on planted data (human fit with baselines, self-penalty without)."""
    truth = planted_head(backbone)
    train, test = human_like(truth, backbone, 300, seed=51), human_like(truth, backbone, 300, seed=52)
    cache = tmp_path_factory.mktemp("gru-fit")
    dirs = []
    for objective, baselines in (("human", True), ("self-penalty", False)):
        cfg = FitConfig(objective=objective, head_steps=30, n_train=80, n_eval=200)
        result = run_fit(train, test, cfg, task=TASK, gru=GRU, baselines=baselines, cache=cache)
        out = tmp_path_factory.mktemp(objective)
        write_fit_outputs(result, test, out)
        train.to_csv(out / "train.csv", index=False)  # for the test of the shared t₀ box
        dirs.append(out)
    return dirs[0], dirs[1]


def _train_of(fit_dir: Path) -> pd.DataFrame:
    return pd.read_csv(fit_dir / "train.csv")


def test_fit_json_schema(fit_dirs: tuple[Path, Path]) -> None:
    human_dir, self_dir = fit_dirs
    report = read_json(human_dir / "fit.json")
    assert report["objective"] == "human" and report["model"] == "rtify-human"
    assert set(report["settings"]) == {"fit", "task", "gru", "t0_max_s", "torch_threads"}
    assert report["settings"]["torch_threads"] == torch.get_num_threads()
    assert report["settings"]["task"]["coherences"] == list(TASK.coherences)
    for section in (report["rtify"], *report["baselines"].values()):
        rows = section["per_condition"]
        assert [r["condition"] for r in rows] == list(TASK.coherences)
        for key in (
            "accuracy_model",
            "accuracy_human",
            "median_rt_correct_model",
            "q10_correct_model",
            "q90_error_human",
            "ks",
            "wasserstein",
            "hist_mse",
        ):
            assert key in rows[0]
        assert 0 <= section["no_decision_rate"] <= 1
        assert math.isfinite(section["test_loss"])
        assert section["summary"]["n_conditions"] == 3
    assert set(report["baselines"]) == {"entropy", "evidential", "ddm", "ddm-simple"}
    assert report["rtify"]["params"]["t0_learned"] is True
    # one t₀ box for every method, and every method says how many parameters it fitted to the humans
    box = report["settings"]["t0_max_s"]
    assert box == pytest.approx(min(0.8, float(pd.DataFrame(_train_of(human_dir))["rt_s"].median())))
    assert report["rtify"]["params"]["t0"] <= box and report["baselines"]["entropy"]["params"]["t0"] <= box
    assert report["baselines"]["ddm"]["params"]["t0"] <= box + 1e-9
    counts = {name: report["baselines"][name]["n_params"] for name in report["baselines"]}
    assert counts["entropy"] == 2 and counts["ddm-simple"] == 3 and counts["ddm"] >= 3
    assert report["rtify"]["n_params"] == 16 + 1 + 2  # linear evidence on 16 GRU units, θ, t₀
    assert report["baselines"]["ddm"]["params"]["variant"] in {
        r["variant"] for r in report["baselines"]["ddm"]["selection"]
    }
    assert {"gru", "head", "baselines", "total"} <= set(report["runtime_s"])
    # The fitted non-decision time is a positive time shorter than every predicted RT.
    assert (
        0
        < report["rtify"]["params"]["t0"]
        < min(r["q10_correct_model"] for r in report["rtify"]["per_condition"])
    )
    for name in ("signed_rt_histograms.png", "psychometric_chronometric.png", "quantile_probability.png"):
        assert (human_dir / name).stat().st_size > 10_000
    selfpen = read_json(self_dir / "fit.json")
    assert selfpen["baselines"] == {} and selfpen["rtify"]["params"]["t0_learned"] is False
    assert selfpen["rtify"]["params"]["t0"] == pytest.approx(FitConfig().t0_fixed, rel=1e-5)


def test_compare_fits_picks_lowest_mean_w1(fit_dirs: tuple[Path, Path]) -> None:
    tables, summary, best = compare_fits(list(fit_dirs))
    assert list(tables) == list(TASK.coherences)
    methods = set(tables[3.2].index)
    assert {
        "human",
        "RTify (human fit)",
        "RTify self-penalised",
        "entropy threshold",
        "evidential",
        "DDM (BIC-selected)",
        "DDM (simple)",
    } == methods
    # Recompute the mean W1 of every method from the JSON files, independently of compare_fits.
    means = {}
    for d in fit_dirs:
        report = read_json(d / "fit.json")
        for name, entry in [(report["model"], report["rtify"]), *report["baselines"].items()]:
            means.setdefault(name, np.mean([r["wasserstein"] for r in entry["per_condition"]]))
    assert best["mean_wasserstein"] == pytest.approx(min(means.values()))
    assert best["margin"] == pytest.approx(sorted(means.values())[1] - min(means.values()))
    text = comparison_markdown(tables, summary, best)
    assert text.count("## coherence") == 3 and best["method"] in text.splitlines()[-1]


def test_compare_errors(tmp_path: Path) -> None:
    with pytest.raises(PerceptAlignError, match=r"no fit\.json"):
        compare_fits([tmp_path])
    (tmp_path / "fit.json").write_text('{"something": 1}')
    with pytest.raises(PerceptAlignError, match=r"not a fit\.json"):
        compare_fits([tmp_path])
    with pytest.raises(PerceptAlignError, match="at least one"):
        compare_fits([])


# ---------------------------------------------------------------- the real human data


@pytest.mark.slow
def test_real_human_fit_beats_initial_head(tmp_path: Path) -> None:
    from perceptalign.rtify.trials import load_rt_dataset

    train = load_rt_dataset("rdm-human", split="train", path=HUMAN_CSV)
    test = load_rt_dataset("rdm-human", split="test", path=HUMAN_CSV)
    cfg = FitConfig(head_steps=150, n_train=200, n_eval=1000)
    result = run_fit(train, test, cfg, baselines=False, cache=tmp_path)
    rows = pd.DataFrame(result.report["rtify"]["per_condition"])
    # The initial head (GRU read-out evidence, θ at the human median) evaluated the same way.
    task = RDMTaskConfig()
    backbone, _ = load_or_train_gru(task, GRUTrainConfig(), cache=tmp_path)
    head = build_head(backbone, task, cfg)
    sim = simulate(backbone, task, cfg.n_eval, seed=cfg.seed + 202)
    targets = HumanTargets.from_table(train, list(task.coherences), cfg)
    init_threshold(
        head,
        simulate(backbone, task, cfg.n_train, seed=cfg.seed + 101).hidden,
        (targets.median_rt - cfg.t0_init) / task.dt,
    )
    initial = fit_quality(predict_table(head, sim), test)
    assert rows["wasserstein"].mean() < initial["wasserstein"].mean()
    # Accuracy ordering: model accuracy rises with coherence like the humans' (Spearman ρ ≥ 0.85 over 7).
    from scipy.stats import spearmanr

    assert spearmanr(rows["condition"], rows["accuracy_model"]).statistic >= 0.85
    assert rows["accuracy_model"].iloc[-1] > rows["accuracy_model"].iloc[0] + 0.3


def test_cosine_schedule_anneals_the_head_learning_rate_to_zero(backbone: GRUBackbone) -> None:
    """The recorded rates follow lr·(1 + cos(π·k/K))/2 (CosineAnnealingLR's closed form) and the constant
    schedule keeps lr; with the rate near 0 at the end, the last steps barely move the loss, unlike the
    constant rate's oscillation."""
    truth = planted_head(backbone)
    human = human_like(truth, backbone, 300, seed=41)
    sim = simulate(backbone, TASK, 100, seed=42)
    histories = {}
    for schedule in ("constant", "cosine"):
        cfg = FitConfig(head_steps=40, n_train=100, lr=0.03, lr_schedule=schedule)
        targets = HumanTargets.from_table(human, list(TASK.coherences), cfg)
        head = build_head(backbone, TASK, cfg)
        histories[schedule] = fit_head_to_human(head, sim, targets, cfg)
    steps = np.arange(40)
    expected = 0.03 * (1 + np.cos(np.pi * steps / 40)) / 2
    np.testing.assert_allclose([h["lr"] for h in histories["cosine"]], expected, rtol=1e-6)
    assert all(h["lr"] == 0.03 for h in histories["constant"])
    last = [h["loss"] for h in histories["cosine"][-4:]]
    assert max(last) - min(last) < 1e-3  # rate ≤ 0.03·(1 − cos(π·4/40))/2 ≈ 7e-4 per step at the end
    with pytest.raises(PerceptAlignError, match="lr_schedule"):
        FitConfig(lr_schedule="step")  # type: ignore[arg-type]


# ---------------------------------------------------------------- fitted stimulus gain (planted amendment 4)


def test_gain_scale_is_the_task_at_a_scaled_gain(backbone: GRUBackbone) -> None:
    """Independent construction: re-running the GRU on noise + s·signal equals simulating a task whose gain
    is s·g (the signal is linear in the gain; the noise draws are the same). float32 rounding of
    g·c/100·d/2 computed two ways: ~1e-7 relative in the input, ~1e-6 in the states."""
    import dataclasses

    from perceptalign.rtify.experiments.rdm.stimulus_gain import StimulusGain

    scaled = simulate(backbone, TASK, 20, seed=3, gain_scale=1.7)
    direct = simulate(backbone, dataclasses.replace(TASK, gain=TASK.gain * 1.7), 20, seed=3)
    torch.testing.assert_close(scaled.hidden, direct.hidden, rtol=1e-5, atol=1e-5)
    plain = simulate(backbone, TASK, 20, seed=3)
    gain = StimulusGain(backbone, plain)
    torch.testing.assert_close(gain(), plain.hidden, rtol=1e-6, atol=1e-6)  # scale 1 = the task's gain
    with torch.no_grad():
        gain.log_scale.fill_(math.log(1.7))
    torch.testing.assert_close(gain(), direct.hidden, rtol=1e-5, atol=1e-5)
    before = [None if p.grad is None else p.grad.clone() for p in backbone.parameters()]
    gain().sum().backward()
    assert gain.log_scale.grad is not None and float(gain.log_scale.grad) != 0.0
    assert not any(p.requires_grad for p in backbone.parameters())  # the backbone stays frozen
    for old, p in zip(before, backbone.parameters(), strict=True):  # and gets no gradient
        assert (old is None and p.grad is None) or torch.equal(old, p.grad)
    assert [name for name, _ in gain.named_parameters()] == ["log_scale"]


def test_fit_gain_recovers_a_planted_stimulus_gain(backbone: GRUBackbone) -> None:
    """Planted: "human" trials from a known head on the stream at 1.6× the task's gain. A fit that starts at
    the task's gain (s = 1) with `fit_gain` recovers s ≈ 1.6 in 120 steps."""
    from perceptalign.rtify.experiments.rdm.stimulus_gain import StimulusGain

    truth = planted_head(backbone)
    table = predict_table(truth, simulate(backbone, TASK, 400, seed=51, gain_scale=1.6))
    human = table[table["decided"]].drop(columns="decided").reset_index(drop=True)
    sim = simulate(backbone, TASK, 150, seed=52)
    cfg = FitConfig(head_steps=120, n_train=150, lr=0.03, fit_gain=True)
    targets = HumanTargets.from_table(human, list(TASK.coherences), cfg)
    head = build_head(backbone, TASK, cfg)
    gain = StimulusGain(backbone, sim)
    history = fit_head_to_human(head, sim, targets, cfg, gain=gain)
    assert history[0]["gain_scale"] == 1.0
    # Measured 1.59. ±0.2 leaves room for the accuracy noise of 400 "human" trials per coherence (SE ≤ 0.025,
    # which moves the gain that matches them by ~0.1) and thread-count rounding, and still fails a fit that
    # leaves the gain at 1.
    assert abs(float(gain.scale.detach()) - 1.6) < 0.2
    with pytest.raises(PerceptAlignError, match="fit_gain"):
        FitConfig(objective="self-penalty", fit_gain=True)


def test_head_estimator_with_fit_gain_simulates_at_the_fitted_gain(backbone: GRUBackbone) -> None:
    """The estimator's simulations run the GRU at the gain it fitted (not the task's), on its eval trials;
    a cache of network outputs, which has no stimulus, is refused with the reason."""
    from perceptalign.rtify.estimators import CachedTrials, RTifyHeadConfig, RTifyHeadEstimator
    from perceptalign.rtify.experiments.rdm.simulated_trials import GRUTrials

    truth = planted_head(backbone)
    table = predict_table(truth, simulate(backbone, TASK, 200, seed=61, gain_scale=1.4))
    human = table[table["decided"]].drop(columns="decided").reset_index(drop=True)
    config = RTifyHeadConfig(head_steps=30, n_train=60, fit_gain=True)
    estimator = RTifyHeadEstimator(config, GRUTrials(backbone, TASK)).fit(human)
    scale = estimator.gain_scale_
    assert scale is not None and scale != 1.0
    assert estimator.simulation_network.gain_scale == scale
    simulated = estimator.simulate([12.8], 50, seed=3)
    again = estimator.simulation_network([12.8], 50, seed=3, pool="eval")
    expected = predict_table(estimator.head_, again)
    np.testing.assert_allclose(simulated["rt_s"].to_numpy(), expected["rt_s"].to_numpy())
    # The expected (soft) objective scores the same trials as the hard table: they agree closely, whereas
    # the same head on the task-gain stream (the trials it was not fitted for) scores differently.
    conds = list(TASK.coherences)
    cfg = config.fit_config()
    targets = HumanTargets.from_table(human, conds, cfg)
    soft, _ = estimator.expected_loss(targets, conds, 200, seed=7)
    hard = table_loss(estimator.simulate(conds, 200, seed=7).drop(columns="decided"), targets, cfg)
    wrong_stream = GRUTrials(backbone, TASK)(conds, 200, seed=7, pool="eval")
    with torch.no_grad():
        wrong, _ = cfg.rt_loss(
            head_sample(estimator.head_(wrong_stream.hidden), estimator.head_, wrong_stream), targets
        )
    # measured: soft 0.452, hard 0.430, task-gain stream 0.541 (fitted scale 1.29)
    assert abs(soft - hard) < 0.5 * abs(float(wrong) - hard)
    sim = simulate(backbone, TASK, 40, seed=4)
    condition = [sim.conditions[i] for i in sim.cond_idx.tolist()]
    fit_pool = torch.arange(len(sim)) % 2 == 0
    cached = CachedTrials(sim.hidden, sim.logits, sim.labels, condition, fit_pool, dt=TASK.dt)
    with pytest.raises(PerceptAlignError, match="fit_gain"):
        RTifyHeadEstimator(config, cached).fit(human)
