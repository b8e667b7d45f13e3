"""Figures: the right panels exist and the plotted data are the data (checked on the artists)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.lines import Line2D
from matplotlib.patches import StepPatch

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.figures import (
    psychometric_chronometric,
    quantile_probability_plot,
    signed_rt_histograms,
)
from perceptalign.rtify.metrics import rt_quantiles

CONDS = [0.8, 6.4, 25.6, 51.2, 12.8]


def _trials(seed: int, n: int = 300, slow: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for c in CONDS:
        p = 0.5 + 0.49 * c / 51.2
        rows.append(
            pd.DataFrame(
                {
                    "condition": c,
                    "rt_s": 0.25 + slow + rng.gamma(2.0, 0.2 - c / 400, size=n),
                    "correct": rng.random(n) < p,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def _model_lines(ax) -> list[Line2D]:
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_signed_rt_histograms_panels_and_data() -> None:
    human, model_a, model_b = _trials(0), _trials(1, slow=0.1), _trials(2)
    model_b = model_b.assign(decided=model_b.index % 10 != 0)  # 10% undecided trials draw no mass
    fig = signed_rt_histograms(human, {"rtify": model_a, "ddm": model_b}, ncols=3)
    axes = fig.get_axes()
    assert len(axes) == len(CONDS)  # the unused sixth grid cell is removed
    assert [ax.get_title() for ax in axes] == [f"condition {c:g}" for c in sorted(CONDS)]
    edges = np.linspace(-2.5, 2.5, 101)
    for ax, cond in zip(axes, sorted(CONDS), strict=True):
        assert ax.get_xlim() == (-2.5, 2.5)
        (patch,) = [p for p in ax.patches if isinstance(p, StepPatch)]
        assert patch.get_fill()
        # The filled human density equals an independent histogram of this condition's signed RTs.
        h = human[human["condition"] == cond]
        signed = np.where(h["correct"], h["rt_s"], -h["rt_s"])
        counts, _ = np.histogram(signed, bins=edges)
        np.testing.assert_allclose(patch.get_data().values, counts / len(h) / 0.05)
        lines = _model_lines(ax)
        assert [line.get_label() for line in lines] == ["rtify", "ddm"]
        for line in lines:
            x = line.get_xdata()
            assert x.min() >= -2.5 and x.max() <= 2.5
        # Areas: human integrates to its in-window mass; the model with 10% undecided trials to ≤ 0.9.
        ddm_area = np.sum(lines[1].get_ydata()) * 0.05
        assert ddm_area <= 0.9 + 1e-9
    assert fig.get_axes()[0].get_legend() is not None


def test_signed_rt_histograms_condition_subset_and_errors() -> None:
    human = _trials(0)
    fig = signed_rt_histograms(human, {}, conditions=[51.2, "6.4"])
    assert [ax.get_title() for ax in fig.get_axes()] == ["condition 51.2", "condition 6.4"]
    with pytest.raises(PerceptAlignError, match="mapping"):
        signed_rt_histograms(human, [human])  # type: ignore[arg-type]
    with pytest.raises(PerceptAlignError, match="model 'bad'"):
        signed_rt_histograms(human, {"bad": human.drop(columns="rt_s")})


def test_psychometric_chronometric_data() -> None:
    human, model = _trials(0), _trials(1, slow=0.1)
    fig = psychometric_chronometric(human, {"rtify": model})
    ax_acc, ax_rt = fig.get_axes()
    assert ax_acc.get_xscale() == "log" and ax_rt.get_xscale() == "log"
    human_acc = next(line for line in ax_acc.get_lines() if line.get_label() == "human")
    expected = human.groupby("condition")["correct"].mean()
    np.testing.assert_allclose(human_acc.get_xdata(), expected.index)
    np.testing.assert_allclose(human_acc.get_ydata(), expected.to_numpy())
    model_err = next(line for line in ax_rt.get_lines() if line.get_label() == "rtify error")
    assert model_err.get_linestyle() == "--"
    expected_err = model[~model["correct"]].groupby("condition")["rt_s"].median()
    np.testing.assert_allclose(model_err.get_ydata(), expected_err.to_numpy())
    assert all(0 <= y <= 1 for line in ax_acc.get_lines() for y in line.get_ydata())


def test_psychometric_needs_numeric_conditions() -> None:
    human = _trials(0).assign(condition=lambda d: d["condition"].map(lambda c: f"c{c}"))
    with pytest.raises(PerceptAlignError, match="numeric conditions"):
        psychometric_chronometric(human, {})


def test_quantile_probability_plot_points() -> None:
    human, model = _trials(0), _trials(3)
    fig = quantile_probability_plot(human, {"ddm": model})
    (ax,) = fig.get_axes()
    assert ax.get_xlim() == (0.0, 1.0)
    human_lines = [
        line for line in ax.get_lines() if line.get_color() == "0.35" and line.get_linestyle() == "None"
    ]
    assert len(human_lines) == 5  # one marker set per quantile level
    table = rt_quantiles(human)
    # The median marker set: probabilities and medians of every condition × outcome cell, sorted by p.
    median = sorted(zip(table["p"], table["q50"], strict=True))
    np.testing.assert_allclose(human_lines[2].get_xdata(), [p for p, _ in median])
    np.testing.assert_allclose(human_lines[2].get_ydata(), [q for _, q in median])
    # Correct cells lie right of 0.5 (accuracy > .5 here) and error cells left of it.
    assert (human_lines[0].get_xdata() < 0.5).sum() == len(CONDS)
    model_lines = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    assert len(model_lines) == 5
    for line in model_lines:
        assert np.all(np.diff(line.get_xdata()) >= 0)  # lines run left to right through the cells


def test_psychometric_chronometric_accepts_a_model_that_never_decides() -> None:
    """A collapsed fit (no decided trial) must still plot: its curves are simply empty."""
    human = pd.DataFrame(
        {
            "condition": [1.0, 1.0, 10.0, 10.0],
            "rt_s": [0.5, 0.7, 0.4, 0.6],
            "correct": [True, False, True, True],
        }
    )
    fig = psychometric_chronometric(human, {"collapsed": human.assign(decided=False)})
    accuracy_axis = fig.axes[0]
    collapsed = [line for line in accuracy_axis.get_lines() if line.get_label() == "collapsed"]
    assert all(len(line.get_xdata()) == 0 for line in collapsed)
