"""Drift-diffusion models (perceptalign.rtify.ddm): the solver path against PyDDM's own, parameter recovery
from trials that PyDDM simulates independently, variant selection by BIC, simulation, and input checks."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from perceptalign.io import PerceptAlignError
from perceptalign.rtify import ddm as ddm_module
from perceptalign.rtify.ddm import DDM, DDM_VARIANTS, DDMConfig, fit_ddm_variants
from perceptalign.rtify.trials import conditions

pyddm = pytest.importorskip("pyddm")

CONDS = [4.0, 10.0, 20.0, 40.0]
# Recovery fits need no global search: one local run from the best of a few starts.
QUICK = {"n_starts": 4, "n_local": 1}


def _pyddm_trials(
    conds: list[float],
    n: int,
    seed: int,
    *,
    k: float,
    B: float,
    t0: float,
    sv: float = 0.0,
    tau_B: float | None = None,
) -> pd.DataFrame:
    """Trials sampled by PyDDM (its analytical or numerical solver at dt = dx = 0.002 and its sampler) from a
    model with known parameters, built with ``pyddm.gddm`` independently of the module under test.

    PyDDM has no drift variability, so with ``sv`` the solution is averaged over 81 drifts spanning ±5 sd
    (trapezoid weights of the normal density) before sampling. Trials slower than 2.5 s are not recorded,
    as in the human data.
    """
    z = np.linspace(-5, 5, 81) if sv > 0 else np.zeros(1)
    w = np.exp(-0.5 * z**2)
    w /= w.sum()
    bound = B if tau_B is None else (lambda t: B * math.exp(-t / tau_B))
    tables = []
    for i, c in enumerate(conds):
        upper = lower = 0.0
        for node, weight in zip(z, w, strict=True):
            model = pyddm.gddm(
                drift=k * c + sv * node,
                bound=bound,
                nondecision=t0,
                mixture_coef=0,
                dt=0.002,
                dx=0.002,
                T_dur=2.5,
            )
            solution = model.solve()
            upper = upper + weight * solution.choice_upper
            lower = lower + weight * solution.choice_lower
        sample = pyddm.Solution(upper, lower, model, {}).sample(n, seed=seed + i)
        rt = np.concatenate([sample.choice_upper, sample.choice_lower])
        correct = np.arange(len(rt)) < len(sample.choice_upper)
        tables.append(pd.DataFrame({"condition": c, "rt_s": rt, "correct": correct}))
    return pd.concat(tables, ignore_index=True)


SV_MODEL = {"k": 0.1, "B": 1.0, "t0": 0.3, "sv": 1.2}
COLLAPSING_MODEL = {"k": 0.08, "B": 1.3, "t0": 0.3, "tau_B": 1.0}


@pytest.fixture(scope="module")
def sv_trials() -> pd.DataFrame:
    return _pyddm_trials(CONDS, 600, 100, **SV_MODEL)


@pytest.fixture(scope="module")
def collapsing_trials() -> pd.DataFrame:
    return _pyddm_trials(CONDS, 600, 100, **COLLAPSING_MODEL)


# ---------------------------------------------------------------- numerics


def test_nondecision_kernel_moves_mass_exactly() -> None:
    dt = 0.01
    for t0, st0 in [(0.0, 0.0), (0.2537, 0.0), (0.3, 0.0), (0.2537, 0.0731), (0.0, 0.25)]:
        first, w = ddm_module._nondecision_kernel(t0, st0, dt)
        steps = first + np.arange(len(w))
        assert w.min() >= 0 and w.sum() == pytest.approx(1.0, abs=1e-12)
        # Mass spread uniformly over a step and shifted by U[t0, t0 + st0] moves by (t0 + st0/2) on average.
        assert (steps * w).sum() * dt == pytest.approx(t0 + st0 / 2, abs=1e-12)
    # Continuous in st0 at 0 (the likelihood's gradient search relies on it).
    _, w0 = ddm_module._nondecision_kernel(0.2537, 0.0, dt)
    _, w1 = ddm_module._nondecision_kernel(0.2537, 1e-7, dt)
    np.testing.assert_allclose(w0, w1[: len(w0)], atol=1e-4)


def test_fast_solver_path_equals_pyddm_model_path(monkeypatch: pytest.MonkeyPatch) -> None:
    config = DDMConfig(
        bound="collapsing",
        drift_variability=True,
        start_variability=True,
        t0_variability=True,
        lapse="fitted",
        t0_max=0.8,
    )
    params = {"k": 0.06, "sv": 0.8, "B": 0.9, "tau_B": 1.5, "sz": 0.3, "t0": 0.25, "st0": 0.07, "lapse": 0.05}
    model = DDM.from_params(params, config)
    fast = [model._solve(c) for c in (0.8, 12.8, 51.2)]
    monkeypatch.setattr(ddm_module, "_csolve", lambda: None)  # every solve through pyddm.Model
    slow = [model._solve(c) for c in (0.8, 12.8, 51.2)]
    for (u1, l1), (u2, l2) in zip(fast, slow, strict=True):
        np.testing.assert_allclose(u1, u2, atol=1e-12)
        np.testing.assert_allclose(l1, l2, atol=1e-12)
        assert 0.9 < u1.sum() + l1.sum() <= 1.0 + 1e-9


@pytest.mark.parametrize("sv", [0.3, 0.45, 2.0])
def test_drift_mixture_against_dense_quadrature(sv: float) -> None:
    # Gauss–Hermite (sv < 0.4), the blend (0.4–0.5) and the shared drift grid (≥ 0.5) against 241 nodes.
    config = DDMConfig(bound="collapsing", drift_variability=True)
    model = DDM.from_params({"k": 0.08, "sv": sv, "B": 1.1, "tau_B": 1.2, "t0": 0.0}, config)
    solve = ddm_module._Solver(model.model_, {"condition": 4.0, "sv_node": 0.0})
    means, spread = [0.3 / 1.1, 3.2 / 1.1], sv / 1.1  # solver units: drift / B
    z = np.linspace(-6, 6, 241)
    w = np.exp(-0.5 * z**2)
    w /= w.sum()
    for m, (upper, lower) in zip(means, ddm_module._drift_mixtures(solve, means, spread), strict=True):
        parts = [solve(m + spread * node) for node in z]
        ref_upper = sum(wi * p[0] for wi, p in zip(w, parts, strict=True))
        ref_lower = sum(wi * p[1] for wi, p in zip(w, parts, strict=True))
        # Per-step probabilities agree to 2e-4 of the largest step probability (~0.01).
        np.testing.assert_allclose(upper, ref_upper, atol=2e-4 * ref_upper.max())
        np.testing.assert_allclose(lower, ref_lower, atol=2e-4 * ref_upper.max())


def test_density_matches_pyddm_analytical_solution() -> None:
    k, B, t0 = 0.08, 0.9, 0.3
    fine = DDM.from_params({"k": k, "B": B, "t0": t0}, DDMConfig(dt=0.002, dx=0.005))
    coarse = DDM.from_params({"k": k, "B": B, "t0": t0}, DDMConfig())
    for c in (4.0, 16.0):
        ref = pyddm.gddm(
            drift=k * c, bound=B, nondecision=t0, mixture_coef=0, dt=0.0005, dx=0.0005, T_dur=2.5
        ).solve_analytical()
        p_ref = ref.prob("correct") / (ref.prob("correct") + ref.prob("error"))
        mean_ref = (ref.choice_upper * ref.t_domain).sum() / ref.choice_upper.sum()
        for model, tolerance in ((fine, 0.002), (coarse, 0.006)):
            upper, _ = model._solve(c)
            dt = model.config.dt
            mean = (upper * (np.arange(len(upper)) - 0.5) * dt).sum() / upper.sum()  # step midpoints
            assert model.predicted_accuracy(c) == pytest.approx(p_ref, abs=2e-4)
            # Backward Euler delays decisions by O(dt): ~4 ms at dt = 0.01, < 1 ms at dt = 0.002.
            assert mean == pytest.approx(mean_ref, abs=tolerance)


# ---------------------------------------------------------------- simulation


def test_simulate_is_reproducible_and_matches_predicted_accuracy() -> None:
    config = DDMConfig(drift_variability=True, t0_variability=True, lapse="fitted", t0_max=0.8)
    model = DDM.from_params({"k": 0.05, "sv": 0.7, "B": 0.8, "t0": 0.25, "st0": 0.1, "lapse": 0.03}, config)
    table = model.simulate([3.2, 12.8, 51.2], 5000, seed=3)
    assert list(table.columns) == ["condition", "rt_s", "correct", "decided"]
    assert conditions(table) == [3.2, 12.8, 51.2]
    assert table["decided"].all() and (table["rt_s"] > 0).all() and (table["rt_s"] <= 2.5).all()
    for cond in (3.2, 12.8, 51.2):
        sub = table[table["condition"] == cond]
        p = model.predicted_accuracy(cond)
        assert abs(sub["correct"].mean() - p) < 4 * math.sqrt(p * (1 - p) / len(sub))  # 4 binomial SEs
    # The fastest non-lapse response is t0; lapses (3 %, uniform over 2.5 s) put ~0.3 % below it.
    assert (table["rt_s"] < 0.25).mean() < 0.01
    again = model.simulate([3.2, 12.8, 51.2], 5000, seed=3)
    pd.testing.assert_frame_equal(table, again)
    assert not model.simulate([3.2], 50, seed=4)["rt_s"].equals(model.simulate([3.2], 50, seed=5)["rt_s"])
    scored = model.score(table.drop(columns="decided"), n_per_condition=5000, seed=9)
    assert scored["condition"].tolist() == [3.2, 12.8, 51.2]
    # Its own samples: KS between two independent 5000-trial samples stays small.
    assert (scored["ks"] < 0.04).all()


def test_simulate_without_conditioning_returns_undecided_trials() -> None:
    config = DDMConfig(condition_on_response=False, max_time_s=1.0)
    model = DDM.from_params({"k": 0.01, "B": 1.5, "t0": 0.3}, config)  # slow: many trials exceed 1 s
    table = model.simulate([2.0], 2000, seed=0)
    undecided = table[~table["decided"]]
    assert 0.2 < len(undecided) / len(table) < 0.95
    assert (undecided["rt_s"] == 1.0).all() and not undecided["correct"].any()


# ---------------------------------------------------------------- fitting


def test_simple_fit_likelihood_and_criteria() -> None:
    data = _pyddm_trials([4.0, 16.0, 40.0], 700, 1, k=0.08, B=0.9, t0=0.3)
    fit = DDM(replace(DDMConfig(dt=0.005, dx=0.005), **QUICK)).fit(data)
    assert fit.n_params == 3 and set(fit.params_) == {"k", "B", "t0"}
    # Fitted k, B, t0 = 0.0842, 0.878, 0.3133 s; at dt = 0.002, 0.0831, 0.8863, 0.3081 s: the solver at
    # dt = 0.005 adds ~ +5 ms and -1 %, the rest is this data set's sampling error (SD over data sets of
    # this size: k 2.4 %, B 1.3 %, t0 3.4 ms).
    assert fit.params_["k"] == pytest.approx(0.08, rel=0.1)
    assert fit.params_["B"] == pytest.approx(0.9, rel=0.06)
    assert fit.params_["t0"] == pytest.approx(0.3, abs=0.025)
    assert fit.log_likelihood(data) == pytest.approx(fit.log_likelihood_, abs=1e-6)
    assert fit.aic_ == pytest.approx(6 - 2 * fit.log_likelihood_)
    assert fit.bic_ == pytest.approx(3 * math.log(len(data)) - 2 * fit.log_likelihood_)
    assert fit.n_trials_ == len(data) and fit.fit_seconds_ > 0 and fit.n_evaluations_ > 10
    assert fit.drift(16.0) == pytest.approx(16 * fit.params_["k"])
    again = DDM(replace(DDMConfig(dt=0.005, dx=0.005), **QUICK)).fit(data)
    assert again.params_ == fit.params_  # deterministic given the seed


# Recovery fits use dt = 0.005: at the default dt = 0.01 backward Euler blurs decision times by Poisson
# noise of variance dt·τ, which biased the estimates twice as much over the same 5 data sets (mean
# errors: constant + sv k +12 %, sv +18 %, t0 +15 ms; collapsing k +4 %, B -4 %, t0 +17 ms).
# Tolerances = |mean error| + 4 SD of the errors over 5 simulated data sets of the fixtures' size (seeds
# 100–500 of _pyddm_trials, the fixtures' seed among them), with the same fit settings:
#   constant + sv: k +6.6 % ± 2.4 %, sv +10 % ± 6 %, B +1.3 % ± 1.4 %, t0 +7.7 ± 2.5 ms;
#   collapsing:    k +2.0 % ± 1.1 %, B -2.2 % ± 2.6 %, tau_B +1.4 % ± 4.5 %, t0 +8.4 ± 3.2 ms.
# The shared positive t0 bias is the solver's (it halves from dt = 0.01 to 0.005).
RECOVERY = {"dt": 0.005, **QUICK}


@pytest.fixture(scope="module")
def sv_fit(sv_trials: pd.DataFrame) -> DDM:
    return DDM(DDMConfig(drift_variability=True, **RECOVERY)).fit(sv_trials)


@pytest.mark.slow
def test_recovers_constant_bound_with_drift_variability(sv_trials: pd.DataFrame, sv_fit: DDM) -> None:
    # The generating model makes slow errors in every condition that has errors (40 % has < 5).
    means = sv_trials.groupby(["condition", "correct"])["rt_s"].mean().unstack()
    assert (means.loc[CONDS[:3], False] > means.loc[CONDS[:3], True]).all()
    truth, fitted = SV_MODEL, sv_fit.params_
    assert set(fitted) == {"k", "sv", "B", "t0"}
    assert fitted["k"] == pytest.approx(truth["k"], rel=0.16)
    assert fitted["sv"] == pytest.approx(truth["sv"], rel=0.35)
    assert fitted["B"] == pytest.approx(truth["B"], rel=0.07)
    assert fitted["t0"] == pytest.approx(truth["t0"], abs=0.018)
    # The fitted model makes slow errors too (the bare model cannot: its errors are as fast as correct RTs).
    sim = sv_fit.simulate(CONDS[:3], 20_000, seed=0)
    sim_means = sim.groupby(["condition", "correct"])["rt_s"].mean().unstack()
    assert (sim_means[False] > sim_means[True] + 0.05).all()


@pytest.mark.slow
def test_fitted_lapse_is_small_without_lapses(sv_trials: pd.DataFrame, sv_fit: DDM) -> None:
    # 0.0 in all 5 data sets above; starting from the lapse-free fit, a fitted lapse can only add.
    fit = DDM(DDMConfig(drift_variability=True, lapse="fitted", **RECOVERY)).fit(
        sv_trials, init=sv_fit.params_
    )
    assert fit.params_["lapse"] < 0.005
    assert fit.n_params == sv_fit.n_params + 1
    assert fit.log_likelihood_ >= sv_fit.log_likelihood_ - 1e-6


@pytest.mark.slow
def test_recovers_collapsing_bound(collapsing_trials: pd.DataFrame) -> None:
    fit = DDM(DDMConfig(bound="collapsing", **RECOVERY)).fit(collapsing_trials)
    truth = COLLAPSING_MODEL
    assert fit.params_["k"] == pytest.approx(truth["k"], rel=0.07)
    assert fit.params_["B"] == pytest.approx(truth["B"], rel=0.13)
    assert fit.params_["tau_B"] == pytest.approx(truth["tau_B"], rel=0.2)
    assert fit.params_["t0"] == pytest.approx(truth["t0"], abs=0.022)


@pytest.mark.slow
def test_bic_selects_the_collapsing_bound(collapsing_trials: pd.DataFrame) -> None:
    variants = {
        "constant": DDMConfig(),
        "collapsing": DDMConfig(bound="collapsing"),
        "collapsing_sv": DDMConfig(bound="collapsing", drift_variability=True),
    }
    # Over the 5 data sets above: 'collapsing' won every time, 'constant' lost by > 350 and 'collapsing_sv'
    # by 7.8 (= ln(2400): it fitted sv = 0).
    selection = fit_ddm_variants(collapsing_trials, variants, overrides=RECOVERY)
    table = selection.table.set_index("variant")
    assert list(selection.table.columns) == [
        "variant",
        "n_params",
        "loglik",
        "aic",
        "bic",
        "fit_seconds",
        "selected",
    ]
    assert table["n_params"].to_dict() == {"constant": 3, "collapsing": 4, "collapsing_sv": 5}
    # Nested fits start from the nested optimum, so the richer variant is never worse.
    assert table.loc["collapsing_sv", "loglik"] >= table.loc["collapsing", "loglik"] - 0.5
    assert table.loc["collapsing", "loglik"] >= table.loc["constant", "loglik"] - 0.5
    assert table.loc["constant", "bic"] > table.loc["collapsing", "bic"] + 100
    assert selection.best.config.bound == "collapsing"
    assert table["selected"].sum() == 1 and table.loc[table["bic"].idxmin(), "selected"]
    assert selection.best is selection.fits[str(table["bic"].idxmin())]


def test_fit_ddm_variants_arguments() -> None:
    with pytest.raises(PerceptAlignError, match="criterion"):
        fit_ddm_variants(pd.DataFrame(), criterion="loglik")  # type: ignore[arg-type]
    with pytest.raises(PerceptAlignError, match="unknown DDM variant"):
        fit_ddm_variants(pd.DataFrame(), ["simple", "fancy"])
    with pytest.raises(PerceptAlignError, match="DDMConfig fields"):
        fit_ddm_variants(pd.DataFrame(), ["simple"], overrides={"no_such_field": 1})
    with pytest.raises(PerceptAlignError, match="`t0_max`"):
        fit_ddm_variants(pd.DataFrame(), ["simple"], t0_max=0.0)
    assert set(DDM_VARIANTS) >= {"simple", "constant_sv_sz_st0", "collapsing_sv", "collapsing_sv_sz_st0"}
    assert DDM_VARIANTS["simple"] == DDMConfig()  # the bare model: no lapse, no variability
    assert DDM_VARIANTS["collapsing_sv_sz_st0"].nests(DDM_VARIANTS["simple"])
    assert not DDM_VARIANTS["collapsing_sv"].nests(DDM_VARIANTS["constant_sv_sz_st0"])


# ---------------------------------------------------------------- bad input


def _small_trials() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "condition": np.repeat([5.0, 20.0], 50),
            "rt_s": rng.uniform(0.3, 1.2, 100),
            "correct": rng.random(100) < 0.8,
        }
    )


def test_bad_trials_are_refused_clearly() -> None:
    data = _small_trials()
    with pytest.raises(PerceptAlignError, match=r"missing column\(s\) \['correct'\]"):
        DDM().fit(data.drop(columns="correct"))
    with pytest.raises(PerceptAlignError, match="at least two conditions"):
        DDM().fit(data[data["condition"] == 5.0])
    with pytest.raises(PerceptAlignError, match="NaN"):
        DDM().fit(data.assign(rt_s=data["rt_s"].where(data.index != 3)))
    with pytest.raises(PerceptAlignError, match="per_condition"):
        DDM().fit(data.assign(condition=data["condition"].map({5.0: "hard", 20.0: "easy"})))
    with pytest.raises(PerceptAlignError, match="`max_time_s`"):
        DDM(DDMConfig(max_time_s=1.0)).fit(data.assign(rt_s=data["rt_s"] + 0.5))
    with pytest.raises(PerceptAlignError, match="not fitted"):
        DDM().simulate([5.0], 10)
    model = DDM.from_params({"k": 0.05, "B": 1.0, "t0": 0.2})
    with pytest.raises(PerceptAlignError, match="n_per_condition"):
        model.simulate([5.0], 0)
    with pytest.raises(PerceptAlignError, match="not numeric"):
        model.simulate(["easy"], 10)
    with pytest.raises(PerceptAlignError, match="missing parameter"):
        DDM.from_params({"k": 0.05, "B": 1.0}, DDMConfig())
    with pytest.raises(PerceptAlignError, match="DDMConfig"):
        DDM({"bound": "constant"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("t0_max", 0.0, "`t0_max` must be a number of seconds > 0"),
        ("t0_max", -0.3, "`t0_max`"),
        ("t0_max", float("nan"), "`t0_max`"),
        ("bound", "linear", "`bound` must be one of"),
        ("lapse", 0.02, "a fixed lapse weight is not offered"),
        ("drift", "quadratic", "`drift`"),
        ("drift_variability", 1, "`drift_variability` must be True or False"),
        ("dt", 0.0, "`dt`"),
        ("dx", 0.03, "whole steps"),
        ("max_time_s", 2.505, "`max_time_s`"),
        ("n_local", 0, "`n_local`"),
        ("seed", True, "`seed`"),
        ("max_iter", 2.5, "`max_iter`"),
    ],
)
def test_bad_config_names_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(PerceptAlignError, match=message):
        DDMConfig(**{field: value})  # type: ignore[arg-type]


def test_per_condition_drift_and_unfitted_conditions() -> None:
    data = _pyddm_trials([4.0, 40.0], 300, 3, k=0.08, B=0.9, t0=0.3)
    labelled = data.assign(condition=data["condition"].map({4.0: "hard", 40.0: "easy"}))
    fit = DDM(DDMConfig(drift="per_condition", **QUICK)).fit(labelled)
    assert set(fit.params_) == {"drift_easy", "drift_hard", "B", "t0"} and fit.n_params == 4
    assert fit.params_["drift_easy"] > fit.params_["drift_hard"]  # 3.2 vs 0.32 in the generating model
    with pytest.raises(PerceptAlignError, match="was not fitted"):
        fit.simulate(["medium"], 10)
    # Evaluation on other trials, one condition at a time: the conditions' log-likelihoods add up.
    by_condition = [fit.log_likelihood(labelled[labelled["condition"] == c]) for c in ("easy", "hard")]
    assert sum(by_condition) == pytest.approx(fit.log_likelihood_, abs=1e-6)
